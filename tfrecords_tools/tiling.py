"""Patches by physical size: level choice, grid, tissue fraction, sampling, reading.

A patch is `patch_size` pixels at `target_mpp` microns per pixel, whatever the
scanner's magnification. For each slide:
  * the read level is the coarsest pyramid level whose mpp is at most
    `target_mpp * (1 + mpp_tolerance)` (so patches are never upsampled by more
    than the tolerance); a slide whose level 0 is coarser than that is
    rejected (`ResolutionError`);
  * a patch covers `read = round(patch_size * target_mpp / level_mpp)` pixels
    of that level (per axis) and is resized to `patch_size` with Pillow's
    Lanczos filter (a = 3, antialiased when shrinking; RESIZE_FILTER) unless
    `read == patch_size`, when the pixels are stored exactly as read. The
    stored pixels therefore have `read * level_mpp / patch_size` microns each
    (`patch/mpp` in the record), within rounding of `target_mpp`;
  * the grid steps by `round(stride * target_mpp / level_mpp)` level pixels
    from the level's origin and keeps patches that fit inside the level;
  * each patch's tissue fraction is the exact area share of the tissue mask
    under its footprint; patches below `min_tissue_fraction` are dropped;
  * if more than `max_patches_per_slide` remain, a subset is drawn without
    replacement from a generator seeded by (`seed`, SHA-256 of the slide's
    name), so it is the same in every run, worker count and salt.
Coordinates in records are level-0 pixels: `x0 = round(x_level * downsample)`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from collections.abc import Iterator

import numpy as np
from PIL import Image

from tfrecords_tools.slide_reader import Slide

RESIZE_FILTER = "lanczos3"  # Pillow Image.Resampling.LANCZOS (antialiased when shrinking)
MASK_READ_TILE = 4096  # level pixels per side read at once when building the mask image


class ResolutionError(ValueError):
  """The slide has no level fine enough for the target mpp."""


@dataclasses.dataclass(frozen=True)
class PatchPolicy:
  """What a patch is and which patches are kept.

  Attributes:
    patch_size: output side in pixels.
    target_mpp: microns per output pixel (0.5 is about 20x).
    stride: grid step in output pixels (None = patch_size).
    mpp_tolerance: relative mpp slack when choosing the read level.
    min_tissue_fraction: minimum tissue share of a kept patch (0..1).
    max_patches_per_slide: keep at most this many per slide (0 = all).
    seed: sampling seed.
  """

  patch_size: int = 224
  target_mpp: float = 0.5
  stride: int | None = None
  mpp_tolerance: float = 0.05
  min_tissue_fraction: float = 0.5
  max_patches_per_slide: int = 0
  seed: int = 0

  def validate(self) -> None:
    """Raises ValueError naming the bad field."""
    if self.patch_size < 8:
      raise ValueError(f"patch_size must be >= 8, got {self.patch_size}")
    if not self.target_mpp > 0:
      raise ValueError(f"target_mpp must be > 0, got {self.target_mpp}")
    if self.stride is not None and self.stride < 1:
      raise ValueError(f"stride must be >= 1, got {self.stride}")
    if not 0 <= self.mpp_tolerance < 1:
      raise ValueError(f"mpp_tolerance must be in [0, 1), got {self.mpp_tolerance}")
    if not 0 <= self.min_tissue_fraction <= 1:
      raise ValueError(f"min_tissue_fraction must be in [0, 1], got {self.min_tissue_fraction}")
    if self.max_patches_per_slide < 0:
      raise ValueError(f"max_patches_per_slide must be >= 0, got {self.max_patches_per_slide}")


@dataclasses.dataclass(frozen=True)
class LevelPlan:
  """How one slide's patches are read.

  Attributes:
    level: pyramid level read.
    downsample: level-0 pixels per level pixel.
    level_mpp: (x, y) microns per pixel of that level.
    read_size: (w, h) level pixels per patch.
    stride: (x, y) grid step in level pixels.
    patch_mpp: (x, y) microns per stored pixel.
    patch_size: stored side in pixels.
  """

  level: int
  downsample: float
  level_mpp: tuple[float, float]
  read_size: tuple[int, int]
  stride: tuple[int, int]
  patch_mpp: tuple[float, float]
  patch_size: int

  @property
  def resized(self) -> bool:
    """Whether patches are resized after reading."""
    return self.read_size != (self.patch_size, self.patch_size)


def best_level(
  downsamples: tuple[float, ...], mpp: tuple[float, float], target_mpp: float, tolerance: float
) -> int:
  """The coarsest level whose mpp is at most target_mpp * (1 + tolerance) on both axes.

  Args:
    downsamples: level-0 pixels per level pixel, per level.
    mpp: level-0 (x, y) microns per pixel.
    target_mpp: the wanted microns per pixel.
    tolerance: relative slack.

  Returns:
    The level index.

  Raises:
    ResolutionError: even level 0 is coarser than that.
  """
  limit = target_mpp * (1.0 + tolerance)
  fine = [i for i, ds in enumerate(downsamples) if max(mpp) * ds <= limit]
  if not fine:
    raise ResolutionError(
      f"level 0 has {max(mpp):.4g} um/px, coarser than the target {target_mpp:g} um/px "
      f"(+{tolerance:.0%}); lower --target_mpp or rescan at a higher magnification"
    )
  return max(fine, key=lambda i: downsamples[i])


def level_plan(
  downsamples: tuple[float, ...], mpp: tuple[float, float], policy: PatchPolicy
) -> LevelPlan:
  """Chooses the read level and the read size and stride in its pixels.

  Args:
    downsamples: level-0 pixels per level pixel, per level.
    mpp: level-0 (x, y) microns per pixel.
    policy: the patch policy.

  Returns:
    The LevelPlan.

  Raises:
    ResolutionError: no level is fine enough.
  """
  level = best_level(downsamples, mpp, policy.target_mpp, policy.mpp_tolerance)
  ds = downsamples[level]
  level_mpp = (mpp[0] * ds, mpp[1] * ds)
  stride = policy.stride or policy.patch_size
  rx, ry = (max(1, round(policy.patch_size * policy.target_mpp / m)) for m in level_mpp)
  sx, sy = (max(1, round(stride * policy.target_mpp / m)) for m in level_mpp)
  patch_mpp = (rx * level_mpp[0] / policy.patch_size, ry * level_mpp[1] / policy.patch_size)
  return LevelPlan(level, ds, level_mpp, (rx, ry), (sx, sy), patch_mpp, policy.patch_size)


def patch_grid(level_size: tuple[int, int], plan: LevelPlan) -> np.ndarray:
  """Top-left corners of all patches that fit in the level, row-major.

  Args:
    level_size: (width, height) of the read level.
    plan: the LevelPlan.

  Returns:
    (N, 2) int64 (x, y) in level pixels.
  """
  (w, h), (rw, rh), (sx, sy) = level_size, plan.read_size, plan.stride
  xs = np.arange(0, w - rw + 1, sx, dtype=np.int64)
  ys = np.arange(0, h - rh + 1, sy, dtype=np.int64)
  gy, gx = np.meshgrid(ys, xs, indexing="ij")
  return np.stack([gx.ravel(), gy.ravel()], axis=1)


def to_level0(coords: np.ndarray, downsample: float) -> np.ndarray:
  """Level pixel coordinates -> level-0 pixel coordinates (rounded)."""
  return np.rint(coords * downsample).astype(np.int64)


def from_level0(coords: np.ndarray, downsample: float) -> np.ndarray:
  """Level-0 coordinates (from `to_level0`) -> the level coordinates they came from."""
  return np.rint(coords / downsample).astype(np.int64)


def mask_image(
  slide: Slide, mpp: tuple[float, float], mask_mpp: float, tolerance: float
) -> tuple[np.ndarray, int, int]:
  """The slide at about `mask_mpp` microns per pixel, for tissue detection and thumbnails.

  Reads the coarsest level with mpp <= mask_mpp * (1 + tolerance) (else level
  0), in tiles, and averages factor x factor blocks (exact area
  mean, rounded), factor = floor(mask_mpp * (1 + tolerance) / level mpp) >= 1.

  Args:
    slide: the open slide.
    mpp: its level-0 (x, y) microns per pixel (from metadata or assumed).
    mask_mpp: wanted microns per pixel.
    tolerance: relative slack.

  Returns:
    (RGB uint8 image (H, W, 3), level read, block factor); one image pixel
    covers downsample * factor level-0 pixels per axis.
  """
  limit = mask_mpp * (1.0 + tolerance)
  dss = slide.level_downsamples
  fine = [i for i, ds in enumerate(dss) if max(mpp) * ds <= limit]
  level = max(fine, key=lambda i: dss[i]) if fine else int(np.argmin(dss))
  factor = max(1, math.floor(limit / (max(mpp) * dss[level])))
  w, h = slide.level_dimensions[level]
  out_w, out_h = max(w // factor, 1), max(h // factor, 1)
  out = np.empty((out_h, out_w, 3), np.uint8)
  step = max(factor, MASK_READ_TILE // factor * factor)
  for y in range(0, out_h * factor, step):
    for x in range(0, out_w * factor, step):
      tw, th = min(step, out_w * factor - x), min(step, out_h * factor - y)
      region = slide.read_region(level, x, y, tw, th)
      if factor > 1:
        blocks = region.reshape(th // factor, factor, tw // factor, factor, 3)
        region = np.floor(blocks.mean(axis=(1, 3), dtype=np.float64) + 0.5).astype(np.uint8)
      out[y // factor : (y + th) // factor, x // factor : (x + tw) // factor] = region
  return out, level, factor


def tissue_fractions(mask: np.ndarray, scale: tuple[float, float], boxes: np.ndarray) -> np.ndarray:
  """Exact tissue share of level-0 boxes under a coarse mask.

  Mask pixel (i, j) covers level-0 [j * sx, (j + 1) * sx) x [i * sy, (i + 1) * sy).
  The integral of the piecewise-constant mask over a box is the bilinear
  interpolation of its summed-area table at the box corners (exact). Parts of a
  box outside the mask count as background.

  Args:
    mask: bool (H, W).
    scale: (sx, sy) level-0 pixels per mask pixel.
    boxes: (N, 4) float (x, y, w, h) in level-0 pixels.

  Returns:
    (N,) float64 fractions in [0, 1].
  """
  h, w = mask.shape
  table = np.zeros((h + 1, w + 1), np.float64)
  table[1:, 1:] = np.cumsum(np.cumsum(mask, axis=0, dtype=np.float64), axis=1)

  def integral(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0, w)
    y = np.clip(y, 0, h)
    x0 = np.minimum(np.floor(x).astype(np.int64), w - 1)
    y0 = np.minimum(np.floor(y).astype(np.int64), h - 1)
    fx, fy = x - x0, y - y0
    return (
      table[y0, x0] * (1 - fx) * (1 - fy)
      + table[y0, x0 + 1] * fx * (1 - fy)
      + table[y0 + 1, x0] * (1 - fx) * fy
      + table[y0 + 1, x0 + 1] * fx * fy
    )

  boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
  x0, y0 = boxes[:, 0] / scale[0], boxes[:, 1] / scale[1]
  x1, y1 = x0 + boxes[:, 2] / scale[0], y0 + boxes[:, 3] / scale[1]
  inside = integral(x1, y1) - integral(x0, y1) - integral(x1, y0) + integral(x0, y0)
  area = (x1 - x0) * (y1 - y0)
  return np.clip(inside / np.maximum(area, 1e-12), 0.0, 1.0)


def sample(count: int, max_count: int, seed: int, slide_name: str) -> np.ndarray:
  """Indices of the patches to keep, sorted.

  Args:
    count: number of candidate patches.
    max_count: keep at most this many (0 = all).
    seed: the run's sampling seed.
    slide_name: the slide's name (its SHA-256 makes each slide's draw differ).

  Returns:
    (K,) int64 sorted indices, K = min(count, max_count) (or count).
  """
  if max_count <= 0 or count <= max_count:
    return np.arange(count, dtype=np.int64)
  key = int.from_bytes(hashlib.sha256(slide_name.encode("utf-8")).digest()[:8], "little")
  rng = np.random.default_rng([seed, key])
  return np.sort(rng.choice(count, size=max_count, replace=False)).astype(np.int64)


def resize(patch: np.ndarray, patch_size: int) -> np.ndarray:
  """Resizes a read patch to patch_size x patch_size with RESIZE_FILTER."""
  if patch.shape[0] == patch_size and patch.shape[1] == patch_size:
    return patch
  image = Image.fromarray(patch).resize((patch_size, patch_size), Image.Resampling.LANCZOS)
  return np.asarray(image)


def read_patches(
  slide: Slide,
  plan: LevelPlan,
  coords: np.ndarray,
  patch_size: int,
  max_block: int = 4096,
) -> Iterator[np.ndarray]:
  """Reads patches in the given order, joining horizontal runs into one read.

  Patches on the same row whose reads touch or overlap are read with one call
  of at most `max_block` level pixels wide and cut apart, which saves the
  per-call overhead and repeated tile decoding of the reader.

  Args:
    slide: the open slide.
    plan: the LevelPlan.
    coords: (N, 2) level pixel (x, y), row-major order.
    patch_size: output side.
    max_block: widest single read in level pixels.

  Yields:
    (patch_size, patch_size, 3) uint8 RGB, one per coordinate, in order.
  """
  rw, rh = plan.read_size
  n = len(coords)
  i = 0
  while i < n:
    x, y = int(coords[i, 0]), int(coords[i, 1])
    j = i + 1
    while (
      j < n
      and coords[j, 1] == y
      and 0 < coords[j, 0] - coords[j - 1, 0] <= rw
      and coords[j, 0] + rw - x <= max_block
    ):
      j += 1
    width = int(coords[j - 1, 0]) + rw - x
    block = slide.read_region(plan.level, x, y, width, rh)
    for k in range(i, j):
      off = int(coords[k, 0]) - x
      yield resize(block[:, off : off + rw], patch_size)
    i = j
