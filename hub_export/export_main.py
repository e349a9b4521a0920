r"""remedis-export: a training checkpoint -> TF-Hub SavedModel (PhysioNet format).

  remedis-export --model_dir /runs/cxr_simclr --output_dir /exports \
      --name cxr-50x1-remedis-m

writes /exports/cxr-50x1-remedis-m. Without --name the SavedModel is written
to --output_dir itself, named after its basename.

Checkpoint contract (what the training loop must write):
  * `tf.train.Checkpoint(encoder=model, ...)` saved by a
    `tf.train.CheckpointManager` in `model_dir` (other objects such as the
    optimizer or projection head may sit next to `encoder`; they are ignored);
  * `model` built by `remedis_tf.models.build_encoder_by_name(encoder)`, its
    outputs the `build_bit_encoder` dict, every variable reachable by
    tf.train.Checkpoint (checked: the file must hold all of them);
  * a fine-tuned classifier adds `head=keras.Sequential([keras.Input((C,)),
    keras.layers.Dense(num_classes, name="logits")], name="head")` on the
    embedding (as remedis_tf.train.finetune.build_head);
  * optional `model_dir/config.json` with 'encoder' (e.g. "bit-r50x1") and,
    for a fine-tuned classifier, 'num_classes', 'label_names' and
    'label_mode' ("multiclass" or "multilabel", also accepted as
    "multi_class"/"multi_label").
Flags override config.json.

A model fine-tuned from a SavedModel (remedis-finetune --init_from=SAVED_MODEL;
config.json: 'encoder': "saved_model", 'saved_model_path') is rebuilt with
`hub_export.load.load_encoder` from that SavedModel (or --saved_model_path,
if it moved), then its fine-tuned encoder and head are restored from the
checkpoint. Its metadata starts from the source's `assets/remedis.json`
(architecture, depth, width, modality, objective, ...) when present.
"""

from __future__ import annotations

import json
import os
from typing import Any

import keras
import tensorflow as tf
from absl import app, flags, logging

from hub_export import export, load
from hub_export import metadata as metadata_lib
from remedis_tf import models

CONFIG_FILENAME = "config.json"
DEFAULT_ENCODER = "bit-r50x1"
# config.json 'encoder' of a model fine-tuned from a SavedModel (remedis_tf.train.finetune).
SAVED_MODEL_ENCODER = "saved_model"
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
  "label_mode", None, ["multiclass", "multilabel"], "Softmax or sigmoid probabilities."
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


def _checkpoint_and_dir(model_dir_or_ckpt: str) -> tuple[str, str]:
  """Returns (checkpoint prefix, directory holding it and config.json)."""
  if tf.io.gfile.isdir(model_dir_or_ckpt):
    ckpt = tf.train.latest_checkpoint(model_dir_or_ckpt)
    if ckpt is None:
      raise FileNotFoundError(f"No checkpoint in {model_dir_or_ckpt}.")
    return ckpt, model_dir_or_ckpt
  if not tf.io.gfile.glob(model_dir_or_ckpt + ".index"):
    raise FileNotFoundError(f"No checkpoint at {model_dir_or_ckpt}.")
  return model_dir_or_ckpt, os.path.dirname(model_dir_or_ckpt)


def read_config(model_dir: str) -> dict[str, Any]:
  """Returns `model_dir/config.json` as a dict ({} when absent)."""
  path = os.path.join(model_dir, CONFIG_FILENAME)
  if not tf.io.gfile.exists(path):
    return {}
  with tf.io.gfile.GFile(path) as f:
    return json.load(f)


def saved_model_source(
  model_dir: str, config: dict[str, Any], saved_model_path: str | None = None
) -> str:
  """Path of the SavedModel a model in `model_dir` was fine-tuned from.

  Args:
    model_dir: directory of config.json (named in errors).
    config: its contents.
    saved_model_path: overrides config.json's 'saved_model_path'.

  Raises:
    ValueError: no path given and none in config.json.
    FileNotFoundError: no SavedModel (saved_model.pb) at the path.
  """
  config_path = os.path.join(model_dir, CONFIG_FILENAME)
  path = saved_model_path or config.get("saved_model_path")
  if not path:
    raise ValueError(
      f"{config_path} says the encoder is a SavedModel but gives no 'saved_model_path'; "
      "pass --saved_model_path."
    )
  if not tf.io.gfile.exists(os.path.join(path, "saved_model.pb")):
    raise FileNotFoundError(
      f"No SavedModel at {path!r} (no saved_model.pb), the fine-tuning start named by "
      f"{'--saved_model_path' if saved_model_path else config_path}; its encoder is needed to "
      "rebuild the fine-tuned model. Pass --saved_model_path with a copy of it."
    )
  return path


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


def unreachable_variables(root: tf.train.Checkpoint, model: keras.Model) -> list[str]:
  """Paths of `model` variables that tf.train.Checkpoint cannot reach from `root`.

  Such variables are neither saved nor restored through the object graph
  (e.g. Keras 3 layers kept in plain Python lists).
  """
  reachable = {id(t) for t in tf.train.TrackableView(root).descendants()}
  return [
    v.path for v in model.variables if id(v) not in reachable and id(v.value) not in reachable
  ]


def build_head(embedding_dim: int, num_classes: int) -> keras.Model:
  """The fine-tuning head as remedis_tf.train.finetune saves it (key 'head')."""
  return keras.Sequential(
    [
      keras.Input((embedding_dim,)),
      keras.layers.Dense(num_classes, kernel_initializer="zeros", name="logits"),
    ],
    name="head",
  )


def restore_encoder_from_checkpoint(
  model_dir_or_ckpt: str,
  encoder_name: str | None = None,
  num_classes: int | None = None,
  saved_model_path: str | None = None,
) -> keras.Model:
  """Builds the encoder (and head) and restores them from a training checkpoint.

  Args:
    model_dir_or_ckpt: a CheckpointManager directory (latest checkpoint) or a
      checkpoint prefix.
    encoder_name: e.g. "bit-r50x1", or SAVED_MODEL_ENCODER for a model
      fine-tuned from a SavedModel; None reads 'encoder' from config.json
      next to the checkpoint, else DEFAULT_ENCODER.
    num_classes: size of the fine-tuning head saved under 'head'; None reads
      'num_classes' from config.json (no head when absent).
    saved_model_path: for SAVED_MODEL_ENCODER, the SavedModel the encoder is
      rebuilt from; None reads 'saved_model_path' from config.json.

  Returns:
    The `build_encoder_by_name` model (or `load.load_encoder` model, any
    input size) with restored weights; with a head, a model returning its
    dict plus 'logits' (N, num_classes).

  Raises:
    FileNotFoundError: no checkpoint, or the source SavedModel is gone.
    AssertionError: an object of the encoder or head is missing from the file.
    ValueError: some encoder variables are not reachable by tf.train.Checkpoint,
      so no checkpoint can hold them; or a BiT encoder is asked for a model
      config.json says was fine-tuned from a SavedModel.
  """
  ckpt, model_dir = _checkpoint_and_dir(model_dir_or_ckpt)
  config = read_config(model_dir)
  encoder_name = encoder_name or config.get("encoder") or DEFAULT_ENCODER
  if num_classes is None:
    num_classes = config.get("num_classes")
  from_saved_model = config.get("encoder_source") == SAVED_MODEL_ENCODER
  if from_saved_model and encoder_name != SAVED_MODEL_ENCODER:
    raise ValueError(
      f"{os.path.join(model_dir, CONFIG_FILENAME)}: the model was fine-tuned from the "
      f"SavedModel {config.get('saved_model_path')!r}, so its checkpoint holds no "
      f"{encoder_name} encoder; drop --encoder."
    )
  if encoder_name == SAVED_MODEL_ENCODER:
    source = saved_model_source(model_dir, config, saved_model_path)
    # Any input size (the export convention); trainable so the export is too.
    encoder = load.load_encoder(source, trainable=True, image_size=None)
  else:
    encoder = models.build_encoder_by_name(encoder_name)
  items: dict[str, Any] = {"encoder": encoder}
  if num_classes:
    feature_dim = int(export.output_shapes(encoder)[export.FEATURE_MAP][-1])
    items["head"] = build_head(feature_dim, num_classes)
  root = tf.train.Checkpoint(**items)
  missing = unreachable_variables(root, encoder)
  if missing:
    raise ValueError(
      f"{len(missing)} of the {len(encoder.variables)} variables of {encoder_name} are not "
      f"reachable by tf.train.Checkpoint (e.g. {missing[0]}), so a checkpoint cannot hold "
      "them (Keras 3 sublayers kept in Python lists are not checkpoint dependencies)."
    )
  status = root.read(ckpt)
  # Optimizer slots, projection heads etc. may be in the file: ignore them,
  # but every object of the encoder (and head) must be there.
  status.expect_partial().assert_existing_objects_matched()
  logging.info("Restored %s from %s.", encoder_name, ckpt)
  if not num_classes:
    return encoder
  outputs = dict(encoder.output)
  outputs[export.LOGITS] = items["head"](outputs[export.EMBEDDING])
  return keras.Model(encoder.input, outputs, name=encoder.name)


def _normalized_label_mode(mode: str | None) -> str:
  return {"multi_class": "multiclass", "multi_label": "multilabel"}.get(mode or "", mode or "")


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
    encoder_name: BiT encoder name (gives depth and width), or
      SAVED_MODEL_ENCODER.
    config: model_dir/config.json.
    source_metadata: for SAVED_MODEL_ENCODER, `read_source_metadata` of the
      source SavedModel; its fields win over the name, config.json and
      `overrides` over them.
    **overrides: ExportMetadata fields (None: not given).

  Returns:
    The metadata.
  """
  fields: dict[str, Any] = {}
  if encoder_name == SAVED_MODEL_ENCODER:
    fields.update(source_metadata or {})
    depth, width = int(fields.pop("depth", 0) or 0), int(fields.pop("width", 0) or 0)
    if fields.get("architecture") == metadata_lib.ExportMetadata.architecture:
      del fields["architecture"]  # The generic default: let depth and width name it.
  else:
    depth, width, _ = models.parse_encoder_name(encoder_name)
  feature_dim = int(export.output_shapes(model)[export.FEATURE_MAP][-1])
  for key in ("modality", "objective", "training_data", "pretrain_image_size"):
    if config.get(key) is not None:
      fields[key] = config[key]
  if config.get("label_names"):
    fields["label_names"] = tuple(config["label_names"])
    fields["label_mode"] = _normalized_label_mode(config.get("label_mode")) or "multiclass"
  fields.update({k: v for k, v in overrides.items() if v is not None})
  if "label_names" in fields:
    fields["label_names"] = tuple(fields["label_names"])
  return metadata_lib.metadata_for(name, feature_dim, depth=depth, width=width, **fields)


def main(argv: list[str]) -> None:
  del argv
  source = _CHECKPOINT.value or _MODEL_DIR.value
  if not source or not _OUTPUT_DIR.value:
    raise app.UsageError("Give --model_dir or --checkpoint, and --output_dir.")
  _, model_dir = _checkpoint_and_dir(source)
  config = read_config(model_dir)
  if _NAME.value:
    name, export_dir = _NAME.value, os.path.join(_OUTPUT_DIR.value, _NAME.value)
  else:
    export_dir = _OUTPUT_DIR.value
    name = os.path.basename(os.path.normpath(export_dir))
  release = metadata_lib.parse_release_name(name)
  from_name = f"bit-r{release['depth']}x{release['width']}" if release else None
  encoder_name = _ENCODER.value or config.get("encoder") or from_name or DEFAULT_ENCODER
  if from_name and encoder_name not in (from_name, SAVED_MODEL_ENCODER):
    logging.warning("Export name %s does not match encoder %s.", name, encoder_name)
  model = restore_encoder_from_checkpoint(
    source, encoder_name, _NUM_CLASSES.value, saved_model_path=_SAVED_MODEL_PATH.value
  )
  source_metadata = None
  if encoder_name == SAVED_MODEL_ENCODER:
    source_metadata = read_source_metadata(
      saved_model_source(model_dir, config, _SAVED_MODEL_PATH.value)
    )
  metadata = build_metadata(
    name,
    model,
    encoder_name,
    config,
    source_metadata,
    modality=_MODALITY.value,
    pretrain_image_size=_PRETRAIN_IMAGE_SIZE.value,
    objective=_OBJECTIVE.value,
    training_data=_TRAINING_DATA.value,
    label_names=_LABEL_NAMES.value,
    label_mode=_LABEL_MODE.value,
  )
  if metadata.label_names and not metadata.label_mode:
    metadata = metadata.replace(label_mode="multiclass")
  export.export_encoder(model, export_dir, metadata)
  logging.info("Exported %s to %s.", name, export_dir)


def run() -> None:
  app.run(main)


if __name__ == "__main__":
  run()
