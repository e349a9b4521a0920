"""MoCo, BYOL, Barlow Twins and ReLIC losses against NumPy float64 paper formulas.

Tolerances: `loss_bounds` replays each float32 loss on the test's data and
bounds its rounding error (`float32_bounds`); a test allows SAFETY (2) times
that bound. The float64 references' own errors (below 1e-14) are negligible.
"""

import math

import loss_bounds
import numpy as np
import tensorflow as tf
import two_replicas
from float32_bounds import SAFETY, Bounded, assert_within

from remedis_tf.objectives import barlow_twins_loss, byol_loss, moco_loss, relic_loss
from remedis_tf.objectives.byol import byol_momentum


def _rng_data(n=6, d=4, seed=0):
  rng = np.random.default_rng(seed)
  a = rng.normal(size=(n, d))
  b = a + 0.8 * rng.normal(size=(n, d))
  return a, b


def _unit(x):
  return x / np.linalg.norm(x, axis=1, keepdims=True)


def _log_softmax(x):
  x = x - x.max(axis=1, keepdims=True)
  return x - np.log(np.exp(x).sum(axis=1, keepdims=True))


def test_moco_loss():
  q, k = (_unit(x) for x in _rng_data())
  queue = _unit(np.random.default_rng(5).normal(size=(10, 4)))
  t = 0.2
  expected = np.mean(
    [
      -np.log(np.exp(q[i] @ k[i] / t) / (np.exp(q[i] @ k[i] / t) + np.exp(queue @ q[i] / t).sum()))
      for i in range(len(q))
    ]
  )
  loss, acc = moco_loss(
    tf.constant(q, tf.float32), tf.constant(k, tf.float32), tf.constant(queue, tf.float32), t
  )
  bound = loss_bounds.moco(q, k, queue, t, rounded=True)["single"].e
  assert_within(loss.numpy(), expected, SAFETY * bound, "moco loss")
  exp_acc = np.mean([(q[i] @ k[i]) > np.max(queue @ q[i]) for i in range(len(q))])
  # A count of hits over 6 queries divided by 6 in float32: the correctly rounded quotient.
  np.testing.assert_array_equal(acc.numpy(), np.float32(exp_acc))


def test_byol_loss_and_momentum():
  p1, p2 = _rng_data(seed=1)
  t1, t2 = _rng_data(seed=2)
  cos = lambda a, b: np.sum(_unit(a) * _unit(b), axis=1)
  expected = np.mean((2 - 2 * cos(p1, t2)) + (2 - 2 * cos(p2, t1)))
  loss = byol_loss(*(tf.constant(x, tf.float32) for x in (p1, p2, t1, t2)))
  bound = loss_bounds.byol(p1, p2, t1, t2, rounded=True)["loss"].e
  assert_within(loss.numpy(), expected, SAFETY * bound, "byol loss")
  for k, tau in [(0, 0.996), (50, 1 - 0.004 * (math.cos(math.pi / 2) + 1) / 2), (100, 1.0)]:
    # float32: 1 - fl(0.004) (cos(fl(pi) k / K) + 1) / 2, replayed.
    angle = Bounded.rounded(math.pi) * float(k) / 100.0
    f32 = 1.0 - Bounded.rounded(1 - 0.996) * (angle.cos() + 1.0) / 2.0
    got = byol_momentum(0.996, tf.constant(k), 100).numpy()
    assert_within(got, tau, SAFETY * f32.e, f"momentum at step {k}")
  # Without a schedule the base is returned as a float32 constant: 0.99 rounded once.
  assert byol_momentum(0.99, tf.constant(7), None).numpy() == np.float32(0.99)


def _bt_reference(z1, z2, lam):
  def std(z):
    return (z - z.mean(0)) / np.sqrt(z.var(0) + 1e-5)

  c = std(z1).T @ std(z2) / len(z1)
  d = c.shape[0]
  return sum((1 - c[i, i]) ** 2 for i in range(d)) + lam * sum(
    c[i, j] ** 2 for i in range(d) for j in range(d) if i != j
  )


def _relic_reference(z1, z2, t, alpha):
  u, v = _unit(z1), _unit(z2)
  lab = _log_softmax(u @ v.T / t)
  lba = _log_softmax(v @ u.T / t)
  pab, pba = np.exp(lab), np.exp(lba)
  m = len(u)
  contrastive = np.mean([-lab[i, i] - lba[i, i] for i in range(m)])
  kl = lambda p, lp, lq: np.sum(p * (lp - lq))
  invariance = np.mean([kl(pab[i], lab[i], lba[i]) + kl(pba[i], lba[i], lab[i]) for i in range(m)])
  return contrastive + alpha * invariance


def test_barlow_twins_loss():
  z1, z2 = _rng_data(n=8, d=5)
  loss_r, loss = barlow_twins_loss(tf.constant(z1, tf.float32), tf.constant(z2, tf.float32), 0.3)
  expected = _bt_reference(z1, z2, 0.3)
  # The bound includes the cancellation in var = E[z^2] - mean^2 that the float32 code uses.
  bound = SAFETY * loss_bounds.barlow_twins(z1, z2, 0.3, rounded=True)["loss"].e
  assert_within(loss.numpy(), expected, bound, "loss")
  assert_within(loss_r.numpy(), expected, bound, "loss_r")


def test_relic_loss():
  z1, z2 = _rng_data(n=8, d=5)
  loss, metrics = relic_loss(tf.constant(z1, tf.float32), tf.constant(z2, tf.float32), 0.5, 0.7)
  bound = loss_bounds.relic(z1, z2, 0.5, 0.7, rounded=True)
  assert_within(loss.numpy(), _relic_reference(z1, z2, 0.5, 0.7), SAFETY * bound["loss"].e, "loss")
  assert_within(
    metrics["invariance"].numpy(),
    (_relic_reference(z1, z2, 0.5, 1.0) - _relic_reference(z1, z2, 0.5, 0.0)),
    SAFETY * bound["invariance"].e,
    "invariance",
  )


def _two_replica_loss_and_grads(fn, z1, z2):
  strategy = two_replicas.strategy()
  n = len(z1) // 2
  split = lambda x: strategy.experimental_distribute_values_from_function(
    lambda c: tf.constant(
      x[c.replica_id_in_sync_group * n : (c.replica_id_in_sync_group + 1) * n], tf.float32
    )
  )

  @tf.function
  def run(a, b):
    def step(a, b):
      with tf.GradientTape() as tape:
        tape.watch([a, b])
        loss_r = fn(a, b, strategy)
      return loss_r, tape.gradient(loss_r, [a, b])

    return strategy.run(step, args=(a, b))

  loss, grads = run(split(z1), split(z2))
  cat = lambda v: np.concatenate([x.numpy() for x in strategy.experimental_local_results(v)])
  return (
    sum(x.numpy() for x in strategy.experimental_local_results(loss)),
    cat(grads[0]),
    cat(grads[1]),
  )


def _single_loss_and_grads(fn, z1, z2):
  a, b = tf.constant(z1, tf.float32), tf.constant(z2, tf.float32)
  with tf.GradientTape() as tape:
    tape.watch([a, b])
    loss = fn(a, b, None)
  ga, gb = tape.gradient(loss, [a, b])
  return loss.numpy(), ga.numpy(), gb.numpy()


def test_barlow_twins_and_relic_two_replicas_equal_single():
  """Loss and gradients on two replicas equal one replica's, within both float32 bounds."""
  z1, z2 = _rng_data(n=8, d=5, seed=3)
  cases = {
    "barlow_twins": (
      lambda a, b, s: barlow_twins_loss(a, b, 0.3, s)[0],
      lambda r: loss_bounds.barlow_twins(z1, z2, 0.3, r, rounded=True),
    ),
    "relic": (
      lambda a, b, s: relic_loss(a, b, 0.5, 0.7, s)[0],
      lambda r: loss_bounds.relic(z1, z2, 0.5, 0.7, r, rounded=True),
    ),
  }
  for name, (fn, bounds) in cases.items():
    single = _single_loss_and_grads(fn, z1, z2)
    double = _two_replica_loss_and_grads(fn, z1, z2)
    one, two = bounds(1), bounds(2)
    for key, s, d in zip(("loss", "grad_z1", "grad_z2"), single, double, strict=True):
      assert_within(d, s, SAFETY * (one[key].e + two[key].e), f"{name} {key}")
