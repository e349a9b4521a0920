"""Checkpoint writing and restoring with clear errors (see `run_dir` for the model_dir contract).

`Checkpointer` saves with a `tf.train.CheckpointManager` (prefix "ckpt") and
resumes from the newest checkpoint of the chief's `model_dir`. A resumed run
continues the input stream where it stopped: the trainer skips the examples
the finished steps consumed (`distribute.consumed_examples`), so it sees the
same batches and views as an uninterrupted run.
"""

from __future__ import annotations

import shutil

import tensorflow as tf
from absl import logging

from remedis_tf.errors import UserError

CHECKPOINT_PREFIX = "ckpt"


class CheckpointError(UserError, ValueError):
  """A checkpoint or model_dir is missing or incompatible with the request."""


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
