"""Patch policy: level choice, grid, tissue fractions, sampling, block reads, resizing."""

import numpy as np
import pytest
import slide_testdata as td

from tfrecords_tools import slide_inputs, tiling
from tfrecords_tools.slide_reader import open_slide


@pytest.mark.parametrize(
  "mpp, downsamples, target, level, read, resized",
  [
    (0.25, (1.0, 4.0, 16.0), 0.5, 0, 448, True),  # 40x pyramid, 20x patches: shrink level 0
    (0.2527, (1.0, 4.0, 16.0), 0.5, 0, 443, True),  # real Aperio 40x mpp
    (0.25, (1.0, 2.0, 4.0), 0.5, 1, 224, False),  # level 1 is exactly 0.5 um/px
    (0.5, (1.0, 4.0), 2.0, 1, 224, False),
    (0.51, (1.0, 4.0), 0.5, 0, 220, True),  # within the 5% tolerance: a slight upsampling
    (0.25, (1.0, 2.0, 4.0), 0.8, 1, 358, True),  # coarsest level finer than the target
  ],
)
def test_level_plan(mpp, downsamples, target, level, read, resized):
  policy = tiling.PatchPolicy(patch_size=224, target_mpp=target)
  plan = tiling.level_plan(downsamples, (mpp, mpp), policy)
  assert plan.level == level and plan.read_size == (read, read) and plan.resized == resized
  level_mpp = mpp * downsamples[level]
  assert plan.patch_mpp[0] == pytest.approx(read * level_mpp / 224, rel=1e-12)
  # The stored scale is the target up to half a read pixel of rounding.
  assert abs(plan.patch_mpp[0] - target) <= 0.5 * level_mpp / 224 + 1e-12


def test_too_coarse_slide_is_rejected():
  with pytest.raises(tiling.ResolutionError, match="coarser than the target"):
    tiling.level_plan((1.0, 4.0), (1.0, 1.0), tiling.PatchPolicy(target_mpp=0.5))


def test_grid_and_stride():
  plan = tiling.level_plan((1.0, 2.0), (0.25, 0.25), tiling.PatchPolicy(patch_size=64, stride=32))
  assert plan.level == 1 and plan.read_size == (64, 64) and plan.stride == (32, 32)
  grid = tiling.patch_grid((200, 100), plan)
  xs, ys = sorted(set(grid[:, 0])), sorted(set(grid[:, 1]))
  assert xs == [0, 32, 64, 96, 128] and ys == [0, 32]  # every patch fits: x + 64 <= 200
  assert list(map(tuple, grid[:3])) == [(0, 0), (32, 0), (64, 0)]  # row-major
  np.testing.assert_array_equal(tiling.from_level0(tiling.to_level0(grid, 2.0), 2.0), grid)
  odd = 4.0003  # a non-integer downsample round-trips too
  np.testing.assert_array_equal(tiling.from_level0(tiling.to_level0(grid, odd), odd), grid)


@pytest.mark.parametrize("scale", [16.0, 12.5])
def test_tissue_fractions_match_upsampled_mask(scale):
  rng = np.random.default_rng(0)
  mask = rng.random((12, 10)) < 0.4
  # Reference: the mask upsampled to level-0 pixels (each level-0 pixel takes the
  # mask pixel containing its centre), then a plain mean over the box. For an
  # integer scale this is exact; for 12.5 the centre rule misplaces at most one
  # level-0 column/row per mask edge, i.e. <= 2 * 1/48 of a 48-pixel box side.
  size = int(10 * scale), int(12 * scale)
  cols = np.minimum(((np.arange(size[0]) + 0.5) / scale).astype(int), 9)
  rows = np.minimum(((np.arange(size[1]) + 0.5) / scale).astype(int), 11)
  full = mask[rows][:, cols]
  boxes = np.array(
    [[x, y, 48, 48] for y in range(0, size[1] - 48, 17) for x in range(0, size[0] - 48, 13)]
  )
  got = tiling.tissue_fractions(mask, (scale, scale), boxes)
  want = np.array([full[y : y + h, x : x + w].mean() for x, y, w, h in boxes])
  tolerance = 1e-12 if scale == 16.0 else 4.0 / 48.0
  np.testing.assert_allclose(got, want, atol=tolerance)
  # Outside the mask counts as background.
  assert (
    tiling.tissue_fractions(np.ones((2, 2), bool), (1.0, 1.0), np.array([[1, 1, 2, 2]]))[0] == 0.25
  )


def test_sampling_is_deterministic_and_per_slide():
  a = tiling.sample(1000, 50, seed=3, slide_name="s1.svs")
  assert len(a) == 50 and len(set(a)) == 50 and (np.diff(a) > 0).all() and a.max() < 1000
  np.testing.assert_array_equal(a, tiling.sample(1000, 50, seed=3, slide_name="s1.svs"))
  assert not np.array_equal(a, tiling.sample(1000, 50, seed=4, slide_name="s1.svs"))
  assert not np.array_equal(a, tiling.sample(1000, 50, seed=3, slide_name="s2.svs"))
  np.testing.assert_array_equal(tiling.sample(30, 50, 0, "s"), np.arange(30))
  np.testing.assert_array_equal(tiling.sample(30, 0, 0, "s"), np.arange(30))


def _lanczos_weights(n_in: int, n_out: int) -> np.ndarray:
  """Antialiased Lanczos-3 resampling matrix (n_out, n_in), float64.

  The published definition Pillow implements: output pixel i samples the input
  around centre c = (i + 0.5) * s, s = n_in / n_out, with the kernel
  L(x) = sinc(x) sinc(x / 3) stretched by max(s, 1) (antialiasing when
  shrinking), over input pixels j with |j + 0.5 - c| < 3 max(s, 1), weights
  normalised to sum 1.
  """
  s = n_in / n_out
  stretch = max(s, 1.0)
  support = 3.0 * stretch
  w = np.zeros((n_out, n_in))
  for i in range(n_out):
    c = (i + 0.5) * s
    lo, hi = max(int(c - support + 0.5), 0), min(int(c + support + 0.5), n_in)
    x = (np.arange(lo, hi) - c + 0.5) / stretch
    k = np.sinc(x) * np.sinc(x / 3.0)
    k[np.abs(x) >= 3.0] = 0.0
    w[i, lo:hi] = k / k.sum()
  return w


def lanczos_reference(patch: np.ndarray, size: int) -> np.ndarray:
  """Float64 Lanczos-3 resize of an 8-bit RGB patch, as Pillow's two passes.

  Pillow resamples horizontally, then vertically, on 8-bit images (each pass
  rounded and clipped to 0..255); the reference does the same in float64 and
  returns the unrounded second pass.
  """
  h, w = patch.shape[:2]
  rows = np.einsum("oj,hjc->hoc", _lanczos_weights(w, size), patch.astype(np.float64))
  rows = np.clip(np.rint(rows), 0, 255)
  return np.clip(np.einsum("oi,ijc->ojc", _lanczos_weights(h, size), rows), 0, 255)


# Pillow's 22-bit fixed-point weights move a value by < 255 * 2^-22 * taps (< 0.01)
# before its final rounding, so Pillow and the rounded reference differ by at most 1.
RESIZE_TOLERANCE = 1


@pytest.mark.parametrize("n_in", [128, 96, 60])
def test_resize_matches_float64_lanczos(n_in):
  rng = np.random.default_rng(n_in)
  patch = rng.integers(0, 256, (n_in, n_in, 3), dtype=np.uint8)
  got = tiling.resize(patch, 64).astype(np.int64)
  assert np.abs(got - np.rint(lanczos_reference(patch, 64))).max() <= RESIZE_TOLERANCE
  same = patch[:48, :48]
  np.testing.assert_array_equal(tiling.resize(same, 48), same)  # no resize at the exact size


def test_block_reads_equal_the_pyramid_pixels(tmp_path):
  slide = td.make_slide(width=1024, height=768, num_levels=3, seed=2)
  td.write_generic_tiff(str(tmp_path / "s.tif"), slide)
  source = slide_inputs.list_slides(str(tmp_path)).slides[0]
  plan = tiling.level_plan(
    (1.0, 2.0, 4.0), (0.5, 0.5), tiling.PatchPolicy(patch_size=48, target_mpp=1.0)
  )
  assert plan.level == 1 and not plan.resized
  grid = tiling.patch_grid((512, 384), plan)
  keep = np.flatnonzero(np.random.default_rng(0).random(len(grid)) < 0.6)  # runs with gaps
  with open_slide(source) as s:
    patches = list(tiling.read_patches(s, plan, grid[keep], 48, max_block=200))
  assert len(patches) == len(keep)
  for (x, y), patch in zip(grid[keep], patches, strict=True):
    np.testing.assert_array_equal(patch, slide.levels[1][y : y + 48, x : x + 48])


def test_resized_reads_equal_resized_pyramid_pixels(tmp_path):
  slide = td.make_slide(width=1024, height=768, num_levels=3, seed=2)
  td.write_generic_tiff(str(tmp_path / "s.tif"), slide)
  source = slide_inputs.list_slides(str(tmp_path)).slides[0]
  # 0.75 um/px from the 0.5 um/px level 0: 72 read pixels -> 48.
  plan = tiling.level_plan(
    (1.0, 2.0, 4.0), (0.5, 0.5), tiling.PatchPolicy(patch_size=48, target_mpp=0.75)
  )
  assert plan.level == 0 and plan.read_size == (72, 72)
  grid = tiling.patch_grid((1024, 768), plan)[::7]
  with open_slide(source) as s:
    patches = list(tiling.read_patches(s, plan, grid, 48))
  for (x, y), patch in zip(grid, patches, strict=True):
    want = np.rint(lanczos_reference(slide.levels[0][y : y + 72, x : x + 72], 48))
    assert np.abs(patch.astype(np.int64) - want).max() <= RESIZE_TOLERANCE
