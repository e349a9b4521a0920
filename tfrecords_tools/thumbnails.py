"""A PNG per slide for checking the tissue mask: kept patches outlined.

Drawn on the low-resolution image the mask was computed on (pyramid pixels
only, never the label or macro image): the mask's edge in amber, each kept
patch's footprint outlined in green. Images longer than `max_side` are shrunk
first (Pillow BOX). Written with the project's PNG encoder, so the file holds
no text chunks or other metadata.
"""

from __future__ import annotations

import numpy as np
from PIL import Image
from scipy import ndimage

from tfrecords_tools.png_encode import encode_png

MASK_EDGE = (255, 176, 0)
PATCH_OUTLINE = (0, 160, 0)


def render(
  image: np.ndarray,
  mask: np.ndarray,
  boxes: np.ndarray,
  scale: tuple[float, float],
  max_side: int = 2048,
) -> bytes:
  """Renders the check image.

  Args:
    image: (H, W, 3) uint8, the mask-level slide image.
    mask: bool (H, W), the tissue mask.
    boxes: (N, 4) level-0 (x, y, w, h) of the kept patches.
    scale: (sx, sy) level-0 pixels per image pixel.
    max_side: longest side of the PNG.

  Returns:
    PNG bytes.
  """
  out = image.copy()
  edge = mask & ~ndimage.binary_erosion(mask, border_value=0)
  out[edge] = MASK_EDGE
  h, w = out.shape[:2]
  shrink = max(1.0, max(h, w) / max_side)
  if shrink > 1.0:
    size = (max(1, round(w / shrink)), max(1, round(h / shrink)))
    out = np.asarray(Image.fromarray(out).resize(size, Image.Resampling.BOX))
  oh, ow = out.shape[:2]
  fx, fy = ow / (w * scale[0]), oh / (h * scale[1])
  out = np.array(out)  # writable
  for x, y, bw, bh in np.asarray(boxes, np.float64).reshape(-1, 4):
    x0, y0 = int(np.floor(x * fx)), int(np.floor(y * fy))
    x1 = min(ow - 1, max(x0, int(np.ceil((x + bw) * fx)) - 1))
    y1 = min(oh - 1, max(y0, int(np.ceil((y + bh) * fy)) - 1))
    out[y0, x0 : x1 + 1] = PATCH_OUTLINE
    out[y1, x0 : x1 + 1] = PATCH_OUTLINE
    out[y0 : y1 + 1, x0] = PATCH_OUTLINE
    out[y0 : y1 + 1, x1] = PATCH_OUTLINE
  return encode_png(out, 6)
