"""Geometric ops: rotation by any angle, 90-degree rotations, elastic deformation.

Images are float32 (H, W, C) in [0, 1]. Pixel (row i, column j) has its
centre at (y, x) = (i, j); rotations turn about ((H - 1) / 2, (W - 1) / 2).
"""

from __future__ import annotations

import math

import tensorflow as tf

from remedis_tf.data import intensity, seeds

FILL_MODES = ("reflect", "wrap", "constant", "nearest")


def rotate(
  image: tf.Tensor,
  angle: float | tf.Tensor,
  fill_mode: str = "reflect",
  fill_value: float = 0.0,
  interpolation: str = "bilinear",
) -> tf.Tensor:
  """Rotates counter-clockwise (as displayed) by `angle` radians about the centre.

  `rotate(x, pi / 2)` equals `tf.image.rot90(x)` for square images.

  Args:
    image: (H, W, C) float32.
    angle: radians, scalar (may be a tensor).
    fill_mode: how to fill points outside the input: "reflect", "wrap",
      "constant" (with `fill_value`) or "nearest".
    fill_value: value for fill_mode "constant".
    interpolation: "bilinear" or "nearest".

  Returns:
    (H, W, C) float32.
  """
  if fill_mode not in FILL_MODES:
    raise ValueError(f"fill_mode must be one of {FILL_MODES}, got {fill_mode!r}")
  image = tf.convert_to_tensor(image, tf.float32)
  shape = tf.shape(image)
  cy = (tf.cast(shape[0], tf.float32) - 1.0) / 2.0
  cx = (tf.cast(shape[1], tf.float32) - 1.0) / 2.0
  angle = tf.cast(angle, tf.float32)
  cos, sin = tf.cos(angle), tf.sin(angle)
  # Output pixel (x, y) samples the input at R(angle) (x - c) + c.
  transform = tf.stack(
    [
      cos,
      -sin,
      cx - cos * cx + sin * cy,
      sin,
      cos,
      cy - sin * cx - cos * cy,
      0.0,
      0.0,
    ]
  )[None]
  out = tf.raw_ops.ImageProjectiveTransformV3(
    images=image[None],
    transforms=transform,
    output_shape=shape[:2],
    fill_value=tf.constant(fill_value, tf.float32),
    interpolation=interpolation.upper(),
    fill_mode=fill_mode.upper(),
  )[0]
  out.set_shape(image.shape)
  return out


def random_rotation(
  image: tf.Tensor,
  seed: tf.Tensor,
  max_degrees: float = 180.0,
  fill_mode: str = "reflect",
  fill_value: float = 0.0,
  interpolation: str = "bilinear",
) -> tf.Tensor:
  """Rotates by an angle drawn from U(-max_degrees, max_degrees)."""
  limit = math.radians(max_degrees)
  angle = seeds.uniform(seed, -limit, limit)
  return rotate(image, angle, fill_mode, fill_value, interpolation)


def random_rot90(image: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
  """Rotates by k * 90 degrees, k uniform in {0, 1, 2, 3} (square images keep their shape)."""
  k = tf.random.stateless_uniform([], seed=seed, minval=0, maxval=4, dtype=tf.int32)
  return tf.image.rot90(image, k)


def bilinear_sample(image: tf.Tensor, y: tf.Tensor, x: tf.Tensor) -> tf.Tensor:
  """Samples `image` at float coordinates, clamping to the border.

  Args:
    image: (H, W, C) float32.
    y, x: (H', W') float32 row and column coordinates.

  Returns:
    (H', W', C) float32.
  """
  shape = tf.shape(image)
  h, w = shape[0], shape[1]
  y = tf.clip_by_value(y, 0.0, tf.cast(h - 1, tf.float32))
  x = tf.clip_by_value(x, 0.0, tf.cast(w - 1, tf.float32))
  y0f, x0f = tf.floor(y), tf.floor(x)
  wy, wx = (y - y0f)[..., None], (x - x0f)[..., None]
  y0, x0 = tf.cast(y0f, tf.int32), tf.cast(x0f, tf.int32)
  y1, x1 = tf.minimum(y0 + 1, h - 1), tf.minimum(x0 + 1, w - 1)
  flat = tf.reshape(image, [-1, shape[2]])
  gather = lambda yy, xx: tf.gather(flat, yy * w + xx)
  top = gather(y0, x0) * (1.0 - wx) + gather(y0, x1) * wx
  bottom = gather(y1, x0) * (1.0 - wx) + gather(y1, x1) * wx
  return top * (1.0 - wy) + bottom * wy


def elastic_deform(
  image: tf.Tensor, seed: tf.Tensor, alpha: float | tf.Tensor, sigma: float
) -> tf.Tensor:
  """Elastic deformation (Simard et al. 2003) with a normalised displacement field.

  Uniform noise in [-1, 1] per pixel and axis is smoothed by a Gaussian of
  std `sigma` pixels and rescaled to unit standard deviation, so `alpha` is
  the RMS displacement in pixels. The image is resampled bilinearly,
  clamping at the borders. alpha = 0 is the identity.

  Args:
    image: (H, W, C) float32 with static H and W.
    seed: shape (2,) seed.
    alpha: RMS displacement in pixels.
    sigma: smoothness of the field in pixels (> 0).

  Returns:
    (H, W, C) float32.
  """
  image = tf.convert_to_tensor(image, tf.float32)
  h, w = image.shape[0], image.shape[1]
  if h is None or w is None:
    raise ValueError("elastic_deform needs static image height and width")
  radius = max(1, min(int(math.ceil(3.0 * sigma)), h - 1, w - 1))
  noise = tf.random.stateless_uniform([h, w, 2], seed=seed, minval=-1.0, maxval=1.0)
  kernel = intensity.gaussian_kernel(sigma, radius)
  field = intensity.separable_filter(noise, kernel, radius)
  # Std of U(-1, 1) is 1/sqrt(3); separable smoothing scales it by sum(k^2).
  field = field / (tf.reduce_sum(tf.square(kernel)) / math.sqrt(3.0))
  field = field * tf.cast(alpha, tf.float32)
  grid_y, grid_x = tf.meshgrid(
    tf.range(h, dtype=tf.float32), tf.range(w, dtype=tf.float32), indexing="ij"
  )
  out = bilinear_sample(image, grid_y + field[..., 0], grid_x + field[..., 1])
  out.set_shape(image.shape)
  return out
