"""ReLIC (Mitrovic et al., 2021): contrastive loss + KL invariance regulariser."""

from __future__ import annotations

import dataclasses

import keras
import tensorflow as tf

from remedis_tf.objectives.base import (
  LossOutput,
  ProjectionHeadObjective,
  resolve_replica_context,
)


@dataclasses.dataclass(frozen=True)
class ReLICConfig:
  """ReLIC hyper-parameters.

  Attributes:
    temperature: softmax temperature tau.
    alpha: weight of the KL invariance term.
    proj_num_layers, proj_output_dim, proj_hidden_dim: SimCLRv2-style head.
  """

  temperature: float = 0.1
  alpha: float = 1.0
  proj_num_layers: int = 3
  proj_output_dim: int = 128
  proj_hidden_dim: int | None = None


def relic_loss(
  z1: tf.Tensor,
  z2: tf.Tensor,
  temperature: float,
  alpha: float,
  strategy_or_replica_context: tf.distribute.Strategy | tf.distribute.ReplicaContext | None = None,
) -> tuple[tf.Tensor, dict[str, tf.Tensor]]:
  """ReLIC loss with global-batch candidates (float32).

  With u_i, v_i the L2-normalised projections of the two views of global
  example i (M examples), s_ab[i, j] = u_i.v_j / tau, s_ba[i, j] = v_i.u_j / tau,
  p_ab[i] = softmax_j s_ab[i, :] and p_ba[i] = softmax_j s_ba[i, :]:

    contrastive = (1/M) sum_i [ -log p_ab[i, i] - log p_ba[i, i] ]
    invariance  = (1/M) sum_i [ KL(p_ab[i] || p_ba[i]) + KL(p_ba[i] || p_ab[i]) ]
    loss        = contrastive + alpha * invariance

  i.e. the paper's sum over both ordered augmentation pairs (a, b) and (b, a).

  Args:
    z1: (n, d) local projections of view 1.
    z2: (n, d) local projections of view 2.
    temperature: tau.
    alpha: KL weight.
    strategy_or_replica_context: see `nt_xent_loss`.

  Returns:
    (loss_r, metrics): loss_r = local mean / R; metrics (global means):
    'loss', 'contrastive', 'invariance', 'contrast_acc'.
  """
  ctx = resolve_replica_context(strategy_or_replica_context)
  r = ctx.num_replicas_in_sync
  u = tf.math.l2_normalize(tf.cast(z1, tf.float32), axis=1)
  v = tf.math.l2_normalize(tf.cast(z2, tf.float32), axis=1)
  n = tf.shape(u)[0]
  if r > 1:
    u_all, v_all = ctx.all_gather(u, axis=0), ctx.all_gather(v, axis=0)
    labels = tf.cast(ctx.replica_id_in_sync_group, tf.int32) * n + tf.range(n)
  else:
    u_all, v_all, labels = u, v, tf.range(n)
  log_p_ab = tf.nn.log_softmax(tf.matmul(u, v_all, transpose_b=True) / temperature, axis=1)
  log_p_ba = tf.nn.log_softmax(tf.matmul(v, u_all, transpose_b=True) / temperature, axis=1)
  rows = tf.stack([tf.range(n), labels], axis=1)
  contrastive = -tf.gather_nd(log_p_ab, rows) - tf.gather_nd(log_p_ba, rows)
  p_ab, p_ba = tf.exp(log_p_ab), tf.exp(log_p_ba)
  invariance = tf.reduce_sum(p_ab * (log_p_ab - log_p_ba) + p_ba * (log_p_ba - log_p_ab), axis=1)
  local_loss = tf.reduce_mean(contrastive + alpha * invariance)
  acc = tf.reduce_mean(
    tf.cast(tf.equal(tf.argmax(log_p_ab, axis=1, output_type=tf.int32), labels), tf.float32)
  )
  values = [
    tf.stop_gradient(local_loss),
    tf.stop_gradient(tf.reduce_mean(contrastive)),
    tf.stop_gradient(tf.reduce_mean(invariance)),
    acc,
  ]
  if r > 1:
    values = ctx.all_reduce(tf.distribute.ReduceOp.MEAN, values)
  names = ("loss", "contrastive", "invariance", "contrast_acc")
  return local_loss / r, dict(zip(names, values, strict=True))


class ReLIC(ProjectionHeadObjective):
  """ReLIC; both views go through encoder and head as one batch of 2n."""

  name = "relic"
  head_name = "relic_projection_head"
  head_options = {}

  def __init__(self, config: ReLICConfig | None = None) -> None:
    super().__init__()
    self.config = config or ReLICConfig()

  def compute_loss(
    self,
    encoder: keras.Model,
    view1: tf.Tensor,
    view2: tf.Tensor,
    training: bool,
  ) -> LossOutput:
    """See `Objective.compute_loss`; metrics: loss, contrastive, invariance, contrast_acc."""
    z1, z2, h1 = self.project_views(encoder, view1, view2, training)
    loss, metrics = relic_loss(z1, z2, self.config.temperature, self.config.alpha)
    return LossOutput(loss, metrics, h1)
