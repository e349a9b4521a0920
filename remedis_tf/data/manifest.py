"""Reads the converter's manifest.json (next to the shards).

A missing manifest is normal (records written by other tools) and gives
None; a manifest that exists but cannot be read is an error naming the file,
never a silent default (a corrupt manifest must not quietly turn a
multi-label task into a multi-class one). The label mode is returned as a
`LabelMode` whatever spelling the file uses.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import tensorflow as tf

from remedis_tf.errors import InputDataError
from tfrecords_tools import json_io
from tfrecords_tools.schema import LabelMode

MANIFEST_NAME = "manifest.json"


def manifest_path(files: str | Sequence[str]) -> str:
  """Where the manifest of `files` would be: in the folder of the first pattern or path."""
  first = files if isinstance(files, str | os.PathLike) else next(iter(files), "")
  first = os.fspath(first)
  folder = first if tf.io.gfile.isdir(first) else os.path.dirname(first)
  return os.path.join(folder, MANIFEST_NAME)


def read_manifest(files: str | Sequence[str]) -> dict | None:
  """The manifest next to the first shard (or in a given folder); None when there is none.

  Args:
    files: a folder, a glob pattern, a path, or a sequence of them.

  Returns:
    The parsed JSON object (e.g. with 'label_names', 'label_mode' as a
    LabelMode), or None when no manifest.json exists.

  Raises:
    InputDataError: the manifest exists but is not valid JSON, not an
      object, or names an unknown label mode.
  """
  path = manifest_path(files)
  try:
    data = json_io.read_json(path)
  except json_io.JsonFileError as e:
    raise InputDataError(str(e)) from e
  if data is None:
    return None
  if not isinstance(data, dict):
    raise InputDataError(f"{path} does not hold a JSON object.")
  if data.get("label_mode"):
    try:
      data["label_mode"] = LabelMode.parse(data["label_mode"])
    except ValueError as e:
      raise InputDataError(f"{path}: {e}") from e
  return data
