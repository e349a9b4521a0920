"""MoCo, BYOL, Barlow Twins and ReLIC losses against NumPy float64 paper formulas."""

import math

import numpy as np
import tensorflow as tf
import two_replicas

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
  np.testing.assert_allclose(loss.numpy(), expected, rtol=1e-5)
  exp_acc = np.mean([(q[i] @ k[i]) > np.max(queue @ q[i]) for i in range(len(q))])
  np.testing.assert_allclose(acc.numpy(), exp_acc)


def test_byol_loss_and_momentum():
  p1, p2 = _rng_data(seed=1)
  t1, t2 = _rng_data(seed=2)
  cos = lambda a, b: np.sum(_unit(a) * _unit(b), axis=1)
  expected = np.mean((2 - 2 * cos(p1, t2)) + (2 - 2 * cos(p2, t1)))
  loss = byol_loss(*(tf.constant(x, tf.float32) for x in (p1, p2, t1, t2)))
  np.testing.assert_allclose(loss.numpy(), expected, rtol=1e-5)
  for k, tau in [(0, 0.996), (50, 1 - 0.004 * (math.cos(math.pi / 2) + 1) / 2), (100, 1.0)]:
    np.testing.assert_allclose(byol_momentum(0.996, tf.constant(k), 100).numpy(), tau, rtol=1e-6)
  np.testing.assert_allclose(byol_momentum(0.99, tf.constant(7), None).numpy(), 0.99)


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
  np.testing.assert_allclose(loss.numpy(), expected, rtol=1e-4)
  np.testing.assert_allclose(loss_r.numpy(), expected, rtol=1e-4)


def test_relic_loss():
  z1, z2 = _rng_data(n=8, d=5)
  loss, metrics = relic_loss(tf.constant(z1, tf.float32), tf.constant(z2, tf.float32), 0.5, 0.7)
  np.testing.assert_allclose(loss.numpy(), _relic_reference(z1, z2, 0.5, 0.7), rtol=1e-5)
  np.testing.assert_allclose(
    metrics["invariance"].numpy(),
    (_relic_reference(z1, z2, 0.5, 1.0) - _relic_reference(z1, z2, 0.5, 0.0)),
    rtol=1e-4,
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
  z1, z2 = _rng_data(n=8, d=5, seed=3)
  fns = [
    lambda a, b, s: barlow_twins_loss(a, b, 0.3, s)[0],
    lambda a, b, s: relic_loss(a, b, 0.5, 0.7, s)[0],
  ]
  for fn in fns:
    single = _single_loss_and_grads(fn, z1, z2)
    double = _two_replica_loss_and_grads(fn, z1, z2)
    for s, d in zip(single, double, strict=True):
      np.testing.assert_allclose(d, s, atol=1e-5)
