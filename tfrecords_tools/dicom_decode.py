"""Reading DICOM objects and decoding their frames with pydicom + pylibjpeg.

Supported transfer syntaxes are those pydicom 3 decodes with the pylibjpeg
plugins installed: implicit / explicit VR little endian, explicit VR big
endian, deflated explicit VR little endian, RLE lossless, JPEG baseline,
extended and lossless, JPEG-LS and JPEG 2000. Failures are raised as
`InputError` subclasses whose `reason` is a stable machine-readable code.

Only the exception types that pydicom and its decoder plugins raise for
malformed bytes (`PARSE_ERRORS`, `DECODE_ERRORS`, found by truncating and
corrupting real files: tests/file_converter_test.py) are turned into
`CorruptDicomError`, and only around pydicom's own calls; anything else is a
bug and keeps its traceback.
"""

from __future__ import annotations

import contextlib
import io
import logging
import struct
import warnings
import zlib
from collections.abc import Iterator
from typing import Any

import numpy as np

# Importing pydicom's pixel backends is cheap; the plugins load on first use.
import pydicom
from pydicom.errors import BytesLengthException, InvalidDicomError
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

# What pydicom raises while parsing malformed bytes (a truncated or damaged
# file): short reads, bad lengths, undecodable values, unknown VRs, a broken
# deflate stream.
PARSE_ERRORS = (
  OSError,
  EOFError,
  ValueError,
  NotImplementedError,
  OverflowError,
  struct.error,
  zlib.error,
  BytesLengthException,
)
# What pydicom's pixel decoders and the pylibjpeg plugins raise for malformed
# pixel data (RuntimeError: every plugin failed; StopIteration: fewer
# encapsulated frames than Number of Frames).
DECODE_ERRORS = (
  ValueError,
  RuntimeError,
  OSError,
  EOFError,
  StopIteration,
  struct.error,
  zlib.error,
)
# The Image Pixel attributes pydicom needs to decode Pixel Data (PS3.3
# C.7.6.3); PlanarConfiguration too when there are 3 samples per pixel.
REQUIRED_PIXEL_ATTRIBUTES = (
  "Rows",
  "Columns",
  "SamplesPerPixel",
  "PhotometricInterpretation",
  "BitsAllocated",
  "BitsStored",
  "PixelRepresentation",
)


class InputError(Exception):
  """An input that cannot be converted; `reason` is a stable code."""

  reason = "error"


class NotDicomError(InputError):
  reason = "not_dicom"


class NoPixelDataError(InputError):
  reason = "no_pixel_data"


class CorruptDicomError(InputError):
  reason = "corrupt"


class UnsupportedTransferSyntaxError(InputError):
  reason = "unsupported_transfer_syntax"


class UnsupportedImageTypeError(InputError):
  reason = "unsupported_image"


def looks_like_dicom(data: bytes) -> bool:
  """True when `data` starts with a DICOM preamble or a plausible bare dataset."""
  if len(data) >= 132 and data[128:132] == b"DICM":
    return True
  # Datasets without preamble / file meta start with a group 0x0008 (or 0x0002)
  # element, little or big endian.
  return len(data) >= 8 and data[:2] in (b"\x08\x00", b"\x00\x08", b"\x02\x00")


def read_dataset(data: bytes) -> pydicom.Dataset:
  """Parses a DICOM object from bytes (pixel data still encoded).

  Args:
    data: the file's bytes.

  Returns:
    The dataset.

  Raises:
    NotDicomError: not a DICOM object.
    CorruptDicomError: a DICOM object pydicom cannot parse.
    NoPixelDataError: parsed but without (float / double) pixel data.
  """
  if not looks_like_dicom(data):
    raise NotDicomError("no DICM prefix and no DICOM dataset start")
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    try:
      ds = pydicom.dcmread(io.BytesIO(data), force=data[128:132] != b"DICM")
    except InvalidDicomError as e:
      raise NotDicomError(str(e)) from e
    except PARSE_ERRORS as e:
      raise CorruptDicomError(f"{type(e).__name__}: {e}") from e
    if "PixelData" not in ds:
      if "FloatPixelData" in ds or "DoubleFloatPixelData" in ds:
        raise UnsupportedImageTypeError("float pixel data is not supported")
      try:
        sop_class = ds.get("SOPClassUID")
      except PARSE_ERRORS as e:
        raise CorruptDicomError(f"SOP Class UID: {type(e).__name__}: {e}") from e
      if not sop_class:
        raise CorruptDicomError("no Pixel Data and no SOP Class UID: damaged or not a DICOM object")
      name = getattr(sop_class, "name", "")
      raise NoPixelDataError(f"no Pixel Data ({name or 'unknown SOP class'})")
    try:
      # pydicom converts values lazily (and resolves ambiguous VRs from the
      # Image Pixel attributes): check those, then convert every element,
      # sequences included, so that a malformed value fails here as a parse
      # error rather than later in the pixel policy.
      missing = [kw for kw in REQUIRED_PIXEL_ATTRIBUTES if ds.get(kw) is None]
      if ds.get("SamplesPerPixel") == 3 and ds.get("PlanarConfiguration") is None:
        missing.append("PlanarConfiguration")
      if missing:
        raise CorruptDicomError(f"Pixel Data without {', '.join(missing)}")
      for _ in ds.iterall():
        pass
    except PARSE_ERRORS as e:
      raise CorruptDicomError(f"{type(e).__name__}: {e}") from e
  _set_missing_transfer_syntax(ds)
  return ds


def _set_missing_transfer_syntax(ds: pydicom.Dataset) -> None:
  """Records the encoding pydicom read a dataset without file meta in.

  A bare dataset (no preamble, no file meta, as old ACR-NEMA style files) is
  uncompressed; its pixel data decode once the file meta names the transfer
  syntax pydicom parsed it with.
  """
  meta = getattr(ds, "file_meta", None)
  if meta is not None and meta.get("TransferSyntaxUID"):
    return
  implicit, little = ds.original_encoding
  if implicit is None:
    return
  if meta is None:
    ds.file_meta = pydicom.dataset.FileMetaDataset()
  if implicit:
    uid = ImplicitVRLittleEndian
  else:
    uid = ExplicitVRLittleEndian if little else ExplicitVRBigEndian
  ds.file_meta.TransferSyntaxUID = uid


@contextlib.contextmanager
def _quiet_pydicom():
  """Silences pydicom's logged tracebacks: failures are reported by reason."""
  logger = logging.getLogger("pydicom")
  level = logger.level
  logger.setLevel(logging.CRITICAL)
  try:
    yield
  finally:
    logger.setLevel(level)


def _is_native_panic(e: BaseException) -> bool:
  """True for a Rust decoder's panic (pylibjpeg-rle on damaged RLE data).

  pyo3 raises it as `pyo3_runtime.PanicException`, a BaseException that no
  `except Exception` catches and that cannot be imported by name.
  """
  return type(e).__module__ == "pyo3_runtime" and type(e).__name__ == "PanicException"


def transfer_syntax(ds: pydicom.Dataset) -> str:
  """Returns the transfer syntax UID ('' when unknown)."""
  meta = getattr(ds, "file_meta", None)
  uid = meta.get("TransferSyntaxUID") if meta is not None else None
  return str(uid) if uid else ""


def num_frames(ds: pydicom.Dataset) -> int:
  """Returns NumberOfFrames (1 when absent or invalid)."""
  try:
    return max(1, int(ds.get("NumberOfFrames", 1) or 1))
  except (TypeError, ValueError):
    return 1


def iter_frames(ds: pydicom.Dataset, frame: int | None = None) -> Iterator[tuple[int, np.ndarray]]:
  """Decodes frames: every frame (frame=None) or only `frame`.

  Args:
    ds: a dataset with Pixel Data.
    frame: 0-based frame to decode, or None for all.

  Yields:
    (frame index, array) with array (H, W) or (H, W, 3); colour is RGB
    (pydicom converts YBR to RGB).

  Raises:
    UnsupportedTransferSyntaxError: no decoder for the transfer syntax.
    CorruptDicomError: the pixel data cannot be decoded.
    UnsupportedImageTypeError: `frame` is past the object's last frame.
  """
  from pydicom.pixels import pixel_array

  n = num_frames(ds)
  if frame is not None and frame >= n:
    raise UnsupportedImageTypeError(f"frame {frame} requested but the object has {n} frame(s)")
  try:
    with warnings.catch_warnings(), _quiet_pydicom():
      warnings.simplefilter("ignore")
      if frame is not None and n > 1:
        arrays = [(frame, pixel_array(ds, index=frame))]
      else:
        arr = ds.pixel_array
        if n > 1:
          arrays = [(i, arr[i]) for i in range(arr.shape[0])]
        else:
          arrays = [(0, arr)]
  except NotImplementedError as e:
    raise UnsupportedTransferSyntaxError(f"{transfer_syntax(ds)}: {e}") from e
  except DECODE_ERRORS as e:
    message = f"{type(e).__name__}: {e}"
    if "No pixel data decoders" in message or "plugin" in message and "missing" in message:
      raise UnsupportedTransferSyntaxError(message) from e
    raise CorruptDicomError(message[:500]) from e
  except BaseException as e:
    if not _is_native_panic(e):
      raise
    raise CorruptDicomError(f"the pixel data decoder failed: {e}"[:500]) from e
  yield from arrays


def text_attr(ds: Any, keyword: str) -> str:
  """Returns a coded string attribute (first value), or '' when absent."""
  value = ds.get(keyword)
  if value is None:
    return ""
  if not isinstance(value, str) and hasattr(value, "__iter__"):
    value = next(iter(value), "")
  return str(value).strip()
