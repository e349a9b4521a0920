"""MoCo-v2 (Chen, Fan, Girshick & He, 2020): momentum key encoder + negative queue.

BiT encoders use GroupNorm, so MoCo's shuffling BN is not needed; the MoCo-v2
MLP head has no BatchNorm.
"""

from __future__ import annotations

import dataclasses
import threading

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
class MoCoV2Config:
  """MoCo-v2 hyper-parameters (paper defaults).

  Attributes:
    temperature: InfoNCE temperature (0.2 in MoCo-v2).
    queue_size: K, number of negative keys kept.
    momentum: key-encoder EMA momentum m.
    proj_num_layers, proj_hidden_dim, proj_output_dim: MLP head (2048-128).
  """

  temperature: float = 0.2
  queue_size: int = 65536
  momentum: float = 0.999
  proj_num_layers: int = 2
  proj_hidden_dim: int | None = 2048
  proj_output_dim: int = 128


def moco_loss(
  q: tf.Tensor, k: tf.Tensor, queue: tf.Tensor, temperature: float
) -> tuple[tf.Tensor, tf.Tensor]:
  """InfoNCE of MoCo on local queries (float32).

  loss = mean_i -log( exp(q_i.k_i / t) / (exp(q_i.k_i / t) + sum_j exp(q_i.queue_j / t)) )

  Args:
    q: (n, d) L2-normalised queries.
    k: (n, d) L2-normalised keys (positives), no gradient needed.
    queue: (K, d) L2-normalised negative keys.
    temperature: t.

  Returns:
    (mean loss over the n queries, accuracy of picking the positive).
  """
  q = tf.cast(q, tf.float32)
  k = tf.stop_gradient(tf.cast(k, tf.float32))
  l_pos = tf.reduce_sum(q * k, axis=1, keepdims=True)
  l_neg = tf.matmul(q, tf.stop_gradient(tf.cast(queue, tf.float32)), transpose_b=True)
  logits = tf.concat([l_pos, l_neg], axis=1) / temperature
  labels = tf.zeros(tf.shape(q)[0], tf.int32)
  loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits))
  acc = tf.reduce_mean(
    tf.cast(tf.equal(tf.argmax(logits, axis=1, output_type=tf.int32), 0), tf.float32)
  )
  return loss, acc


def enqueue(queue: tf.Tensor, pointer: tf.Tensor, keys: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
  """Writes `keys` (M, d) into the ring buffer `queue` (K, d) at `pointer`.

  Returns:
    (new queue, new pointer = (pointer + M) mod K); rows wrap around.
  """
  size = tf.shape(queue, out_type=tf.int64)[0]
  m = tf.shape(keys, out_type=tf.int64)[0]
  rows = (pointer + tf.range(m, dtype=tf.int64)) % size
  new_queue = tf.tensor_scatter_nd_update(queue, rows[:, None], tf.cast(keys, queue.dtype))
  return new_queue, (pointer + m) % size


class MoCoV2(Objective):
  """MoCo-v2. Queries from view 1 (online), keys from view 2 (momentum encoder)."""

  name = "moco_v2"

  def __init__(self, config: MoCoV2Config | None = None) -> None:
    super().__init__()
    self.config = config or MoCoV2Config()
    # MirroredStrategy traces each replica in its own thread: keep this step's
    # keys per thread so that after_step enqueues its own replica's keys.
    self._pending = threading.local()

  def build(
    self,
    encoder: keras.Model,
    embedding_dim: int,
    encoder_factory: EncoderFactory | None = None,
  ) -> None:
    c = self.config
    self.encoder = encoder
    self.head = heads.build_projection_head(
      embedding_dim,
      num_layers=c.proj_num_layers,
      output_dim=c.proj_output_dim,
      hidden_dim=c.proj_hidden_dim,
      use_bn=False,
      final_bn=False,
      name="moco_projection_head",
    )
    self.key_encoder = target_network.make_target(encoder, encoder_factory)
    self.key_head = target_network.make_target(self.head)
    self._ema_pairs = target_network.ema_pairs(
      self.key_encoder, encoder
    ) + target_network.ema_pairs(self.key_head, self.head)
    init = tf.math.l2_normalize(tf.random.normal((c.queue_size, c.proj_output_dim), seed=0), axis=1)
    self.queue = tf.Variable(init, trainable=False, name="moco_queue")
    self.queue_pointer = tf.Variable(0, dtype=tf.int64, trainable=False, name="moco_queue_ptr")
    self._built = True

  @property
  def trainable_networks(self) -> list[keras.Model]:
    return [self.head]

  @property
  def projection_head(self) -> keras.Model | None:
    return self.head

  def checkpoint_items(self) -> dict[str, tf.Module | tf.Variable | keras.Model]:
    return {
      "projection_head": self.head,
      "key_encoder": self.key_encoder,
      "key_head": self.key_head,
      "queue": self.queue,
      "queue_pointer": self.queue_pointer,
    }

  def compute_loss(
    self,
    encoder: keras.Model,
    view1: tf.Tensor,
    view2: tf.Tensor,
    training: bool,
  ) -> LossOutput:
    """See `Objective.compute_loss`; metrics: loss, contrast_acc.

    Keys of this step are kept for `after_step`, which must be called in the
    same replica function.
    """
    ctx = resolve_replica_context(None)
    h1 = encoder(view1, training=training)[EMBEDDING]
    q = self.head(h1, training=training)
    q = tf.math.l2_normalize(tf.cast(q[heads.PROJECTION], tf.float32), axis=1)
    k = self.key_head(self.key_encoder(view2, training=training)[EMBEDDING], training=training)
    k = tf.stop_gradient(tf.math.l2_normalize(tf.cast(k[heads.PROJECTION], tf.float32), axis=1))
    self._pending.keys = k
    loss, acc = moco_loss(q, k, self.queue, self.config.temperature)
    metrics = ctx.all_reduce(tf.distribute.ReduceOp.MEAN, [tf.stop_gradient(loss), acc])
    return LossOutput(
      loss / ctx.num_replicas_in_sync, {"loss": metrics[0], "contrast_acc": metrics[1]}, h1
    )

  def after_step(self) -> None:
    """Momentum update of the key networks, then enqueue all replicas' keys."""
    keys = getattr(self._pending, "keys", None)
    if keys is None:
      raise RuntimeError("after_step must follow compute_loss in the same replica function.")
    ctx = resolve_replica_context(None)
    target_network.ema_update(self._ema_pairs, self.config.momentum)
    if ctx.num_replicas_in_sync > 1:
      keys = ctx.all_gather(keys, axis=0)
    new_queue, new_pointer = enqueue(
      tf.convert_to_tensor(self.queue), tf.convert_to_tensor(self.queue_pointer), keys
    )
    assign_in_replica_context([(self.queue, new_queue), (self.queue_pointer, new_pointer)])
    self._pending.keys = None
