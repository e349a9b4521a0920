"""Checkpoints, resume and `config.json` for a training `model_dir`.

Contract (relied on by `hub_export` and by fine-tuning "from our checkpoint"):

* `<model_dir>/ckpt-<step>.{index,data-*}` written by `tf.train.CheckpointManager`
  (prefix "ckpt") from `tf.train.Checkpoint(encoder=<keras encoder>,
  optimizer=..., step=<int64 global step>, ...)`; pretraining adds
  `objective=tf.train.Checkpoint(**objective.checkpoint_items())` (e.g.
  `projection_head`, MoCo's queue, BYOL's target network and step) and
  `linear_head` when trained; fine-tuning adds `head` (Dense classifier on the
  encoder embedding). `tf.train.Checkpoint(encoder=model).restore(latest)
  .expect_partial()` restores just the encoder.
  Input position: the step is the position (step * global batch examples);
  a resumed run re-seeds its input pipeline with the start step, so it sees
  fresh shuffles and views rather than replaying the first batches.
* `<model_dir>/config.json`: {'encoder', 'image_size', 'objective' (pretrain),
  'task' ('pretrain' | 'finetune'), 'global_batch_size', 'train_steps', ...};
  fine-tuning adds 'num_classes', 'label_mode', 'label_names'.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping, Sequence
from typing import Any

import tensorflow as tf
from absl import logging

CONFIG_JSON = "config.json"
CHECKPOINT_PREFIX = "ckpt"


class CheckpointError(ValueError):
  """A checkpoint or model_dir is missing or incompatible with the request."""


def write_config_json(model_dir: str, config: Mapping[str, Any]) -> str:
  """Writes `config` as `<model_dir>/config.json` (atomically); returns the path."""
  tf.io.gfile.makedirs(model_dir)
  path = os.path.join(model_dir, CONFIG_JSON)
  tmp = path + ".tmp"
  with tf.io.gfile.GFile(tmp, "w") as f:
    json.dump(dict(config), f, indent=2, sort_keys=True, default=str)
  tf.io.gfile.rename(tmp, path, overwrite=True)
  return path


def read_config_json(model_dir: str) -> dict[str, Any] | None:
  """Reads `<model_dir>/config.json`; None when absent."""
  path = os.path.join(model_dir, CONFIG_JSON)
  if not tf.io.gfile.exists(path):
    return None
  with tf.io.gfile.GFile(path) as f:
    return json.load(f)


def check_compatible(
  model_dir: str, expected: Mapping[str, Any], keys: Sequence[str]
) -> dict[str, Any] | None:
  """Raises CheckpointError if `model_dir`'s config.json disagrees on `keys`.

  Args:
    model_dir: a directory that may already hold a run.
    expected: the values this run will use.
    keys: the keys that must match for a resume to make sense.

  Returns:
    The existing config (None when there is none).
  """
  existing = read_config_json(model_dir)
  if existing is None:
    return None
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
  return existing


def resolve_checkpoint_path(path: str) -> str:
  """A checkpoint prefix from a model_dir or a prefix; CheckpointError when none."""
  if tf.io.gfile.isdir(path):
    latest = tf.train.latest_checkpoint(path)
    if latest is None:
      raise CheckpointError(f"No checkpoint found in directory {path!r}.")
    return latest
  if tf.io.gfile.exists(path + ".index"):
    return path
  raise CheckpointError(
    f"{path!r} is neither a directory with checkpoints nor a checkpoint prefix."
  )


def restore(checkpoint: tf.train.Checkpoint, path: str, partial: bool = False) -> None:
  """Restores `checkpoint` from a prefix with a clear error on mismatch.

  Args:
    checkpoint: the objects to restore (variables must exist already, e.g.
      after `optimizer.build`).
    path: checkpoint prefix.
    partial: allow objects of the file that `checkpoint` lacks (e.g. an
      optimizer when only the encoder is wanted). Either way every object of
      `checkpoint` must be found in the file.

  Raises:
    CheckpointError: shapes or structure do not match.
  """
  try:
    status = checkpoint.read(path)
    if partial:
      status.expect_partial()
    status.assert_existing_objects_matched()
  except (AssertionError, ValueError, tf.errors.OpError) as e:
    raise CheckpointError(
      f"Checkpoint {path!r} is incompatible with the model being built "
      f"(wrong encoder/objective/head?): {str(e)[:2000]}"
    ) from e


class Checkpointer:
  """A CheckpointManager in `write_dir` that resumes from `model_dir`.

  In multi-worker runs the chief's `write_dir` is `model_dir`; other workers
  save to a scratch `write_dir` (saving is collective) which `cleanup`
  removes. Every worker restores from `model_dir`.

  Args:
    checkpoint: the tf.train.Checkpoint to manage.
    model_dir: directory of the chief's checkpoints.
    write_dir: where this process writes.
    max_to_keep: checkpoints kept (None keeps all).
    keep_checkpoint_every_n_hours: additionally keep one checkpoint per period.
  """

  def __init__(
    self,
    checkpoint: tf.train.Checkpoint,
    model_dir: str,
    write_dir: str,
    max_to_keep: int | None = 5,
    keep_checkpoint_every_n_hours: float | None = None,
  ) -> None:
    self.checkpoint = checkpoint
    self.model_dir = model_dir
    self.write_dir = write_dir
    self.manager = tf.train.CheckpointManager(
      checkpoint,
      write_dir,
      max_to_keep=max_to_keep,
      keep_checkpoint_every_n_hours=keep_checkpoint_every_n_hours,
      checkpoint_name=CHECKPOINT_PREFIX,
    )

  def restore_latest(self) -> str | None:
    """Restores the newest checkpoint of `model_dir`; returns its path or None."""
    latest = tf.train.latest_checkpoint(self.model_dir)
    if latest is None:
      return None
    restore(self.checkpoint, latest)
    logging.info("Resumed from %s", latest)
    return latest

  def save(self, step: int) -> str:
    """Saves at `step` (all workers must call this); returns the written path."""
    path = self.manager.save(checkpoint_number=step)
    logging.info("Saved checkpoint %s", path)
    return path

  def cleanup(self) -> None:
    """Removes a non-chief scratch directory."""
    if self.write_dir != self.model_dir and tf.io.gfile.exists(self.write_dir):
      shutil.rmtree(self.write_dir, ignore_errors=True)
