"""The pixel policy: stored DICOM values -> display-ready 16-bit or 8-bit pixels.

Monochrome (MONOCHROME1 / MONOCHROME2), in this order:
  1. Modality LUT: Modality LUT Sequence when present, else
     RescaleSlope * stored + RescaleIntercept, else the stored values.
  2. VOI: a VOI LUT Sequence item, or a window (WindowCenter / WindowWidth,
     item `window_index` of multi-valued ones) with VOI LUT Function LINEAR
     (default), LINEAR_EXACT or SIGMOID, as defined in DICOM PS3.3 C.11.2.1.
     With `prefer_voi_lut` a VOI LUT Sequence wins over a window when both are
     present. When the object has no usable VOI (or `use_dicom_voi` is False),
     the fallback maps [min, max] (`minmax`) or the [low, high] percentiles
     (`percentile`, clipped) of the frame linearly onto the output range. A
     window whose output is constant over the frame falls back the same way.
  3. MONOCHROME1 is inverted (1 - y) after VOI, so bright is always dense.
  4. The result in [0, 1] is scaled to 0..65535 and rounded: a 16-bit PNG.
A frame whose values are all equal is rejected (`EmptyImageError`): the
converter never writes a blank image.

Colour: RGB and YBR (already converted to RGB by pydicom's decoders) and
PALETTE COLOR (through its palette) become 8-bit RGB; samples of more than 8
bits are scaled by 255 / (2**bits - 1) and rounded. Palettes (plain or
segmented, 8- or 16-bit entries) and LUT data in words are decoded here with
the dataset's own byte order (`byte_order`): pydicom keeps OW values as the
file's bytes, and its apply_color_lut (3.0.2) reads them as little endian.

Damaged attributes (a missing palette, a malformed LUT, a non-numeric window)
raise `InvalidAttributeError`; what the policy cannot apply raises
`UnsupportedImageError`; a constant frame `EmptyImageError`.

Resize (optional): the long side is brought to `max_size` keeping the aspect
ratio (antialiased bilinear in float32), never enlarged.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
from PIL import Image

VOI_FALLBACKS = ("minmax", "percentile")
VOI_FUNCTIONS = ("LINEAR", "LINEAR_EXACT", "SIGMOID")
MONOCHROME = ("MONOCHROME1", "MONOCHROME2")
COLOR = ("RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT", "YBR_PARTIAL_420")


class EmptyImageError(ValueError):
  """The frame is constant: converting it would yield a blank image."""


class UnsupportedImageError(ValueError):
  """The photometric interpretation or LUT is one the policy cannot apply."""


class InvalidAttributeError(ValueError):
  """An attribute the policy needs is missing or malformed (a damaged file)."""


@dataclasses.dataclass(frozen=True)
class PixelPolicy:
  """How stored pixels become output pixels.

  Attributes:
    use_dicom_voi: apply the object's own VOI (window or VOI LUT) when present.
    prefer_voi_lut: when both a VOI LUT Sequence and a window are present, use
      the LUT (True) or the window (False).
    window_index: which item of multi-valued window / VOI LUT attributes to use
      (clamped to the number of items).
    voi_fallback: "minmax" or "percentile", used when no DICOM VOI applies.
    percentile_low: lower percentile for the "percentile" fallback.
    percentile_high: upper percentile for the "percentile" fallback.
    frame: None converts every frame of a multi-frame object; an int converts
      only that (0-based) frame.
    max_size: when > 0, resize so that the long side is at most this many
      pixels, keeping the aspect ratio.
  """

  use_dicom_voi: bool = True
  prefer_voi_lut: bool = True
  window_index: int = 0
  voi_fallback: str = "minmax"
  percentile_low: float = 0.5
  percentile_high: float = 99.5
  frame: int | None = None
  max_size: int = 0

  def __post_init__(self):
    if self.voi_fallback not in VOI_FALLBACKS:
      raise ValueError(f"voi_fallback must be one of {VOI_FALLBACKS}, got {self.voi_fallback!r}")
    if not 0 <= self.percentile_low < self.percentile_high <= 100:
      raise ValueError("need 0 <= percentile_low < percentile_high <= 100")
    if self.window_index < 0 or self.max_size < 0 or (self.frame is not None and self.frame < 0):
      raise ValueError("window_index, max_size and frame must be non-negative")


@dataclasses.dataclass(frozen=True)
class VoiApplied:
  """The VOI transform actually applied to a frame (recorded per record).

  Attributes:
    method: "window", "voi_lut", "minmax", "percentile" or "none" (colour).
    center: window center in modality units (NaN for a VOI LUT / colour).
    width: window width (NaN for a VOI LUT / colour).
    function: "LINEAR", "LINEAR_EXACT" or "SIGMOID" for windows; the
      fallbacks are LINEAR_EXACT windows; "" otherwise.
    inverted: True when MONOCHROME1 was inverted.
  """

  method: str
  center: float = math.nan
  width: float = math.nan
  function: str = ""
  inverted: bool = False


def _find(ds: Any, keyword: str, frame: int = 0) -> Any:
  """Looks an attribute up at top level, then in the functional groups."""
  if keyword in ds:
    return ds[keyword].value
  group_macros = ("PixelValueTransformationSequence", "FrameVOILUTSequence")
  for groups_kw, index in (
    ("PerFrameFunctionalGroupsSequence", frame),
    ("SharedFunctionalGroupsSequence", 0),
  ):
    groups = ds.get(groups_kw)
    if not groups or index >= len(groups):
      continue
    for macro in group_macros:
      seq = groups[index].get(macro)
      if seq and keyword in seq[0]:
        return seq[0][keyword].value
  return None


def _numbers(value: Any, keyword: str) -> list[float]:
  """Returns the finite numbers of a (multi-valued) numeric attribute.

  Args:
    value: the attribute's value (None when absent).
    keyword: the attribute's keyword, for the error message.

  Returns:
    The values as floats ([] when absent).

  Raises:
    InvalidAttributeError: a value is not a finite number (pydicom keeps an
      undecodable DS / IS as its raw text).
  """
  if value is None:
    return []
  items = [value] if isinstance(value, str | bytes) or not hasattr(value, "__iter__") else value
  try:
    out = [float(v) for v in items]
  except (TypeError, ValueError) as e:
    raise InvalidAttributeError(f"{keyword} {value!r} is not a number") from e
  if not all(math.isfinite(v) for v in out):
    raise InvalidAttributeError(f"{keyword} {value!r} is not finite")
  return out


_BIG_ENDIAN_SYNTAX = "1.2.840.10008.1.2.2"  # Explicit VR Big Endian, the only one.


def byte_order(ds: Any) -> str:
  """Returns the byte order ('<' or '>') of the dataset's own encoding.

  pydicom keeps OW values (LUT data) as the bytes of the file, so they must be
  decoded with the byte order the file was written in: the encoding pydicom
  read the dataset with, else the transfer syntax of its file meta, else
  little endian.

  Args:
    ds: a pydicom Dataset.

  Returns:
    '>' for Explicit VR Big Endian, '<' otherwise.
  """
  encoding = getattr(ds, "original_encoding", (None, None))
  if encoding[1] is not None:
    return "<" if encoding[1] else ">"
  meta = getattr(ds, "file_meta", None)
  uid = meta.get("TransferSyntaxUID") if meta is not None else None
  return ">" if uid is not None and str(uid) == _BIG_ENDIAN_SYNTAX else "<"


def _descriptor(value: Any, order: str, signed_first: bool) -> tuple[int, int, int]:
  """Returns (entries, first mapped value, bits per entry) of a LUT descriptor.

  Args:
    value: the descriptor's value: three ints, or six raw bytes when pydicom
      could not resolve its VR.
    order: the dataset's byte order.
    signed_first: the first mapped value is signed (Pixel Representation 1).

  Returns:
    (number of entries, 0 meaning 65536; first mapped value; bits per entry).

  Raises:
    InvalidAttributeError: not three numbers, or bits outside 1..16.
  """
  if isinstance(value, bytes | bytearray):
    if len(value) != 6:
      raise InvalidAttributeError(f"LUT descriptor of {len(value)} bytes")
    values = [int(v) for v in np.frombuffer(bytes(value), order + "u2")]
  else:
    values = [int(v) for v in _numbers(value, "LUT descriptor")]
  if len(values) != 3:
    raise InvalidAttributeError(f"LUT descriptor {values} does not have 3 values")
  n, first, bits = values
  n = n or 65536
  if signed_first and first >= 1 << 15:
    first -= 1 << 16
  if not 1 <= bits <= 16:
    raise InvalidAttributeError(f"LUT descriptor gives {bits} bits per entry")
  return n, first, bits


def _entries(value: Any, vr: str, bits: int, order: str) -> np.ndarray:
  """Decodes LUT (or segmented LUT) data into its entries, in table order.

  Words (OW) are decoded with the dataset's byte order. 8-bit entries are
  packed two per word, the first in the low byte (PS3.5 8.1.1), so they are
  taken from the decoded words rather than from the raw bytes, which a big
  endian file stores swapped.

  Args:
    value: the element's value: bytes (OW / OB) or ints (US, decoded by pydicom).
    vr: the element's VR.
    bits: bits per entry from the descriptor.
    order: the dataset's byte order.

  Returns:
    int64 entries.

  Raises:
    InvalidAttributeError: words data of odd length.
  """
  if not isinstance(value, bytes | bytearray):
    return np.asarray([value] if np.isscalar(value) else list(value), dtype=np.int64)
  data = bytes(value)
  if vr == "OB":
    return np.frombuffer(data, np.uint8).astype(np.int64)
  if len(data) % 2:
    raise InvalidAttributeError(f"LUT data of odd length {len(data)} in 16-bit words")
  words = np.frombuffer(data, order + "u2")
  if bits > 8:
    return words.astype(np.int64)
  return words.astype("<u2").view(np.uint8).astype(np.int64)


def _lut_arrays(item: Any, signed_first: bool, order: str) -> tuple[np.ndarray, int, int]:
  """Returns (lut values, first mapped value, output bits) of a LUT item.

  Args:
    item: a Modality / VOI LUT Sequence item.
    signed_first: the first mapped value is signed (Pixel Representation 1).
    order: the dataset's byte order.

  Returns:
    float64 LUT entries, the first mapped value and the bits per entry.

  Raises:
    InvalidAttributeError: a missing or malformed descriptor or data.
  """
  if item.get("LUTDescriptor") is None or item.get("LUTData") is None:
    raise InvalidAttributeError("LUT item without LUT Descriptor or LUT Data")
  n, first, bits = _descriptor(item["LUTDescriptor"].value, order, signed_first)
  lut = _table(item["LUTData"], n, bits, order, "LUT").astype(np.float64)
  return lut, first, bits


def _table(element: Any, n: int, bits: int, order: str, name: str) -> np.ndarray:
  """Decodes a (non-segmented) LUT data element into its first `n` entries.

  8-bit entries come either packed two per word (n bytes, padded to a whole
  word) or one per word (2n bytes, an older layout); 16-bit ones one per word.

  Args:
    element: the LUT data element.
    n: number of entries (from the descriptor).
    bits: bits per entry (from the descriptor).
    order: the dataset's byte order.
    name: the table's name, for error messages.

  Returns:
    (n,) int64 entries.

  Raises:
    InvalidAttributeError: fewer entries than the descriptor says.
  """
  value = element.value
  packed = isinstance(value, bytes | bytearray) and bits <= 8 and len(value) in (n, n + 1)
  lut = _entries(value, element.VR, 8 if packed else 16, order)
  if lut.size < n:
    raise InvalidAttributeError(f"{name} data holds {lut.size} entries, its descriptor {n}")
  return lut[:n]


def _apply_lut(values: np.ndarray, lut: np.ndarray, first: int) -> np.ndarray:
  index = np.clip(np.floor(values - first), 0, lut.size - 1).astype(np.int64)
  return lut[index]


def modality_lut(stored: np.ndarray, ds: Any, frame: int = 0) -> np.ndarray:
  """Applies the Modality LUT (sequence or rescale) to stored values.

  Args:
    stored: (H, W) stored pixel values of one frame.
    ds: the pydicom Dataset.
    frame: frame index (for per-frame functional groups).

  Returns:
    float64 (H, W) values in modality units.
  """
  seq = ds.get("ModalityLUTSequence")
  if seq:
    signed = ds.get("PixelRepresentation", 0) == 1
    lut, first, _ = _lut_arrays(seq[0], signed, byte_order(ds))
    return _apply_lut(stored.astype(np.float64), lut, first)
  values = stored.astype(np.float64)
  slope = _find(ds, "RescaleSlope", frame)
  intercept = _find(ds, "RescaleIntercept", frame)
  if slope is not None or intercept is not None:
    slope = (_numbers(slope, "RescaleSlope") or [1.0])[0]
    intercept = (_numbers(intercept, "RescaleIntercept") or [0.0])[0]
    if slope != 1.0:
      values *= slope
    if intercept != 0.0:
      values += intercept
  return values


def window(values: np.ndarray, center: float, width: float, function: str) -> np.ndarray:
  """Applies a DICOM VOI window, normalized to the output range [0, 1].

  PS3.3 C.11.2.1.2 (LINEAR), C.11.2.1.3.2 (LINEAR_EXACT), C.11.2.1.3.1
  (SIGMOID), with y_min = 0 and y_max = 1.

  Args:
    values: modality values (float64).
    center: window center.
    width: window width (>= 1 for LINEAR, > 0 otherwise).
    function: "LINEAR", "LINEAR_EXACT" or "SIGMOID".

  Returns:
    float64 values in [0, 1].
  """
  if function == "LINEAR":
    if width < 1:
      raise ValueError(f"LINEAR window width must be >= 1, got {width}")
    if width == 1:  # A threshold at c - 0.5.
      return (values > center - 0.5).astype(np.float64)
    out = (values - (center - 0.5)) / (width - 1) + 0.5
  elif function == "LINEAR_EXACT":
    if width <= 0:
      raise ValueError(f"LINEAR_EXACT window width must be > 0, got {width}")
    out = (values - center) / width + 0.5
  elif function == "SIGMOID":
    if width <= 0:
      raise ValueError(f"SIGMOID window width must be > 0, got {width}")
    return 1.0 / (1.0 + np.exp(-4.0 * (values - center) / width))
  else:
    raise ValueError(f"unknown VOI LUT Function {function!r}")
  return np.clip(out, 0.0, 1.0, out=out)


def _fallback(values: np.ndarray, policy: PixelPolicy) -> tuple[np.ndarray, VoiApplied]:
  lo, hi = float(values.min()), float(values.max())
  if hi <= lo:
    raise EmptyImageError("constant image (all pixels equal)")
  method = "minmax"
  if policy.voi_fallback == "percentile":
    plo, phi = np.percentile(values, [policy.percentile_low, policy.percentile_high])
    if phi > plo:
      lo, hi, method = float(plo), float(phi), "percentile"
  # A LINEAR_EXACT window with c = (lo + hi) / 2 and w = hi - lo.
  center, width = (lo + hi) / 2.0, hi - lo
  out = window(values, center, width, "LINEAR_EXACT")
  return out, VoiApplied(method, center, width, "LINEAR_EXACT")


def _voi_lut_item(ds: Any, policy: PixelPolicy) -> Any:
  seq = ds.get("VOILUTSequence")
  if not seq:
    return None
  return seq[min(policy.window_index, len(seq) - 1)]


def voi(
  values: np.ndarray, ds: Any, policy: PixelPolicy, frame: int = 0
) -> tuple[np.ndarray, VoiApplied]:
  """Applies VOI (DICOM or fallback) to modality values.

  Args:
    values: float64 (H, W) modality values.
    ds: the pydicom Dataset.
    policy: the pixel policy.
    frame: frame index (for per-frame functional groups).

  Returns:
    float64 values in [0, 1] and a description of what was applied.
  """
  if policy.use_dicom_voi:
    lut_item = _voi_lut_item(ds, policy)
    centers = _numbers(_find(ds, "WindowCenter", frame), "WindowCenter")
    widths = _numbers(_find(ds, "WindowWidth", frame), "WindowWidth")
    function = str(_find(ds, "VOILUTFunction", frame) or "LINEAR").strip().upper()
    candidates = []
    if lut_item is not None:
      candidates.append("voi_lut")
    if centers and widths:
      candidates.insert(0 if not policy.prefer_voi_lut else len(candidates), "window")
    for method in candidates:
      if method == "voi_lut":
        signed = ds.get("PixelRepresentation", 0) == 1
        lut, first, bits = _lut_arrays(lut_item, signed, byte_order(ds))
        out = _apply_lut(values, lut, first) / float((1 << bits) - 1)
        out = np.clip(out, 0.0, 1.0, out=out)
        applied = VoiApplied("voi_lut")
      else:
        i = min(policy.window_index, len(centers) - 1, len(widths) - 1)
        try:
          out = window(values, centers[i], widths[i], function)
        except ValueError:
          continue  # Invalid width or function: try the next source.
        applied = VoiApplied("window", centers[i], widths[i], function)
      if out.max() > out.min():
        return out, applied
  return _fallback(values, policy)


def monochrome_to_uint16(
  stored: np.ndarray, ds: Any, policy: PixelPolicy, frame: int = 0
) -> tuple[np.ndarray, VoiApplied]:
  """Modality LUT -> VOI -> MONOCHROME1 inversion -> uint16.

  Args:
    stored: (H, W) stored values of one frame as decoded by pydicom.
    ds: the pydicom Dataset.
    policy: the pixel policy.
    frame: frame index.

  Returns:
    (H, W) uint16 image and the VOI applied.

  Raises:
    EmptyImageError: the frame is constant.
  """
  if stored.size == 0 or stored.min() == stored.max():
    raise EmptyImageError("constant image (all pixels equal)")
  values = modality_lut(stored, ds, frame)
  out, applied = voi(values, ds, policy, frame)
  if str(ds.get("PhotometricInterpretation", "")).strip() == "MONOCHROME1":
    out = 1.0 - out
    applied = dataclasses.replace(applied, inverted=True)
  return np.rint(out * 65535.0).astype(np.uint16), applied


def to_uint8(values: np.ndarray, bits: int) -> np.ndarray:
  """Scales unsigned samples of `bits` bits to 8 bits (rounded)."""
  if values.dtype == np.uint8 and bits <= 8:
    return values
  scale = 255.0 / float((1 << bits) - 1)
  return np.rint(np.clip(values.astype(np.float64), 0, (1 << bits) - 1) * scale).astype(np.uint8)


def color_to_uint8(rgb: np.ndarray, ds: Any) -> np.ndarray:
  """Converts decoded RGB (pydicom converts YBR to RGB) to 8-bit RGB.

  Args:
    rgb: (H, W, 3) decoded samples.
    ds: the pydicom Dataset (BitsStored).

  Returns:
    (H, W, 3) uint8.

  Raises:
    EmptyImageError: the frame is constant.
  """
  if rgb.size == 0 or rgb.min() == rgb.max():
    raise EmptyImageError("constant image (all pixels equal)")
  bits = int((_numbers(ds.get("BitsStored"), "BitsStored") or [8])[0])
  if not 1 <= bits <= 64:
    raise InvalidAttributeError(f"BitsStored {bits} for colour samples")
  if rgb.dtype.kind == "i":
    raise UnsupportedImageError("signed colour samples")
  return to_uint8(rgb, bits)


def expand_segmented_lut(data: np.ndarray) -> np.ndarray:
  """Expands Segmented Palette Color LUT Data (PS3.3 C.7.9.2).

  A discrete segment (opcode 0, length L) lists L entries. A linear segment
  (opcode 1, length L, end value y1) continues from the previous entry y0 with
  y0 + (y1 - y0) * i / L for i = 1..L, so it ends exactly on y1; the standard
  leaves the rounding open: half up, as GDCM does (pydicom rounds half to
  even, which differs only on exact ties).
  Indirect segments (opcode 2) are refused: implementations disagree on the
  unit of their offset (bytes or entries), and a guess would give wrong
  colours silently.

  Args:
    data: (M,) int entries of the segmented data, in table order.

  Returns:
    (N,) int64 expanded LUT.

  Raises:
    UnsupportedImageError: an indirect segment.
    InvalidAttributeError: an unknown opcode, a linear segment first, or a
      segment running past the data.
  """
  values = [int(v) for v in data]
  out: list[int] = []
  pos = 0
  # A trailing odd entry is padding.
  while pos + 1 < len(values):
    opcode, length = values[pos], values[pos + 1]
    if opcode == 0:
      if pos + 2 + length > len(values):
        raise InvalidAttributeError("segmented palette: a discrete segment runs past the data")
      out.extend(values[pos + 2 : pos + 2 + length])
      pos += 2 + length
    elif opcode == 1:
      if not out or pos + 2 >= len(values):
        raise InvalidAttributeError("segmented palette: misplaced linear segment")
      y0, y1 = out[-1], values[pos + 2]
      steps = np.arange(1, length + 1, dtype=np.float64)
      out.extend(int(v) for v in np.floor(y0 + (y1 - y0) * steps / length + 0.5))
      pos += 3
    elif opcode == 2:
      raise UnsupportedImageError("segmented palette: indirect segments are not supported")
    else:
      raise InvalidAttributeError(f"segmented palette: unknown segment opcode {opcode}")
  return np.asarray(out, dtype=np.int64)


def palette_luts(ds: Any) -> list[tuple[np.ndarray, int, int]]:
  """Reads the red, green and blue palettes of a PALETTE COLOR dataset.

  Descriptors and data (plain or segmented) are decoded with the dataset's
  own byte order (see `byte_order`).

  Args:
    ds: the pydicom Dataset.

  Returns:
    Per channel (red, green, blue): the int64 LUT entries, the first mapped
    index and the bits per entry (16 when the entries exceed the descriptor's
    bits: 8-bit descriptors over 16-bit values occur in the wild).

  Raises:
    InvalidAttributeError: a missing, empty or malformed palette.
    UnsupportedImageError: a segmented palette with indirect segments.
  """
  order = byte_order(ds)
  signed = ds.get("PixelRepresentation", 0) == 1
  luts = []
  for color in ("Red", "Green", "Blue"):
    descriptor = ds.get(f"{color}PaletteColorLookupTableDescriptor")
    if descriptor is None:
      raise InvalidAttributeError(f"PALETTE COLOR without a {color} palette descriptor")
    n, first, bits = _descriptor(descriptor, order, signed)
    plain = ds.get(f"{color}PaletteColorLookupTableData")
    segmented = ds.get(f"Segmented{color}PaletteColorLookupTableData")
    if plain is not None:
      lut = _table(ds[f"{color}PaletteColorLookupTableData"], n, bits, order, f"{color} palette")
    elif segmented is not None:
      element = ds[f"Segmented{color}PaletteColorLookupTableData"]
      lut = expand_segmented_lut(_entries(segmented, element.VR, bits, order))[:n]
    else:
      raise InvalidAttributeError(f"PALETTE COLOR without {color} palette data")
    if lut.size == 0:
      raise InvalidAttributeError(f"empty {color} palette")
    if int(lut.max()) > (1 << bits) - 1:
      bits = 16
    luts.append((lut, first, bits))
  return luts


def palette_to_uint8(indices: np.ndarray, ds: Any) -> np.ndarray:
  """Maps PALETTE COLOR indices through the palette to 8-bit RGB.

  An index below the first mapped value takes the first entry, one past the
  table the last (PS3.3 C.7.6.3.1.5); entries of more than 8 bits are scaled
  by 255 / (2**bits - 1) and rounded.

  Args:
    indices: (H, W) palette indices.
    ds: the pydicom Dataset with the palette descriptors and data.

  Returns:
    (H, W, 3) uint8.

  Raises:
    EmptyImageError: the frame is constant.
    InvalidAttributeError: a missing or malformed palette.
    UnsupportedImageError: a segmented palette with indirect segments.
  """
  if indices.size == 0 or indices.min() == indices.max():
    raise EmptyImageError("constant image (all pixels equal)")
  channels = []
  for lut, first, bits in palette_luts(ds):
    index = np.clip(indices.astype(np.int64) - first, 0, lut.size - 1)
    channels.append(to_uint8(lut[index], bits))
  return np.stack(channels, axis=-1)


def resize_long_side(image: np.ndarray, max_size: int) -> np.ndarray:
  """Shrinks so that the long side is `max_size`, keeping aspect; never enlarges.

  Args:
    image: (H, W) uint16 or (H, W, C) uint8.
    max_size: target long side; 0 disables resizing.

  Returns:
    The resized image, same dtype and channels.
  """
  h, w = image.shape[:2]
  if max_size <= 0 or max(h, w) <= max_size:
    return image
  scale = max_size / float(max(h, w))
  size = (max(1, round(w * scale)), max(1, round(h * scale)))
  limit = 65535.0 if image.dtype == np.uint16 else 255.0
  channels = [image] if image.ndim == 2 else [image[..., c] for c in range(image.shape[2])]
  resized = []
  for plane in channels:
    im = Image.fromarray(plane.astype(np.float32))
    out = np.asarray(im.resize(size, Image.Resampling.BILINEAR), dtype=np.float32)
    resized.append(np.rint(np.clip(out, 0, limit)).astype(image.dtype))
  return resized[0] if image.ndim == 2 else np.stack(resized, axis=-1)
