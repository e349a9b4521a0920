"""Tissue detection: HSV, Otsu, and the mask against the drawn truth of generated slides."""

import colorsys

import numpy as np
import pytest
import slide_testdata as td

from tfrecords_tools import tissue


def test_hsv_matches_colorsys():
  rng = np.random.default_rng(0)
  pixels = rng.integers(0, 256, size=(1, 400, 3), dtype=np.uint8)
  pixels[0, :4] = [[0, 0, 0], [255, 255, 255], [200, 30, 30], [30, 60, 200]]
  hue, sat, val = tissue.hsv(pixels)
  for k, (r, g, b) in enumerate(pixels[0].astype(float) / 255.0):
    h, s, v = colorsys.rgb_to_hsv(r, g, b)
    # Hue: float32 arithmetic against float64, error << 1e-3 degree; compared on the circle.
    d = abs(hue[0, k] - h * 360.0) % 360.0
    assert min(d, 360.0 - d) < 1e-3
    assert abs(int(sat[0, k]) - s * 255.0) <= 0.5 + 1e-6  # rounded to the nearest integer
    assert val[0, k] == round(v * 255.0)


def _brute_force_otsu(values: np.ndarray) -> int:
  """Threshold minimising the within-class variance, from the raw values in float64."""
  v = values.ravel().astype(np.float64)
  best, best_t = None, 0
  for t in range(256):
    lo, hi = v[v <= t], v[v > t]
    if len(lo) == 0 or len(hi) == 0:
      continue
    within = len(lo) * lo.var() + len(hi) * hi.var()
    # Thresholds between the same two occupied bins split alike; the smallest wins.
    if best is None or within < best * (1 - 1e-12):
      best, best_t = within, t
  return best_t


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_otsu_matches_brute_force_within_class_variance(seed):
  rng = np.random.default_rng(seed)
  a = rng.normal(30 + 10 * seed, 8, 3000)
  b = rng.normal(150, 20 + 5 * seed, 1000 + 500 * seed)
  values = np.clip(np.concatenate([a, b]), 0, 255).astype(np.uint8)
  assert tissue.otsu_threshold(values) == _brute_force_otsu(values)
  assert tissue.otsu_threshold(np.full(10, 7, np.uint8)) == 7


@pytest.fixture(scope="module")
def slide():
  return td.make_slide(seed=1)


@pytest.mark.parametrize("level", [3, 4])
def test_mask_finds_the_drawn_tissue(slide, level):
  image = slide.levels[level]
  mpp = slide.mpp * 2**level
  mask, info = tissue.detect_tissue(image, mpp, tissue.TissueConfig())
  truth = td.truth_mask(slide, 2**level)
  iou = (mask & truth).sum() / (mask | truth).sum()
  assert iou >= 0.9, iou
  factor = 2**level
  # Pen stroke, speck and blank area: no mask pixel covers any part of them.
  for drawn in (slide.pen, slide.speck):
    h, w = drawn.shape
    touched = drawn.reshape(h // factor, factor, w // factor, factor).any(axis=(1, 3))
    assert not (mask & touched).any()
  x, y, w, h = slide.blank
  assert not mask[y // factor : (y + h) // factor, x // factor : (x + w) // factor].any()
  assert info["ink_fraction"] > 0 and 0.15 < info["tissue_fraction"] < 0.3


def test_without_pen_rejection_the_pen_would_count_as_tissue(slide):
  # The check above is meaningful: the pen is as saturated as the tissue.
  config = tissue.TissueConfig(ink_hue_deg=(0.0, 0.0), dark_value=0)
  mask, _ = tissue.detect_tissue(slide.levels[4], slide.mpp * 16, config)
  pen = td.truth_mask(
    td.SyntheticSlide(slide.levels, slide.pen, slide.pen, slide.speck, slide.blank, slide.mpp), 16
  )
  assert (mask & pen).sum() > 0.5 * pen.sum()


def test_blank_slide_has_no_tissue():
  rng = np.random.default_rng(0)
  blank = np.clip(rng.normal(240, 2, (96, 128, 3)), 0, 255).astype(np.uint8)
  mask, info = tissue.detect_tissue(blank, 8.0, tissue.TissueConfig())
  assert not mask.any() and info["threshold"] >= tissue.TissueConfig().min_saturation
