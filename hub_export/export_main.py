r"""remedis-export: a training checkpoint -> TF-Hub SavedModel (PhysioNet format).

  remedis-export --model_dir /runs/cxr_simclr --output_dir /exports \
      --name cxr-50x1-remedis-m

writes /exports/cxr-50x1-remedis-m. Without --name the SavedModel is written
to --output_dir itself, named after its basename.

The model is rebuilt from the model_dir with `remedis_tf.train.run_dir
.restore_model` (the model_dir contract is documented there): the encoder
named by config.json (or, for a model fine-tuned from a SavedModel, rebuilt
from that SavedModel, --saved_model_path if it moved) and, for a fine-tuned
classifier, its head. A checkpoint without config.json needs --encoder (and
--num_classes for a head). Metadata comes from the export name, config.json
and, for a SavedModel-based model, the source's `assets/remedis.json`; flags
override them. Exit status 2: a user error (one line, no traceback).

--format onnx|both also writes the model as ONNX (hub_export.onnx_export; needs
the `onnx` extra), converted from the SavedModel: --onnx_path, default the
SavedModel's path + ".onnx". Any existing SavedModel in the PhysioNet
convention (ours or the release's) is converted with

  remedis-export --saved_model /models/cxr-50x1-remedis-m --format onnx \
      [--onnx_path /exports/cxr-50x1-remedis-m.onnx] [--onnx_opset 17]
"""

from __future__ import annotations

from remedis_tf import cpu_setup  # noqa: F401  (oneDNN default, before TensorFlow)

# isort: split
import json
import os
from typing import Any

import keras
import tensorflow as tf
from absl import app, flags, logging

from hub_export import export, onnx_export
from hub_export import metadata as metadata_lib
from remedis_tf import models
from remedis_tf.errors import InputNotFoundError, UserError
from remedis_tf.models.outputs import FEATURE_MAP
from remedis_tf.train import cli_util, run_dir
from tfrecords_tools.schema import LabelMode

DEFAULT_ENCODER = "bit-r50x1"
# Metadata fields a re-export takes over from its source SavedModel's assets/remedis.json.
SOURCE_METADATA_FIELDS = (
  "architecture",
  "depth",
  "width",
  "output_stride",
  "pretrain_image_size",
  "modality",
  "objective",
  "upstream",
  "training_data",
)

_MODEL_DIR = flags.DEFINE_string(
  "model_dir", None, "Training directory; its latest checkpoint is exported."
)
_CHECKPOINT = flags.DEFINE_string(
  "checkpoint", None, "A checkpoint prefix (e.g. DIR/ckpt-12), instead of --model_dir."
)
_OUTPUT_DIR = flags.DEFINE_string("output_dir", None, "Where the SavedModel is written.")
_NAME = flags.DEFINE_string(
  "name",
  None,
  "Export name, e.g. cxr-50x1-remedis-m ({cxr|path}-{50x1|152x2}-remedis-{s|m}); "
  "the SavedModel goes to output_dir/name.",
)
_ENCODER = flags.DEFINE_string(
  "encoder", None, "Encoder name (bit-r50x1, bit-r152x2, bit-tiny); default: config.json."
)
_NUM_CLASSES = flags.DEFINE_integer(
  "num_classes", None, "Classifier size for a fine-tuned checkpoint; default: config.json."
)
_LABEL_NAMES = flags.DEFINE_list(
  "label_names", None, "Class names; exporting them adds the classifier signature."
)
_LABEL_MODE = flags.DEFINE_enum(
  "label_mode", None, [m.value for m in LabelMode], "Softmax or sigmoid probabilities."
)
_SAVED_MODEL_PATH = flags.DEFINE_string(
  "saved_model_path",
  None,
  "For a model fine-tuned from a SavedModel: that SavedModel, if it moved; "
  "default: config.json's saved_model_path.",
)
_MODALITY = flags.DEFINE_string("modality", None, "Metadata: imaging modality.")
_PRETRAIN_IMAGE_SIZE = flags.DEFINE_integer(
  "pretrain_image_size", None, "Metadata: pretraining image side."
)
_OBJECTIVE = flags.DEFINE_string("objective", None, "Metadata: pretraining objective.")
_TRAINING_DATA = flags.DEFINE_string(
  "training_data", None, "Metadata: description of the pretraining data."
)
_FORMAT = flags.DEFINE_enum(
  "format",
  onnx_export.ExportFormat.SAVEDMODEL.value,
  [f.value for f in onnx_export.ExportFormat],
  "What to write: the SavedModel, an ONNX file converted from it, or both.",
)
_SAVED_MODEL = flags.DEFINE_string(
  "saved_model",
  None,
  "An existing SavedModel (ours or PhysioNet's) to convert to ONNX, instead of "
  "--model_dir/--checkpoint; needs --format onnx.",
)
_ONNX_PATH = flags.DEFINE_string(
  "onnx_path", None, "The .onnx file to write; default: the SavedModel's path + '.onnx'."
)
_CUSTOM_GRADIENTS = flags.DEFINE_boolean(
  "custom_gradients",
  False,
  "Keep the hand-written gradients of group norm and weight standardization in the "
  "SavedModel: fine-tuning through hub.KerasLayer about 4% faster per step, export and "
  "load about 2.3x slower. Off: TensorFlow differentiates the same forward ops.",
)
_ONNX_OPSET = flags.DEFINE_integer(
  "onnx_opset", onnx_export.DEFAULT_OPSET, "ONNX opset of the exported graph (13 to 18)."
)


def read_source_metadata(saved_model_path: str) -> dict[str, Any]:
  """SOURCE_METADATA_FIELDS of a SavedModel's `assets/remedis.json` ({} when absent).

  An unreadable file is logged and ignored: metadata is descriptive only.
  """
  path = os.path.join(saved_model_path, "assets", metadata_lib.METADATA_FILENAME)
  if not tf.io.gfile.exists(path):
    return {}
  try:
    with tf.io.gfile.GFile(path) as f:
      data = json.load(f)
  except (OSError, ValueError) as e:
    logging.warning("Ignoring unreadable metadata %s: %s", path, e)
    return {}
  if not isinstance(data, dict):
    logging.warning("Ignoring metadata %s: not a JSON object.", path)
    return {}
  return {k: data[k] for k in SOURCE_METADATA_FIELDS if data.get(k) not in (None, "")}


def restore_encoder_from_checkpoint(
  model_dir_or_ckpt: str,
  encoder_name: str | None = None,
  num_classes: int | None = None,
  saved_model_path: str | None = None,
) -> keras.Model:
  """The model to export: encoder (and classifier) of a training checkpoint.

  Args:
    model_dir_or_ckpt: a model_dir (its newest checkpoint) or a checkpoint prefix.
    encoder_name: encoder name when there is no config.json, or to override it.
    num_classes: head size when there is no config.json.
    saved_model_path: where the SavedModel of a SavedModel-based model is now.

  Returns:
    The encoder (any input size, trainable, as exports are), or with a head a
    model returning its dict plus 'logits' (N, num_classes).

  Raises:
    remedis_tf.errors.UserError: see `run_dir.restore_model`.
  """
  restored = run_dir.restore_model(
    model_dir_or_ckpt,
    trainable=True,
    image_size=None,
    saved_model_path=saved_model_path,
    encoder=encoder_name,
    num_classes=num_classes,
  )
  return restored.classifier() if restored.head is not None else restored.encoder


def build_metadata(
  name: str,
  model: keras.Model,
  encoder_name: str,
  config: dict[str, Any],
  source_metadata: dict[str, Any] | None = None,
  **overrides: Any,
) -> metadata_lib.ExportMetadata:
  """Export metadata from the name, the model and config.json; `overrides` win.

  Args:
    name: export name (a release name fills modality, depth, width, ...).
    model: the restored model (gives the feature dimension).
    encoder_name: BiT encoder name (gives depth and width), or 'saved_model'.
    config: model_dir/config.json (as a dict).
    source_metadata: for a SavedModel-based model, `read_source_metadata` of the
      source SavedModel; its fields win over the name, config.json and
      `overrides` over them.
    **overrides: ExportMetadata fields (None: not given).

  Returns:
    The metadata.
  """
  fields: dict[str, Any] = {}
  if encoder_name == run_dir.EncoderSource.SAVED_MODEL:
    fields.update(source_metadata or {})
    depth, width = int(fields.pop("depth", 0) or 0), int(fields.pop("width", 0) or 0)
    if fields.get("architecture") == metadata_lib.ExportMetadata.architecture:
      del fields["architecture"]  # The generic default: let depth and width name it.
  else:
    depth, width, _ = models.parse_encoder_name(encoder_name)
  feature_dim = int(export.output_shapes(model)[FEATURE_MAP][-1])
  for key in ("modality", "objective", "training_data", "pretrain_image_size"):
    if config.get(key) is not None:
      fields[key] = config[key]
  if config.get("label_names"):
    fields["label_names"] = tuple(config["label_names"])
    mode = config.get("label_mode")
    fields["label_mode"] = (LabelMode.parse(mode) if mode else LabelMode.MULTI_CLASS).value
  fields.update({k: v for k, v in overrides.items() if v is not None})
  if "label_names" in fields:
    fields["label_names"] = tuple(fields["label_names"])
  return metadata_lib.metadata_for(name, feature_dim, depth=depth, width=width, **fields)


def main(argv: list[str]) -> int:
  del argv
  source = _CHECKPOINT.value or _MODEL_DIR.value
  if _SAVED_MODEL.value:
    return convert_saved_model_from_flags(source)
  if not source or not _OUTPUT_DIR.value:
    raise app.UsageError("Give --model_dir or --checkpoint, and --output_dir.")
  if _NAME.value:
    name, export_dir = _NAME.value, os.path.join(_OUTPUT_DIR.value, _NAME.value)
  else:
    export_dir = _OUTPUT_DIR.value
    name = os.path.basename(os.path.normpath(export_dir))
  try:
    export_from_flags(source, name, export_dir)
  except UserError as e:
    logging.error("%s: %s", type(e).__name__, e)
    return cli_util.EXIT_USER_ERROR
  return cli_util.EXIT_OK


def convert_saved_model_from_flags(checkpoint_source: str | None) -> int:
  """--saved_model: converts that SavedModel to ONNX; returns the exit status."""
  if checkpoint_source or _FORMAT.value != onnx_export.ExportFormat.ONNX:
    raise app.UsageError("--saved_model converts to ONNX: give --format onnx and no --model_dir.")
  path = _SAVED_MODEL.value
  try:
    if not tf.io.gfile.exists(os.path.join(path, "saved_model.pb")):
      raise InputNotFoundError(f"--saved_model {path}: no SavedModel there (no saved_model.pb).")
    onnx_export.export_onnx(
      path, _ONNX_PATH.value or onnx_export.default_onnx_path(path), opset=_ONNX_OPSET.value
    )
  except UserError as e:
    logging.error("%s: %s", type(e).__name__, e)
    return cli_util.EXIT_USER_ERROR
  return cli_util.EXIT_OK


def export_from_flags(source: str, name: str, export_dir: str) -> None:
  """Restores the checkpoint `source` and exports it as `name` to `export_dir`."""
  _, model_dir = run_dir.resolve_checkpoint(source)
  run = run_dir.read_run_config(model_dir)
  release = metadata_lib.parse_release_name(name)
  from_name = f"bit-r{release['depth']}x{release['width']}" if release else None
  encoder_name = _ENCODER.value or (run.encoder if run else None) or from_name or DEFAULT_ENCODER
  if from_name and encoder_name not in (from_name, run_dir.EncoderSource.SAVED_MODEL):
    logging.warning("Export name %s does not match encoder %s.", name, encoder_name)
  model = restore_encoder_from_checkpoint(
    source,
    _ENCODER.value or (None if run else encoder_name),
    _NUM_CLASSES.value,
    saved_model_path=_SAVED_MODEL_PATH.value,
  )
  source_metadata = None
  if run is not None and run.encoder_source == run_dir.EncoderSource.SAVED_MODEL:
    source_metadata = read_source_metadata(_SAVED_MODEL_PATH.value or run.saved_model_path)
  metadata = build_metadata(
    name,
    model,
    encoder_name,
    run.to_json() if run else {},
    source_metadata,
    modality=_MODALITY.value,
    pretrain_image_size=_PRETRAIN_IMAGE_SIZE.value,
    objective=_OBJECTIVE.value,
    training_data=_TRAINING_DATA.value,
    label_names=_LABEL_NAMES.value,
    label_mode=_LABEL_MODE.value,
  )
  if metadata.label_names and not metadata.label_mode:
    metadata = metadata.replace(label_mode=LabelMode.MULTI_CLASS.value)
  written = onnx_export.save_model(
    model,
    export_dir,
    metadata,
    _FORMAT.value,
    onnx_path=_ONNX_PATH.value,
    opset=_ONNX_OPSET.value,
    custom_gradients=_CUSTOM_GRADIENTS.value,
  )
  logging.info("Exported %s to %s.", name, ", ".join(written))


def run() -> None:
  """Console-script entry point."""
  app.run(main)


if __name__ == "__main__":
  run()
