"""The Objective interface: registry, distributed equivalence, MoCo queue and EMA steps.

A tiny stand-in encoder is used here (the encoder is not under test); the real
BiT encoder is exercised in pretrain_objectives_test.py.

Tolerances come from `float32_bounds` / `loss_bounds`: first-order bounds on
the float32 rounding error of the very operations compared, computed from the
test's data, times `SAFETY` (2).
"""

import contextlib

import keras
import loss_bounds
import numpy as np
import pytest
import tensorflow as tf
import two_replicas
from float32_bounds import SAFETY, U32, Bounded, assert_within, l2_normalize, matmul, relu

from remedis_tf import objectives
from remedis_tf.models import heads

SMALL = {
  "simclr": dict(proj_output_dim=4, proj_hidden_dim=8),
  "moco_v2": dict(proj_output_dim=4, proj_hidden_dim=8, queue_size=12, momentum=0.9),
  "barlow_twins": dict(proj_output_dim=5, proj_hidden_dim=8),
  "relic": dict(proj_output_dim=4, proj_hidden_dim=8),
  "byol": dict(proj_output_dim=4, proj_hidden_dim=8, pred_hidden_dim=8, total_steps=10),
}


def _encoder():
  images = keras.Input((8, 8, 3))
  fmap = keras.layers.Conv2D(4, 3, strides=2, padding="same")(images)
  emb = keras.layers.Dense(6)(keras.layers.GlobalAveragePooling2D()(fmap))
  return keras.Model(images, {"feature_map": fmap, "embedding": emb})


def _views(n=8, seed=0):
  rng = np.random.default_rng(seed)
  v1 = rng.uniform(size=(n, 8, 8, 3)).astype(np.float32)
  v2 = np.clip(v1 + 0.1 * rng.normal(size=v1.shape), 0, 1).astype(np.float32)
  return v1, v2


@contextlib.contextmanager
def _floatx(dtype):
  """Keras layers created inside use `dtype` weights and computations.

  Keras 3 caches its global dtype policy from floatx the first time a layer is
  built, so the policy is set too (floatx alone is ignored after any earlier test).
  """
  old, old_policy = keras.config.floatx(), keras.config.dtype_policy()
  keras.config.set_floatx(dtype)
  keras.config.set_dtype_policy(dtype)
  try:
    yield
  finally:
    keras.config.set_floatx(old)
    keras.config.set_dtype_policy(old_policy)


def _build(name, strategy, dtype="float32"):
  keras.utils.set_random_seed(1)
  with _floatx(dtype), strategy.scope():
    encoder = _encoder()
    objective = objectives.get(name, **SMALL[name])
    objective.build(encoder, 6)
  weights = encoder.weights + [w for net in objective.trainable_networks for w in net.weights]
  assert {w.dtype for w in weights} == {dtype}, "the requested dtype was not applied"
  return encoder, objective


def test_registry():
  assert set(objectives.NAMES) == {"simclr", "moco_v2", "barlow_twins", "relic", "byol"}
  obj = objectives.get("simclr", temperature=0.5)
  assert isinstance(obj, objectives.SimCLR) and obj.config.temperature == 0.5
  assert objectives.get("moco_v2").config.temperature == 0.2
  with pytest.raises(ValueError):
    objectives.get("swav")
  with pytest.raises(TypeError):
    objectives.get("simclr", queue_size=3)


def test_projection_head_structure_and_selector():
  head = heads.build_projection_head(6, num_layers=3, output_dim=4, ft_proj_selector=0)
  bns = [layer for layer in head.layers if isinstance(layer, keras.layers.BatchNormalization)]
  denses = [layer for layer in head.layers if isinstance(layer, keras.layers.Dense)]
  assert [b.synchronized for b in bns] == [True] * 3
  assert [b.center for b in bns] == [True, True, False]
  assert [d.use_bias for d in denses] == [False] * 3
  x = np.random.default_rng(0).normal(size=(5, 6)).astype(np.float32)
  out = head(x, training=False)
  np.testing.assert_array_equal(out[heads.FINETUNE_FEATURES].numpy(), x)
  # Inference-mode forward pass against NumPy (fresh BN: mean 0, var 1, gamma 1, beta 0).
  h = x.astype(np.float64)
  for j, d in enumerate(denses):
    h = h @ d.kernel.numpy() / np.sqrt(1 + 1e-5)
    if j < 2:
      h = np.maximum(h, 0)
  # Tolerance: the float32 rounding bound of the same layers replayed (dot products of 6 and
  # 8 terms, x rsqrt(1 + fl(1e-5)), ReLU), vs the float64 reference (its own error < 1e-15).
  bound = Bounded.exact(x)
  inv_std = (Bounded.exact(1.0) + Bounded.rounded(1e-5)).rsqrt()
  for j, d in enumerate(denses):
    bound = matmul(bound, Bounded.exact(d.kernel.numpy())) * inv_std
    bound = relu(bound) if j < 2 else bound
  assert_within(out[heads.PROJECTION].numpy(), h, SAFETY * bound.e, "projection")
  sel = heads.build_projection_head(6, num_layers=3, output_dim=4, hidden_dim=7, ft_proj_selector=2)
  assert sel(x)[heads.FINETUNE_FEATURES].shape == (5, 7)
  with pytest.raises(ValueError):
    heads.build_projection_head(6, num_layers=2, ft_proj_selector=3)


def _loss_inputs(name, objective, encoder, v1, v2):
  """The (float64) tensors that `name`'s compute_loss hands to its float32 loss function."""
  if name in ("simclr", "barlow_twins", "relic"):
    z1, z2, _ = objective.project_views(encoder, v1, v2, True)
    return z1.numpy(), z2.numpy()
  if name == "moco_v2":
    q = objective.head(encoder(v1, training=True)["embedding"], training=True)
    k = objective.key_head(objective.key_encoder(v2, training=True)["embedding"], training=True)
    return q[heads.PROJECTION].numpy(), k[heads.PROJECTION].numpy(), objective.queue.numpy()
  x = tf.concat([v1, v2], axis=0)
  z = objective.projector(encoder(x, training=True)["embedding"], training=True)
  p = objective.predictor(z[heads.PROJECTION], training=True)[heads.PROJECTION].numpy()
  t = objective.target_projector(
    objective.target_encoder(x, training=True)["embedding"], training=True
  )[heads.PROJECTION].numpy()
  n = len(v1)
  return p[:n], p[n:], t[:n], t[n:]


def _loss_bound(name, objective, inputs, replicas):
  """loss_bounds' replay of `name`'s float32 loss on float64 inputs (cast to float32)."""
  c = objective.config
  if name == "simclr":
    return loss_bounds.nt_xent(*inputs, c.temperature, replicas, rounded=True)
  if name == "barlow_twins":
    return loss_bounds.barlow_twins(*inputs, c.lambda_offdiag, replicas, rounded=True)
  if name == "relic":
    return loss_bounds.relic(*inputs, c.temperature, c.alpha, replicas, rounded=True)
  if name == "moco_v2":
    q, k, queue = inputs
    return loss_bounds.moco(q, k, queue, c.temperature, replicas, rounded=True, normalize=True)
  return loss_bounds.byol(*inputs, replicas=replicas, rounded=True)


@pytest.mark.parametrize("name", list(SMALL))
def test_two_replicas_equal_one(name):
  """Per-replica losses sum to the whole-batch loss (sync BN, global negatives).

  The networks run in float64, so the only float32 arithmetic left is the
  loss function's (it casts its inputs to float32), whose rounding
  `loss_bounds` bounds from the actual projections: the two sides may differ
  by the sum of the one-replica and two-replica bounds. Summing float32
  per-replica losses is not bit-stable, so equality to the last bit is not
  what is tested; the split into replicas is.
  """
  strategy = two_replicas.strategy()
  encoder, objective = _build(name, strategy, "float64")
  v1, v2 = (x.astype(np.float64) for x in _views())
  single, single_metrics, _ = objective.compute_loss(
    encoder, tf.constant(v1), tf.constant(v2), True
  )
  n = len(v1) // 2
  split = lambda x: strategy.experimental_distribute_values_from_function(
    lambda c: tf.constant(x[c.replica_id_in_sync_group * n : (c.replica_id_in_sync_group + 1) * n])
  )

  @tf.function
  def run(a, b):
    return strategy.run(lambda a, b: objective.compute_loss(encoder, a, b, True)[:2], args=(a, b))

  loss, metrics = run(split(v1), split(v2))
  total = sum(x.numpy() for x in strategy.experimental_local_results(loss))
  assert np.isfinite(total)
  inputs = _loss_inputs(name, objective, encoder, tf.constant(v1), tf.constant(v2))
  one, two = (_loss_bound(name, objective, inputs, r) for r in (1, 2))
  assert_within(total, single.numpy(), SAFETY * (one["loss"].e + two["loss"].e), name)
  metric_bound = SAFETY * (one["metric_loss"].e + two["metric_loss"].e)
  for x in strategy.experimental_local_results(metrics["loss"]):
    assert_within(x.numpy(), single_metrics["loss"].numpy(), metric_bound, f"{name} metric")


def _train_step(objective, encoder, optimizer, strategy):
  variables = encoder.trainable_variables + [
    v for net in objective.trainable_networks for v in net.trainable_variables
  ]
  with strategy.scope():
    optimizer.build(variables)

  @tf.function
  def step(a, b):
    def fn(a, b):
      with tf.GradientTape() as tape:
        loss, metrics, _ = objective.compute_loss(encoder, a, b, True)
      optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables, strict=True))
      objective.after_step()
      return metrics

    return strategy.run(fn, args=(a, b))

  return step


def test_moco_queue_and_momentum_update_step_by_step():
  """Queue rows and key-network EMA after each step; the networks run in float64.

  The keys enter the float32 queue through `tf.math.l2_normalize` in float32
  (bounded by replaying it on the float64 projections); the EMA runs in
  float64 with the momentum rounded to float32 by `tf.cast` (|dm| <= u m).
  """
  strategy = two_replicas.strategy()
  encoder, moco = _build("moco_v2", strategy, "float64")
  with strategy.scope():
    opt = keras.optimizers.SGD(0.5)
  step = _train_step(moco, encoder, opt, strategy)
  m, size = moco.config.momentum, moco.config.queue_size
  n = 4
  for s in range(4):  # 4 steps x 8 keys wrap around the 12-slot queue
    v1, v2 = (x.astype(np.float64) for x in _views(seed=s))
    key_before = [w.numpy() for w in moco.key_encoder.weights]
    queue_before = moco.queue.numpy()
    pointer_before = int(moco.queue_pointer.numpy())
    # Expected keys: the key networks *before* their update, on view 2.
    k_raw = moco.key_head(moco.key_encoder(v2, training=True)["embedding"], training=True)
    k_raw = k_raw[heads.PROJECTION].numpy()
    k = k_raw / np.linalg.norm(k_raw, axis=1, keepdims=True)
    split = lambda x: strategy.experimental_distribute_values_from_function(
      lambda c, x=x: tf.constant(
        x[c.replica_id_in_sync_group * n : (c.replica_id_in_sync_group + 1) * n]
      )
    )
    step(split(v1), split(v2))
    expected_queue = queue_before.copy().astype(np.float64)
    queue_bound = np.zeros_like(expected_queue)  # rows not written must not change at all
    key_bound = SAFETY * l2_normalize(Bounded.rounded(k_raw)).e
    for i in range(8):
      expected_queue[(pointer_before + i) % size] = k[i]
      queue_bound[(pointer_before + i) % size] = key_bound[i]
    assert_within(moco.queue.numpy(), expected_queue, queue_bound, f"queue after step {s}")
    assert int(moco.queue_pointer.numpy()) == (pointer_before + 8) % size
    for kb, kw, ow in zip(key_before, moco.key_encoder.weights, encoder.weights, strict=True):
      o = ow.numpy()
      # float32 momentum: |dm| <= u m on (kb - o); three float64 roundings of 2^-53 each.
      bound = SAFETY * (U32 * m * np.abs(kb - o) + 3 * 2.0**-53 * (np.abs(kb) + np.abs(o)))
      assert_within(kw.numpy(), m * kb + (1 - m) * o, bound, f"EMA of {kw.path}")
    for kw in moco.key_encoder.weights:  # replicas stay in sync
      a, b = (x.numpy() for x in strategy.experimental_local_results(kw.value))
      np.testing.assert_array_equal(a, b)


def _byol_momentum_bound(base, k, total):
  """byol_momentum in float32: 1 - fl(1 - base) (cos(fl(pi) k / K) + 1) / 2."""
  angle = Bounded.rounded(np.pi) * float(k) / float(total)
  return 1.0 - Bounded.rounded(1.0 - base) * (angle.cos() + 1.0) / 2.0


def test_byol_ema_step_by_step():
  strategy = two_replicas.strategy()
  encoder, byol = _build("byol", strategy)
  with strategy.scope():
    opt = keras.optimizers.SGD(0.5)
  step = _train_step(byol, encoder, opt, strategy)
  n = 4
  pairs = list(zip(byol.target_encoder.weights, encoder.weights, strict=True)) + list(
    zip(byol.target_projector.weights, byol.projector.weights, strict=True)
  )
  for s in range(3):
    before = [t.numpy() for t, _ in pairs]
    v1, v2 = _views(seed=s)
    split = lambda x: strategy.experimental_distribute_values_from_function(
      lambda c, x=x: tf.constant(
        x[c.replica_id_in_sync_group * n : (c.replica_id_in_sync_group + 1) * n]
      )
    )
    metrics = step(split(v1), split(v2))
    tau = 1 - (1 - 0.996) * (np.cos(np.pi * s / 10) + 1) / 2
    tau_f32 = _byol_momentum_bound(0.996, s, 10)
    assert_within(
      strategy.experimental_local_results(metrics["target_momentum"])[0].numpy(),
      tau,
      SAFETY * tau_f32.e,
      "target momentum",
    )
    assert int(byol.step.numpy()) == s + 1
    for (t, o), tb in zip(pairs, before, strict=True):
      if o.trainable:
        # float32 EMA m tb + (1 - m) o with m = tau_f32 (already rounded), replayed.
        ema = tau_f32 * Bounded.exact(tb) + (1.0 - tau_f32) * Bounded.exact(o.numpy())
        assert_within(t.numpy(), tau * tb + (1 - tau) * o.numpy(), SAFETY * ema.e, t.path)
    # The online network moved, so the target must differ from it by far more than rounding
    # (np.allclose's default rtol 1e-5 is 168 u).
    assert any(not np.allclose(t.numpy(), o.numpy()) for t, o in pairs if o.trainable)
