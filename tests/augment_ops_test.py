"""Tests of the augmentation ops against NumPy / PIL references."""

import math

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from remedis_tf.data import color, crops, geometric, intensity, seeds


def _image(h=24, w=24, c=1, seed=0):
  return np.random.default_rng(seed).uniform(0.0, 1.0, (h, w, c)).astype(np.float32)


def _seed(i):
  return seeds.fold_in(seeds.make_seed(123), i)


def _rate(fn, n=400):
  """Fraction of n seeded draws for which fn(seed) is True."""
  return float(np.mean([bool(fn(_seed(i))) for i in range(n)]))


def _tolerance(p, n=400):
  return 4.0 * math.sqrt(p * (1 - p) / n) + 1e-9


# Crops.


def test_crop_and_resize_upsampling_matches_pil_bicubic():
  image = _image(20, 20, 1)
  offset, size = (3, 5), (10, 12)
  ours = crops.crop_and_resize(image, offset, size, 32, "bicubic").numpy()[..., 0]
  crop = image[3:13, 5:17, 0]
  pil = np.asarray(Image.fromarray(crop, mode="F").resize((32, 32), Image.BICUBIC))
  np.testing.assert_allclose(ours, np.clip(pil, 0, 1), atol=2e-3)


def test_crop_and_resize_antialiased_downsampling_matches_pil():
  image = _image(40, 40, 1, seed=3)
  ours = crops.crop_and_resize(image, (0, 0), (40, 40), 16, "bicubic", antialias=True)
  pil = np.asarray(Image.fromarray(image[..., 0], mode="F").resize((16, 16), Image.BICUBIC))
  np.testing.assert_allclose(ours.numpy()[..., 0], np.clip(pil, 0, 1), atol=2e-3)


def test_crop_and_resize_matches_tf_crop_then_resize_rgb():
  image = _image(30, 26, 3)
  ours = crops.crop_and_resize(image, (4, 2), (17, 19), 16).numpy()
  ref = tf.image.crop_to_bounding_box(image, 4, 2, 17, 19)
  ref = tf.clip_by_value(tf.image.resize(ref, [16, 16], "bicubic"), 0, 1).numpy()
  np.testing.assert_allclose(ours, ref, atol=1e-6)


def test_random_resized_crop_shape_range_and_determinism():
  image = _image(40, 30, 3)
  a = crops.random_resized_crop(image, _seed(1), 16)
  b = crops.random_resized_crop(image, _seed(1), 16)
  c = crops.random_resized_crop(image, _seed(2), 16)
  assert a.shape == (16, 16, 3) and a.dtype == tf.float32
  assert float(tf.reduce_min(a)) >= 0.0 and float(tf.reduce_max(a)) <= 1.0
  np.testing.assert_array_equal(a.numpy(), b.numpy())
  assert not np.allclose(a.numpy(), c.numpy())


def test_sample_crop_box_respects_area_and_aspect():
  shape = tf.constant([200, 160, 3])
  areas, aspects = [], []
  for i in range(200):
    offset, size = crops.sample_crop_box(shape, _seed(i), (0.08, 1.0), (3 / 4, 4 / 3))
    (y, x), (h, w) = offset.numpy(), size.numpy()
    assert y >= 0 and x >= 0 and y + h <= 200 and x + w <= 160
    areas.append(h * w / (200 * 160))
    aspects.append(w / h)
  assert min(areas) >= 0.08 - 0.01 and max(areas) <= 1.0
  assert min(aspects) >= 0.75 - 0.03 and max(aspects) <= 4 / 3 + 0.03
  assert np.std(areas) > 0.1  # actually random


def test_center_crop_matches_numpy_crop_when_no_resize_needed():
  image = _image(20, 30, 1)
  ours = crops.center_crop(image, 16, crop_fraction=0.8).numpy()
  np.testing.assert_allclose(ours, image[2:18, 7:23], atol=1e-6)


@pytest.mark.parametrize("axis,prob", [(1, 0.5), (0, 0.3)])
def test_random_flip_probability_and_values(axis, prob):
  image = _image(8, 8, 1)
  flipped = np.flip(image, axis)
  outs = [crops.random_flip(image, _seed(i), axis, prob).numpy() for i in range(400)]
  for out in outs:
    assert np.array_equal(out, image) or np.array_equal(out, flipped)
  rate = np.mean([np.array_equal(o, flipped) for o in outs])
  assert abs(rate - prob) < _tolerance(prob)


# Geometric.


def test_rotate_by_90_degrees_equals_rot90():
  image = _image(17, 17, 2)
  ours = geometric.rotate(image, math.pi / 2).numpy()
  np.testing.assert_allclose(ours, tf.image.rot90(image).numpy(), atol=1e-4)
  ours = geometric.rotate(image, -math.pi / 2, fill_mode="constant").numpy()
  np.testing.assert_allclose(ours, tf.image.rot90(image, 3).numpy(), atol=1e-4)


def test_rotate_by_0_is_identity_and_by_180_flips_both_axes():
  image = _image(12, 16, 1)
  np.testing.assert_allclose(geometric.rotate(image, 0.0).numpy(), image, atol=1e-6)
  np.testing.assert_allclose(geometric.rotate(image, math.pi).numpy(), image[::-1, ::-1], atol=1e-4)


def test_rotate_small_angle_matches_numpy_bilinear_reference():
  image = _image(15, 15, 1, seed=4)
  angle = 0.3
  ours = geometric.rotate(image, angle, fill_mode="nearest").numpy()[..., 0]
  c = 7.0
  ref = np.zeros((15, 15))
  for i in range(15):
    for j in range(15):
      x = c + math.cos(angle) * (j - c) - math.sin(angle) * (i - c)
      y = c + math.sin(angle) * (j - c) + math.cos(angle) * (i - c)
      x, y = min(max(x, 0), 14), min(max(y, 0), 14)
      x0, y0 = min(int(x), 13), min(int(y), 13)
      fx, fy = x - x0, y - y0
      v = image[..., 0].astype(np.float64)
      ref[i, j] = (1 - fy) * ((1 - fx) * v[y0, x0] + fx * v[y0, x0 + 1]) + fy * (
        (1 - fx) * v[y0 + 1, x0] + fx * v[y0 + 1, x0 + 1]
      )
  np.testing.assert_allclose(ours, ref, atol=1e-4)


def test_random_rotation_deterministic_and_bounded():
  image = _image(16, 16, 1)
  a = geometric.random_rotation(image, _seed(5), 30.0).numpy()
  b = geometric.random_rotation(image, _seed(5), 30.0).numpy()
  np.testing.assert_array_equal(a, b)
  assert a.min() >= 0.0 and a.max() <= 1.0


def test_random_rot90_is_uniform_over_quarter_turns():
  image = _image(6, 6, 1)
  refs = [tf.image.rot90(image, k).numpy() for k in range(4)]
  counts = np.zeros(4)
  for i in range(400):
    out = geometric.random_rot90(image, _seed(i)).numpy()
    counts[[np.array_equal(out, r) for r in refs].index(True)] += 1
  assert np.all(np.abs(counts / 400 - 0.25) < _tolerance(0.25))


def test_elastic_alpha_zero_is_identity():
  image = _image(20, 20, 3)
  out = geometric.elastic_deform(image, _seed(0), 0.0, 3.0).numpy()
  np.testing.assert_array_equal(out, image)


def test_elastic_displacement_rms_equals_alpha():
  # On a horizontal ramp, bilinear sampling returns the x displacement exactly.
  size, alpha = 64, 1.5
  ramp = np.tile(np.arange(size, dtype=np.float32)[None, :, None], [size, 1, 1])
  out = geometric.elastic_deform(ramp, _seed(1), alpha, 4.0).numpy()
  dx = (out - ramp)[16:-16, 16:-16]
  rms = float(np.sqrt(np.mean(dx**2)))
  assert 0.5 * alpha < rms < 1.5 * alpha
  assert np.abs(dx).max() < 6 * alpha


# Intensity.


def _numpy_blur(image, sigma, radius):
  x = np.arange(-radius, radius + 1, dtype=np.float64)
  k = np.exp(-(x**2) / (2 * sigma**2))
  k /= k.sum()
  k2 = np.outer(k, k)
  padded = np.pad(image.astype(np.float64), [(radius, radius), (radius, radius), (0, 0)], "reflect")
  out = np.zeros(image.shape, np.float64)
  h, w = image.shape[:2]
  for dy in range(2 * radius + 1):
    for dx in range(2 * radius + 1):
      out += k2[dy, dx] * padded[dy : dy + h, dx : dx + w]
  return out


@pytest.mark.parametrize("sigma,radius", [(0.7, 2), (2.0, 5)])
def test_gaussian_blur_matches_float64_convolution(sigma, radius):
  image = _image(18, 21, 3)
  ours = intensity.gaussian_blur(image, sigma, radius).numpy()
  np.testing.assert_allclose(ours, _numpy_blur(image, sigma, radius), atol=1e-5)


def test_random_blur_uses_a_per_image_sigma_in_range():
  image = _image(20, 20, 1)
  outs = [intensity.random_blur(image, _seed(i), (0.1, 2.0), 0.5).numpy() for i in range(3)]
  assert not np.allclose(outs[0], outs[1])
  assert outs[0].shape == (20, 20, 1)
  # Blur never increases the variance.
  assert all(o.var() <= image.var() + 1e-6 for o in outs)


def _numpy_equalize(channel, bins=256):
  b = np.clip(np.floor(channel * bins), 0, bins - 1).astype(int)
  hist = np.bincount(b.ravel(), minlength=bins)
  cdf = np.cumsum(hist)
  cdf_min = cdf[np.nonzero(hist)[0][0]]
  if cdf[-1] == cdf_min:
    return channel
  return (cdf[b] - cdf_min) / (cdf[-1] - cdf_min)


def test_equalize_matches_numpy_cdf_reference():
  image = _image(16, 20, 3) ** 2
  ours = intensity.equalize_histogram(image).numpy()
  for c in range(3):
    np.testing.assert_allclose(ours[..., c], _numpy_equalize(image[..., c]), atol=1e-6)


def test_equalize_low_contrast_image_gives_near_uniform_histogram():
  rng = np.random.default_rng(0)
  image = (0.45 + 0.1 * rng.beta(2, 5, (64, 64, 1))).astype(np.float32)
  out = intensity.equalize_histogram(image, num_bins=1024).numpy()
  assert out.min() == 0.0 and out.max() == 1.0
  hist = np.histogram(out, bins=8, range=(0, 1))[0] / out.size
  np.testing.assert_allclose(hist, 1 / 8, atol=0.02)
  assert image.max() - image.min() <= 0.1  # low contrast before


def test_equalize_constant_image_unchanged():
  image = np.full((8, 8, 1), 0.3, np.float32)
  np.testing.assert_array_equal(intensity.equalize_histogram(image).numpy(), image)


def test_random_gamma_is_a_power_with_gamma_in_range():
  image = np.linspace(0.05, 1.0, 64, dtype=np.float32).reshape(8, 8, 1)
  gammas = []
  for i in range(50):
    out = intensity.random_gamma(image, _seed(i), (0.5, 2.0)).numpy()
    g = np.log(out[0, 0, 0]) / np.log(image[0, 0, 0])
    np.testing.assert_allclose(out, image.astype(np.float64) ** g, rtol=1e-4)
    gammas.append(g)
  assert 0.5 - 1e-4 <= min(gammas) and max(gammas) <= 2.0 + 1e-4
  assert max(gammas) > 1.3 and min(gammas) < 0.8


# Colour.


def test_random_brightness_is_multiplicative_within_range():
  image = _image(8, 8, 3) * 0.5 + 0.1
  for i in range(20):
    out = color.random_brightness(image, _seed(i), 0.8).numpy()
    ratio = out / image
    np.testing.assert_allclose(ratio, ratio.flat[0], rtol=1e-5)
    assert 0.2 - 1e-6 <= ratio.flat[0] <= 1.8 + 1e-6


def test_color_distortion_probabilities_realised():
  image = _image(8, 8, 3)
  gray = lambda x: np.allclose(x[..., 0], x[..., 1]) and np.allclose(x[..., 1], x[..., 2])
  rate = _rate(lambda s: gray(color.color_distortion(image, s, jitter_prob=0.0).numpy()))
  assert abs(rate - 0.2) < _tolerance(0.2)
  changed = lambda s: (
    not np.allclose(
      color.color_distortion(image, s, jitter_prob=0.8, grayscale_prob=0.0).numpy(), image
    )
  )
  rate = _rate(changed)
  assert abs(rate - 0.8) < _tolerance(0.8)


def test_color_distortion_ranges_and_grayscale_aware_variant():
  rgb = _image(8, 8, 3)
  gray = _image(8, 8, 1)
  for i in range(10):
    out = color.color_distortion(rgb, _seed(i), strength=1.5).numpy()
    assert out.shape == (8, 8, 3) and out.min() >= 0 and out.max() <= 1
    out = color.color_distortion(gray, _seed(i), strength=1.0, jitter_prob=1.0, hue=0.5).numpy()
    assert out.shape == (8, 8, 1) and out.min() >= 0 and out.max() <= 1


def test_color_jitter_random_order_changes_result_but_not_with_fixed_seed():
  image = _image(8, 8, 3)
  a = color.color_jitter(image, _seed(1), 0.8, 0.8, 0.8, 0.2).numpy()
  b = color.color_jitter(image, _seed(1), 0.8, 0.8, 0.8, 0.2).numpy()
  np.testing.assert_array_equal(a, b)
  outs = {
    color.color_jitter(image, _seed(i), 0.8, 0.8, 0.8, 0.2).numpy().tobytes() for i in range(5)
  }
  assert len(outs) == 5


def test_apply_with_prob_realises_probability_in_graph_mode():
  fn = tf.function(lambda s: seeds.apply_with_prob(lambda x, _: x + 1.0, tf.zeros([]), 0.3, s))
  rate = _rate(lambda s: fn(s).numpy() == 1.0)
  assert abs(rate - 0.3) < _tolerance(0.3)
