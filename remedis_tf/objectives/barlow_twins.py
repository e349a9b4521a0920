"""Barlow Twins (Zbontar et al., 2021): redundancy reduction of the cross-correlation."""

from __future__ import annotations

import dataclasses

import keras
import tensorflow as tf

from remedis_tf.objectives.base import (
  LossOutput,
  ProjectionHeadObjective,
  resolve_replica_context,
)

STANDARDIZE_EPSILON = 1e-5  # as BatchNorm1d(affine=False) in the paper's code


@dataclasses.dataclass(frozen=True)
class BarlowTwinsConfig:
  """Barlow Twins hyper-parameters (paper defaults).

  Attributes:
    lambda_offdiag: weight of the off-diagonal (redundancy) term.
    proj_num_layers, proj_hidden_dim, proj_output_dim: projector (8192-8192-8192).
  """

  lambda_offdiag: float = 0.0051
  proj_num_layers: int = 3
  proj_hidden_dim: int = 8192
  proj_output_dim: int = 8192


def barlow_twins_loss(
  z1: tf.Tensor,
  z2: tf.Tensor,
  lambda_offdiag: float,
  strategy_or_replica_context: tf.distribute.Strategy | tf.distribute.ReplicaContext | None = None,
) -> tuple[tf.Tensor, tf.Tensor]:
  """Barlow Twins loss with batch statistics over all replicas (float32).

  With M the global batch, each feature standardised over the global batch,
  zn = (z - mean) / sqrt(var + 1e-5) (biased variance), and
  C = zn1^T zn2 / M (d x d),

    loss = sum_i (1 - C_ii)^2 + lambda * sum_{i != j} C_ij^2.

  Args:
    z1: (n, d) local projections of view 1.
    z2: (n, d) local projections of view 2.
    lambda_offdiag: lambda.
    strategy_or_replica_context: see `nt_xent_loss`.

  Returns:
    (loss_r, loss): loss_r = loss / R (this replica's share; sums to loss over
    replicas, and its gradient flows through the all-reduces), and the global
    loss (identical on all replicas).
  """
  ctx = resolve_replica_context(strategy_or_replica_context)
  r = ctx.num_replicas_in_sync
  z1 = tf.cast(z1, tf.float32)
  z2 = tf.cast(z2, tf.float32)
  n = tf.cast(tf.shape(z1)[0], tf.float32)

  def all_sum(values: list[tf.Tensor]) -> list[tf.Tensor]:
    return ctx.all_reduce(tf.distribute.ReduceOp.SUM, values) if r > 1 else values

  def standardize(z: tf.Tensor, total: tf.Tensor) -> tf.Tensor:
    s, ss = all_sum([tf.reduce_sum(z, axis=0), tf.reduce_sum(tf.square(z), axis=0)])
    mean = s / total
    var = tf.maximum(ss / total - tf.square(mean), 0.0)
    return (z - mean) * tf.math.rsqrt(var + STANDARDIZE_EPSILON)

  (total,) = all_sum([n])
  c = all_sum([tf.matmul(standardize(z1, total), standardize(z2, total), transpose_a=True)])[0]
  c = c / total
  diag = tf.linalg.diag_part(c)
  on_diag = tf.reduce_sum(tf.square(1.0 - diag))
  off_diag = tf.reduce_sum(tf.square(c)) - tf.reduce_sum(tf.square(diag))
  loss = on_diag + lambda_offdiag * off_diag
  return loss / r, loss


class BarlowTwins(ProjectionHeadObjective):
  """Barlow Twins; both views go through the encoder and projector as one batch."""

  name = "barlow_twins"
  head_name = "barlow_twins_projector"
  head_options = {"use_bn": True, "final_bn": False}

  def __init__(self, config: BarlowTwinsConfig | None = None) -> None:
    super().__init__()
    self.config = config or BarlowTwinsConfig()

  def compute_loss(
    self,
    encoder: keras.Model,
    view1: tf.Tensor,
    view2: tf.Tensor,
    training: bool,
  ) -> LossOutput:
    """See `Objective.compute_loss`; metrics: loss."""
    z1, z2, h1 = self.project_views(encoder, view1, view2, training)
    loss_r, loss = barlow_twins_loss(z1, z2, self.config.lambda_offdiag)
    return LossOutput(loss_r, {"loss": tf.stop_gradient(loss)}, h1)
