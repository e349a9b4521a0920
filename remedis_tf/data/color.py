"""Colour distortion (SimCLR v2) and its grayscale-aware variant.

Images are float32 (H, W, C) in [0, 1] with C = 3 (RGB) or C = 1 (grayscale).
"""

from __future__ import annotations

import tensorflow as tf

from remedis_tf.data import seeds


def random_brightness(image: tf.Tensor, seed: tf.Tensor, max_delta: float) -> tf.Tensor:
  """Multiplies by a factor drawn from U(max(1 - max_delta, 0), 1 + max_delta).

  This is SimCLR v2's multiplicative brightness (v1 added a delta instead).

  Args:
    image: (H, W, C) float32.
    seed: shape (2,) seed.
    max_delta: brightness strength.

  Returns:
    (H, W, C) float32, not clipped.
  """
  factor = seeds.uniform(seed, max(1.0 - max_delta, 0.0), 1.0 + max_delta)
  return image * factor


def random_contrast(image: tf.Tensor, seed: tf.Tensor, max_delta: float) -> tf.Tensor:
  """Scales each channel's deviation from its mean by U(1 - d, 1 + d), d clipped below 1."""
  lower = max(1.0 - max_delta, 0.0)
  return tf.image.stateless_random_contrast(image, lower, 1.0 + max_delta, seed)


def random_saturation(image: tf.Tensor, seed: tf.Tensor, max_delta: float) -> tf.Tensor:
  """Scales saturation (HSV) by U(1 - d, 1 + d); RGB only."""
  lower = max(1.0 - max_delta, 0.0)
  return tf.image.stateless_random_saturation(image, lower, 1.0 + max_delta, seed)


def random_hue(image: tf.Tensor, seed: tf.Tensor, max_delta: float) -> tf.Tensor:
  """Shifts hue by U(-d, d) turns, d <= 0.5; RGB only."""
  return tf.image.stateless_random_hue(image, min(max_delta, 0.5), seed)


def to_grayscale(image: tf.Tensor, keep_channels: bool = True) -> tf.Tensor:
  """ITU-R 601 luma; with `keep_channels` an RGB image stays (H, W, 3)."""
  gray = tf.image.rgb_to_grayscale(image)
  return tf.tile(gray, [1, 1, 3]) if keep_channels else gray


def color_jitter(
  image: tf.Tensor,
  seed: tf.Tensor,
  brightness: float,
  contrast: float,
  saturation: float,
  hue: float,
  random_order: bool = True,
) -> tf.Tensor:
  """Brightness, contrast, saturation and hue in random order, clipping after each.

  A one-channel image gets brightness and contrast only (hue and saturation
  are undefined for it): this is the grayscale-aware distortion.

  Args:
    image: (H, W, C) float32 in [0, 1], C in {1, 3} (static).
    seed: shape (2,) seed.
    brightness: multiplicative brightness strength (0 disables).
    contrast: contrast strength (0 disables).
    saturation: saturation strength (0 disables; ignored for C = 1).
    hue: hue strength in turns (0 disables; ignored for C = 1).
    random_order: apply the ops in a random permutation (else in the order above).

  Returns:
    (H, W, C) float32 in [0, 1].
  """
  grayscale = image.shape[-1] == 1
  ops = [
    (random_brightness, brightness),
    (random_contrast, contrast),
    (random_saturation, 0.0 if grayscale else saturation),
    (random_hue, 0.0 if grayscale else hue),
  ]
  branches = []
  for index, (op, strength) in enumerate(ops):
    if strength > 0:

      def branch(x, op=op, strength=strength, index=index):
        y = op(x, seeds.fold_in(seed, index), strength)
        return tf.clip_by_value(y, 0.0, 1.0)

      branches.append(branch)
  if not branches:
    return image
  if not random_order or len(branches) == 1:
    for branch in branches:
      image = branch(image)
    return image
  order = tf.argsort(tf.random.stateless_uniform([len(branches)], seed=seeds.fold_in(seed, 99)))
  for position in range(len(branches)):
    image = tf.switch_case(
      order[position], [lambda b=b, x=image: b(x) for b in branches], name="color_op"
    )
  return image


def color_distortion(
  image: tf.Tensor,
  seed: tf.Tensor,
  strength: float = 1.0,
  jitter_prob: float = 0.8,
  grayscale_prob: float = 0.2,
  brightness: float = 0.8,
  contrast: float = 0.8,
  saturation: float = 0.8,
  hue: float = 0.2,
  random_order: bool = True,
) -> tf.Tensor:
  """SimCLR's colour distortion: jitter with p = `jitter_prob`, then grayscale.

  The jitter strengths are `strength` times the per-op factors (SimCLR: 0.8,
  0.8, 0.8, 0.2). Grayscale conversion (p = `grayscale_prob`) applies to RGB
  images only; a one-channel image gets the grayscale-aware jitter.

  Args:
    image: (H, W, C) float32 in [0, 1], C in {1, 3}.
    seed: shape (2,) seed.
    strength: overall strength s.
    jitter_prob: probability of the jitter.
    grayscale_prob: probability of converting an RGB image to gray.
    brightness, contrast, saturation, hue: per-op factors multiplied by s.
    random_order: random order of the jitter ops.

  Returns:
    (H, W, C) float32 in [0, 1].
  """

  def jitter(x, s):
    return color_jitter(
      x,
      s,
      strength * brightness,
      strength * contrast,
      strength * saturation,
      strength * hue,
      random_order,
    )

  image = seeds.apply_with_prob(jitter, image, jitter_prob, seeds.fold_in(seed, 1))
  if image.shape[-1] == 3:
    image = seeds.apply_with_prob(
      lambda x, _: to_grayscale(x), image, grayscale_prob, seeds.fold_in(seed, 2)
    )
  return image
