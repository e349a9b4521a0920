"""LARS against a float64 NumPy reference of the update."""

import keras
import numpy as np
import pytest
import tensorflow as tf
import two_replicas

from remedis_tf.models import norm_and_bias_variables
from remedis_tf.optim import LARS, WarmupCosine

LR, MU, WD, EETA = 0.5, 0.9, 1e-2, 1e-3


def _numpy_lars(weights, grads_per_step, lrs, use_decay, use_adapt, nesterov=False):
  """Reference LARS (classic momentum) in float64; returns final weights."""
  w = [np.array(x, np.float64) for x in weights]
  v = [np.zeros_like(x) for x in w]
  for grads, lr in zip(grads_per_step, lrs, strict=True):
    for i, g in enumerate(grads):
      g = np.array(g, np.float64)
      if use_decay[i]:
        g = g + WD * w[i]
      ratio = 1.0
      if use_adapt[i]:
        wn, gn = np.linalg.norm(w[i]), np.linalg.norm(g)
        ratio = EETA * wn / gn if wn > 0 and gn > 0 else 1.0
      v[i] = MU * v[i] + lr * ratio * g
      w[i] = w[i] - (MU * v[i] + lr * ratio * g if nesterov else v[i])
  return w


class _Tagged(keras.layers.Layer):
  """A custom normalisation layer (named by type in extra_norm_types), nested in a custom block."""

  def build(self, input_shape):
    self.gamma = self.add_weight(shape=(input_shape[-1],), initializer="ones", name="gamma")

  def call(self, x):
    return x * self.gamma


class _Block(keras.layers.Layer):
  def __init__(self, **kwargs):
    super().__init__(**kwargs)
    self.dense = keras.layers.Dense(3, name="proj")
    self.norm = _Tagged(name="tagged_norm")
    self.items = [keras.layers.Dense(3, use_bias=False, name="out")]

  def build(self, input_shape):
    self.dense.build(input_shape)
    self.norm.build((None, 3))
    self.items[0].build((None, 3))

  def call(self, x):
    return self.items[0](self.norm(self.dense(x)))


def _model():
  keras.utils.set_random_seed(0)
  inputs = keras.Input((4,))
  x = keras.layers.Dense(3)(inputs)
  x = keras.layers.BatchNormalization()(x)
  x = _Block(name="block")(x)
  return keras.Model(inputs, x)


def _grads(model, steps, seed=1):
  rng = np.random.default_rng(seed)
  return [
    [rng.normal(size=v.shape).astype(np.float32) for v in model.trainable_variables]
    for _ in range(steps)
  ]


def test_selects_norm_and_bias_variables_by_role():
  model = _model()
  dense, bn, block = model.layers[1], model.layers[2], model.layers[3]
  selected = norm_and_bias_variables(model, extra_norm_types=(_Tagged,))
  expected = [dense.bias, *bn.weights, block.dense.bias, block.norm.gamma]
  assert {id(v) for v in selected} == {id(v) for v in expected}
  assert len(selected) == len(expected)
  assert not any(v is block.items[0].kernel or v is dense.kernel for v in selected)


@pytest.mark.parametrize("exclude", [False, True])
@pytest.mark.parametrize("nesterov", [False, True])
def test_steps_match_numpy(exclude, nesterov):
  model = _model()
  variables = model.trainable_variables
  excluded = norm_and_bias_variables(model, extra_norm_types=(_Tagged,)) if exclude else None
  opt = LARS(
    LR,
    momentum=MU,
    weight_decay=WD,
    eeta=EETA,
    nesterov=nesterov,
    exclude_from_weight_decay=excluded,
  )
  # One variable starts at zero to exercise the ratio = 1 branch.
  variables[-1].assign(np.zeros(variables[-1].shape, np.float32))
  start = [v.numpy() for v in variables]
  grads = _grads(model, 3)
  for g in grads:
    opt.apply_gradients(zip([tf.constant(x) for x in g], variables, strict=True))
  excluded_ids = {id(v) for v in (excluded or [])}
  flags = [id(v) not in excluded_ids for v in variables]
  expected = _numpy_lars(start, grads, [LR] * 3, flags, flags, nesterov)
  for v, e in zip(variables, expected, strict=True):
    np.testing.assert_allclose(v.numpy(), e, rtol=1e-5, atol=1e-7)
  if exclude:  # the exclusion must actually change something
    plain = _numpy_lars(start, grads, [LR] * 3, [True] * len(flags), [True] * len(flags), nesterov)
    assert any(not np.allclose(p, e) for p, e in zip(plain, expected, strict=True))


def test_separate_adaptation_exclusion_and_predicate():
  model = _model()
  variables = model.trainable_variables
  kernel = variables[0]
  opt = LARS(
    LR,
    momentum=MU,
    weight_decay=WD,
    eeta=EETA,
    exclude_from_weight_decay=lambda v: v is kernel,
    exclude_from_layer_adaptation=[],
  )
  start = [v.numpy() for v in variables]
  grads = _grads(model, 2)
  for g in grads:
    opt.apply_gradients(zip([tf.constant(x) for x in g], variables, strict=True))
  decay = [v is not kernel for v in variables]
  expected = _numpy_lars(start, grads, [LR] * 2, decay, [True] * len(variables))
  for v, e in zip(variables, expected, strict=True):
    np.testing.assert_allclose(v.numpy(), e, rtol=1e-5, atol=1e-7)


def test_jit_compile_matches_numpy():
  model = _model()
  variables = model.trainable_variables
  excluded = norm_and_bias_variables(model, extra_norm_types=(_Tagged,))
  opt = LARS(LR, momentum=MU, weight_decay=WD, eeta=EETA, exclude_from_weight_decay=excluded)
  opt.build(variables)  # slots must exist before the XLA-compiled step
  start = [v.numpy() for v in variables]
  grads = _grads(model, 2)

  @tf.function(jit_compile=True)
  def apply(g):
    opt.apply_gradients(zip(g, variables, strict=True))

  for g in grads:
    apply([tf.constant(x) for x in g])
  flags = [id(v) not in {id(x) for x in excluded} for v in variables]
  expected = _numpy_lars(start, grads, [LR] * 2, flags, flags)
  for v, e in zip(variables, expected, strict=True):
    np.testing.assert_allclose(v.numpy(), e, rtol=1e-5, atol=1e-7)


def test_schedule_and_two_replicas():
  """Under MirroredStrategy per-replica gradients are summed; lr follows the schedule."""
  strategy = two_replicas.strategy()
  schedule = WarmupCosine(0.4, batch_size=256, warmup_steps=2, total_steps=6)
  with strategy.scope():
    model = _model()
    variables = model.trainable_variables
    opt = LARS(
      schedule,
      momentum=MU,
      weight_decay=WD,
      eeta=EETA,
      exclude_from_weight_decay=norm_and_bias_variables(model, extra_norm_types=(_Tagged,)),
    )
    # Keras optimizers must be built before their first distributed step.
    opt.build(variables)
  start = [v.numpy() for v in variables]
  grads = [_grads(model, 3, seed=2), _grads(model, 3, seed=3)]

  def apply(g):
    opt.apply_gradients(zip(g, variables, strict=True))

  @tf.function
  def step(per_replica):
    strategy.run(apply, args=(per_replica,))

  for s in range(3):
    per_replica = strategy.experimental_distribute_values_from_function(
      lambda ctx, s=s: [tf.constant(x) for x in grads[ctx.replica_id_in_sync_group][s]]
    )
    step(per_replica)
  excluded = {id(v) for v in norm_and_bias_variables(model, extra_norm_types=(_Tagged,))}
  flags = [id(v) not in excluded for v in variables]
  summed = [
    [a + b for a, b in zip(g0, g1, strict=True)] for g0, g1 in zip(grads[0], grads[1], strict=True)
  ]
  lrs = [float(schedule(s)) for s in range(3)]
  assert lrs[0] == 0.0 and lrs[1] == pytest.approx(0.2)
  expected = _numpy_lars(start, summed, lrs, flags, flags)
  for v, e in zip(variables, expected, strict=True):
    np.testing.assert_allclose(v.numpy(), e, rtol=1e-5, atol=1e-6)


def test_serialization_round_trip():
  opt = LARS(
    WarmupCosine(0.3, 512, 10, 100, "sqrt"),
    momentum=0.8,
    weight_decay=1e-6,
    eeta=2e-3,
    nesterov=True,
  )
  restored = keras.optimizers.deserialize(keras.optimizers.serialize(opt))
  assert isinstance(restored, LARS)
  assert (restored.momentum, restored.lars_weight_decay, restored.eeta, restored.nesterov) == (
    0.8,
    1e-6,
    2e-3,
    True,
  )
  assert isinstance(restored._learning_rate, WarmupCosine)
  assert restored._learning_rate.get_config() == opt._learning_rate.get_config()
