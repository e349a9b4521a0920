"""LARS against a float64 NumPy reference of the update.

Tolerances: `_float32_lars_error` replays the optimizer's float32 operations
(constants rounded to float32, norms as sums of squares, sqrt of 2 ulp) on
`float32_bounds.Bounded` values and bounds their rounding error per weight;
the tests allow SAFETY (2) times that bound.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf
import two_replicas
from float32_bounds import SAFETY, Bounded, assert_within

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


def _float32_lars_error(
  weights, grads_per_step, lrs, use_decay, use_adapt, nesterov=False, rounded_grads=False
):
  """Error bounds (one array per variable) of LARS.update_step's float32 arithmetic.

  Args:
    weights, grads_per_step, use_decay, use_adapt, nesterov: as `_numpy_lars`.
    lrs: one `Bounded` learning rate per step (its float32 value's error).
    rounded_grads: gradients are float64 values rounded once to float32 (a
      float32 all-reduce sum of per-replica gradients), not exact float32.

  Returns:
    [bound on |float32 weight - exact weight|] per variable, after all steps.
  """
  w = [Bounded.exact(np.asarray(x, np.float32)) for x in weights]
  v = [Bounded.exact(np.zeros(np.shape(x))) for x in weights]
  mu, wd, eeta = (Bounded.rounded(c) for c in (MU, WD, EETA))
  for grads, lr in zip(grads_per_step, lrs, strict=True):
    for i, g in enumerate(grads):
      g = Bounded.rounded(g) if rounded_grads else Bounded.exact(np.asarray(g, np.float32))
      if use_decay[i]:
        g = g + wd * w[i]
      scaled_lr = lr
      if use_adapt[i]:
        wn, gn = w[i].square().sum().sqrt(), g.square().sum().sqrt()
        if wn.v > 0 and gn.v > 0:
          scaled_lr = lr * (eeta * wn / gn)
      v[i] = mu * v[i] + scaled_lr * g
      w[i] = w[i] - (mu * v[i] + scaled_lr * g if nesterov else v[i])
  return [x.e for x in w]


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
  bounds = _float32_lars_error(start, grads, [Bounded.exact(LR)] * 3, flags, flags, nesterov)
  for v, e, b in zip(variables, expected, bounds, strict=True):
    assert_within(v.numpy(), e, SAFETY * b, v.path)
  if exclude:  # the exclusion must actually change something, by far more than rounding
    plain = _numpy_lars(start, grads, [LR] * 3, [True] * len(flags), [True] * len(flags), nesterov)
    assert any(
      np.any(np.abs(p - e) > SAFETY * b) for p, e, b in zip(plain, expected, bounds, strict=True)
    )


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
  adapt = [True] * len(variables)
  expected = _numpy_lars(start, grads, [LR] * 2, decay, adapt)
  bounds = _float32_lars_error(start, grads, [Bounded.exact(LR)] * 2, decay, adapt)
  for v, e, b in zip(variables, expected, bounds, strict=True):
    assert_within(v.numpy(), e, SAFETY * b, v.path)


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
  bounds = _float32_lars_error(start, grads, [Bounded.exact(LR)] * 2, flags, flags)
  for v, e, b in zip(variables, expected, bounds, strict=True):
    assert_within(v.numpy(), e, SAFETY * b, v.path)


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
    [a.astype(np.float64) + b for a, b in zip(g0, g1, strict=True)]
    for g0, g1 in zip(grads[0], grads[1], strict=True)
  ]
  # Closed form: peak 0.4 * 256 / 256, warmup 2 steps: 0, 0.2, then 0.4 * 0.5 * (1 + cos 0).
  # In float32: 0 * x = 0; fl(0.4) / 2 = fl(0.2); fl(0.2) * 2 = fl(0.4) (halving is exact).
  lrs = [0.0, 0.2, 0.4]
  assert [float(schedule(s)) for s in range(3)] == [float(np.float32(x)) for x in lrs]
  expected = _numpy_lars(start, summed, lrs, flags, flags)
  lr_bounds = [Bounded.exact(0.0), Bounded.rounded(0.2), Bounded.rounded(0.4)]
  bounds = _float32_lars_error(start, summed, lr_bounds, flags, flags, rounded_grads=True)
  for v, e, b in zip(variables, expected, bounds, strict=True):
    assert_within(v.numpy(), e, SAFETY * b, v.path)


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
