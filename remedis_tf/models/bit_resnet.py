"""BiT ResNetV2 encoders (Kolesnikov et al., "Big Transfer", ECCV 2020) in Keras 3.

Architecture, as in google-research/big_transfer (bit_tf2, bit_jax, bit_pytorch):

* root_block: 7x7 stride-2 weight-standardized conv (explicit pad 3/3, VALID),
  zero-pad 1, 3x3 stride-2 max-pool (VALID). No norm or ReLU in the root.
* block1..block4: pre-activation bottleneck units. Unit input x:
    a: y = relu(GN(x)); shortcut = proj(y) if the unit has a projection else x
       h = conv1x1(y)
    b: h = conv3x3(relu(GN(h)), stride)        (stride only in unit01 of blocks 2-4)
    c: h = conv1x1(relu(GN(h))) to 4x the bottleneck width
    out = h + shortcut
  The projection is a 1x1 strided WS conv on the *pre-activated* input; it is
  present when the stride is not 1 or the channel count changes (unit01 of
  every block).
* group_norm + ReLU on the last block's output -> `feature_map`;
  global average pool -> `embedding`; optional zero-initialised dense `head`.

Every norm is GroupNorm(32 groups, eps 1e-5); every conv is weight-standardized
(eps 1e-10) and bias-free. Bottleneck widths are 64w, 128w, 256w, 512w, so the
embedding has 2048w channels.

Layers mirror the official checkpoint names (root_block, blockK/unitNN with
a/b/c/proj); each container layer exposes `checkpoint_layers()` so
`bit_checkpoint` maps weights by structure.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from typing import Any

import keras
from keras import ops

from remedis_tf.models.group_norm import GroupNorm
from remedis_tf.models.outputs import EMBEDDING, FEATURE_MAP, LOGITS
from remedis_tf.models.weight_standardization import StandardizedConv2D

# Units per block for the published depths.
BLOCK_UNITS: dict[int, tuple[int, ...]] = {
  50: (3, 4, 6, 3),
  101: (3, 4, 23, 3),
  152: (3, 8, 36, 3),
}
TINY_BLOCK_UNITS = (1, 1, 1, 1)
ROOT_WIDTH = 64  # Root conv filters and block1 bottleneck width at width multiplier 1.
STAGE_STRIDES = (1, 2, 2, 2)
EXPANSION = 4  # Bottleneck output channels = EXPANSION * bottleneck width.


@dataclasses.dataclass(frozen=True)
class StageSpec:
  """One block (stage) of the network.

  Attributes:
    units: number of bottleneck units.
    stride: stride of the first unit's 3x3 conv (and of its projection).
    width: bottleneck width; the stage outputs EXPANSION * width channels.
  """

  units: int
  stride: int
  width: int


def stage_table(block_units: Sequence[int], width: int) -> tuple[StageSpec, ...]:
  """Returns the (units, stride, width) table for a BiT ResNetV2.

  Args:
    block_units: units per block, e.g. (3, 4, 6, 3) for R50.
    width: BiT width multiplier.

  Returns:
    One StageSpec per block; block i (0-based) has width 64 * width * 2**i.
  """
  if len(block_units) > len(STAGE_STRIDES):
    raise ValueError(f"At most {len(STAGE_STRIDES)} blocks, got {list(block_units)}.")
  return tuple(
    StageSpec(units=int(u), stride=s, width=ROOT_WIDTH * width * 2**i)
    for i, (u, s) in enumerate(zip(block_units, STAGE_STRIDES, strict=False))
  )


@keras.saving.register_keras_serializable(package="remedis_tf")
class RootBlock(keras.layers.Layer):
  """7x7/2 WS conv, zero-pad 1, 3x3/2 max-pool: (N, H, W, 3) -> (N, ~H/4, ~W/4, filters)."""

  def __init__(self, filters: int, **kwargs: Any) -> None:
    super().__init__(**kwargs)
    self.filters = int(filters)
    self.standardized_conv2d = StandardizedConv2D(
      filters, 7, strides=2, dtype=self.dtype_policy, name="standardized_conv2d"
    )

  def build(self, input_shape: tuple[int | None, ...]) -> None:
    self.standardized_conv2d.build(input_shape)

  def call(self, inputs: Any) -> Any:
    x = self.standardized_conv2d(inputs)
    x = ops.pad(x, [[0, 0], [1, 1], [1, 1], [0, 0]])  # BiT pads with zeros, not -inf.
    return ops.max_pool(x, pool_size=3, strides=2, padding="valid")

  def checkpoint_layers(self) -> dict[str, keras.layers.Layer]:
    return {"standardized_conv2d": self.standardized_conv2d}

  def get_config(self) -> dict[str, Any]:
    return {**super().get_config(), "filters": self.filters}


@keras.saving.register_keras_serializable(package="remedis_tf")
class BottleneckUnit(keras.layers.Layer):
  """Pre-activation bottleneck: (N, H, W, C) -> (N, H/stride, W/stride, 4 * width)."""

  def __init__(self, width: int, stride: int = 1, **kwargs: Any) -> None:
    super().__init__(**kwargs)
    self.width = int(width)
    self.stride = int(stride)
    policy = self.dtype_policy
    self.a_group_norm = GroupNorm(dtype=policy, name="a_group_norm")
    self.a_standardized_conv2d = StandardizedConv2D(
      width, 1, dtype=policy, name="a_standardized_conv2d"
    )
    self.b_group_norm = GroupNorm(dtype=policy, name="b_group_norm")
    self.b_standardized_conv2d = StandardizedConv2D(
      width, 3, strides=stride, dtype=policy, name="b_standardized_conv2d"
    )
    self.c_group_norm = GroupNorm(dtype=policy, name="c_group_norm")
    self.c_standardized_conv2d = StandardizedConv2D(
      EXPANSION * width, 1, dtype=policy, name="c_standardized_conv2d"
    )
    self.a_proj_standardized_conv2d: StandardizedConv2D | None = None

  def build(self, input_shape: tuple[int | None, ...]) -> None:
    in_channels = int(input_shape[-1])
    if self.stride != 1 or in_channels != EXPANSION * self.width:
      self.a_proj_standardized_conv2d = StandardizedConv2D(
        EXPANSION * self.width,
        1,
        strides=self.stride,
        pad=False,
        dtype=self.dtype_policy,
        name="a_proj_standardized_conv2d",
      )
    # Build sublayers eagerly so every variable exists once the model is built.
    shape = tuple(input_shape)
    self.a_group_norm.build(shape)
    if self.a_proj_standardized_conv2d is not None:
      self.a_proj_standardized_conv2d.build(shape)
    self.a_standardized_conv2d.build(shape)
    shape = self.a_standardized_conv2d.compute_output_shape(shape)
    self.b_group_norm.build(shape)
    self.b_standardized_conv2d.build(shape)
    shape = self.b_standardized_conv2d.compute_output_shape(shape)
    self.c_group_norm.build(shape)
    self.c_standardized_conv2d.build(shape)

  def call(self, inputs: Any) -> Any:
    x = ops.relu(self.a_group_norm(inputs))
    shortcut = inputs
    if self.a_proj_standardized_conv2d is not None:
      shortcut = self.a_proj_standardized_conv2d(x)
    x = self.a_standardized_conv2d(x)
    x = self.b_standardized_conv2d(ops.relu(self.b_group_norm(x)))
    x = self.c_standardized_conv2d(ops.relu(self.c_group_norm(x)))
    return x + ops.cast(shortcut, x.dtype)

  def compute_output_shape(self, input_shape: tuple[int | None, ...]) -> tuple[int | None, ...]:
    def out(size: int | None) -> int | None:
      return None if size is None else (size - 1) // self.stride + 1

    return (input_shape[0], out(input_shape[1]), out(input_shape[2]), EXPANSION * self.width)

  def checkpoint_layers(self) -> dict[str, keras.layers.Layer]:
    layers = {
      "a/group_norm": self.a_group_norm,
      "a/standardized_conv2d": self.a_standardized_conv2d,
      "b/group_norm": self.b_group_norm,
      "b/standardized_conv2d": self.b_standardized_conv2d,
      "c/group_norm": self.c_group_norm,
      "c/standardized_conv2d": self.c_standardized_conv2d,
    }
    if self.a_proj_standardized_conv2d is not None:
      layers["a/proj/standardized_conv2d"] = self.a_proj_standardized_conv2d
    return layers

  def get_config(self) -> dict[str, Any]:
    return {**super().get_config(), "width": self.width, "stride": self.stride}


@keras.saving.register_keras_serializable(package="remedis_tf")
class Stage(keras.layers.Layer):
  """One block: `units` bottleneck units named unit01, unit02, ..."""

  def __init__(self, units: int, stride: int, width: int, **kwargs: Any) -> None:
    super().__init__(**kwargs)
    self.spec = StageSpec(units=int(units), stride=int(stride), width=int(width))
    self.unit_layers = [
      BottleneckUnit(width, stride if i == 1 else 1, dtype=self.dtype_policy, name=f"unit{i:02d}")
      for i in range(1, units + 1)
    ]
    # Keras 3 lists are not tf.train.Checkpoint dependencies: also track each
    # unit as an attribute so `tf.train.Checkpoint(encoder=model)` saves and
    # restores every variable.
    for unit in self.unit_layers:
      setattr(self, unit.name, unit)

  def build(self, input_shape: tuple[int | None, ...]) -> None:
    shape = tuple(input_shape)
    for unit in self.unit_layers:
      unit.build(shape)
      shape = unit.compute_output_shape(shape)

  def call(self, inputs: Any) -> Any:
    x = inputs
    for unit in self.unit_layers:
      x = unit(x)
    return x

  def compute_output_shape(self, input_shape: tuple[int | None, ...]) -> tuple[int | None, ...]:
    shape = tuple(input_shape)
    for unit in self.unit_layers:
      shape = unit.compute_output_shape(shape)
    return shape

  def checkpoint_layers(self) -> dict[str, keras.layers.Layer]:
    return {unit.name: unit for unit in self.unit_layers}

  def get_config(self) -> dict[str, Any]:
    return {**super().get_config(), **dataclasses.asdict(self.spec)}


def build_bit_encoder(
  depth: int = 50,
  width: int = 1,
  num_classes: int | None = None,
  block_units: Sequence[int] | None = None,
  name: str | None = None,
) -> keras.Model:
  """Builds a BiT ResNetV2 encoder.

  Args:
    depth: 50, 101 or 152 (ignored when `block_units` is given).
    width: width multiplier (BiT publishes 1-4); embedding size is 2048 * width.
    num_classes: if set, adds a zero-initialised dense head producing `logits`.
    block_units: custom units per block (up to 4 blocks), e.g. (1, 1, 1, 1) for
      `bit-tiny`; overrides `depth`.
    name: model name; defaults to e.g. "bit_r50x1".

  Returns:
    A functional keras.Model taking images (N, H, W, 3) float32 in [0, 1]
    (any H, W; use multiples of 32) and returning a dict:
      'feature_map': (N, ceil(H/32), ceil(W/32), 2048 * width) float32,
      'embedding': (N, 2048 * width) float32 (global average of feature_map),
      'logits': (N, num_classes) float32, only if `num_classes`.
  """
  if width < 1:
    raise ValueError(f"width must be >= 1, got {width}.")
  if block_units is None:
    if depth not in BLOCK_UNITS:
      raise ValueError(f"depth must be one of {sorted(BLOCK_UNITS)}, got {depth}.")
    block_units = BLOCK_UNITS[depth]
    default_name = f"bit_r{depth}x{width}"
  else:
    default_name = "bit_" + "_".join(str(u) for u in block_units) + f"x{width}"

  images = keras.Input(shape=(None, None, 3), dtype="float32", name="images")
  x = keras.layers.Rescaling(scale=2.0, offset=-1.0, name="rescale")(images)
  x = RootBlock(ROOT_WIDTH * width, name="root_block")(x)
  for i, spec in enumerate(stage_table(block_units, width), start=1):
    x = Stage(spec.units, spec.stride, spec.width, name=f"block{i}")(x)
  x = GroupNorm(name="group_norm")(x)
  x = keras.layers.ReLU(name="relu")(x)
  outputs = {
    FEATURE_MAP: keras.layers.Activation("linear", dtype="float32", name=FEATURE_MAP)(x),
    EMBEDDING: keras.layers.GlobalAveragePooling2D(dtype="float32", name=EMBEDDING)(x),
  }
  if num_classes:
    outputs[LOGITS] = keras.layers.Dense(
      num_classes,
      kernel_initializer="zeros",
      bias_initializer="zeros",
      dtype="float32",
      name="head",
    )(outputs[EMBEDDING])
  return keras.Model(images, outputs, name=name or default_name)


_NAME_RE = re.compile(r"^bit-r(\d+)x(\d+)$")


def parse_encoder_name(name: str) -> tuple[int, int, tuple[int, ...] | None]:
  """Parses "bit-r{depth}x{width}" or "bit-tiny".

  Args:
    name: encoder name, e.g. "bit-r50x1", "bit-r152x2", "bit-tiny".

  Returns:
    (depth, width, block_units). block_units is None for the published depths
    (use BLOCK_UNITS[depth]) and (1, 1, 1, 1) with depth 14 for "bit-tiny".
  """
  key = name.strip().lower()
  if key == "bit-tiny":
    return 3 * sum(TINY_BLOCK_UNITS) + 2, 1, TINY_BLOCK_UNITS
  match = _NAME_RE.match(key)
  if not match:
    raise ValueError(
      f"Unknown encoder name {name!r}; expected 'bit-r<depth>x<width>' or 'bit-tiny'."
    )
  depth, width = int(match.group(1)), int(match.group(2))
  if depth not in BLOCK_UNITS or width < 1:
    raise ValueError(f"Unsupported encoder {name!r}: depth in {sorted(BLOCK_UNITS)}, width >= 1.")
  return depth, width, None


def build_encoder_by_name(name: str, num_classes: int | None = None) -> keras.Model:
  """Builds the encoder named like "bit-r50x1" or "bit-tiny" (see parse_encoder_name)."""
  depth, width, block_units = parse_encoder_name(name)
  return build_bit_encoder(
    depth=depth,
    width=width,
    num_classes=num_classes,
    block_units=block_units,
    name=name.strip().lower().replace("-", "_"),
  )
