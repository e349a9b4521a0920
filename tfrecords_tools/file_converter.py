"""One input file (DICOM, PNG or JPEG bytes) -> serialized tf.Examples.

This is the unit of work of every pipeline (in-process, local processes,
Beam). It never raises for bad input: an input that is not DICOM / PNG /
JPEG, corrupt, unsupported or blank comes back as an error entry with one of
the stable reasons listed in `INPUT_ERROR_REASONS`, and the run goes on. Any
other exception is a bug in the converter: it propagates with its traceback
(plus a note naming the file), which stops the run; finished chunks are kept
and a rerun resumes. It imports no TensorFlow.
"""

from __future__ import annotations

import dataclasses
import io
import struct
import time
import warnings
import zlib
from typing import Any

import numpy as np
from PIL import Image

from tfrecords_tools import dicom_decode, example_builder, hashing, schema, splits
from tfrecords_tools.labels import LabelRow, LabelTable
from tfrecords_tools.pixel_policy import (
  COLOR,
  MONOCHROME,
  EmptyImageError,
  InvalidAttributeError,
  PixelPolicy,
  UnsupportedImageError,
  VoiApplied,
  color_to_uint8,
  monochrome_to_uint16,
  palette_to_uint8,
  resize_long_side,
)
from tfrecords_tools.png_encode import encode_png
from tfrecords_tools.version import CONVERTER_VERSION

# The reasons a single input can fail with (README "Converting archives").
INPUT_ERROR_REASONS = (
  "not_dicom",
  "no_pixel_data",
  "corrupt",
  "unsupported_transfer_syntax",
  "unsupported_image",
  "empty_image",
)
# What Pillow raises while decoding a broken PNG / JPEG (OSError covers
# UnidentifiedImageError and truncated files; SyntaxError bad PNG chunks).
_PILLOW_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error, zlib.error)


class CorruptImageError(dicom_decode.InputError):
  """A PNG / JPEG that Pillow cannot decode."""

  reason = "corrupt"


_B = example_builder.bytes_feature
_I = example_builder.int64_feature
_F = example_builder.float_feature


@dataclasses.dataclass(frozen=True)
class FileContext:
  """Everything a worker needs to convert files (picklable).

  Attributes:
    policy: the pixel policy.
    salt: HMAC key for identifiers.
    split_fractions: train, validation, test fractions.
    labels: the parsed labels CSV, or None.
    default_site: site for images without a CSV site.
    png_compression: zlib level for PNG encoding.
    drop_unlabeled: skip (and report) images without a label instead of
      writing them with label -1.
  """

  policy: PixelPolicy
  salt: bytes
  split_fractions: tuple[float, float, float]
  labels: LabelTable | None = None
  default_site: str = ""
  png_compression: int = 1
  drop_unlabeled: bool = False


@dataclasses.dataclass
class RecordInfo:
  """What the manifest needs to know about a written record."""

  split: str
  label: int
  multi_label: tuple[float, ...]
  has_label: bool
  site: str
  source_id: str
  patient_hash: str


@dataclasses.dataclass
class FileResult:
  """The outcome for one input file.

  Attributes:
    path: relative path of the input.
    records: (split, serialized tf.Example, info) per converted frame.
    errors: [{"path", "reason", "detail"}]; an unlabeled image that was
      written is reported as a warning here with reason "unlabeled_image".
    label_row: CSV line number of the matched label row, or None.
    timings: seconds spent in "decode", "pixel_policy", "png_encode".
  """

  path: str
  records: list[tuple[str, bytes, RecordInfo]] = dataclasses.field(default_factory=list)
  errors: list[dict] = dataclasses.field(default_factory=list)
  label_row: int | None = None
  timings: dict[str, float] = dataclasses.field(default_factory=dict)


def _error(path: str, reason: str, detail: str) -> dict:
  return {"path": path, "reason": reason, "detail": detail[:500]}


def _image_kind(data: bytes) -> str:
  if data.startswith(b"\x89PNG\r\n\x1a\n"):
    return "png"
  if data.startswith(b"\xff\xd8\xff"):
    return "jpeg"
  return "dicom"


def _label_key(ds: Any, rel_path: str, key_type: str) -> str:
  if key_type == "path":
    return rel_path
  keyword = {
    "sop_instance_uid": "SOPInstanceUID",
    "study_instance_uid": "StudyInstanceUID",
    "patient_id": "PatientID",
  }[key_type]
  return dicom_decode.text_attr(ds, keyword) if ds is not None else ""


def _label_fields(row: LabelRow | None, ctx: FileContext) -> dict[str, bytes]:
  k = len(ctx.labels.label_names) if ctx.labels else 0
  if row is None:
    return {schema.LABEL: _I(-1), schema.MULTI_LABEL: _F([-1.0] * k), schema.HAS_LABEL: _I(0)}
  return {
    schema.LABEL: _I(row.label),
    schema.MULTI_LABEL: _F(list(row.multi_label)),
    schema.HAS_LABEL: _I(1),
  }


def _voi_fields(applied: VoiApplied) -> dict[str, bytes]:
  return {
    schema.VOI_METHOD: _B(applied.method),
    schema.WINDOW_CENTER: _F(applied.center),
    schema.WINDOW_WIDTH: _F(applied.width),
    schema.VOI_FUNCTION: _B(applied.function),
    schema.INVERTED: _I(int(applied.inverted)),
  }


def _image_fields(image: np.ndarray, ctx: FileContext) -> dict[str, bytes]:
  channels = 1 if image.ndim == 2 else image.shape[2]
  return {
    schema.IMAGE_ENCODED: _B(encode_png(image, ctx.png_compression)),
    schema.IMAGE_FORMAT: _B("png"),
    schema.IMAGE_HEIGHT: _I(image.shape[0]),
    schema.IMAGE_WIDTH: _I(image.shape[1]),
    schema.IMAGE_CHANNELS: _I(channels),
    schema.IMAGE_BIT_DEPTH: _I(16 if image.dtype == np.uint16 else 8),
  }


def _dicom_frames(ds: Any, policy: PixelPolicy, timings: dict[str, float]):
  """Yields (frame index, image, VoiApplied) under the pixel policy."""
  photometric = dicom_decode.text_attr(ds, "PhotometricInterpretation").upper()
  if photometric not in MONOCHROME + COLOR + ("PALETTE COLOR",):
    raise dicom_decode.UnsupportedImageTypeError(
      f"photometric interpretation {photometric!r} is not supported"
    )
  t0 = time.perf_counter()
  frames = dicom_decode.iter_frames(ds, policy.frame)
  for index, arr in frames:
    t1 = time.perf_counter()
    timings["decode"] = timings.get("decode", 0.0) + (t1 - t0)
    if photometric in MONOCHROME:
      if arr.ndim != 2:
        raise dicom_decode.UnsupportedImageTypeError(f"monochrome frame of shape {arr.shape}")
      image, applied = monochrome_to_uint16(arr, ds, policy, index)
    elif photometric == "PALETTE COLOR":
      image, applied = palette_to_uint8(arr, ds), VoiApplied("none")
    else:
      if arr.ndim != 3 or arr.shape[2] != 3:
        raise dicom_decode.UnsupportedImageTypeError(f"colour frame of shape {arr.shape}")
      image, applied = color_to_uint8(arr, ds), VoiApplied("none")
    image = resize_long_side(image, policy.max_size)
    t0 = time.perf_counter()
    timings["pixel_policy"] = timings.get("pixel_policy", 0.0) + (t0 - t1)
    yield index, image, applied


def _plain_image(data: bytes, policy: PixelPolicy) -> np.ndarray:
  """Decodes a PNG / JPEG to (H, W) uint8 / uint16 or (H, W, 3) uint8.

  Raises:
    CorruptImageError: Pillow cannot decode the bytes.
    UnsupportedImageError: larger than Pillow's decompression-bomb limit.
    EmptyImageError: the image is constant.
  """
  try:
    with warnings.catch_warnings():
      warnings.simplefilter("ignore")
      im = Image.open(io.BytesIO(data))
      im.load()
      if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(im)
      elif im.mode in ("L", "1"):
        arr = np.asarray(im.convert("L"))
      else:
        arr = np.asarray(im.convert("RGB"))
  except Image.DecompressionBombError as e:
    raise UnsupportedImageError(str(e)) from e
  except _PILLOW_ERRORS as e:
    raise CorruptImageError(f"{type(e).__name__}: {e}") from e
  if arr.dtype != np.uint8 and arr.dtype != np.uint16:
    arr = np.clip(arr, 0, 65535).astype(np.uint16)
  if arr.size == 0 or arr.min() == arr.max():
    raise EmptyImageError("constant image (all pixels equal)")
  return resize_long_side(arr, policy.max_size)


def convert_bytes(rel_path: str, data: bytes, ctx: FileContext) -> FileResult:
  """Converts one input file; never raises for bad input.

  Args:
    rel_path: the file's relative POSIX path inside the input.
    data: the file's bytes.
    ctx: conversion settings.

  Returns:
    A FileResult with zero or more records and any errors; a bad input gives
    no record and one error whose reason is in `INPUT_ERROR_REASONS`.

  Raises:
    Exception: only a bug (never bad input), with its traceback and a note
      naming `rel_path`.
  """
  result = FileResult(rel_path)
  timings = result.timings
  try:
    kind = _image_kind(data)
    ds = None
    if kind == "dicom":
      t0 = time.perf_counter()
      ds = dicom_decode.read_dataset(data)
      timings["decode"] = time.perf_counter() - t0
      sop = dicom_decode.text_attr(ds, "SOPInstanceUID")
      study = dicom_decode.text_attr(ds, "StudyInstanceUID")
      patient = dicom_decode.text_attr(ds, "PatientID")
    else:
      sop = study = patient = ""

    row = None
    if ctx.labels is not None:
      key = _label_key(ds, rel_path, ctx.labels.key_type)
      row = ctx.labels.lookup(key) if key else None
      result.label_row = row.row_number if row else None
    if row is None and ctx.labels is not None:
      if ctx.drop_unlabeled:
        result.errors.append(
          _error(rel_path, "unlabeled_image", "no label row matches this image; skipped")
        )
        return result
      result.errors.append(
        _error(
          rel_path, "unlabeled_image", "no label row matches this image; written with label -1"
        )
      )

    # Grouping ids: patient, else study, else the instance, else the path.
    sop_hash = hashing.keyed_hash(ctx.salt, sop or f"path:{rel_path}")
    study_hash = hashing.keyed_hash(ctx.salt, study) if study else sop_hash
    patient_hash = hashing.keyed_hash(ctx.salt, patient) if patient else study_hash
    split = splits.assign_split(patient_hash, ctx.split_fractions)
    site = (row.site if row and row.site else "") or ctx.default_site

    common = {
      schema.PATIENT_ID_HASH: _B(patient_hash),
      schema.STUDY_ID_HASH: _B(study_hash),
      schema.SOP_INSTANCE_HASH: _B(sop_hash),
      schema.SITE: _B(site),
      schema.SPLIT: _B(split),
      schema.CONVERTER_VERSION: _B(CONVERTER_VERSION),
      schema.SOURCE_FORMAT: _B(kind),
      **_label_fields(row, ctx),
    }
    if ds is not None:
      common.update(
        {
          schema.MODALITY: _B(dicom_decode.text_attr(ds, "Modality")),
          schema.BODY_PART: _B(dicom_decode.text_attr(ds, "BodyPartExamined")),
          schema.VIEW_POSITION: _B(dicom_decode.text_attr(ds, "ViewPosition")),
          schema.PHOTOMETRIC: _B(dicom_decode.text_attr(ds, "PhotometricInterpretation")),
          schema.TRANSFER_SYNTAX: _B(dicom_decode.transfer_syntax(ds)),
        }
      )
      multi = dicom_decode.num_frames(ds) > 1
      frames = _dicom_frames(ds, ctx.policy, timings)
    else:
      t0 = time.perf_counter()
      image = _plain_image(data, ctx.policy)
      timings["decode"] = time.perf_counter() - t0
      common[schema.PHOTOMETRIC] = _B("MONOCHROME2" if image.ndim == 2 else "RGB")
      multi = False
      frames = iter([(0, image, VoiApplied("none"))])

    info_label = row.label if row else -1
    info_multi = row.multi_label if row else ()
    for index, image, applied in frames:
      source_id = f"{sop_hash}#{index}" if multi else sop_hash
      t0 = time.perf_counter()
      features = {
        **common,
        **_image_fields(image, ctx),
        **_voi_fields(applied),
        schema.IMAGE_SOURCE_ID: _B(source_id),
        schema.IMAGE_FRAME_INDEX: _I(index),
      }
      serialized = example_builder.serialize_example(features)
      timings["png_encode"] = timings.get("png_encode", 0.0) + time.perf_counter() - t0
      info = RecordInfo(
        split, info_label, info_multi, row is not None, site, source_id, patient_hash
      )
      result.records.append((split, serialized, info))
  except dicom_decode.InputError as e:
    result.records.clear()
    result.errors.append(_error(rel_path, e.reason, str(e)))
  except EmptyImageError as e:
    result.records.clear()
    result.errors.append(_error(rel_path, "empty_image", str(e)))
  except UnsupportedImageError as e:
    result.records.clear()
    result.errors.append(_error(rel_path, "unsupported_image", str(e)))
  except InvalidAttributeError as e:
    result.records.clear()
    result.errors.append(_error(rel_path, "corrupt", str(e)))
  except Exception as e:
    # Not bad input: a bug. Keep the exception and its traceback; say which
    # file triggered it so that it can be reproduced.
    e.add_note(f"remedis-convert: internal error while converting {rel_path!r}")
    raise
  for key in ("decode", "pixel_policy", "png_encode"):
    timings.setdefault(key, 0.0)
  return result
