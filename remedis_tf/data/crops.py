"""Crops, resizes and flips (SimCLR's random resized crop; evaluation crop).

Images are float32 (H, W, C) tensors in [0, 1].
"""

from __future__ import annotations

from collections.abc import Sequence

import tensorflow as tf

from remedis_tf.data import seeds
from remedis_tf.errors import ConfigError


def crop_and_resize(
  image: tf.Tensor,
  offset: Sequence[int] | tf.Tensor,
  crop_size: Sequence[int] | tf.Tensor,
  size: int,
  method: str = "bicubic",
  antialias: bool = False,
) -> tf.Tensor:
  """Crops a box and resizes it to (size, size), clipping to [0, 1].

  Args:
    image: (H, W, C) float32.
    offset: (y, x) of the box's top-left pixel.
    crop_size: (h, w) of the box in pixels.
    size: output side.
    method: a `tf.image.resize` method ("bicubic", "bilinear", "area", ...).
    antialias: low-pass filter when shrinking (as PIL does).

  Returns:
    (size, size, C) float32 in [0, 1].
  """
  offset = tf.cast(offset, tf.int32)
  crop_size = tf.cast(crop_size, tf.int32)
  crop = tf.slice(image, [offset[0], offset[1], 0], [crop_size[0], crop_size[1], -1])
  out = tf.image.resize(crop[None], [size, size], method=method, antialias=antialias)[0]
  return tf.clip_by_value(out, 0.0, 1.0)


def sample_crop_box(
  shape: tf.Tensor,
  seed: tf.Tensor,
  area_range: tuple[float, float] = (0.08, 1.0),
  aspect_ratio_range: tuple[float, float] = (3 / 4, 4 / 3),
  max_attempts: int = 100,
) -> tuple[tf.Tensor, tf.Tensor]:
  """Samples a random box (Inception-style) with a stateless seed.

  Falls back to the whole image when no box satisfies the ranges within
  `max_attempts`.

  Args:
    shape: the image shape (H, W, C), int32.
    seed: shape (2,) seed.
    area_range: fraction of the image area the box covers.
    aspect_ratio_range: width / height of the box.
    max_attempts: rejection-sampling attempts.

  Returns:
    offset (y, x) and size (h, w), int32 (2,) each.
  """
  begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
    tf.cast(shape, tf.int32),
    bounding_boxes=tf.constant([0.0, 0.0, 1.0, 1.0], tf.float32, [1, 1, 4]),
    seed=tf.cast(seed, tf.int64),
    min_object_covered=0.0,
    aspect_ratio_range=aspect_ratio_range,
    area_range=area_range,
    max_attempts=max_attempts,
    use_image_if_no_bounding_boxes=True,
  )
  return begin[:2], size[:2]


def random_resized_crop(
  image: tf.Tensor,
  seed: tf.Tensor,
  size: int,
  area_range: tuple[float, float] = (0.08, 1.0),
  aspect_ratio_range: tuple[float, float] = (3 / 4, 4 / 3),
  method: str = "bicubic",
  antialias: bool = False,
) -> tf.Tensor:
  """SimCLR's random resized crop.

  Args:
    image: (H, W, C) float32 in [0, 1].
    seed: shape (2,) seed.
    size: output side.
    area_range: fraction of the image area kept (SimCLR: 0.08-1).
    aspect_ratio_range: width / height of the crop (SimCLR: 3/4-4/3).
    method: resize method (SimCLR: bicubic).
    antialias: low-pass filter when shrinking.

  Returns:
    (size, size, C) float32 in [0, 1].
  """
  offset, crop_size = sample_crop_box(tf.shape(image), seed, area_range, aspect_ratio_range)
  return crop_and_resize(image, offset, crop_size, size, method, antialias)


def center_crop(
  image: tf.Tensor,
  size: int,
  crop_fraction: float = 0.875,
  method: str = "bicubic",
  antialias: bool = True,
) -> tf.Tensor:
  """Evaluation crop: the central square of side `crop_fraction * min(H, W)`, resized.

  Args:
    image: (H, W, C) float32 in [0, 1].
    size: output side.
    crop_fraction: side of the central square relative to the shorter side.
    method: resize method.
    antialias: low-pass filter when shrinking.

  Returns:
    (size, size, C) float32 in [0, 1].
  """
  shape = tf.shape(image)
  h, w = shape[0], shape[1]
  side = tf.cast(tf.round(crop_fraction * tf.cast(tf.minimum(h, w), tf.float32)), tf.int32)
  side = tf.maximum(side, 1)
  offset = tf.stack([(h - side + 1) // 2, (w - side + 1) // 2])
  return crop_and_resize(image, offset, tf.stack([side, side]), size, method, antialias)


def check_fraction(fraction: float) -> float:
  """`fraction` as a float.

  Raises:
    ConfigError: `fraction` is not in (0, 1] (NaN included).
  """
  fraction = float(fraction)
  if not 0.0 < fraction <= 1.0:
    raise ConfigError(f"central_crop_fraction must be in (0, 1], got {fraction}.")
  return fraction


def central_box(image: tf.Tensor, fraction: float) -> tf.Tensor:
  """The central box of `fraction` times each side (the aspect ratio is kept).

  Unlike `center_crop` (a square of the shorter side), each side is cut by
  the same fraction: along an axis of n pixels the box has max(1, round(f * n))
  pixels (round half to even) and starts at (n - side + 1) // 2.

  Args:
    image: (H, W, C).
    fraction: in (0, 1]; 1 returns `image` itself.

  Returns:
    (h, w, C) with h = max(1, round(fraction * H)), likewise w.
  """
  fraction = check_fraction(fraction)
  if fraction == 1.0:
    return image
  hw = tf.shape(image)[:2]
  side = tf.maximum(tf.cast(tf.round(fraction * tf.cast(hw, tf.float64)), tf.int32), 1)
  offset = (hw - side + 1) // 2
  return image[offset[0] : offset[0] + side[0], offset[1] : offset[1] + side[1]]


def resize_whole(image: tf.Tensor, size: int) -> tf.Tensor:
  """(H, W, C) -> (size, size, C): bilinear without antialiasing; as is when already that size."""
  channels = image.shape[-1]
  same = tf.reduce_all(tf.shape(image)[:2] == size)
  return tf.cond(
    same,
    lambda: tf.reshape(image, [size, size, channels]),
    lambda: tf.image.resize(image, [size, size], method="bilinear"),
  )


def random_flip(image: tf.Tensor, seed: tf.Tensor, axis: int, prob: float = 0.5) -> tf.Tensor:
  """Flips along `axis` (1: left-right, 0: up-down) with probability `prob`.

  Args:
    image: (H, W, C).
    seed: shape (2,) seed.
    axis: 0 for a vertical flip, 1 for a horizontal flip.
    prob: probability of flipping.

  Returns:
    (H, W, C), same dtype.
  """
  return seeds.apply_with_prob(lambda x, _: tf.reverse(x, [axis]), image, prob, seed)
