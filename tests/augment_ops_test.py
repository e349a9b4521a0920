"""Tests of the augmentation ops against NumPy / PIL references.

Tolerances state the float32 bound they rely on (u = 2^-24, values in [0, 1]),
times SAFETY (2); probabilities are checked within 4 binomial standard errors.
"""

import math

import numpy as np
import pytest
import tensorflow as tf
from float32_bounds import SAFETY, U32, assert_within
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


def _resample_bound(taps: int) -> float:
  """Two separable float32 passes of a `taps`-tap filter with sum |w| <= 1.25, values <= 1.

  Per pass: taps products and sums plus the weight's own computation (4
  roundings), times sum |w| (1.25 for the Keys bicubic kernel, a = -0.5); the
  second pass carries the first's error times 1.25. Two evaluations (ours and
  PIL's, which also resamples in float32) may differ by twice that.
  """
  per_pass = (taps + 4) * U32 * 1.25
  return 2 * (per_pass * 1.25 + per_pass)


def _position_bound(size: int) -> float:
  """Bilinear sampling at coordinates computed in float32 (|coordinate| <= 2 size).

  The projective transform's coordinates carry a few roundings (3 u |x|, cos
  and sin of the float32 angle included); a value moves by at most the
  position error times the largest neighbour difference (<= 1) in x and in y,
  plus the blend's own 7 roundings.
  """
  return 2 * 3 * (2 * size) * U32 + 7 * U32


# Crops.


def test_crop_and_resize_upsampling_matches_pil_bicubic():
  image = _image(20, 20, 1)
  offset, size = (3, 5), (10, 12)
  ours = crops.crop_and_resize(image, offset, size, 32, "bicubic").numpy()[..., 0]
  crop = image[3:13, 5:17, 0]
  pil = np.asarray(Image.fromarray(crop, mode="F").resize((32, 32), Image.BICUBIC))
  assert_within(ours, np.clip(pil, 0, 1), SAFETY * _resample_bound(4), "upsampling")


def test_crop_and_resize_antialiased_downsampling_matches_pil():
  image = _image(40, 40, 1, seed=3)
  ours = crops.crop_and_resize(image, (0, 0), (40, 40), 16, "bicubic", antialias=True)
  pil = np.asarray(Image.fromarray(image[..., 0], mode="F").resize((16, 16), Image.BICUBIC))
  # Shrinking 40 -> 16 stretches the 4-tap kernel by 2.5: 10 taps per pass.
  bound = SAFETY * _resample_bound(10)
  assert_within(ours.numpy()[..., 0], np.clip(pil, 0, 1), bound, "antialiased downsampling")


def test_crop_and_resize_matches_tf_crop_then_resize_rgb():
  image = _image(30, 26, 3)
  ours = crops.crop_and_resize(image, (4, 2), (17, 19), 16).numpy()
  ref = tf.image.crop_to_bounding_box(image, 4, 2, 17, 19)
  ref = tf.clip_by_value(tf.image.resize(ref, [16, 16], "bicubic"), 0, 1).numpy()
  # The same resize kernel on the same crop: bit-identical (this checks the box and the clip).
  np.testing.assert_array_equal(ours, ref)


def test_random_resized_crop_shape_range_and_determinism():
  image = _image(40, 30, 3)
  a = crops.random_resized_crop(image, _seed(1), 16)
  b = crops.random_resized_crop(image, _seed(1), 16)
  c = crops.random_resized_crop(image, _seed(2), 16)
  assert a.shape == (16, 16, 3) and a.dtype == tf.float32
  assert float(tf.reduce_min(a)) >= 0.0 and float(tf.reduce_max(a)) <= 1.0
  np.testing.assert_array_equal(a.numpy(), b.numpy())
  assert np.abs(a.numpy() - c.numpy()).max() > 0.1  # another crop, not rounding


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
  # Resizing 16 -> 16 samples pixel centres (weights 0 and 1): exact.
  np.testing.assert_array_equal(ours, image[2:18, 7:23])


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
  bound = SAFETY * _position_bound(17)
  assert_within(ours, tf.image.rot90(image).numpy(), bound, "+90")
  ours = geometric.rotate(image, -math.pi / 2, fill_mode="constant").numpy()
  assert_within(ours, tf.image.rot90(image, 3).numpy(), bound, "-90")


def test_rotate_by_0_is_identity_and_by_180_flips_both_axes():
  image = _image(12, 16, 1)
  # cos 0 = 1 and sin 0 = 0 exactly: integer coordinates, weights 0 and 1, exact.
  np.testing.assert_array_equal(geometric.rotate(image, 0.0).numpy(), image)
  bound = SAFETY * _position_bound(16)
  assert_within(geometric.rotate(image, math.pi).numpy(), image[::-1, ::-1], bound, "180")


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
  assert_within(ours, ref, SAFETY * _position_bound(15), "0.3 rad")


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


def _blur_bound(radius: int) -> float:
  """Two separable passes of k = 2r + 1 non-negative weights summing to 1, values <= 1.

  Each weight: exp, a k-term sum and a division, (k + 3) u; each pass adds k
  products and sums: (2k + 3) u per pass, two passes.
  """
  k = 2 * radius + 1
  return 2 * (2 * k + 3) * U32


@pytest.mark.parametrize("sigma,radius", [(0.7, 2), (2.0, 5)])
def test_gaussian_blur_matches_float64_convolution(sigma, radius):
  image = _image(18, 21, 3)
  ours = intensity.gaussian_blur(image, sigma, radius).numpy()
  assert_within(ours, _numpy_blur(image, sigma, radius), SAFETY * _blur_bound(radius), "blur")


def test_random_blur_uses_a_per_image_sigma_in_range():
  image = _image(20, 20, 1)
  outs = [intensity.random_blur(image, _seed(i), (0.1, 2.0), 0.5).numpy() for i in range(3)]
  assert np.abs(outs[0] - outs[1]).max() > 0.01  # other sigmas, not rounding
  assert outs[0].shape == (20, 20, 1)
  # Blur never increases the variance. Variances in float64; the blurred values carry the
  # float32 blur bound e (kernel side at most the image height), which moves a variance of
  # values in [0, 1] by at most 2 e.
  slack = 2 * SAFETY * _blur_bound(10)
  variance = lambda x: x.astype(np.float64).var()  # noqa: E731
  assert all(variance(o) <= variance(image) + slack for o in outs)


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
  # Bins: channel * 256 is exact, so floor() agrees; counts are exact integers; the result
  # is one subtraction and one division (or a multiplication by a rounded reciprocal): 3 u.
  for c in range(3):
    assert_within(ours[..., c], _numpy_equalize(image[..., c]), SAFETY * 3 * U32, f"channel {c}")


def test_equalize_low_contrast_image_gives_near_uniform_histogram():
  rng = np.random.default_rng(0)
  image = (0.45 + 0.1 * rng.beta(2, 5, (64, 64, 1))).astype(np.float32)
  out = intensity.equalize_histogram(image, num_bins=1024).numpy()
  assert out.min() == 0.0 and out.max() == 1.0
  hist = np.histogram(out, bins=8, range=(0, 1))[0] / out.size
  # All values of one input bin map to one output value, so an eighth can miss 1/8 by at most
  # the largest input bin's mass (plus one value at a boundary).
  counts = np.bincount(np.floor(image.ravel() * 1024).astype(int), minlength=1024)
  assert_within(hist, 1 / 8, (counts.max() + 1) / out.size, "histogram")
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
    # float32 pow = exp(g log x): (2 + 2 |g log x|) u <= 14 u relative for g <= 2,
    # x >= 0.05; g is estimated from the smallest x, whose |log x| is the largest, so that
    # estimate moves x^g by at most another 14 u relative.
    reference = image.astype(np.float64) ** g
    assert_within(out, reference, SAFETY * 28 * U32 * reference, f"draw {i}")
    gammas.append(g)
  slack = SAFETY * 16 * U32 * 2.0  # exp(log gamma) in float32, and the estimate above
  assert 0.5 - slack <= min(gammas) and max(gammas) <= 2.0 + slack
  assert max(gammas) > 1.3 and min(gammas) < 0.8


# Colour.


def test_random_brightness_is_multiplicative_within_range():
  image = _image(8, 8, 3) * 0.5 + 0.1
  for i in range(20):
    out = color.random_brightness(image, _seed(i), 0.8).numpy()
    ratio = out / image
    # out = fl(x f) and ratio = fl(out / x): 2 u from f each, so 4 u between two entries.
    assert_within(ratio, ratio.flat[0], SAFETY * 4 * U32 * ratio.flat[0], f"draw {i}")
    slack = SAFETY * 4 * U32 * 1.8  # the factor's own float32 draw, and the ratio
    assert 0.2 - slack <= ratio.flat[0] <= 1.8 + slack


def test_color_distortion_probabilities_realised():
  image = _image(8, 8, 3)
  # Grayscale copies one channel into three: exactly equal channels.
  gray = lambda x: np.array_equal(x[..., 0], x[..., 1]) and np.array_equal(x[..., 1], x[..., 2])
  rate = _rate(lambda s: gray(color.color_distortion(image, s, jitter_prob=0.0).numpy()))
  assert abs(rate - 0.2) < _tolerance(0.2)
  # Unapplied jitter returns the image itself (bit-identical).
  changed = lambda s: (
    not np.array_equal(
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
