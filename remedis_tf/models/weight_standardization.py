"""Weight-standardized 2-D convolution (Qiao et al. 2019), as used by BiT.

BiT standardizes every convolution kernel over its spatial and input-channel
axes before convolving::

    w_hat = (w - mean(w)) / sqrt(var(w) + 1e-10)      # moments over H, W, I

and pads explicitly (BiT's fixed padding) before a VALID convolution. The layer owns a
plain HWIO `kernel` variable (no bias) so a checkpoint maps onto it directly.

Speed: `standardize_kernel` has a hand-written gradient (the closed form in
its docstring), which walks the kernel about half as often as automatic
differentiation of the moments does. A 1x1 stride-1 convolution runs as one
matmul of the (N * H * W, C_in) activation with the (C_in, C_out) kernel: the
same sums, and with oneDNN off TensorFlow's matmul is 2-4x faster than its
1x1 convolution gradient on BiT's small late-stage feature maps. A stride-1
3x3 convolution, whose explicit padding (one row and column of zeros each
side) equals TensorFlow's SAME padding, runs as a SAME convolution, which skips
the separate pad (and, in the backward pass, slice) of the activation. None
of these changes a number beyond float32 rounding.

Small late-stage maps, in training: when the output has at most 16 positions
(`PATCHES_MAX_POSITIONS`; e.g. BiT's last two stages at 64 px and the last at
128 px), a 3x3 convolution runs as `tf.image.extract_patches` (the (kh, kw,
C_in) patch of every output position, in the kernel's HWIO order) times the
(kh * kw * C_in, C_out) kernel, and a strided 1x1 projection whose output has
at most 4 positions (`SLICE_MAX_POSITIONS`) as a strided slice times the
kernel. The products are the same sums. oneDNN's convolution gradients run far
below the matmul's rate on a few output positions. Measured by
`benchmarks/conv_benchmark.py` on a 2-core AVX2 CPU (forward and both
gradients; convolution / patches time):

  * bit-tiny at 64 px, batch 16 (fine-tuning), 1 thread: the last stage's
    3x3/2 (2x2 out) 1.55x, its 1x1/2 projection 1.23x, the third stage's 3x3/2
    (4x4 out) 1.04x; batch 128 (SimCLR's two views), 2 threads: the two
    3x3/2s 1.81x and 1.06x;
  * BiT-R50x1 at 128 px, batch 32, 2 threads: last stage's 3x3/1 1.09x, 3x3/2
    1.45x;
  * whole steps, one process each: the demo's fine-tuning step (16 images, 1
    thread) 1.14x, its SimCLR step (64 images, two views, 2 threads) 1.06x;
  * with oneDNN off, the last stage's 3x3/2 at batch 16 took 327 ms as a
    convolution and 40 ms as patches, and the SimCLR step ran 2.3x faster.

Inference keeps the convolution (at large batches it is the faster one), and
so do exports traced without the hand-written gradients (the default;
`gradients.uses_autodiff()`): their graphs hold plain Conv2D.

Precision: the kernel is stored in the variable dtype (float32) and the layer
disables Keras autocasting, so the standardization always runs in float32; only
the standardized kernel and the input are cast to the compute dtype (e.g.
bfloat16 under `mixed_bfloat16`) for the convolution itself.
"""

from __future__ import annotations

from typing import Any

import keras
import tensorflow as tf
from keras import ops

from remedis_tf.models import gradients

# BiT's standardization epsilon (big_transfer bit_tf2/models.py, bit_jax/models.py).
WS_EPSILON = 1e-10
# In training, a 3x3 convolution with at most this many output positions (H' * W')
# runs as patches times kernel, and a strided 1x1 one with at most SLICE_MAX_POSITIONS
# as a strided slice times kernel (see the module docstring).
PATCHES_MAX_POSITIONS = 16
SLICE_MAX_POSITIONS = 4


def standardize_kernel(kernel: Any, epsilon: float = WS_EPSILON) -> Any:
  """Standardizes an HWIO kernel over H, W and I, per output channel.

  With n = kh * kw * in_channels, per output channel o:
  mean = sum(w) / n, var = sum((w - mean)^2) / n (two passes),
  w_hat = (w - mean) * r with r = rsqrt(var + epsilon). The gradient is the
  closed form dw = r * (g - mean(g) - w_hat * mean(g * w_hat)) for the output
  gradient g (means over H, W, I), the same as automatic differentiation's up
  to float32 rounding.

  Args:
    kernel: (kh, kw, in_channels, out_channels) tensor; computed in float32.
    epsilon: added to the variance.

  Returns:
    Float32 tensor of the same shape, zero mean and unit variance per output
    channel.
  """

  @gradients.custom_gradient
  def forward(w: tf.Tensor) -> Any:
    axes = [0, 1, 2]
    centered = w - tf.reduce_mean(w, axis=axes, keepdims=True)
    rstd = tf.math.rsqrt(tf.reduce_mean(tf.square(centered), axis=axes, keepdims=True) + epsilon)
    w_hat = centered * rstd

    def grad(g: tf.Tensor) -> tf.Tensor:
      mean_g = tf.reduce_mean(g, axis=axes, keepdims=True)
      mean_g_w_hat = tf.reduce_mean(g * w_hat, axis=axes, keepdims=True)
      return (g - w_hat * mean_g_w_hat - mean_g) * rstd

    return w_hat, grad

  return forward(tf.cast(kernel, tf.float32))


@keras.saving.register_keras_serializable(package="remedis_tf")
class StandardizedConv2D(keras.layers.Layer):
  """Bias-free weight-standardized convolution with BiT's explicit padding.

  Input (N, H, W, C_in) -> output (N, H', W', filters) with
  H' = floor((H + pad_total - kernel_size) / stride) + 1, where
  pad_total = kernel_size - 1 split as (pad_total // 2, pad_total - pad_total // 2)
  (BiT's `fixed_padding` / `PaddingFromKernelSize`); `pad=False` skips padding.
  """

  def __init__(
    self,
    filters: int,
    kernel_size: int,
    strides: int = 1,
    pad: bool = True,
    kernel_initializer: str | keras.initializers.Initializer = "he_normal",
    **kwargs: Any,
  ) -> None:
    kwargs.setdefault("autocast", False)
    super().__init__(**kwargs)
    self.filters = int(filters)
    self.kernel_size = int(kernel_size)
    self.strides = int(strides)
    self.pad = bool(pad)
    self.kernel_initializer = keras.initializers.get(kernel_initializer)

  def build(self, input_shape: tuple[int | None, ...]) -> None:
    in_channels = int(input_shape[-1])
    self.kernel = self.add_weight(
      name="kernel",
      shape=(self.kernel_size, self.kernel_size, in_channels, self.filters),
      initializer=self.kernel_initializer,
      trainable=True,
    )

  def call(self, inputs: Any, training: bool | None = None) -> Any:
    x = ops.cast(inputs, self.compute_dtype)
    kernel = ops.cast(standardize_kernel(self.kernel), self.compute_dtype)
    if self.kernel_size == 1 and self.strides == 1:  # A 1x1 convolution is a matmul.
      return self._matmul(x, kernel)
    # A Python True only: a symbolic `training` keeps the convolution.
    if training is True and not gradients.uses_autodiff():
      positions = self._output_positions(x.shape)
      if self.kernel_size == 1:
        if not self.pad and positions <= SLICE_MAX_POSITIONS:
          return self._matmul(x[:, :: self.strides, :: self.strides, :], kernel)
      elif positions <= PATCHES_MAX_POSITIONS:
        k, s = self.kernel_size, self.strides
        patches = tf.image.extract_patches(
          self._fixed_pad(x), [1, k, k, 1], [1, s, s, 1], [1, 1, 1, 1], "VALID"
        )
        return self._matmul(patches, kernel)
    if self.pad and self.kernel_size == 3 and self.strides == 1:  # (1, 1) zeros: exactly SAME.
      return ops.conv(x, kernel, strides=1, padding="same")
    return ops.conv(self._fixed_pad(x), kernel, strides=self.strides, padding="valid")

  def _fixed_pad(self, x: tf.Tensor) -> tf.Tensor:
    """BiT's explicit zero padding: (k - 1) // 2 before, the rest after (none if pad=False)."""
    total = self.kernel_size - 1
    if not self.pad or total == 0:
      return x
    beg, end = total // 2, total - total // 2
    return ops.pad(x, [[0, 0], [beg, end], [beg, end], [0, 0]])

  def _matmul(self, x: tf.Tensor, kernel: tf.Tensor) -> tf.Tensor:
    """(N, H, W, K) x (.., .., .., C_out) kernel flattened to (K, C_out) -> (N, H, W, C_out)."""
    shape = tf.shape(x)
    y = tf.matmul(tf.reshape(x, [-1, shape[-1]]), tf.reshape(kernel, [-1, self.filters]))
    return tf.reshape(y, tf.concat([shape[:-1], [self.filters]], axis=0))

  def _output_positions(self, input_shape: Any) -> float:
    """H' * W' when the input's spatial size is static, else infinity."""
    _, height, width, _ = self.compute_output_shape(tuple(input_shape))
    return float("inf") if height is None or width is None else height * width

  def compute_output_shape(self, input_shape: tuple[int | None, ...]) -> tuple[int | None, ...]:
    def out(size: int | None) -> int | None:
      if size is None:
        return None
      total = self.kernel_size - 1 if self.pad else 0
      return (size + total - self.kernel_size) // self.strides + 1

    return (input_shape[0], out(input_shape[1]), out(input_shape[2]), self.filters)

  def get_config(self) -> dict[str, Any]:
    config = super().get_config()
    config.update(
      filters=self.filters,
      kernel_size=self.kernel_size,
      strides=self.strides,
      pad=self.pad,
      kernel_initializer=keras.initializers.serialize(self.kernel_initializer),
    )
    return config
