"""BYOL (Grill et al., 2020): online predictor regresses an EMA target network."""

from __future__ import annotations

import dataclasses
import math

import keras
import tensorflow as tf

from remedis_tf.models import heads
from remedis_tf.models.outputs import EMBEDDING
from remedis_tf.objectives import target_network
from remedis_tf.objectives.base import (
  EncoderFactory,
  LossOutput,
  Objective,
  assign_in_replica_context,
  resolve_replica_context,
)


@dataclasses.dataclass(frozen=True)
class BYOLConfig:
  """BYOL hyper-parameters (paper defaults).

  Attributes:
    base_momentum: tau_base of the target EMA.
    total_steps: K for the cosine momentum schedule
      tau_k = 1 - (1 - tau_base) * (cos(pi k / K) + 1) / 2; None keeps tau_base.
    proj_hidden_dim, proj_output_dim: projector MLP (4096-256), BN in the middle.
    pred_hidden_dim: predictor MLP hidden width (4096); output = proj_output_dim.
  """

  base_momentum: float = 0.996
  total_steps: int | None = None
  proj_hidden_dim: int = 4096
  proj_output_dim: int = 256
  pred_hidden_dim: int = 4096


def byol_loss(p1: tf.Tensor, p2: tf.Tensor, t1: tf.Tensor, t2: tf.Tensor) -> tf.Tensor:
  """Symmetrised BYOL regression loss, mean over the local batch (float32).

  loss = mean_i [ (2 - 2 cos(p1_i, t2_i)) + (2 - 2 cos(p2_i, t1_i)) ]

  Args:
    p1, p2: (n, d) online predictions for views 1 and 2.
    t1, t2: (n, d) target projections for views 1 and 2 (gradient stopped here).

  Returns:
    Scalar float32 loss.
  """

  def regression(p: tf.Tensor, t: tf.Tensor) -> tf.Tensor:
    p = tf.math.l2_normalize(tf.cast(p, tf.float32), axis=1)
    t = tf.math.l2_normalize(tf.stop_gradient(tf.cast(t, tf.float32)), axis=1)
    return 2.0 - 2.0 * tf.reduce_sum(p * t, axis=1)

  return tf.reduce_mean(regression(p1, t2) + regression(p2, t1))


def byol_momentum(base: float, step: tf.Tensor, total_steps: int | None) -> tf.Tensor:
  """tau_k = 1 - (1 - base) * (cos(pi * min(k, K) / K) + 1) / 2, or base if K is None."""
  if total_steps is None:
    return tf.constant(base, tf.float32)
  k = tf.minimum(tf.cast(step, tf.float32), float(total_steps))
  return 1.0 - (1.0 - base) * (tf.cos(math.pi * k / total_steps) + 1.0) / 2.0


class BYOL(Objective):
  """BYOL; both views go through each network as one batch of 2n."""

  name = "byol"

  def build(
    self,
    encoder: keras.Model,
    embedding_dim: int,
    encoder_factory: EncoderFactory | None = None,
  ) -> None:
    c = self.config
    self.projector = heads.build_projection_head(
      embedding_dim, 2, c.proj_output_dim, c.proj_hidden_dim, final_bn=False, name="byol_projector"
    )
    self.predictor = heads.build_projection_head(
      c.proj_output_dim,
      2,
      c.proj_output_dim,
      c.pred_hidden_dim,
      final_bn=False,
      name="byol_predictor",
    )
    self.target_encoder = target_network.make_target(encoder, encoder_factory)
    self.target_projector = target_network.make_target(self.projector)
    self._ema_pairs = target_network.ema_pairs(
      self.target_encoder, encoder
    ) + target_network.ema_pairs(self.target_projector, self.projector)
    self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name="byol_step")
    self._built = True

  def __init__(self, config: BYOLConfig | None = None) -> None:
    super().__init__()
    self.config = config or BYOLConfig()

  @property
  def trainable_networks(self) -> list[keras.Model]:
    return [self.projector, self.predictor]

  @property
  def projection_head(self) -> keras.Model | None:
    return self.projector

  def checkpoint_items(self) -> dict[str, tf.Module | tf.Variable | keras.Model]:
    return {
      "projector": self.projector,
      "predictor": self.predictor,
      "target_encoder": self.target_encoder,
      "target_projector": self.target_projector,
      "step": self.step,
    }

  def compute_loss(
    self,
    encoder: keras.Model,
    view1: tf.Tensor,
    view2: tf.Tensor,
    training: bool,
  ) -> LossOutput:
    """See `Objective.compute_loss`; metrics: loss, target_momentum."""
    ctx = resolve_replica_context(None)
    x = tf.concat([view1, view2], axis=0)
    h = encoder(x, training=training)[EMBEDDING]
    z = self.projector(h, training=training)
    p = self.predictor(z[heads.PROJECTION], training=training)[heads.PROJECTION]
    t = self.target_projector(
      self.target_encoder(x, training=training)[EMBEDDING], training=training
    )
    t = tf.stop_gradient(t[heads.PROJECTION])
    p1, p2 = tf.split(p, 2, axis=0)
    t1, t2 = tf.split(t, 2, axis=0)
    loss = byol_loss(p1, p2, t1, t2)
    global_loss = ctx.all_reduce(tf.distribute.ReduceOp.MEAN, tf.stop_gradient(loss))
    tau = byol_momentum(self.config.base_momentum, self.step, self.config.total_steps)
    return LossOutput(
      loss / ctx.num_replicas_in_sync,
      {"loss": global_loss, "target_momentum": tau},
      h[: tf.shape(view1)[0]],
    )

  def after_step(self) -> None:
    """EMA of target encoder and projector with the scheduled tau; step += 1."""
    tau = byol_momentum(self.config.base_momentum, self.step, self.config.total_steps)
    target_network.ema_update(self._ema_pairs, tau)
    assign_in_replica_context([(self.step, self.step + 1)])
