"""JSON files written atomically and as strict JSON, read with clear errors.

One writer for every JSON file the project produces (manifests, markers,
config.json, results, reports): values are converted by `to_json_value`
(NumPy scalars and arrays, tuples, enums, paths; NaN and infinities become
null, since strict JSON has no NaN), written under a temporary name, flushed
and renamed into place, so a reader never sees half a file. Local paths use
the os module (the converter's worker processes do not import TensorFlow);
paths with a scheme (gs://, s3://) go through `tf.io.gfile`.
"""

from __future__ import annotations

import enum
import json
import math
import os
from collections.abc import Mapping
from typing import Any

import numpy as np


class JsonFileError(ValueError):
  """A JSON file exists but cannot be parsed."""


def to_json_value(value: Any) -> Any:
  """`value` as plain JSON types (dict keys become strings; NaN/inf become None).

  Raises:
    TypeError: a value of a type with no JSON form.
  """
  if isinstance(value, enum.Enum):
    return to_json_value(value.value)
  if isinstance(value, Mapping):
    return {str(to_json_value(k)): to_json_value(v) for k, v in value.items()}
  if isinstance(value, list | tuple | set | frozenset):
    items = sorted(value) if isinstance(value, set | frozenset) else value
    return [to_json_value(v) for v in items]
  if isinstance(value, np.ndarray):
    return to_json_value(value.tolist())
  if isinstance(value, np.generic):
    return to_json_value(value.item())
  if isinstance(value, float):
    return value if math.isfinite(value) else None
  if value is None or isinstance(value, bool | int | str):
    return value
  if isinstance(value, os.PathLike):
    return os.fspath(value)
  raise TypeError(f"{type(value).__name__} value {value!r} has no JSON form.")


def _remote(path: str) -> bool:
  return "://" in path


def write_json(path: str, value: Any, *, indent: int | None = 2) -> str:
  """Writes `value` as strict JSON to `path` atomically; returns the path.

  Creates the parent folder. Keys are sorted, so equal values give equal files.
  """
  text = json.dumps(to_json_value(value), indent=indent, sort_keys=True, allow_nan=False)
  folder = os.path.dirname(path)
  tmp = f"{path}.tmp-{os.getpid()}"
  if _remote(path):
    import tensorflow as tf  # Lazy: remote file systems only.

    if folder:
      tf.io.gfile.makedirs(folder)
    with tf.io.gfile.GFile(tmp, "w") as f:
      f.write(text + "\n")
    tf.io.gfile.rename(tmp, path, overwrite=True)
    return path
  if folder:
    os.makedirs(folder, exist_ok=True)
  with open(tmp, "w", encoding="utf-8") as f:
    f.write(text + "\n")
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)
  return path


def read_json(path: str) -> Any | None:
  """The parsed content of `path`; None when the file does not exist.

  Raises:
    JsonFileError: the file exists but is not valid JSON (the message names it).
  """
  try:
    if _remote(path):
      import tensorflow as tf  # Lazy: remote file systems only.

      if not tf.io.gfile.exists(path):
        return None
      with tf.io.gfile.GFile(path) as f:
        text = f.read()
    else:
      if not os.path.exists(path):
        return None
      with open(path, encoding="utf-8") as f:
        text = f.read()
    return json.loads(text)
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise JsonFileError(f"{path} is not valid JSON: {e}") from e
