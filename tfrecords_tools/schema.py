"""The tf.Example schema shared by the converter and every reader.

This module depends on TensorFlow only; it knows nothing of how records are
produced (tfrecords_tools.convert) or consumed (remedis_tf input pipeline).

Keys follow TF Model Garden and Google's CXR Foundation tooling where they
overlap (`image/encoded`, `image/format`, `image/height`, `image/width`,
`image/channels`, `image/class/label`, `image/source_id`).

Labels:
  * multi-class tasks: `image/class/label` holds one class index; -1 when the
    image has no label.
  * multi-label tasks: `image/class/multi_label` holds K floats (one per label
    column) in {0, 1}; -1 marks an unknown entry; all -1 when unlabeled.
  Both are always written (a multi-class label is also written one-hot), so a
  reader chooses the task and the manifest (`label_names`, `label_mode`) says
  which the converter was asked for.

Identifiers: only keyed hashes (HMAC-SHA256 with a user-supplied salt, hex) of
patient, study and SOP instance ids are stored, never the raw values.
"""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # TensorFlow is imported lazily so that the key constants
  import tensorflow as tf  # can be used by TF-free converter worker processes.

# Image payload.
IMAGE_ENCODED = "image/encoded"  # PNG bytes; 16-bit grayscale for monochrome DICOM.
IMAGE_FORMAT = "image/format"  # b"png"
IMAGE_HEIGHT = "image/height"
IMAGE_WIDTH = "image/width"
IMAGE_CHANNELS = "image/channels"  # 1 (grayscale) or 3 (RGB)
IMAGE_BIT_DEPTH = "image/bit_depth"  # 8 or 16
IMAGE_SOURCE_ID = "image/source_id"  # == hashed SOP instance id (+ frame suffix)
IMAGE_FRAME_INDEX = "image/frame_index"  # frame of a multi-frame object, else 0

# Labels.
LABEL = "image/class/label"  # int64 class index, -1 = unlabeled
MULTI_LABEL = "image/class/multi_label"  # float K-vector, -1 = unknown
HAS_LABEL = "image/class/has_label"  # int64 0/1

# Hashed identifiers (hex HMAC-SHA256) and grouping.
PATIENT_ID_HASH = "patient/id_hash"
STUDY_ID_HASH = "study/id_hash"
SOP_INSTANCE_HASH = "image/sop_instance_hash"
SITE = "image/site"  # free-form site label from the labels CSV or flag
SPLIT = "image/split"  # b"train" | b"validation" | b"test"

# Acquisition descriptors (coded DICOM values only, never free text).
MODALITY = "dicom/modality"
BODY_PART = "dicom/body_part_examined"
VIEW_POSITION = "dicom/view_position"
PHOTOMETRIC = "dicom/photometric_interpretation"
TRANSFER_SYNTAX = "dicom/transfer_syntax_uid"
SOURCE_FORMAT = "image/source_format"  # b"dicom" | b"png" | b"jpeg"

# Pixel policy actually applied.
VOI_METHOD = "image/voi/method"  # b"window" | b"voi_lut" | b"minmax" | b"percentile" | b"none"
WINDOW_CENTER = "image/voi/window_center"  # float, NaN when no window was used
WINDOW_WIDTH = "image/voi/window_width"
VOI_FUNCTION = "image/voi/function"  # b"LINEAR" | b"LINEAR_EXACT" | b"SIGMOID" | b""
INVERTED = "image/inverted"  # int64 1 when MONOCHROME1 was inverted

CONVERTER_VERSION = "converter/version"

# Whole-slide patches (remedis-tile). Coordinates are level-0 pixels of the
# slide; the mpp of the stored pixels is `patch/mpp`; ids are keyed hashes.
SLIDE_ID_HASH = "slide/id_hash"
CASE_ID_HASH = "case/id_hash"
PATCH_X = "patch/x"  # int64 left edge, level-0 pixels
PATCH_Y = "patch/y"  # int64 top edge, level-0 pixels
PATCH_LEVEL = "patch/level"  # int64 pyramid level read
PATCH_LEVEL_MPP = "patch/level_mpp"  # float microns per pixel of that level (x)
PATCH_MPP = "patch/mpp"  # float microns per stored pixel (x)
PATCH_TISSUE_FRACTION = "patch/tissue_fraction"  # float tissue share under the patch
PATCH_RESIZE = "patch/resize"  # b"none" | b"lanczos3"

SPLITS = ("train", "validation", "test")


def feature_spec(num_multi_labels: int | None = None) -> dict[str, object]:
  """Returns the parsing spec for every key.

  Args:
    num_multi_labels: length K of `image/class/multi_label`. When None the
      multi-label vector is parsed as a variable-length feature (dense, padded
      with -1) instead of a fixed-length one.
  """
  import tensorflow as tf  # Lazy: see the module imports.

  string = lambda: tf.io.FixedLenFeature([], tf.string, default_value=b"")
  int64 = lambda d=0: tf.io.FixedLenFeature([], tf.int64, default_value=d)
  float32 = lambda: tf.io.FixedLenFeature([], tf.float32, default_value=float("nan"))
  if num_multi_labels is None:
    multi = tf.io.RaggedFeature(tf.float32)
  else:
    multi = tf.io.FixedLenFeature(
      [num_multi_labels], tf.float32, default_value=[-1.0] * num_multi_labels
    )
  return {
    IMAGE_ENCODED: tf.io.FixedLenFeature([], tf.string),
    IMAGE_FORMAT: string(),
    IMAGE_HEIGHT: int64(),
    IMAGE_WIDTH: int64(),
    IMAGE_CHANNELS: int64(1),
    IMAGE_BIT_DEPTH: int64(8),
    IMAGE_SOURCE_ID: string(),
    IMAGE_FRAME_INDEX: int64(),
    LABEL: int64(-1),
    MULTI_LABEL: multi,
    HAS_LABEL: int64(0),
    PATIENT_ID_HASH: string(),
    STUDY_ID_HASH: string(),
    SOP_INSTANCE_HASH: string(),
    SITE: string(),
    SPLIT: string(),
    MODALITY: string(),
    BODY_PART: string(),
    VIEW_POSITION: string(),
    PHOTOMETRIC: string(),
    TRANSFER_SYNTAX: string(),
    SOURCE_FORMAT: string(),
    VOI_METHOD: string(),
    WINDOW_CENTER: float32(),
    WINDOW_WIDTH: float32(),
    VOI_FUNCTION: string(),
    INVERTED: int64(),
    CONVERTER_VERSION: string(),
    SLIDE_ID_HASH: string(),
    CASE_ID_HASH: string(),
    PATCH_X: int64(-1),
    PATCH_Y: int64(-1),
    PATCH_LEVEL: int64(-1),
    PATCH_LEVEL_MPP: float32(),
    PATCH_MPP: float32(),
    PATCH_TISSUE_FRACTION: float32(),
    PATCH_RESIZE: string(),
  }


def parse_example(
  serialized: tf.Tensor, num_multi_labels: int | None = None
) -> dict[str, tf.Tensor]:
  """Parses one serialized tf.Example (scalar string tensor) into a dict.

  The image stays encoded; decode with `decode_image`.
  """
  import tensorflow as tf

  return tf.io.parse_single_example(serialized, feature_spec(num_multi_labels))


def decode_image(encoded: tf.Tensor, channels: int = 0) -> tf.Tensor:
  """Decodes a record's PNG to float32 (H, W, C) in [0, 1].

  8-bit PNGs are divided by 255 and 16-bit PNGs by 65535, so a 16-bit image
  keeps its full precision.

  Args:
    encoded: scalar string tensor, the `image/encoded` value.
    channels: 0 keeps the stored channels; 1 or 3 converts.
  """
  import tensorflow as tf

  image = tf.io.decode_png(encoded, channels=channels, dtype=tf.uint16)
  # decode_png with dtype=uint16 scales 8-bit data to the 16-bit range
  # (v * 257), so one division covers both bit depths exactly.
  return tf.cast(image, tf.float32) / 65535.0


class LabelMode(enum.StrEnum):
  """How a record's labels are read: one class (softmax) or K independent labels (sigmoid).

  The values are what the converter writes to manifest.json and what
  config.json, export metadata and the CLIs use. `LabelMode.parse` accepts the
  older spellings ('multi_class', 'multi-label', ...) found in existing files.
  """

  MULTI_CLASS = "multiclass"
  MULTI_LABEL = "multilabel"

  @classmethod
  def parse(cls, mode: str | LabelMode) -> LabelMode:
    """Any spelling of a label mode as a LabelMode.

    Raises:
      ValueError: an unknown mode (the message lists the accepted values).
    """
    key = str(mode).strip().lower().replace("_", "").replace("-", "")
    for member in cls:
      if member.value == key:
        return member
    raise ValueError(f"label_mode must be one of {LABEL_MODES}, got {mode!r}.")


LABEL_MODES = tuple(m.value for m in LabelMode)
