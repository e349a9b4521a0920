"""NT-Xent against a float64 NumPy reference, on one and on two replicas.

Tolerances: `loss_bounds.nt_xent` replays the float32 computation on the
test's data and bounds its rounding error (`float32_bounds`); a test allows
SAFETY (2) times that bound, plus the float64 reference's own error where it
is not negligible (the finite-difference gradients).
"""

import loss_bounds
import numpy as np
import pytest
import tensorflow as tf
import two_replicas
from float32_bounds import SAFETY, assert_within

from remedis_tf.objectives import nt_xent_loss

TEMPERATURE = 0.3
FD_STEP = 1e-6


def _fd_error(loss_bound: float) -> float:
  """Error of the float64 central-difference gradient with step h = FD_STEP.

  Rounding: a float64 loss evaluation errs by at most the float32 bound scaled
  by 2^-53 / 2^-24 (the same operations with float64's roundoff), so the
  difference quotient errs by at most that / h. Truncation: h^2 |L^(3)| / 6,
  with |L^(3)| <= 2 * 6^3 / tau^3 for unit vectors (below 1e-9 here).
  """
  return loss_bound * 2.0**-29 / FD_STEP + FD_STEP**2 * 2 * 6**3 / TEMPERATURE**3 / 6


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
  # Central finite differences in float64 for the gradients (error: see _fd_error).
  eps = FD_STEP
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
  bound = loss_bounds.nt_xent(z1, z2, TEMPERATURE)
  assert_within(loss.numpy(), ref_loss, SAFETY * bound["loss"].e, "loss")
  assert_within(metrics["loss"].numpy(), ref_loss, SAFETY * bound["metric_loss"].e, "metric")
  fd = _fd_error(bound["loss"].e)
  assert_within(grads[0].numpy(), ref_grads[0], SAFETY * bound["grad_z1"].e + fd, "grad z1")
  assert_within(grads[1].numpy(), ref_grads[1], SAFETY * bound["grad_z2"].e + fd, "grad z2")
  # Accuracy counts argmax hits over 8 anchors: exact (k/8 is a float32), as no logit margin
  # of these data is within rounding.
  np.testing.assert_array_equal(metrics["contrast_acc"].numpy(), ref_acc)
  assert_within(
    metrics["contrast_entropy"].numpy(),
    ref_entropy,
    SAFETY * bound["contrast_entropy"].e,
    "entropy",
  )


def test_without_normalization_matches_reference():
  z1, z2 = _data(m=4, d=3, seed=1)
  z1, z2 = 0.3 * z1, 0.3 * z2
  ref_loss = _reference(z1, z2, TEMPERATURE, normalize=False)[0]
  loss, _, _ = _single(z1, z2, normalize=False)
  bound = loss_bounds.nt_xent(z1, z2, TEMPERATURE, normalize=False)["loss"].e
  assert_within(loss.numpy(), ref_loss, SAFETY * bound, "loss")


@pytest.mark.parametrize("dtype", [tf.float16, tf.bfloat16])
def test_half_precision_inputs_give_float32_loss(dtype):
  """The loss of half-precision inputs is computed in float32 from their exact values.

  The reference takes the inputs after their rounding to `dtype` (which float32
  holds exactly), so only float32 arithmetic separates the two; arithmetic in
  `dtype` itself would miss this bound by orders of magnitude (2^-8 or 2^-11).
  """
  z1, z2 = (tf.cast(z, dtype).numpy().astype(np.float32) for z in _data())
  ref_loss = _reference(z1, z2, TEMPERATURE)[0]
  loss, _, _ = _single(z1, z2, dtype=dtype)
  assert loss.dtype == tf.float32
  bound = loss_bounds.nt_xent(z1, z2, TEMPERATURE)["loss"].e
  assert_within(loss.numpy(), ref_loss, SAFETY * bound, f"{dtype.name} inputs")


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
  # Both sides are float32 evaluations of the same exact values: they may differ by the
  # one-replica bound plus the two-replica bound.
  one, two = (loss_bounds.nt_xent(z1, z2, TEMPERATURE, replicas=r) for r in (1, 2))
  both = lambda key: SAFETY * (one[key].e + two[key].e)
  assert_within(sum(v.numpy() for v in losses), loss_1.numpy(), both("loss"), "loss")
  for which in range(2):
    g = np.concatenate([v.numpy() for v in strategy.experimental_local_results(grads[which])])
    assert_within(g, grads_1[which].numpy(), both(f"grad_z{which + 1}"), f"grad {which}")
  bounds = {"loss": both("metric_loss"), "contrast_entropy": both("contrast_entropy")}
  for name, value in metrics.items():
    for v in strategy.experimental_local_results(value):
      if name == "contrast_acc":  # a mean of 0/1 over 8 anchors: exact
        np.testing.assert_array_equal(v.numpy(), metrics_1[name].numpy())
      else:
        assert_within(v.numpy(), metrics_1[name].numpy(), bounds[name], name)
