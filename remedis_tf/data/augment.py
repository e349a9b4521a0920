"""One augmented view of an image, and the evaluation preprocessing.

Composes the ops of crops, geometric, intensity and color in the order an
AugmentConfig documents. Everything is a TensorFlow op (graph mode, no
py_function) and every random decision is keyed by a stateless seed.
"""

from __future__ import annotations

import tensorflow as tf

from remedis_tf.data import color, crops, geometric, intensity, seeds
from remedis_tf.data.presets import AugmentConfig


def to_rgb(image: tf.Tensor) -> tf.Tensor:
  """Tiles a (H, W, 1) image to (H, W, 3); leaves 3-channel images alone."""
  if image.shape[-1] == 1:
    return tf.tile(image, [1, 1, 3])
  return image


def augment_view(
  image: tf.Tensor, config: AugmentConfig, seed: tf.Tensor, image_size: int
) -> tf.Tensor:
  """Returns one random view of `image`.

  Args:
    image: (H, W, C) float32 in [0, 1], C == config.channels (static).
    config: the augmentation config.
    seed: shape (2,) seed of this view (e.g. from seeds.fold_in(seed, key,
      epoch, view)).
    image_size: output side S.

  Returns:
    (S, S, 3) float32 in [0, 1].
  """
  c = config
  s = lambda op: seeds.fold_in(seed, op)
  x = crops.random_resized_crop(
    image,
    s(seeds.OP_CROP),
    image_size,
    c.crop_area_range,
    c.crop_aspect_range,
    c.resize_method,
    c.antialias,
  )
  x.set_shape([image_size, image_size, c.channels])
  x = crops.random_flip(x, s(seeds.OP_HFLIP), axis=1, prob=c.hflip_prob)
  x = crops.random_flip(x, s(seeds.OP_VFLIP), axis=0, prob=c.vflip_prob)
  x = seeds.apply_with_prob(geometric.random_rot90, x, c.rot90_prob, s(seeds.OP_ROT90))
  x = seeds.apply_with_prob(
    lambda v, k: geometric.random_rotation(
      v, k, c.rotation_max_degrees, c.rotation_fill_mode, c.rotation_fill_value
    ),
    x,
    c.rotation_prob,
    s(seeds.OP_ROTATE),
  )
  if c.elastic_alpha > 0:
    x = seeds.apply_with_prob(
      lambda v, k: geometric.elastic_deform(
        v, k, c.elastic_alpha * image_size, c.elastic_sigma * image_size
      ),
      x,
      c.elastic_prob,
      s(seeds.OP_ELASTIC),
    )
  x = seeds.apply_with_prob(
    lambda v, _: intensity.equalize_histogram(v, c.equalize_bins),
    x,
    c.equalize_prob,
    s(seeds.OP_EQUALIZE),
  )
  x = color.color_distortion(
    x,
    s(seeds.OP_COLOR),
    c.color_strength,
    c.color_prob,
    c.grayscale_prob,
    c.brightness,
    c.contrast,
    c.saturation,
    c.hue,
    c.color_random_order,
  )
  x = seeds.apply_with_prob(
    lambda v, k: intensity.random_gamma(v, k, c.gamma_range), x, c.gamma_prob, s(seeds.OP_GAMMA)
  )
  x = seeds.apply_with_prob(
    lambda v, k: intensity.random_blur(v, k, c.blur_sigma_range, c.blur_kernel_fraction),
    x,
    c.blur_prob,
    s(seeds.OP_BLUR),
  )
  x = tf.clip_by_value(x, 0.0, 1.0)
  x.set_shape([image_size, image_size, c.channels])
  return to_rgb(x)


def preprocess_eval(image: tf.Tensor, config: AugmentConfig, image_size: int) -> tf.Tensor:
  """Evaluation preprocessing: central crop and resize, no randomness.

  Args:
    image: (H, W, C) float32 in [0, 1].
    config: supplies eval_crop_fraction and resize_method.
    image_size: output side S.

  Returns:
    (S, S, 3) float32 in [0, 1].
  """
  x = crops.center_crop(image, image_size, config.eval_crop_fraction, config.resize_method)
  x.set_shape([image_size, image_size, image.shape[-1]])
  return to_rgb(x)
