"""The run directory (`model_dir`) contract, in one place.

A training run writes, in its `model_dir`:

* `ckpt-<step>.{index,data-*}` (`tf.train.CheckpointManager`, prefix "ckpt")
  from `tf.train.Checkpoint(encoder=<encoder>, optimizer=..., step=<int64>,
  ...)`. Pretraining adds `objective=tf.train.Checkpoint(**objective
  .checkpoint_items())` (projection head, MoCo's queue, BYOL's target network
  ...) and `linear_head` when trained; fine-tuning adds `head`, the
  classifier of `build_head`. `tf.train.Checkpoint(encoder=model).read(path)
  .expect_partial()` restores just the encoder.
* `config.json`: the `RunConfig` below, flattened: the fields every reader
  needs ('task', 'encoder', 'image_size', 'encoder_source',
  'saved_model_path', 'objective', 'label_mode', 'num_classes',
  'label_names') next to every field of the training config (for people,
  and for the resume check).

The encoder is rebuilt by name (`remedis_tf.models.build_encoder_by_name`),
or, for a model fine-tuned from a SavedModel ('encoder_source':
'saved_model'), from the SavedModel at 'saved_model_path'. Evaluation,
export, embedding and the demo all rebuild models with `restore_model`.
"""

from __future__ import annotations

import dataclasses
import enum
import os
from collections.abc import Mapping, Sequence
from typing import Any

import keras
import tensorflow as tf
from absl import logging

from remedis_tf import models
from remedis_tf.errors import InputNotFoundError, UserError
from remedis_tf.models.outputs import EMBEDDING, FEATURE_MAP, LOGITS
from remedis_tf.train.checkpointing import CheckpointError, restore
from tfrecords_tools import json_io
from tfrecords_tools.schema import LabelMode

CONFIG_JSON = "config.json"
SAVED_MODEL_PB = "saved_model.pb"


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
  """No checkpoint at the path the user gave."""


class TaskKind(enum.StrEnum):
  """What a model_dir holds."""

  PRETRAIN = "pretrain"
  FINETUNE = "finetune"


class EncoderSource(enum.StrEnum):
  """Where a run's encoder architecture comes from."""

  BIT = "bit"  # models.build_encoder_by_name(encoder)
  SAVED_MODEL = "saved_model"  # models.load_encoder(saved_model_path)


class StartKind(enum.StrEnum):
  """What a training start point (`--init_checkpoint` / `--init_from`) is."""

  RANDOM = "random"
  BIT_NPZ = "bit_npz"
  SAVED_MODEL = "saved_model"
  CHECKPOINT = "checkpoint"


@dataclasses.dataclass(frozen=True)
class RunConfig:
  """What a model_dir's config.json says about the run.

  Attributes:
    task: pretraining or fine-tuning.
    encoder: BiT encoder name ('bit-r50x1', 'bit-tiny', ...), or
      'saved_model' when `encoder_source` is SAVED_MODEL.
    image_size: training image side (None in a hand-written config.json).
    encoder_source: how to rebuild the encoder.
    saved_model_path: absolute path of the SavedModel the encoder came from
      (SAVED_MODEL only).
    objective: pretraining objective name (pretraining only).
    label_mode: classifier head kind (fine-tuning only).
    num_classes: classifier width (fine-tuning only).
    label_names: class or label names (fine-tuning only).
    settings: every other field of the training config, as JSON values.
  """

  task: TaskKind
  encoder: str
  image_size: int | None = None
  encoder_source: EncoderSource = EncoderSource.BIT
  saved_model_path: str | None = None
  objective: str | None = None
  label_mode: LabelMode | None = None
  num_classes: int | None = None
  label_names: tuple[str, ...] = ()
  settings: Mapping[str, Any] = dataclasses.field(default_factory=dict)

  @property
  def has_head(self) -> bool:
    """Whether the checkpoint holds a fine-tuned classifier under 'head'."""
    return self.task == TaskKind.FINETUNE and bool(self.num_classes)

  def to_json(self) -> dict[str, Any]:
    """The flat config.json dict (settings first, the contract fields win)."""
    out = dict(json_io.to_json_value(dict(self.settings)))
    for field in dataclasses.fields(self):
      if field.name != "settings":
        out[field.name] = json_io.to_json_value(getattr(self, field.name))
    return out

  @classmethod
  def from_json(cls, data: Mapping[str, Any], source: str = CONFIG_JSON) -> RunConfig:
    """Parses a config.json dict (older spellings of label_mode accepted).

    Only 'encoder' is required, so that checkpoints written by other tools
    with a hand-written config.json load: 'task' defaults to fine-tuning when
    'num_classes' is given, else pretraining.

    Raises:
      CheckpointError: 'encoder' is missing or a field has a bad value.
    """
    names = {f.name for f in dataclasses.fields(cls)} - {"settings"}
    try:
      label_mode = data.get("label_mode")
      source_kind = EncoderSource(data.get("encoder_source") or EncoderSource.BIT)
      task = data.get("task") or (TaskKind.FINETUNE if data.get("num_classes") else "pretrain")
      return cls(
        task=TaskKind(task),
        encoder=str(data["encoder"]),
        image_size=int(data["image_size"]) if data.get("image_size") else None,
        encoder_source=source_kind,
        saved_model_path=data.get("saved_model_path"),
        objective=data.get("objective"),
        label_mode=LabelMode.parse(label_mode) if label_mode else None,
        num_classes=int(data["num_classes"]) if data.get("num_classes") else None,
        label_names=tuple(str(n) for n in data.get("label_names") or ()),
        settings={k: v for k, v in data.items() if k not in names},
      )
    except (KeyError, TypeError, ValueError) as e:
      raise CheckpointError(f"{source} is not a remedis-tf run config ({e!r}).") from e


def config_path(model_dir: str) -> str:
  """`<model_dir>/config.json`."""
  return os.path.join(model_dir, CONFIG_JSON)


def read_run_config(model_dir: str) -> RunConfig | None:
  """The RunConfig of `model_dir`; None when it has no config.json.

  Raises:
    CheckpointError: config.json is unreadable or incomplete (names the file).
  """
  path = config_path(model_dir)
  try:
    data = json_io.read_json(path)
  except json_io.JsonFileError as e:
    raise CheckpointError(str(e)) from e
  if data is None:
    return None
  if not isinstance(data, dict):
    raise CheckpointError(f"{path} does not hold a JSON object.")
  return RunConfig.from_json(data, path)


def write_run_config(model_dir: str, run: RunConfig) -> str:
  """Writes `<model_dir>/config.json` atomically; returns its path."""
  return json_io.write_json(config_path(model_dir), run.to_json())


def check_compatible(model_dir: str, run: RunConfig, keys: Sequence[str]) -> None:
  """Raises CheckpointError if `model_dir` holds a run that disagrees on `keys`.

  Args:
    model_dir: a directory that may already hold a run.
    run: the run about to start (or resume).
    keys: config.json keys that must match for a resume to make sense.
  """
  path = config_path(model_dir)
  try:
    existing = json_io.read_json(path)
  except json_io.JsonFileError as e:
    raise CheckpointError(str(e)) from e
  if not isinstance(existing, dict):
    return
  expected = run.to_json()
  for key in ("label_mode",):  # Compare older spellings by meaning.
    if existing.get(key):
      existing[key] = LabelMode.parse(existing[key]).value
  diffs = [
    f"{k}: model_dir has {existing.get(k)!r}, requested {expected.get(k)!r}"
    for k in keys
    if k in existing and existing.get(k) != expected.get(k)
  ]
  if diffs:
    raise CheckpointError(
      f"{model_dir} already holds a run that cannot be resumed with these settings "
      f"({'; '.join(diffs)}). Use a new --model_dir or the original settings."
    )


def resolve_checkpoint(path: str) -> tuple[str, str]:
  """(checkpoint prefix, directory of its config.json) for a model_dir or a prefix.

  Raises:
    CheckpointNotFoundError: no checkpoint there.
  """
  if tf.io.gfile.isdir(path):
    latest = tf.train.latest_checkpoint(path)
    if latest is None:
      raise CheckpointNotFoundError(f"No checkpoint found in directory {path!r}.")
    return latest, path
  if tf.io.gfile.exists(path + ".index"):
    return path, os.path.dirname(path)
  raise CheckpointNotFoundError(
    f"{path!r} is neither a directory with checkpoints nor a checkpoint prefix."
  )


def start_kind(path: str | None) -> StartKind:
  """What kind of start point `path` is (see StartKind).

  Raises:
    InputNotFoundError: `path` is set but is none of the kinds.
  """
  if not path:
    return StartKind.RANDOM
  if path.endswith(".npz"):
    if not tf.io.gfile.exists(path):
      raise InputNotFoundError(f"BiT checkpoint {path!r} does not exist.")
    return StartKind.BIT_NPZ
  if tf.io.gfile.isdir(path) and tf.io.gfile.exists(os.path.join(path, SAVED_MODEL_PB)):
    return StartKind.SAVED_MODEL
  if (tf.io.gfile.isdir(path) and tf.train.latest_checkpoint(path)) or tf.io.gfile.exists(
    path + ".index"
  ):
    return StartKind.CHECKPOINT
  raise InputNotFoundError(
    f"{path!r} is not a BiT .npz, a SavedModel directory, a model_dir with checkpoints or a "
    "checkpoint prefix."
  )


def absolute(path: str | None) -> str | None:
  """A local path made absolute (config.json is read from other directories)."""
  if path is None or "://" in path:
    return path
  return os.path.abspath(path)


def initialize_encoder(encoder: keras.Model, path: str | None) -> str:
  """Loads a start point into a BiT `encoder`; returns what was loaded.

  Args:
    encoder: a built BiT encoder.
    path: a BiT `.npz`, one of our model_dirs or checkpoint prefixes, or None.

  Returns:
    'random', 'bit_npz:<path> (<n> arrays)' or 'checkpoint:<prefix>'.

  Raises:
    ValueError: `path` is a SavedModel (those are not loaded into a BiT
      encoder: build the encoder from them with `build_encoder`).
  """
  kind = start_kind(path)
  if kind == StartKind.RANDOM:
    return "random"
  if kind == StartKind.BIT_NPZ:
    report = models.load_bit_checkpoint(encoder, path, skip_head=True)
    return f"bit_npz:{path} ({len(report.loaded)} arrays)"
  if kind == StartKind.CHECKPOINT:
    prefix, _ = resolve_checkpoint(path)
    restore(tf.train.Checkpoint(encoder=encoder), prefix, partial=True)
    return f"checkpoint:{prefix}"
  raise ValueError(f"{path!r} is a SavedModel; build the encoder from it instead.")


def build_encoder(
  run: RunConfig,
  *,
  image_size: int | None,
  trainable: bool,
  saved_model_path: str | None = None,
) -> keras.Model:
  """The encoder architecture of `run` (weights as built or as in the SavedModel).

  Args:
    run: the run config.
    image_size: square input side for a SavedModel encoder (None: any size);
      BiT encoders accept any size.
    trainable: for a SavedModel encoder, whether its variables are trained.
    saved_model_path: overrides `run.saved_model_path` (the SavedModel moved).

  Raises:
    InputNotFoundError: the SavedModel is missing.
  """
  if run.encoder_source == EncoderSource.SAVED_MODEL:
    path = saved_model_path or run.saved_model_path
    if not path or not tf.io.gfile.exists(os.path.join(path, SAVED_MODEL_PB)):
      raise InputNotFoundError(
        f"No SavedModel at {path!r}: the encoder of this run was fine-tuned from it and is "
        "rebuilt from it. Pass the SavedModel's current location (--saved_model_path)."
      )
    return models.load_encoder(path, trainable=trainable, image_size=image_size)
  return models.build_encoder_by_name(run.encoder)


def build_head(embedding_dim: int, num_classes: int) -> keras.Model:
  """The classifier: a zero-initialised float32 Dense on the pooled embedding.

  Saved under the checkpoint key 'head'. (N, embedding_dim) -> (N, num_classes)
  logits.
  """
  return keras.Sequential(
    [
      keras.Input((embedding_dim,)),
      keras.layers.Dense(num_classes, kernel_initializer="zeros", dtype="float32", name=LOGITS),
    ],
    name="head",
  )


def unreachable_variables(root: tf.train.Checkpoint, model: keras.Model) -> list[str]:
  """Paths of `model` variables that tf.train.Checkpoint cannot reach from `root`.

  Such variables are neither saved nor restored through the object graph
  (e.g. Keras 3 layers kept in plain Python lists).
  """
  reachable = {id(t) for t in tf.train.TrackableView(root).descendants()}
  return [
    v.path for v in model.variables if id(v) not in reachable and id(v.value) not in reachable
  ]


@dataclasses.dataclass
class RestoredModel:
  """A run's encoder (and classifier) with the weights of one checkpoint.

  Attributes:
    run: the run's config.
    checkpoint: the checkpoint prefix the weights came from.
    encoder: images (N, H, W, 3) in [0, 1] -> {'feature_map', 'embedding'}.
    head: the classifier (embedding -> logits), or None.
  """

  run: RunConfig
  checkpoint: str
  encoder: keras.Model
  head: keras.Model | None = None

  def classifier(self) -> keras.Model:
    """One model: images -> {'feature_map', 'embedding', 'logits'} (needs a head)."""
    if self.head is None:
      raise UserError(f"{self.checkpoint} holds no classifier head (not a fine-tuned model).")
    outputs = dict(self.encoder.output)
    outputs[LOGITS] = self.head(outputs[EMBEDDING])
    return keras.Model(self.encoder.input, outputs, name=self.encoder.name)


def restore_model(
  path: str,
  *,
  trainable: bool = False,
  image_size: int | None = None,
  saved_model_path: str | None = None,
  encoder: str | None = None,
  num_classes: int | None = None,
) -> RestoredModel:
  """Rebuilds the encoder (and head) of a model_dir and restores a checkpoint.

  Args:
    path: a model_dir (its newest checkpoint) or a checkpoint prefix.
    trainable: build a SavedModel encoder with trainable variables.
    image_size: fixed input side of a SavedModel encoder (None: any size).
    saved_model_path: where the SavedModel of a SavedModel-based run is now.
    encoder: encoder name when there is no config.json (checkpoints written
      by other tools); an error when it contradicts config.json's source.
    num_classes: head size when config.json gives none.

  Returns:
    A RestoredModel.

  Raises:
    CheckpointError: no checkpoint, no way to tell the encoder, objects of the
      encoder or head missing from the file, or encoder variables that a
      checkpoint cannot reach.
  """
  prefix, model_dir = resolve_checkpoint(path)
  run = read_run_config(model_dir)
  if run is None:
    if not encoder:
      raise CheckpointError(
        f"{config_path(model_dir)} is missing; pass the encoder name (--encoder)."
      )
    run = RunConfig(
      task=TaskKind.FINETUNE if num_classes else TaskKind.PRETRAIN,
      encoder=encoder,
      image_size=image_size or 224,
      num_classes=num_classes,
    )
  if num_classes and not run.num_classes:
    run = dataclasses.replace(run, task=TaskKind.FINETUNE, num_classes=num_classes)
  if encoder and encoder != run.encoder:
    if run.encoder_source == EncoderSource.SAVED_MODEL:
      raise CheckpointError(
        f"{config_path(model_dir)}: the model was fine-tuned from the SavedModel "
        f"{run.saved_model_path!r}, so its checkpoint holds no {encoder} encoder; drop --encoder."
      )
    run = dataclasses.replace(run, encoder=encoder)
  net = build_encoder(
    run, image_size=image_size, trainable=trainable, saved_model_path=saved_model_path
  )
  items: dict[str, Any] = {"encoder": net}
  head = None
  if run.has_head:
    head = build_head(int(net.output[FEATURE_MAP].shape[-1]), int(run.num_classes))
    items["head"] = head
  root = tf.train.Checkpoint(**items)
  missing = unreachable_variables(root, net)
  if missing:
    raise CheckpointError(
      f"{len(missing)} of the {len(net.variables)} variables of {run.encoder} are not "
      f"reachable by tf.train.Checkpoint (e.g. {missing[0]}), so a checkpoint cannot hold "
      "them (Keras 3 sublayers kept in Python lists are not checkpoint dependencies)."
    )
  # Optimizer slots, projection heads etc. may be in the file: ignored; every
  # object of the encoder (and head) must be there.
  restore(root, prefix, partial=True)
  logging.info("Restored %s%s from %s.", run.encoder, " + head" if head else "", prefix)
  return RestoredModel(run=run, checkpoint=prefix, encoder=net, head=head)
