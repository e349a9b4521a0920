"""Group normalization with float32 statistics (Wu & He 2018), as used by BiT.

BiT normalizes with 32 groups and epsilon 1e-5 (Keras' `GroupNormalization`
defaults to 1e-3). This layer computes the statistics in float32 whatever the
compute dtype, then applies the normalization as one per-(sample, channel)
scale and offset, `y = x * s + o`, which avoids reshaping the activation.

Input and output: (N, H, W, C) with C divisible by `groups`.
"""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

BIT_GROUPS = 32
BIT_EPSILON = 1e-5


@keras.saving.register_keras_serializable(package="remedis_tf")
class GroupNorm(keras.layers.Layer):
  """Group normalization over NHWC inputs with learnable per-channel gamma/beta."""

  def __init__(self, groups: int = BIT_GROUPS, epsilon: float = BIT_EPSILON, **kwargs: Any) -> None:
    kwargs.setdefault("autocast", False)
    super().__init__(**kwargs)
    self.groups = int(groups)
    self.epsilon = float(epsilon)

  def build(self, input_shape: tuple[int | None, ...]) -> None:
    channels = int(input_shape[-1])
    if channels % self.groups:
      raise ValueError(f"{self.name}: {channels} channels not divisible by {self.groups} groups.")
    self.gamma = self.add_weight(name="gamma", shape=(channels,), initializer="ones")
    self.beta = self.add_weight(name="beta", shape=(channels,), initializer="zeros")

  def _group_mean(self, per_channel: Any) -> Any:
    """(N, 1, 1, C) per-channel values -> (N, 1, 1, C) mean over each group."""
    channels = per_channel.shape[-1]
    grouped = ops.reshape(per_channel, (-1, 1, 1, self.groups, channels // self.groups))
    grouped = ops.broadcast_to(ops.mean(grouped, axis=-1, keepdims=True), ops.shape(grouped))
    return ops.reshape(grouped, (-1, 1, 1, channels))

  def call(self, inputs: Any) -> Any:
    x32 = ops.cast(inputs, "float32")
    mean = self._group_mean(ops.mean(x32, axis=[1, 2], keepdims=True))
    var = self._group_mean(ops.mean(ops.square(x32 - mean), axis=[1, 2], keepdims=True))
    scale = ops.rsqrt(var + self.epsilon) * ops.cast(self.gamma, "float32")
    offset = ops.cast(self.beta, "float32") - mean * scale
    dtype = self.compute_dtype
    return ops.cast(inputs, dtype) * ops.cast(scale, dtype) + ops.cast(offset, dtype)

  def compute_output_shape(self, input_shape: tuple[int | None, ...]) -> tuple[int | None, ...]:
    return tuple(input_shape)

  def get_config(self) -> dict[str, Any]:
    config = super().get_config()
    config.update(groups=self.groups, epsilon=self.epsilon)
    return config
