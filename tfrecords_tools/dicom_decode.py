"""Reading DICOM objects and decoding their frames with pydicom + pylibjpeg.

Supported transfer syntaxes are those pydicom 3 decodes with the pylibjpeg
plugins installed: implicit / explicit VR little endian, explicit VR big
endian, deflated explicit VR little endian, RLE lossless, JPEG baseline,
extended and lossless, JPEG-LS and JPEG 2000. Failures are raised as
`InputError` subclasses whose `reason` is a stable machine-readable code.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections.abc import Iterator
from typing import Any

import numpy as np

# Importing pydicom's pixel backends is cheap; the plugins load on first use.
import pydicom
from pydicom.errors import InvalidDicomError


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
    except Exception as e:  # noqa: BLE001 - any parse failure is a corrupt file.
      raise CorruptDicomError(f"{type(e).__name__}: {e}") from e
  if "PixelData" not in ds:
    if "FloatPixelData" in ds or "DoubleFloatPixelData" in ds:
      raise UnsupportedImageTypeError("float pixel data is not supported")
    sop_class = ds.get("SOPClassUID")
    if not sop_class:
      raise CorruptDicomError("no Pixel Data and no SOP Class UID: damaged or not a DICOM object")
    name = getattr(sop_class, "name", "") if sop_class else ""
    raise NoPixelDataError(f"no Pixel Data ({name or 'unknown SOP class'})")
  return ds


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
    UnsupportedTransferSyntaxError, CorruptDicomError, InputError.
  """
  from pydicom.pixels import pixel_array

  n = num_frames(ds)
  if frame is not None and frame >= n:
    raise InputError(f"frame {frame} requested but the object has {n} frame(s)")
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
  except Exception as e:  # noqa: BLE001 - decoders raise many kinds.
    message = f"{type(e).__name__}: {e}"
    if "No pixel data decoders" in message or "plugin" in message and "missing" in message:
      raise UnsupportedTransferSyntaxError(message) from e
    raise CorruptDicomError(message[:500]) from e
  yield from arrays


def text_attr(ds: Any, keyword: str) -> str:
  """Returns a coded string attribute (first value), or '' when absent."""
  value = ds.get(keyword)
  if value is None:
    return ""
  if not isinstance(value, str) and hasattr(value, "__iter__"):
    value = next(iter(value), "")
  return str(value).strip()
