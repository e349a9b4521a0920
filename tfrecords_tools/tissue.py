"""Tissue detection on a low-resolution image of a slide (after CLAM's segmentTissue).

Steps, on an RGB image of the slide at about `mask_mpp` microns per pixel:
  1. HSV saturation S = (max - min) / max of R, G, B, scaled to 0..255;
  2. median filter of S (`median_um` wide) against noise and thin debris;
  3. Otsu's threshold of the filtered S, never below `min_saturation`
     (so a blank slide does not split its noise in two);
  4. background and pen rejection: pixels whose hue lies in `ink_hue_deg`
     (green to blue: the inks of marker pens, never haematoxylin or eosin,
     which sit between blue-violet and red) with saturation above the
     threshold, and pixels darker than `dark_value` (black ink, debris),
     grown by `ink_margin_um`, are not tissue;
  5. morphological closing (`close_um`) that joins fragments;
  6. holes smaller than `min_hole_area_um2` filled; components smaller than
     `min_tissue_area_um2` (dust, specks) dropped.
Sizes are physical (microns), converted with the image's mpp, so the mask
does not depend on which pyramid level the image came from.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from scipy import ndimage


@dataclasses.dataclass(frozen=True)
class TissueConfig:
  """Tissue detection settings (physical sizes in microns).

  Attributes:
    mask_mpp: microns per pixel of the image the mask is computed on.
    median_um: width of the median filter on saturation.
    min_saturation: lower bound of the saturation threshold (0..255).
    ink_hue_deg: hue range [lo, hi) in degrees treated as pen ink.
    dark_value: pixels whose brightest channel is below this are not tissue.
    ink_margin_um: ink regions are grown by this much before removal.
    close_um: side of the square structuring element of the closing.
    min_hole_area_um2: holes in tissue smaller than this are filled.
    min_tissue_area_um2: tissue components smaller than this are dropped.
  """

  mask_mpp: float = 8.0
  median_um: float = 56.0
  min_saturation: int = 15
  ink_hue_deg: tuple[float, float] = (60.0, 235.0)
  dark_value: int = 50
  ink_margin_um: float = 16.0
  close_um: float = 32.0
  min_hole_area_um2: float = 500.0
  min_tissue_area_um2: float = 10_000.0


def hsv(image: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """HSV of an RGB image.

  Args:
    image: (H, W, 3) uint8 RGB.

  Returns:
    (hue in degrees [0, 360), float32; saturation 0..255 uint8; value 0..255 uint8),
    each (H, W). Grey pixels get hue 0 and saturation 0.
  """
  rgb = image.astype(np.float32)
  r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
  vmax = rgb.max(axis=-1)
  vmin = rgb.min(axis=-1)
  delta = vmax - vmin
  safe = np.where(delta > 0, delta, 1.0)
  hue = np.where(
    vmax == r, (g - b) / safe, np.where(vmax == g, 2.0 + (b - r) / safe, 4.0 + (r - g) / safe)
  )
  hue = np.where(delta > 0, (hue * 60.0) % 360.0, 0.0).astype(np.float32)
  sat = np.where(vmax > 0, delta / np.where(vmax > 0, vmax, 1.0), 0.0)
  return hue, np.floor(sat * 255.0 + 0.5).astype(np.uint8), vmax.astype(np.uint8)


def otsu_threshold(values: np.ndarray) -> int:
  """Otsu's threshold of uint8 values: maximises the between-class variance.

  Args:
    values: uint8 array (any shape).

  Returns:
    t in 0..255; class 0 is values <= t. The smallest maximiser is returned;
    a constant input gives its value.
  """
  hist = np.bincount(values.ravel(), minlength=256).astype(np.float64)
  total = hist.sum()
  if total == 0:
    return 0
  levels = np.arange(256, dtype=np.float64)
  w0 = np.cumsum(hist)
  m0 = np.cumsum(hist * levels)
  w1 = total - w0
  mean_all = m0[-1] / total
  with np.errstate(divide="ignore", invalid="ignore"):
    between = (mean_all * w0 - m0) ** 2 / (w0 * w1)
  between[(w0 == 0) | (w1 == 0)] = -1.0
  if between.max() < 0:
    return int(values.ravel()[0])
  return int(np.argmax(between))


def _pixels(um: float, mpp: float, minimum: int = 1) -> int:
  return max(minimum, int(round(um / mpp)))


def _closing(mask: np.ndarray, size: int) -> np.ndarray:
  """Binary closing with a size x size square, without eroding at the image border."""
  if size <= 1:
    return mask
  pad = size
  padded = np.pad(mask, pad, mode="edge")
  closed = ndimage.binary_closing(padded, structure=np.ones((size, size), bool))
  return closed[pad:-pad, pad:-pad]


def detect_tissue(image: np.ndarray, mpp: float, config: TissueConfig) -> tuple[np.ndarray, dict]:
  """Tissue mask of a low-resolution slide image.

  Args:
    image: (H, W, 3) uint8 RGB.
    mpp: microns per pixel of `image`.
    config: detection settings.

  Returns:
    (bool (H, W) tissue mask, info dict with "threshold" (0..255), "ink_fraction"
    (share of pixels rejected as ink or dark) and "tissue_fraction").
  """
  hue, sat, val = hsv(image)
  median = _pixels(config.median_um, mpp)
  median += 1 - median % 2  # odd width
  sat_med = ndimage.median_filter(sat, size=median, mode="nearest") if median > 1 else sat
  threshold = max(otsu_threshold(sat_med), int(config.min_saturation))
  candidate = sat_med > threshold

  lo, hi = config.ink_hue_deg
  ink = ((hue >= lo) & (hue < hi) & (sat > threshold)) | (val < config.dark_value)
  margin = _pixels(config.ink_margin_um, mpp, minimum=0)
  if margin > 0 and ink.any():
    ink = ndimage.binary_dilation(ink, structure=np.ones((3, 3), bool), iterations=margin)

  tissue = _closing(candidate & ~ink, _pixels(config.close_um, mpp)) & ~ink

  pixel_area = mpp * mpp
  min_hole = config.min_hole_area_um2 / pixel_area
  holes, num_holes = ndimage.label(~tissue)
  if num_holes:
    sizes = np.bincount(holes.ravel())
    border = np.unique(np.concatenate([holes[0], holes[-1], holes[:, 0], holes[:, -1]]))
    small = sizes < min_hole
    small[0] = False
    small[border] = False
    tissue |= small[holes]

  components, num = ndimage.label(tissue, structure=np.ones((3, 3), bool))
  if num:
    sizes = np.bincount(components.ravel())
    keep = sizes >= config.min_tissue_area_um2 / pixel_area
    keep[0] = False
    tissue = keep[components]
  info = {
    "threshold": threshold,
    "ink_fraction": float(ink.mean()),
    "tissue_fraction": float(tissue.mean()),
  }
  return tissue, info
