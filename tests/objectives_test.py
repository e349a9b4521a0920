"""The Objective interface: registry, distributed equivalence, MoCo queue and EMA steps.

A tiny stand-in encoder is used here (the encoder is not under test); the real
BiT encoder is exercised in pretrain_objectives_test.py.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf
import two_replicas

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


def _build(name, strategy):
  keras.utils.set_random_seed(1)
  with strategy.scope():
    encoder = _encoder()
    objective = objectives.get(name, **SMALL[name])
    objective.build(encoder, 6)
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
  np.testing.assert_allclose(out[heads.PROJECTION].numpy(), h, rtol=1e-5, atol=1e-6)
  sel = heads.build_projection_head(6, num_layers=3, output_dim=4, hidden_dim=7, ft_proj_selector=2)
  assert sel(x)[heads.FINETUNE_FEATURES].shape == (5, 7)
  with pytest.raises(ValueError):
    heads.build_projection_head(6, num_layers=2, ft_proj_selector=3)


@pytest.mark.parametrize("name", list(SMALL))
def test_two_replicas_equal_one(name):
  """Per-replica losses sum to the whole-batch loss (sync BN, global negatives)."""
  strategy = two_replicas.strategy()
  encoder, objective = _build(name, strategy)
  v1, v2 = _views()
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
  np.testing.assert_allclose(total, single.numpy(), rtol=1e-5, atol=1e-6)
  for x in strategy.experimental_local_results(metrics["loss"]):
    np.testing.assert_allclose(x.numpy(), single_metrics["loss"].numpy(), rtol=1e-5, atol=1e-6)


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
  strategy = two_replicas.strategy()
  encoder, moco = _build("moco_v2", strategy)
  with strategy.scope():
    opt = keras.optimizers.SGD(0.5)
  step = _train_step(moco, encoder, opt, strategy)
  m, size = moco.config.momentum, moco.config.queue_size
  n = 4
  for s in range(4):  # 4 steps x 8 keys wrap around the 12-slot queue
    v1, v2 = _views(seed=s)
    key_before = [w.numpy() for w in moco.key_encoder.weights]
    queue_before = moco.queue.numpy()
    pointer_before = int(moco.queue_pointer.numpy())
    # Expected keys: the key networks *before* their update, on view 2.
    k = moco.key_head(moco.key_encoder(v2, training=True)["embedding"], training=True)
    k = k[heads.PROJECTION].numpy().astype(np.float64)
    k /= np.linalg.norm(k, axis=1, keepdims=True)
    split = lambda x: strategy.experimental_distribute_values_from_function(
      lambda c, x=x: tf.constant(
        x[c.replica_id_in_sync_group * n : (c.replica_id_in_sync_group + 1) * n]
      )
    )
    step(split(v1), split(v2))
    expected_queue = queue_before.copy()
    for i in range(8):
      expected_queue[(pointer_before + i) % size] = k[i]
    np.testing.assert_allclose(moco.queue.numpy(), expected_queue, rtol=1e-4, atol=1e-5)
    assert int(moco.queue_pointer.numpy()) == (pointer_before + 8) % size
    for kb, kw, ow in zip(key_before, moco.key_encoder.weights, encoder.weights, strict=True):
      np.testing.assert_allclose(kw.numpy(), m * kb + (1 - m) * ow.numpy(), rtol=1e-5, atol=1e-6)
    for kw in moco.key_encoder.weights:  # replicas stay in sync
      a, b = (x.numpy() for x in strategy.experimental_local_results(kw.value))
      np.testing.assert_array_equal(a, b)


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
    np.testing.assert_allclose(
      strategy.experimental_local_results(metrics["target_momentum"])[0].numpy(), tau, rtol=1e-6
    )
    assert int(byol.step.numpy()) == s + 1
    for (t, o), tb in zip(pairs, before, strict=True):
      if o.trainable:
        np.testing.assert_allclose(
          t.numpy(), tau * tb + (1 - tau) * o.numpy(), rtol=1e-5, atol=1e-6
        )
    # The online network moved, so the target must differ from it.
    assert any(not np.allclose(t.numpy(), o.numpy()) for t, o in pairs if o.trainable)
