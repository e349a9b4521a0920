"""NT-Xent against a float64 NumPy reference, on one and on two replicas."""

import numpy as np
import pytest
import tensorflow as tf
import two_replicas

from remedis_tf.objectives import nt_xent_loss

TEMPERATURE = 0.3


def _reference(z1: np.ndarray, z2: np.ndarray, t: float, normalize: bool = True):
  """Loss (SimCLR code convention), its gradients, accuracy, entropy; float64."""
  z1 = z1.astype(np.float64)
  z2 = z2.astype(np.float64)

  def loss_fn(a, b):
    if normalize:
      a = a / np.linalg.norm(a, axis=1, keepdims=True)
      b = b / np.linalg.norm(b, axis=1, keepdims=True)
    m = a.shape[0]
    total = 0.0
    for anchors, others in ((a, b), (b, a)):
      for i in range(m):
        cands = [anchors[i] @ others[j] / t for j in range(m)]
        cands += [anchors[i] @ anchors[k] / t for k in range(m) if k != i]
        cands = np.array(cands)
        total += -(cands[i] - np.log(np.sum(np.exp(cands))))
    return total / m, a, b

  loss, a, b = loss_fn(z1, z2)
  sim = a @ b.T / t
  acc = np.mean(np.argmax(sim, axis=1) == np.arange(len(a)))
  p = np.exp(sim - sim.max(1, keepdims=True))
  p /= p.sum(1, keepdims=True)
  entropy = np.mean(-np.sum(p * np.log(p), axis=1))
  # Central finite differences in float64 for the gradients.
  eps = 1e-6
  grads = []
  for which in range(2):
    base = [z1.copy(), z2.copy()]
    g = np.zeros_like(base[which])
    for idx in np.ndindex(g.shape):
      plus = [x.copy() for x in base]
      minus = [x.copy() for x in base]
      plus[which][idx] += eps
      minus[which][idx] -= eps
      g[idx] = (loss_fn(*plus)[0] - loss_fn(*minus)[0]) / (2 * eps)
    grads.append(g)
  return loss, grads, acc, entropy


def _data(m=8, d=5, seed=0):
  rng = np.random.default_rng(seed)
  z1 = rng.normal(size=(m, d)).astype(np.float32)
  z2 = (z1 + 0.7 * rng.normal(size=(m, d))).astype(np.float32)
  return z1, z2


def _single(z1, z2, dtype=tf.float32, normalize=True):
  a = tf.constant(z1, dtype)
  b = tf.constant(z2, dtype)
  with tf.GradientTape() as tape:
    tape.watch([a, b])
    loss, metrics = nt_xent_loss(a, b, TEMPERATURE, normalize=normalize)
  grads = tape.gradient(loss, [a, b])
  return loss, grads, metrics


def test_matches_numpy_reference():
  z1, z2 = _data()
  ref_loss, ref_grads, ref_acc, ref_entropy = _reference(z1, z2, TEMPERATURE)
  loss, grads, metrics = _single(z1, z2)
  assert loss.dtype == tf.float32
  np.testing.assert_allclose(loss.numpy(), ref_loss, rtol=1e-5)
  np.testing.assert_allclose(metrics["loss"].numpy(), ref_loss, rtol=1e-5)
  np.testing.assert_allclose(grads[0].numpy(), ref_grads[0], atol=1e-5)
  np.testing.assert_allclose(grads[1].numpy(), ref_grads[1], atol=1e-5)
  np.testing.assert_allclose(metrics["contrast_acc"].numpy(), ref_acc)
  np.testing.assert_allclose(metrics["contrast_entropy"].numpy(), ref_entropy, rtol=1e-5)


def test_without_normalization_matches_reference():
  z1, z2 = _data(m=4, d=3, seed=1)
  z1, z2 = 0.3 * z1, 0.3 * z2
  ref_loss = _reference(z1, z2, TEMPERATURE, normalize=False)[0]
  loss, _, _ = _single(z1, z2, normalize=False)
  np.testing.assert_allclose(loss.numpy(), ref_loss, rtol=1e-5)


@pytest.mark.parametrize("dtype", [tf.float16, tf.bfloat16])
def test_half_precision_inputs_give_float32_loss(dtype):
  z1, z2 = _data()
  ref_loss = _reference(z1, z2, TEMPERATURE)[0]
  loss, _, _ = _single(z1, z2, dtype=dtype)
  assert loss.dtype == tf.float32
  assert np.isfinite(loss.numpy())
  np.testing.assert_allclose(loss.numpy(), ref_loss, rtol=2e-2)  # inputs are rounded


def test_two_replicas_equal_single_replica():
  z1, z2 = _data(m=8)
  loss_1, grads_1, metrics_1 = _single(z1, z2)
  strategy = two_replicas.strategy()
  n = z1.shape[0] // 2

  def local(ctx, x):
    r = ctx.replica_id_in_sync_group
    return tf.constant(x[r * n : (r + 1) * n])

  d1 = strategy.experimental_distribute_values_from_function(lambda c: local(c, z1))
  d2 = strategy.experimental_distribute_values_from_function(lambda c: local(c, z2))

  @tf.function
  def run(a, b):
    def step(a, b):
      with tf.GradientTape() as tape:
        tape.watch([a, b])
        loss, metrics = nt_xent_loss(a, b, TEMPERATURE, strategy)
      return loss, tape.gradient(loss, [a, b]), metrics

    return strategy.run(step, args=(a, b))

  loss, grads, metrics = run(d1, d2)
  losses = strategy.experimental_local_results(loss)
  np.testing.assert_allclose(sum(v.numpy() for v in losses), loss_1.numpy(), atol=1e-5)
  for which in range(2):
    g = np.concatenate([v.numpy() for v in strategy.experimental_local_results(grads[which])])
    np.testing.assert_allclose(g, grads_1[which].numpy(), atol=1e-5)
  for name, value in metrics.items():
    for v in strategy.experimental_local_results(value):
      np.testing.assert_allclose(v.numpy(), metrics_1[name].numpy(), atol=1e-5)
