"""NT-Xent, SimCLR's normalised temperature-scaled cross-entropy loss.

Negatives come from the global batch: both views' projections are gathered
from all replicas, and replica r's anchors find their positives at offset
`r * n` in the gathered arrays (as in SimCLR's tf2 implementation). The loss is
always computed in float32, whatever the mixed-precision policy: the 1e9
self-similarity mask overflows float16 and bfloat16.
"""

from __future__ import annotations

import tensorflow as tf

from remedis_tf.objectives.base import resolve_replica_context

LARGE_NUM = 1e9


def nt_xent_loss(
  z1: tf.Tensor,
  z2: tf.Tensor,
  temperature: float,
  strategy_or_replica_context: tf.distribute.Strategy | tf.distribute.ReplicaContext | None = None,
  *,
  normalize: bool = True,
) -> tuple[tf.Tensor, dict[str, tf.Tensor]]:
  """NT-Xent loss with cross-replica negatives.

  Let M = R * n be the global batch (R replicas, n examples per replica),
  u_i, v_i the (optionally L2-normalised) projections of the two views of
  global example i, and s(a, b) = a.b / temperature. For anchor u_i the
  candidates are {v_j : all j} and {u_k : k != i}, the positive is v_i; for
  anchor v_i symmetrically. With l(a, i) the softmax cross-entropy of the
  positive among the 2M - 1 candidates,

    loss = (1/M) sum_i [ l(u, i) + l(v, i) ],

  i.e. SimCLR's code convention (the paper's mean over 2M anchors times 2).

  Args:
    z1: (n, d) projections of the first view on this replica, any float dtype.
    z2: (n, d) projections of the second view; row i pairs with z1 row i.
    temperature: softmax temperature tau > 0.
    strategy_or_replica_context: None (use the current replica context; the
      default one without a strategy), a tf.distribute.ReplicaContext, or a
      Strategy (its current replica context; call inside `strategy.run`).
    normalize: L2-normalise z1 and z2 along the last axis first.

  Returns:
    (loss_r, metrics). loss_r: float32 scalar, this replica's share,
    `local mean over its n anchors / R`, so that the sum over replicas is
    `loss` above and its gradient (which flows through the all-gather) is the
    gradient of the global loss. metrics (float32 scalars, global means, equal
    on all replicas): 'loss' (the global loss), 'contrast_acc' (fraction of
    anchors u_i whose most similar v_j is v_i), 'contrast_entropy' (mean
    entropy of softmax_j s(u_i, v_j)).
  """
  ctx = resolve_replica_context(strategy_or_replica_context)
  num_replicas = ctx.num_replicas_in_sync
  z1 = tf.cast(z1, tf.float32)
  z2 = tf.cast(z2, tf.float32)
  if normalize:
    z1 = tf.math.l2_normalize(z1, axis=-1)
    z2 = tf.math.l2_normalize(z2, axis=-1)
  n = tf.shape(z1)[0]
  if num_replicas > 1:
    z1_all = ctx.all_gather(z1, axis=0)
    z2_all = ctx.all_gather(z2, axis=0)
    offset = tf.cast(ctx.replica_id_in_sync_group, tf.int32) * n
  else:
    z1_all, z2_all, offset = z1, z2, 0
  global_n = tf.shape(z1_all)[0]
  labels = offset + tf.range(n)
  self_mask = tf.one_hot(labels, global_n, dtype=tf.float32) * LARGE_NUM
  inv_t = tf.constant(1.0 / temperature, tf.float32)

  logits_aa = tf.matmul(z1, z1_all, transpose_b=True) * inv_t - self_mask
  logits_bb = tf.matmul(z2, z2_all, transpose_b=True) * inv_t - self_mask
  logits_ab = tf.matmul(z1, z2_all, transpose_b=True) * inv_t
  logits_ba = tf.matmul(z2, z1_all, transpose_b=True) * inv_t

  loss_a = tf.nn.sparse_softmax_cross_entropy_with_logits(
    labels, tf.concat([logits_ab, logits_aa], axis=1)
  )
  loss_b = tf.nn.sparse_softmax_cross_entropy_with_logits(
    labels, tf.concat([logits_ba, logits_bb], axis=1)
  )
  local_loss = tf.reduce_mean(loss_a + loss_b)

  correct = tf.cast(
    tf.equal(tf.argmax(logits_ab, axis=1, output_type=tf.int32), labels), tf.float32
  )
  log_p = tf.nn.log_softmax(logits_ab, axis=1)
  entropy = -tf.reduce_sum(tf.exp(log_p) * log_p, axis=1)
  local_metrics = [
    tf.stop_gradient(local_loss),
    tf.reduce_mean(correct),
    tf.stop_gradient(tf.reduce_mean(entropy)),
  ]
  if num_replicas > 1:
    local_metrics = ctx.all_reduce(tf.distribute.ReduceOp.MEAN, local_metrics)
  metrics = dict(zip(("loss", "contrast_acc", "contrast_entropy"), local_metrics, strict=True))
  return local_loss / num_replicas, metrics
