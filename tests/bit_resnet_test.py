"""Tests for remedis_tf.models.bit_resnet (BiT ResNetV2 encoders).

The forward pass is checked against an independent float64 NumPy
implementation of BiT written below from BiT's definition
(google-research/big_transfer); it reads the official `.npz` layout and shares
no code with remedis_tf.models.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf
import two_replicas
from float32_bounds import (
  BF16_U,
  SIGMAS,
  bit_reduction_sizes,
  bit_tiny_bound,
  statistical_relative_bound,
)

from remedis_tf import models
from remedis_tf.models import bit_checkpoint, bit_resnet

# ---------------------------------------------------------------------------
# Independent NumPy reference (float64).
# ---------------------------------------------------------------------------

GROUPS = 32
GN_EPS = 1e-5
WS_EPS = 1e-10


def standardize(kernel: np.ndarray) -> np.ndarray:
  """HWIO kernel -> (k - mean) / sqrt(var + 1e-10), moments over H, W, I."""
  mean = kernel.mean(axis=(0, 1, 2), keepdims=True)
  var = kernel.var(axis=(0, 1, 2), keepdims=True)
  return (kernel - mean) / np.sqrt(var + WS_EPS)


def pad(x: np.ndarray, kernel_size: int) -> np.ndarray:
  """BiT's fixed padding: (k - 1) // 2 before, the rest after, zeros."""
  total = kernel_size - 1
  beg, end = total // 2, total - total // 2
  return np.pad(x, ((0, 0), (beg, end), (beg, end), (0, 0)))


def conv(x: np.ndarray, kernel: np.ndarray, stride: int = 1) -> np.ndarray:
  """VALID cross-correlation of NHWC x with an HWIO kernel, by explicit shifts."""
  kh, kw = kernel.shape[:2]
  n, h, w, _ = x.shape
  oh, ow = (h - kh) // stride + 1, (w - kw) // stride + 1
  out = np.zeros((n, oh, ow, kernel.shape[3]))
  for i in range(kh):
    for j in range(kw):
      patch = x[:, i : i + stride * (oh - 1) + 1 : stride, j : j + stride * (ow - 1) + 1 : stride]
      out += patch @ kernel[i, j]
  return out


def ws_conv(x: np.ndarray, kernel: np.ndarray, stride: int = 1, padded: bool = True) -> np.ndarray:
  if padded:
    x = pad(x, kernel.shape[0])
  return conv(x, standardize(kernel), stride)


def group_norm(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray) -> np.ndarray:
  n, h, w, c = x.shape
  g = x.reshape(n, h, w, GROUPS, c // GROUPS)
  mean = g.mean(axis=(1, 2, 4), keepdims=True)
  var = g.var(axis=(1, 2, 4), keepdims=True)
  return ((g - mean) / np.sqrt(var + GN_EPS)).reshape(n, h, w, c) * gamma + beta


def max_pool_3x3_s2(x: np.ndarray) -> np.ndarray:
  n, h, w, c = x.shape
  oh, ow = (h - 3) // 2 + 1, (w - 3) // 2 + 1
  out = np.full((n, oh, ow, c), -np.inf)
  for i in range(3):
    for j in range(3):
      out = np.maximum(out, x[:, i : i + 2 * (oh - 1) + 1 : 2, j : j + 2 * (ow - 1) + 1 : 2])
  return out


def bit_forward(weights: dict[str, np.ndarray], images: np.ndarray) -> dict[str, np.ndarray]:
  """BiT ResNetV2 forward pass from official checkpoint arrays.

  Args:
    weights: `.npz` contents (keys "resnet/...").
    images: (N, H, W, 3) in [0, 1].

  Returns:
    Dict with 'feature_map', 'embedding' and, if the file has a head, 'logits'.
  """
  w = {k: np.asarray(v, np.float64) for k, v in weights.items()}
  relu = lambda t: np.maximum(t, 0.0)  # noqa: E731
  x = np.asarray(images, np.float64) * 2.0 - 1.0
  x = ws_conv(x, w["resnet/root_block/standardized_conv2d/kernel"], stride=2)
  x = max_pool_3x3_s2(np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0))))
  block = 1
  while f"resnet/block{block}/unit01/a/standardized_conv2d/kernel" in w:
    unit = 1
    while (p := f"resnet/block{block}/unit{unit:02d}/") + "a/standardized_conv2d/kernel" in w:
      stride = 2 if (block > 1 and unit == 1) else 1
      y = relu(group_norm(x, w[p + "a/group_norm/gamma"], w[p + "a/group_norm/beta"]))
      shortcut = x
      if p + "a/proj/standardized_conv2d/kernel" in w:
        shortcut = ws_conv(y, w[p + "a/proj/standardized_conv2d/kernel"], stride, padded=False)
      y = ws_conv(y, w[p + "a/standardized_conv2d/kernel"])
      y = relu(group_norm(y, w[p + "b/group_norm/gamma"], w[p + "b/group_norm/beta"]))
      y = ws_conv(y, w[p + "b/standardized_conv2d/kernel"], stride)
      y = relu(group_norm(y, w[p + "c/group_norm/gamma"], w[p + "c/group_norm/beta"]))
      y = ws_conv(y, w[p + "c/standardized_conv2d/kernel"])
      x = y + shortcut
      unit += 1
    block += 1
  x = relu(group_norm(x, w["resnet/group_norm/gamma"], w["resnet/group_norm/beta"]))
  out = {"feature_map": x, "embedding": x.mean(axis=(1, 2))}
  if "resnet/head/conv2d/kernel" in w:
    out["logits"] = (
      out["embedding"] @ w["resnet/head/conv2d/kernel"][0, 0] + w["resnet/head/conv2d/bias"]
    )
  return out


# ---------------------------------------------------------------------------
# Helpers.
# ---------------------------------------------------------------------------


def _randomize(model: keras.Model, seed: int = 0) -> None:
  """Gives every variable a non-trivial value (GN gamma/beta, head included)."""
  rng = np.random.default_rng(seed)
  for v in model.weights:
    shape = tuple(v.shape)
    if v.path.endswith("gamma"):
      value = rng.uniform(0.5, 1.5, shape)
    elif v.path.endswith("beta") or v.path.endswith("bias"):
      value = rng.normal(0.0, 0.3, shape)
    else:
      value = rng.normal(0.0, 0.05, shape) + rng.normal(0.0, 0.05, shape[-1:])
    v.assign(value.astype(np.float32))


def _tiny_with_npz(tmp_path, num_classes=None, seed=0):
  model = models.build_bit_encoder(block_units=[1, 1, 1, 1], num_classes=num_classes)
  _randomize(model, seed)
  path = tmp_path / "tiny.npz"
  models.save_bit_checkpoint(model, path)
  with np.load(path) as data:
    weights = {k: data[k] for k in data.files}
  return model, weights


def _rel_err(got, want) -> float:
  got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
  return float(np.linalg.norm(got - want) / np.linalg.norm(want))


# Tolerances: float32 against the float64 reference may differ by the statistical float32
# bound of bit-tiny's reductions at that image size (float32_bounds.bit_tiny_bound: 6
# standard deviations of u sqrt(sum n / 2), about 4e-5 at 32-64 px).


# ---------------------------------------------------------------------------
# Forward pass against the reference.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
  "shape, contrast, training",
  [
    ((2, 64, 64, 3), 1.0, False),
    # In training, the last stages' small maps run as patches (or a strided slice)
    # times the kernel (weight_standardization.PATCHES_MAX_POSITIONS): the same sums.
    ((2, 64, 64, 3), 1.0, True),
    ((1, 48, 40, 3), 1.0, False),  # Not a multiple of 32: ceil(H / 32) output.
    ((1, 48, 40, 3), 1.0, True),  # Non-square small maps (3x2, 2x2) through the patches.
    ((1, 32, 32, 3), 1e-3, False),  # Low contrast: GN epsilon 1e-5 vs 1e-3 matters here.
  ],
)
def test_forward_matches_numpy_reference(tmp_path, shape, contrast, training):
  model, weights = _tiny_with_npz(tmp_path, num_classes=3)
  rng = np.random.default_rng(1)
  images = (0.5 + contrast * (rng.uniform(0, 1, shape) - 0.5)).astype(np.float32)
  got = model(images, training=training)
  want = bit_forward(weights, images)
  n, h, w, _ = shape
  assert got["feature_map"].shape == (n, -(-h // 32), -(-w // 32), 2048)
  assert got["embedding"].shape == (n, 2048)
  assert got["logits"].shape == (n, 3)
  bound = bit_tiny_bound(h, w)
  assert _rel_err(got["embedding"], want["embedding"]) < bound
  assert _rel_err(got["feature_map"], want["feature_map"]) < bound
  # The head adds one 2048-term dot product.
  head_bound = statistical_relative_bound(bit_reduction_sizes(height=h, width_px=w) + [2048])
  assert _rel_err(got["logits"], want["logits"]) < head_bound


def test_reference_is_sensitive_to_gn_epsilon(tmp_path):
  """The low-contrast case above would fail with Keras' default GN epsilon 1e-3."""
  global GN_EPS
  _, weights = _tiny_with_npz(tmp_path)
  images = (0.5 + 1e-3 * np.random.default_rng(1).uniform(-0.5, 0.5, (1, 32, 32, 3))).astype(
    np.float32
  )
  want = bit_forward(weights, images)["embedding"]
  saved, GN_EPS = GN_EPS, 1e-3
  try:
    other = bit_forward(weights, images)["embedding"]
  finally:
    GN_EPS = saved
  assert _rel_err(other, want) > 10 * bit_tiny_bound(32, 32)  # far outside the tolerance


def test_head_is_zero_initialised():
  model = models.build_bit_encoder(block_units=[1, 1, 1, 1], num_classes=4)
  out = model(np.random.default_rng(0).uniform(size=(1, 32, 32, 3)).astype(np.float32))
  np.testing.assert_array_equal(out["logits"], np.zeros((1, 4)))
  assert set(out) == {"feature_map", "embedding", "logits"}


def test_no_head_outputs():
  model = models.build_bit_encoder(block_units=[1, 1, 1, 1])
  assert set(model.output) == {"feature_map", "embedding"}


def test_gradients_reach_every_variable(tmp_path):
  model, _ = _tiny_with_npz(tmp_path)
  images = np.random.default_rng(2).uniform(size=(2, 32, 32, 3)).astype(np.float32)
  with tf.GradientTape() as tape:
    loss = tf.reduce_sum(tf.square(model(images, training=True)["embedding"]))
  grads = tape.gradient(loss, model.trainable_variables)
  assert len(grads) == len(model.weights)
  for v, g in zip(model.trainable_variables, grads, strict=True):
    assert g is not None, v.path
    assert np.all(np.isfinite(g)), v.path
    assert np.any(g != 0), v.path


def test_training_gradients_match_float64_finite_differences(tmp_path):
  """Gradients of the training forward pass (hand-written GroupNorm and weight
  standardization gradients; patches, strided-slice and matmul convolutions on
  the small maps) against central differences of the float64 NumPy reference.

  For a variable W with float32 gradient g, the reference's derivative along
  g_hat = g / |g| is <g_exact, g_hat>, which equals |g| when g is exact; any error
  e in g changes it by at most |e|. A wrong gradient (another direction or scale)
  moves it by about |g|.
  """
  model, weights = _tiny_with_npz(tmp_path)
  rng = np.random.default_rng(7)
  images = rng.uniform(size=(2, 64, 64, 3)).astype(np.float32)
  mix = rng.normal(size=(2, 2, 2, 2048))  # the loss: sum(feature_map * mix)
  with tf.GradientTape() as tape:
    loss = tf.reduce_sum(model(images, training=True)["feature_map"] * mix.astype(np.float32))
  grads = dict(zip(_npz_keys(model), tape.gradient(loss, model.trainable_variables), strict=True))

  def reference_loss(w):
    return float(np.sum(bit_forward(w, images)["feature_map"] * mix))

  # A gradient is the forward chain, the backward chain (the same reductions,
  # transposed) and the weight gradient's sum over batch x positions (at most
  # 2 x 32 x 32, the root convolution's output): twice bit-tiny's reductions plus
  # that sum, in the statistical model of float32_bounds. The central difference's
  # step is 1e-7 |W|: float64 rounding of the loss (about 1e-14 of its 1.6e4 terms'
  # magnitude) over that step is about 1e-8 of |g|; larger steps cross ReLU and
  # max-pool kinks (at 1e-5 |W| the difference moved by up to 8e-4 relative).
  bound = statistical_relative_bound(2 * bit_reduction_sizes(height=64, width_px=64) + [2048])
  for key in (
    "resnet/root_block/standardized_conv2d/kernel",  # gradient through every layer above
    "resnet/block1/unit01/b/standardized_conv2d/kernel",  # 3x3/1 convolution, 16x16
    "resnet/block3/unit01/a/proj/standardized_conv2d/kernel",  # 1x1/2 convolution, 4x4
    "resnet/block3/unit01/b/standardized_conv2d/kernel",  # 3x3/2 as patches, 4x4
    "resnet/block4/unit01/a/proj/standardized_conv2d/kernel",  # 1x1/2 as a slice, 2x2
    "resnet/block4/unit01/b/standardized_conv2d/kernel",  # 3x3/2 as patches, 2x2
    "resnet/block4/unit01/c/group_norm/gamma",
    "resnet/block2/unit01/a/group_norm/beta",
  ):
    g = np.asarray(grads[key], np.float64)
    norm = np.linalg.norm(g)
    step = 1e-7 * np.linalg.norm(weights[key].astype(np.float64))
    direction = g / norm
    plus, minus = dict(weights), dict(weights)
    plus[key] = weights[key].astype(np.float64) + step * direction
    minus[key] = weights[key].astype(np.float64) - step * direction
    derivative = (reference_loss(plus) - reference_loss(minus)) / (2 * step)
    assert abs(derivative - norm) <= bound * norm, (key, derivative, norm, bound)


def _npz_keys(model: keras.Model) -> list[str]:
  """The `.npz` key of each trainable variable, in model.trainable_variables order."""
  slots = bit_checkpoint.checkpoint_slots(model)
  keys = {id(slot.variable): key for key, slot in slots.items()}
  return [keys[id(v)] for v in model.trainable_variables]


# ---------------------------------------------------------------------------
# Architecture sizes.
# ---------------------------------------------------------------------------


def _expected_params(block_units, width, num_classes=0):
  """Parameter count from BiT's definition, counted independently of Keras."""
  total = 7 * 7 * 3 * 64 * width
  in_ch = 64 * width
  for b, units in enumerate(block_units):
    mid = 64 * width * 2**b
    out = 4 * mid
    for u in range(units):
      stride = 2 if (b > 0 and u == 0) else 1
      total += 2 * in_ch + in_ch * mid  # a: GN + 1x1
      total += 2 * mid + 9 * mid * mid  # b: GN + 3x3
      total += 2 * mid + mid * out  # c: GN + 1x1
      if stride != 1 or in_ch != out:
        total += in_ch * out  # projection
      in_ch = out
  total += 2 * in_ch  # final GN
  if num_classes:
    total += in_ch * num_classes + num_classes
  return total


def test_r50x1_embedding_and_param_count():
  model = models.build_encoder_by_name("bit-r50x1")
  assert model.output["embedding"].shape == (None, 2048)
  # BiT R50x1 backbone: 23,500,352; with the ImageNet-1k head 25,549,352
  # (timm resnetv2_50x1_bit: 25.55M).
  assert model.count_params() == 23_500_352 == _expected_params((3, 4, 6, 3), 1)
  with_head = models.build_bit_encoder(50, 1, num_classes=1000)
  assert with_head.count_params() == 25_549_352


@pytest.mark.slow
def test_r152x2_embedding_and_param_count():
  model = models.build_encoder_by_name("bit-r152x2", num_classes=1000)
  assert model.output["embedding"].shape == (None, 4096)
  # BiT R152x2: 232,238,208 backbone + 4,097,000 head = 236,335,208
  # (timm resnetv2_152x2_bit: 236.34M).
  assert model.count_params() == 236_335_208 == _expected_params((3, 8, 36, 3), 2, 1000)


@pytest.mark.parametrize("block_units, width", [((1, 1, 1, 1), 1), ((2, 1), 2), ((1, 2, 1, 1), 1)])
def test_custom_tables_param_count(block_units, width):
  model = models.build_bit_encoder(block_units=block_units, width=width, num_classes=7)
  assert model.count_params() == _expected_params(block_units, width, 7)


def test_stage_table():
  table = bit_resnet.stage_table((3, 4, 6, 3), 2)
  assert [(s.units, s.stride, s.width) for s in table] == [
    (3, 1, 128),
    (4, 2, 256),
    (6, 2, 512),
    (3, 2, 1024),
  ]


@pytest.mark.parametrize(
  "name, expected",
  [
    ("bit-r50x1", (50, 1, None)),
    ("bit-r152x2", (152, 2, None)),
    ("BiT-R101x3", (101, 3, None)),
    ("bit-tiny", (14, 1, (1, 1, 1, 1))),
  ],
)
def test_parse_encoder_name(name, expected):
  assert models.parse_encoder_name(name) == expected


@pytest.mark.parametrize("name", ["bit-r34x1", "resnet50", "bit-r50x0", "bit-r50"])
def test_parse_encoder_name_rejects(name):
  with pytest.raises(ValueError):
    models.parse_encoder_name(name)


# ---------------------------------------------------------------------------
# Compilation, mixed precision, distribution.
# ---------------------------------------------------------------------------


@pytest.mark.slow
def test_tf_function_and_jit_compile_match_eager(tmp_path):
  model, weights = _tiny_with_npz(tmp_path)
  images = np.random.default_rng(3).uniform(size=(2, 32, 32, 3)).astype(np.float32)
  want = bit_forward(weights, images)["embedding"]
  graph = tf.function(lambda x: model(x)["embedding"])
  xla = tf.function(lambda x: model(x)["embedding"], jit_compile=True)
  assert _rel_err(graph(images), want) < bit_tiny_bound(32, 32)
  assert _rel_err(xla(images), want) < bit_tiny_bound(32, 32)
  # Dynamic spatial size through one traced function.
  dyn = tf.function(
    lambda x: model(x)["feature_map"],
    input_signature=[tf.TensorSpec((None, None, None, 3), tf.float32)],
  )
  assert dyn(images).shape == (2, 1, 1, 2048)
  assert dyn(np.zeros((1, 64, 96, 3), np.float32)).shape == (1, 2, 3, 2048)


@pytest.mark.slow
def test_mixed_bfloat16_close_to_float32(tmp_path):
  _, weights = _tiny_with_npz(tmp_path)
  images = np.random.default_rng(4).uniform(size=(2, 64, 64, 3)).astype(np.float32)
  want = bit_forward(weights, images)["embedding"]
  keras.mixed_precision.set_global_policy("mixed_bfloat16")
  try:
    model = models.build_bit_encoder(block_units=[1, 1, 1, 1])
    models.load_bit_checkpoint(model, tmp_path / "tiny.npz")
    out = model(images)
    xla = tf.function(lambda x: model(x)["embedding"], jit_compile=True)(images)
  finally:
    keras.mixed_precision.set_global_policy("float32")
  assert all(v.dtype == "float32" for v in model.weights)
  conv = model.get_layer("block1").unit_layers[0].b_standardized_conv2d
  assert conv.compute_dtype == "bfloat16"
  assert out["embedding"].dtype == tf.float32
  assert out["feature_map"].dtype == tf.float32
  # bfloat16 (unit roundoff 2^-9): on the main path the image, every convolution's weights and
  # output, every GroupNorm's output and every residual sum are rounded to 8 bits: 3 + 4 units
  # x (3 x 2 + 3 + 1) + final GroupNorm and pool = 45 roundings, each a uniform relative error
  # of std 2^-9 / sqrt(3), independent (GroupNorm re-normalises between them); SIGMAS
  # deviations of their quadrature sum, plus the float32 bound.
  bound = SIGMAS * BF16_U * np.sqrt(45 / 3) + bit_tiny_bound(64, 64)
  assert _rel_err(out["embedding"], want) < bound
  assert _rel_err(xla, want) < bound


@pytest.mark.slow
def test_builds_and_runs_under_mirrored_strategy(tmp_path):
  _, weights = _tiny_with_npz(tmp_path)
  strategy = two_replicas.strategy()  # one MirroredStrategy per process (see two_replicas)
  assert strategy.num_replicas_in_sync == 2
  with strategy.scope():
    model = models.build_bit_encoder(block_units=[1, 1, 1, 1])
  assert all(isinstance(v.value, tf.distribute.DistributedValues) for v in model.weights)
  models.load_bit_checkpoint(model, tmp_path / "tiny.npz")
  images = np.random.default_rng(5).uniform(size=(4, 32, 32, 3)).astype(np.float32)
  dataset = tf.data.Dataset.from_tensor_slices(images).batch(4)
  batch = next(iter(strategy.experimental_distribute_dataset(dataset)))

  @tf.function
  def step(x):
    def replica_fn(x):
      with tf.GradientTape() as tape:
        emb = model(x, training=True)["embedding"]
        loss = tf.reduce_sum(emb)
      grads = tape.gradient(loss, model.trainable_variables)
      return emb, tf.add_n([tf.reduce_sum(g) for g in grads])

    return strategy.run(replica_fn, args=(x,))

  emb, _ = step(batch)
  got = np.concatenate([t.numpy() for t in strategy.experimental_local_results(emb)])
  assert _rel_err(got, bit_forward(weights, images)["embedding"]) < bit_tiny_bound(32, 32)


def test_keras_serialization_round_trip(tmp_path):
  model, _ = _tiny_with_npz(tmp_path, num_classes=2)
  path = tmp_path / "tiny.keras"
  model.save(path)
  restored = keras.models.load_model(path)
  images = np.random.default_rng(6).uniform(size=(1, 32, 32, 3)).astype(np.float32)
  # The same layers and weights run the same eager kernels on the same input: bit-identical.
  for key in ("embedding", "logits"):
    np.testing.assert_array_equal(restored(images)[key], model(images)[key])
