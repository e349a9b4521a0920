"""Whole-slide images behind one interface: OpenSlide files and DICOM WSI (wsidicom).

`open_slide(source)` returns a `Slide`: the pyramid's level sizes and
downsamples, the level-0 microns per pixel (None when the file has none), and
`read_region(level, x, y, w, h)` in *level* pixel coordinates, returning RGB
uint8 with anything outside the scanned area as the slide's background colour
(OpenSlide's transparent pixels composited over it; DICOM regions past the
edge padded with white).

Only pyramid levels are ever read. Label, macro, overview and thumbnail images
(OpenSlide's associated images; DICOM instances of image type LABEL, OVERVIEW
or THUMBNAIL) are never opened for pixels: `slide_inputs` hands this module
the VOLUME instances of a DICOM slide only.

Failures that belong to the input (unsupported or corrupt file, no pyramid)
raise `SlideError` with a stable `reason`; the caller reports them and goes on.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Sequence

import numpy as np

SOURCE_OPENSLIDE = "openslide"
SOURCE_DICOM = "dicom"

# Reasons a slide cannot be read (errors.json "reason").
UNSUPPORTED = "unsupported_format"
UNREADABLE = "unreadable"


class SlideError(Exception):
  """A slide that cannot be opened or read (a problem of the input, not a bug).

  Attributes:
    reason: stable machine-readable reason (UNSUPPORTED, UNREADABLE, ...).
  """

  def __init__(self, reason: str, detail: str):
    super().__init__(detail)
    self.reason = reason


@dataclasses.dataclass(frozen=True)
class SlideSource:
  """Where a slide lives.

  Attributes:
    kind: SOURCE_OPENSLIDE (one file) or SOURCE_DICOM (the VOLUME instances of
      one DICOM slide).
    paths: absolute file paths.
    name: the slide's path relative to the input folder (a file, or a DICOM
      slide's folder), POSIX style. Used only for hashing and label lookup;
      never written to any output.
  """

  kind: str
  paths: tuple[str, ...]
  name: str


class Slide(abc.ABC):
  """A pyramidal slide.

  Attributes:
    vendor: the format ("aperio", "generic-tiff", "hamamatsu", ..., "dicom").
    level_dimensions: (width, height) per level, level 0 first.
    level_downsamples: level-0 pixels per level pixel, per level (1.0 first).
    mpp: level-0 (x, y) microns per pixel, or None when the file has none.
    identifiers: raw identifying values read from the file (DICOM only:
      "PatientID", "StudyInstanceUID", "AccessionNumber"); used only for
      hashing, never written.
  """

  vendor: str
  level_dimensions: tuple[tuple[int, int], ...]
  level_downsamples: tuple[float, ...]
  mpp: tuple[float, float] | None
  identifiers: dict[str, str]

  @abc.abstractmethod
  def read_region(self, level: int, x: int, y: int, width: int, height: int) -> np.ndarray:
    """Reads pixels of one level.

    Args:
      level: pyramid level index (0 = full resolution).
      x, y: top-left corner in that level's pixel coordinates.
      width, height: region size in that level's pixels.

    Returns:
      (height, width, 3) uint8 RGB.
    """

  @abc.abstractmethod
  def close(self) -> None:
    """Releases the file handles."""

  def __enter__(self) -> Slide:
    return self

  def __exit__(self, *exc) -> None:
    self.close()


def _composite(rgba: np.ndarray, background: tuple[int, int, int]) -> np.ndarray:
  """RGBA (straight alpha) over an opaque background colour, rounded to uint8."""
  rgb, alpha = rgba[..., :3], rgba[..., 3:]
  if alpha.min() == 255:
    return np.ascontiguousarray(rgb)
  a = alpha.astype(np.uint32)
  bg = np.asarray(background, np.uint32)
  out = (rgb.astype(np.uint32) * a + bg * (255 - a) + 127) // 255
  return out.astype(np.uint8)


class OpenSlideSlide(Slide):
  """A slide read by OpenSlide (svs, ndpi, mrxs, scn, generic tiled TIFF, ...)."""

  def __init__(self, path: str):
    import openslide  # Imported here: workers that never see such a slide skip it.

    try:
      self._slide = openslide.OpenSlide(path)
    except openslide.OpenSlideUnsupportedFormatError:
      raise SlideError(UNSUPPORTED, "OpenSlide does not recognise this file format") from None
    except (openslide.OpenSlideError, OSError) as e:
      raise SlideError(UNREADABLE, f"OpenSlide cannot open the file: {e}") from None
    self._error_type = openslide.OpenSlideError
    props = self._slide.properties
    self.vendor = props.get(openslide.PROPERTY_NAME_VENDOR, "unknown")
    self.level_dimensions = tuple(tuple(d) for d in self._slide.level_dimensions)
    self.level_downsamples = tuple(float(d) for d in self._slide.level_downsamples)
    self.mpp = None
    mpp_x = props.get(openslide.PROPERTY_NAME_MPP_X)
    mpp_y = props.get(openslide.PROPERTY_NAME_MPP_Y)
    if mpp_x and mpp_y and float(mpp_x) > 0 and float(mpp_y) > 0:
      self.mpp = (float(mpp_x), float(mpp_y))
    color = props.get(openslide.PROPERTY_NAME_BACKGROUND_COLOR) or "FFFFFF"
    self._background = tuple(int(color[i : i + 2], 16) for i in (0, 2, 4))
    self.identifiers = {}

  def read_region(self, level: int, x: int, y: int, width: int, height: int) -> np.ndarray:
    # OpenSlide takes the corner in level-0 coordinates.
    ds = self.level_downsamples[level]
    try:
      image = self._slide.read_region((round(x * ds), round(y * ds)), level, (width, height))
    except self._error_type as e:
      raise SlideError(UNREADABLE, f"OpenSlide cannot read a region: {e}") from None
    return _composite(np.asarray(image), self._background)  # type: ignore[arg-type]

  def close(self) -> None:
    self._slide.close()


_DICOM_IDENTIFIERS = ("PatientID", "StudyInstanceUID", "AccessionNumber")


class DicomSlide(Slide):
  """A DICOM VL Whole Slide Microscopy slide read by wsidicom (VOLUME instances only)."""

  def __init__(self, paths: Sequence[str]):
    import pydicom
    import wsidicom
    from wsidicom import errors as wsi_errors

    self._read_errors = (
      wsi_errors.WsiDicomError,
      wsi_errors.WsiDicomFileError,
      wsi_errors.WsiDicomOutOfBoundsError,
      wsi_errors.WsiDicomNotFoundError,
      ValueError,
      OSError,
    )
    if not paths:
      raise SlideError(UNSUPPORTED, "no VOLUME (pyramid) instance among the slide's DICOM files")
    try:
      self._wsi = wsidicom.WsiDicom.open([str(p) for p in paths])
      levels = list(self._wsi.levels.levels)
      base_mpp = levels[0].mpp
    except (
      *self._read_errors,
      wsi_errors.WsiDicomMatchError,
      wsi_errors.WsiDicomUidDuplicateError,
      wsi_errors.WsiDicomNotSupportedError,
      wsi_errors.WsiDicomStrictRequirementError,
      wsi_errors.WsiDicomNoResolutionError,
      pydicom.errors.InvalidDicomError,
      NotImplementedError,  # wsidicom: a level whose scale is not a power of two.
      KeyError,
      AttributeError,  # pydicom: a required attribute missing from a dataset.
    ) as e:
      raise SlideError(UNREADABLE, f"wsidicom cannot open the slide: {type(e).__name__}") from None
    self._levels = levels
    self.vendor = "dicom"
    self.level_dimensions = tuple((lv.size.width, lv.size.height) for lv in levels)
    self.level_downsamples = tuple(lv.mpp.width / base_mpp.width for lv in levels)
    self.mpp = (float(base_mpp.width), float(base_mpp.height))
    header = pydicom.dcmread(paths[0], stop_before_pixels=True, specific_tags=_DICOM_IDENTIFIERS)
    self.identifiers = {k: str(getattr(header, k, "") or "").strip() for k in _DICOM_IDENTIFIERS}

  def read_region(self, level: int, x: int, y: int, width: int, height: int) -> np.ndarray:
    lw, lh = self.level_dimensions[level]
    out = np.full((height, width, 3), 255, np.uint8)
    x0, y0 = max(x, 0), max(y, 0)
    x1, y1 = min(x + width, lw), min(y + height, lh)
    if x1 <= x0 or y1 <= y0:
      return out
    try:
      region = self._wsi.read_region(
        (x0, y0), self._levels[level].level, (x1 - x0, y1 - y0), as_array=True
      )
    except self._read_errors as e:
      raise SlideError(UNREADABLE, f"wsidicom cannot read a region: {type(e).__name__}") from None
    out[y0 - y : y1 - y, x0 - x : x1 - x] = region[..., :3]
    return out

  def close(self) -> None:
    self._wsi.close()


def open_slide(source: SlideSource) -> Slide:
  """Opens a slide.

  Args:
    source: the slide's files.

  Returns:
    The opened Slide (close it, or use it as a context manager).

  Raises:
    SlideError: the file set is unsupported or unreadable.
  """
  if source.kind == SOURCE_OPENSLIDE:
    return OpenSlideSlide(source.paths[0])
  if source.kind == SOURCE_DICOM:
    return DicomSlide(source.paths)
  raise ValueError(f"unknown slide source kind {source.kind!r}")
