"""Helpers shared by the training CLIs: exit codes and results files."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from typing import Any

import tensorflow as tf
from absl import logging

from remedis_tf.train.checkpointing import CheckpointError
from remedis_tf.train.distribute import StrategyError

# Errors a user can fix by changing flags, data or model_dir: reported in one
# line without a traceback, exit status 2.
USER_ERRORS = (ValueError, FileNotFoundError, CheckpointError, StrategyError)


def write_json(path: str, value: Mapping[str, Any]) -> None:
  """Writes `value` as JSON to `path`, creating the folder."""
  folder = os.path.dirname(path)
  if folder:
    tf.io.gfile.makedirs(folder)
  with tf.io.gfile.GFile(path, "w") as f:
    json.dump(dict(value), f, indent=2, sort_keys=True, default=str)


def run_reporting_errors(fn: Callable[[], Mapping[str, Any]], results_json: str | None) -> int:
  """Runs `fn`, writes its results, returns an exit status (0 ok, 2 user error)."""
  try:
    results = fn()
  except USER_ERRORS as e:
    logging.error("%s: %s", type(e).__name__, e)
    return 2
  if results_json:
    write_json(results_json, results)
  logging.info(
    "Results: %s",
    json.dumps({k: v for k, v in results.items() if k != "loss_history"}, default=str),
  )
  return 0
