"""Reads the converter's manifest.json (next to the shards), defensively."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence

import tensorflow as tf

MANIFEST_NAME = "manifest.json"


def read_manifest(files: str | Sequence[str]) -> dict | None:
  """Returns the manifest next to the first shard (or in a given folder), else None.

  Looks for manifest.json in the folder of the first pattern or path (or in
  the folder itself when a folder is given). A missing, unreadable or non-object
  manifest gives None; nothing here raises.

  Args:
    files: a folder, a glob pattern, a path, or a sequence of them.

  Returns:
    The parsed JSON object (e.g. with 'label_names', 'label_mode') or None.
  """
  try:
    first = files if isinstance(files, str | os.PathLike) else next(iter(files))
    first = os.fspath(first)
    folder = first if tf.io.gfile.isdir(first) else os.path.dirname(first)
    path = os.path.join(folder, MANIFEST_NAME)
    if not tf.io.gfile.exists(path):
      return None
    with tf.io.gfile.GFile(path, "r") as f:
      data = json.load(f)
    return data if isinstance(data, dict) else None
  except (OSError, ValueError, StopIteration, TypeError, tf.errors.OpError):
    return None
