"""One slide patch -> a serialized tf.Example in the converter's schema plus patch fields.

The record holds what `remedis-convert` writes for an RGB image (8-bit PNG or
JPEG in `image/encoded`, 3 channels, hashed patient id, split, labels in both
the multi-class and the multi-label form, site, converter version) and the
patch fields of `tfrecords_tools.schema` (level-0 x/y, level, mpp, tissue
fraction, resize, hashed slide and case ids). `image/source_id` is
"<slide hash>:<x>:<y>", unique per patch. No TensorFlow is imported.
"""

from __future__ import annotations

import dataclasses
import io

import numpy as np
from PIL import Image

from tfrecords_tools import example_builder, schema
from tfrecords_tools.png_encode import encode_png
from tfrecords_tools.version import CONVERTER_VERSION

PATCH_FORMATS = ("png", "jpeg")

_B = example_builder.bytes_feature
_I = example_builder.int64_feature
_F = example_builder.float_feature


@dataclasses.dataclass(frozen=True)
class SlideFields:
  """The per-slide part of every record (picklable; hashes only, no raw ids).

  Attributes:
    slide_hash, case_hash, patient_hash: keyed hashes.
    split: "train", "validation" or "test".
    site: site label.
    label: class index, -1 when unlabeled.
    multi_label: K floats in {0, 1, -1}.
    has_label: whether a label row matched.
    vendor: slide format ("aperio", "generic-tiff", "dicom", ...).
    level: pyramid level read.
    level_mpp: microns per pixel of that level (x).
    patch_mpp: microns per stored pixel (x).
    resize: "none" or tiling.RESIZE_FILTER.
  """

  slide_hash: str
  case_hash: str
  patient_hash: str
  split: str
  site: str
  label: int
  multi_label: tuple[float, ...]
  has_label: bool
  vendor: str
  level: int
  level_mpp: float
  patch_mpp: float
  resize: str


def encode_patch(
  image: np.ndarray, patch_format: str, png_compression: int, jpeg_quality: int
) -> bytes:
  """Encodes an RGB patch.

  Args:
    image: (H, W, 3) uint8.
    patch_format: "png" (lossless) or "jpeg" (Pillow/libjpeg, 4:4:4 chroma, no
      metadata).
    png_compression: zlib level for PNG.
    jpeg_quality: 1..95 for JPEG.

  Returns:
    The encoded bytes.
  """
  if patch_format == "png":
    return encode_png(image, png_compression)
  buffer = io.BytesIO()
  Image.fromarray(image).save(buffer, "JPEG", quality=jpeg_quality, subsampling=0)
  return buffer.getvalue()


def serialize(
  encoded: bytes,
  patch_format: str,
  size: int,
  fields: SlideFields,
  x: int,
  y: int,
  tissue_fraction: float,
) -> bytes:
  """The serialized tf.Example of one patch.

  Args:
    encoded: the encoded patch.
    patch_format: "png" or "jpeg".
    size: patch side in pixels.
    fields: the slide's fields.
    x, y: level-0 top-left corner.
    tissue_fraction: tissue share under the patch.

  Returns:
    tf.Example bytes (keys sorted, deterministic).
  """
  labeled = fields.has_label
  features = {
    schema.IMAGE_ENCODED: _B(encoded),
    schema.IMAGE_FORMAT: _B(patch_format),
    schema.IMAGE_HEIGHT: _I(size),
    schema.IMAGE_WIDTH: _I(size),
    schema.IMAGE_CHANNELS: _I(3),
    schema.IMAGE_BIT_DEPTH: _I(8),
    schema.IMAGE_SOURCE_ID: _B(f"{fields.slide_hash}:{x}:{y}"),
    schema.IMAGE_FRAME_INDEX: _I(0),
    schema.LABEL: _I(fields.label if labeled else -1),
    schema.MULTI_LABEL: _F(list(fields.multi_label)),
    schema.HAS_LABEL: _I(int(labeled)),
    schema.PATIENT_ID_HASH: _B(fields.patient_hash),
    schema.STUDY_ID_HASH: _B(fields.case_hash),
    schema.SITE: _B(fields.site),
    schema.SPLIT: _B(fields.split),
    schema.MODALITY: _B("SM"),
    schema.PHOTOMETRIC: _B("RGB"),
    schema.SOURCE_FORMAT: _B(f"wsi:{fields.vendor}"),
    schema.CONVERTER_VERSION: _B(CONVERTER_VERSION),
    schema.SLIDE_ID_HASH: _B(fields.slide_hash),
    schema.CASE_ID_HASH: _B(fields.case_hash),
    schema.PATCH_X: _I(int(x)),
    schema.PATCH_Y: _I(int(y)),
    schema.PATCH_LEVEL: _I(fields.level),
    schema.PATCH_LEVEL_MPP: _F(fields.level_mpp),
    schema.PATCH_MPP: _F(fields.patch_mpp),
    schema.PATCH_TISSUE_FRACTION: _F(float(tissue_fraction)),
    schema.PATCH_RESIZE: _B(fields.resize),
  }
  return example_builder.serialize_example(features)
