"""Intensity ops: Gaussian blur, histogram equalisation, gamma.

Images are float32 (H, W, C) in [0, 1].
"""

from __future__ import annotations

import math

import tensorflow as tf

from remedis_tf.data import seeds


def gaussian_kernel(sigma: float | tf.Tensor, radius: int) -> tf.Tensor:
  """Normalised 1-D Gaussian, shape (2 * radius + 1,), float32."""
  sigma = tf.cast(sigma, tf.float32)
  x = tf.range(-radius, radius + 1, dtype=tf.float32)
  kernel = tf.exp(-tf.square(x) / (2.0 * tf.square(sigma)))
  return kernel / tf.reduce_sum(kernel)


def separable_filter(image: tf.Tensor, kernel: tf.Tensor, radius: int) -> tf.Tensor:
  """Convolves each channel with `kernel` along H then W, reflecting at the borders.

  Args:
    image: (H, W, C) float32 with H, W > radius.
    kernel: (2 * radius + 1,) float32.
    radius: half-width of the kernel.

  Returns:
    (H, W, C) float32.
  """
  image = tf.convert_to_tensor(image, tf.float32)
  channels = tf.shape(image)[-1]
  x = tf.pad(image[None], [[0, 0], [radius, radius], [radius, radius], [0, 0]], mode="REFLECT")
  k_h = tf.tile(tf.reshape(kernel, [-1, 1, 1, 1]), [1, 1, channels, 1])
  k_w = tf.tile(tf.reshape(kernel, [1, -1, 1, 1]), [1, 1, channels, 1])
  x = tf.nn.depthwise_conv2d(x, k_h, strides=[1, 1, 1, 1], padding="VALID")
  x = tf.nn.depthwise_conv2d(x, k_w, strides=[1, 1, 1, 1], padding="VALID")
  out = x[0]
  if image.shape.rank is not None:
    out.set_shape(image.shape)
  return out


def gaussian_blur(image: tf.Tensor, sigma: float | tf.Tensor, radius: int) -> tf.Tensor:
  """Gaussian blur with a (possibly per-image, tensor) sigma and a static radius.

  Borders are reflected (numpy/scipy 'mirror' mode), so a constant image stays
  constant.

  Args:
    image: (H, W, C) float32, H and W larger than `radius`.
    sigma: standard deviation in pixels (scalar, may be a tensor).
    radius: kernel half-width in pixels (static).

  Returns:
    (H, W, C) float32.
  """
  return separable_filter(image, gaussian_kernel(sigma, radius), radius)


def random_blur(
  image: tf.Tensor,
  seed: tf.Tensor,
  sigma_range: tuple[float, float] = (0.1, 2.0),
  kernel_fraction: float = 0.1,
) -> tf.Tensor:
  """SimCLR's blur: sigma ~ U(sigma_range), kernel side ~ `kernel_fraction` of the image.

  Args:
    image: (H, W, C) float32 with a static height.
    seed: shape (2,) seed.
    sigma_range: range of sigma in pixels.
    kernel_fraction: kernel side relative to the image height (SimCLR: 10%).

  Returns:
    (H, W, C) float32.
  """
  image = tf.convert_to_tensor(image, tf.float32)
  height = image.shape[0]
  if height is None:
    raise ValueError("random_blur needs a static image height")
  radius = max(1, min(int(height * kernel_fraction) // 2, height - 1))
  sigma = seeds.uniform(seed, sigma_range[0], sigma_range[1])
  return gaussian_blur(image, sigma, radius)


def equalize_histogram(image: tf.Tensor, num_bins: int = 256) -> tf.Tensor:
  """Per-channel histogram equalisation of a [0, 1] image.

  Values are binned into `num_bins` bins (bin = floor(v * num_bins), top
  value in the last bin); bin b maps to (cdf[b] - cdf_min) / (N - cdf_min),
  where cdf_min is the count of the first non-empty bin (the classic
  formula). A constant channel is returned unchanged.

  Args:
    image: (H, W, C) float32 in [0, 1].
    num_bins: number of intensity bins (256 for 8-bit-like output).

  Returns:
    (H, W, C) float32 in [0, 1].
  """
  image = tf.convert_to_tensor(image, tf.float32)
  shape = tf.shape(image)
  flat = tf.reshape(image, [-1, shape[-1]])  # (N, C)
  bins = tf.cast(tf.clip_by_value(flat * num_bins, 0.0, num_bins - 1.0), tf.int32)
  bins_t = tf.transpose(bins)  # (C, N)
  offsets = tf.range(shape[-1])[:, None] * num_bins
  counts = tf.math.bincount(
    tf.reshape(bins_t + offsets, [-1]),
    minlength=num_bins * shape[-1],
    maxlength=num_bins * shape[-1],
    dtype=tf.float32,
  )
  counts = tf.reshape(counts, [shape[-1], num_bins])
  cdf = tf.cumsum(counts, axis=1)
  total = cdf[:, -1:]
  nonzero = counts > 0
  first = tf.argmax(tf.cast(nonzero, tf.int32), axis=1)
  cdf_min = tf.gather(cdf, first, batch_dims=1)[:, None]
  denom = total - cdf_min
  lut = tf.where(denom > 0, (cdf - cdf_min) / tf.maximum(denom, 1.0), 0.0)  # (C, bins)
  mapped = tf.gather(lut, bins_t, batch_dims=1)  # (C, N)
  constant = tf.transpose(denom <= 0)  # (1, C)
  out = tf.where(constant, flat, tf.transpose(mapped))
  out = tf.reshape(out, shape)
  if image.shape.rank is not None:
    out.set_shape(image.shape)
  return out


def random_gamma(
  image: tf.Tensor, seed: tf.Tensor, gamma_range: tuple[float, float] = (0.7, 1.5)
) -> tf.Tensor:
  """v ** gamma with log(gamma) ~ U(log(gamma_range)); keeps [0, 1] in [0, 1]."""
  log_gamma = seeds.uniform(seed, math.log(gamma_range[0]), math.log(gamma_range[1]))
  return tf.pow(tf.maximum(image, 0.0), tf.exp(log_gamma))
