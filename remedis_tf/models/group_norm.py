"""Group normalization with float32 statistics (Wu & He 2018), as used by BiT.

BiT normalizes with 32 groups and epsilon 1e-5 (Keras' `GroupNormalization`
defaults to 1e-3). For x (N, H, W, C) split into G groups of C/G channels,

    mu, var = mean and variance of x over (H, W, the group's channels)
    y = (x - mu) * rsqrt(var + eps) * gamma + beta

The statistics are computed in float32 whatever the compute dtype, then the
normalization is applied as one per-(sample, channel) scale and offset,
`y = x * s + o`, which avoids reshaping the activation. The variance is the
two-pass one (mean of (x - mu)^2), not E[x^2] - mu^2.

Speed: the layer has a hand-written gradient (`group_norm`). Automatic
differentiation of the forward ops above walks the activation about fifteen
times (a broadcast of every reduced statistic back to the activation's shape,
then a multiply and an add per path); the closed form walks it seven times.
It is the same gradient, up to float32 rounding. The forward pass is the
same sequence of operations as before the gradient was written by hand.

Input and output: (N, H, W, C) with C divisible by `groups`.
"""

from __future__ import annotations

from typing import Any

import keras
import tensorflow as tf

from remedis_tf.models import gradients

BIT_GROUPS = 32
BIT_EPSILON = 1e-5


def _group_mean(per_channel: tf.Tensor, groups: int) -> tf.Tensor:
  """(N, 1, 1, C) per-channel values -> (N, 1, 1, C) mean over each group's channels."""
  channels = per_channel.shape[-1]
  grouped = tf.reshape(per_channel, (-1, 1, 1, groups, channels // groups))
  mean = tf.reduce_mean(grouped, axis=-1, keepdims=True)
  return tf.reshape(tf.broadcast_to(mean, tf.shape(grouped)), tf.shape(per_channel))


def group_norm(
  inputs: tf.Tensor,
  gamma: tf.Tensor,
  beta: tf.Tensor,
  groups: int = BIT_GROUPS,
  epsilon: float = BIT_EPSILON,
) -> tf.Tensor:
  """Group-normalizes `inputs` with float32 statistics and a closed-form gradient.

  The gradient (per sample n and group g, with M = H * W * C / G elements,
  x_hat = (x - mu) * r, r = rsqrt(var + eps) and dy the output gradient):

    d beta  = sum over n, h, w of dy
    d gamma = sum over n, h, w of dy * x_hat
    d x     = r * (gamma * dy - mean_g(gamma * dy) - x_hat * mean_g(gamma * dy * x_hat))

  where mean_g averages over the M elements of (n, g). It is evaluated from two
  per-(n, c) sums, sum_hw(dy) and sum_hw(dy * (x - mu)), as
  dx = dy * (r gamma) + (x - mu) * q + o with per-(n, g) q and o; (x - mu) is
  kept from the forward pass.

  Args:
    inputs: (N, H, W, C) activation, any float dtype; the output has its dtype.
    gamma: (C,) float32 scale.
    beta: (C,) float32 offset.
    groups: G, must divide C.
    epsilon: added to the variance.

  Returns:
    (N, H, W, C) normalized activation, dtype of `inputs`.
  """
  dtype = inputs.dtype
  float32 = dtype == tf.float32

  @gradients.custom_gradient
  def forward(x: tf.Tensor, gamma: tf.Tensor, beta: tf.Tensor) -> Any:
    x32 = x if float32 else tf.cast(x, tf.float32)
    mean = _group_mean(tf.reduce_mean(x32, axis=[1, 2], keepdims=True), groups)
    centered = x32 - mean
    var = _group_mean(tf.reduce_mean(tf.square(centered), axis=[1, 2], keepdims=True), groups)
    rstd = tf.math.rsqrt(var + epsilon)  # (N, 1, 1, C), constant within a group.
    scale = rstd * gamma
    offset = beta - mean * scale
    if float32:
      y = x * scale + offset
    else:  # Apply in the compute dtype, as Keras' mixed precision does.
      y = x * tf.cast(scale, dtype) + tf.cast(offset, dtype)

    def grad(dy: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
      dy32 = dy if float32 else tf.cast(dy, tf.float32)
      sum_dy = tf.reduce_sum(dy32, axis=[1, 2], keepdims=True)  # (N, 1, 1, C)
      sum_dy_xhat = tf.reduce_sum(dy32 * centered, axis=[1, 2], keepdims=True) * rstd
      d_beta = tf.reduce_sum(sum_dy, axis=[0, 1, 2])
      d_gamma = tf.reduce_sum(sum_dy_xhat, axis=[0, 1, 2])
      hw = tf.cast(tf.shape(x)[1] * tf.shape(x)[2], tf.float32)
      mean_g_dy = _group_mean(gamma * sum_dy, groups) / hw
      mean_g_dy_xhat = _group_mean(gamma * sum_dy_xhat, groups) / hw
      dx = dy32 * scale + (centered * (-rstd * rstd * mean_g_dy_xhat) - rstd * mean_g_dy)
      return (dx if float32 else tf.cast(dx, dtype)), d_gamma, d_beta

    return y, grad

  return forward(inputs, gamma, beta)


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

  def call(self, inputs: Any) -> Any:
    x = tf.cast(inputs, self.compute_dtype)
    gamma = tf.cast(self.gamma, tf.float32)
    beta = tf.cast(self.beta, tf.float32)
    return group_norm(x, gamma, beta, self.groups, self.epsilon)

  def compute_output_shape(self, input_shape: tuple[int | None, ...]) -> tuple[int | None, ...]:
    return tuple(input_shape)

  def get_config(self) -> dict[str, Any]:
    config = super().get_config()
    config.update(groups=self.groups, epsilon=self.epsilon)
    return config
