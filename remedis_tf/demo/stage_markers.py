"""Resumable stages: a JSON marker per finished stage, progress lines with elapsed time.

A stage's marker (`<dir>/<name>.done.json`) is written atomically after the
stage finishes and holds the stage's JSON result; a rerun returns that result
without running the stage again. The same markers cache single fine-tuning
runs, so an interrupted study resumes where it stopped.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from typing import Any

from absl import logging


def read_json(path: str) -> Any | None:
  """The JSON content of `path`, or None when it does not exist."""
  if not os.path.exists(path):
    return None
  with open(path, encoding="utf-8") as f:
    return json.load(f)


def write_json_atomic(path: str, payload: Any) -> None:
  """Writes JSON to a temporary file, fsyncs it and renames it into place."""
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  tmp = f"{path}.tmp-{os.getpid()}"
  with open(tmp, "w", encoding="utf-8") as f:
    json.dump(payload, f, indent=2, sort_keys=True, allow_nan=False)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)


class StageRunner:
  """Runs named stages once, logging progress with the time since the study began."""

  def __init__(self, marker_dir: str) -> None:
    self.marker_dir = marker_dir
    self.start = time.perf_counter()
    self.ran: list[str] = []
    self.skipped: list[str] = []
    self.seconds: dict[str, float] = {}

  def elapsed(self) -> float:
    """Seconds since this runner was created."""
    return time.perf_counter() - self.start

  def log(self, message: str, *args: Any) -> None:
    """A progress line prefixed with the elapsed time (mm:ss)."""
    minutes, seconds = divmod(int(self.elapsed()), 60)
    logging.info(f"[demo {minutes:02d}:{seconds:02d}] {message}", *args)

  def marker_path(self, name: str) -> str:
    """Path of the marker of stage `name`."""
    return os.path.join(self.marker_dir, f"{name}.done.json")

  def run(self, name: str, fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Returns the stage's cached result, or runs `fn` and caches its result.

    Args:
      name: stage name (also the marker's file name).
      fn: computes the stage; returns a JSON-serialisable dict.

    Returns:
      The stage result, with 'seconds' (the stage's own run time).
    """
    cached = read_json(self.marker_path(name))
    if cached is not None:
      self.skipped.append(name)
      self.seconds[name] = float(cached.get("seconds", 0.0))
      self.log("stage %s: already done (marker %s), skipped.", name, self.marker_path(name))
      return cached
    self.log("stage %s: started.", name)
    t0 = time.perf_counter()
    result = dict(fn())
    result["seconds"] = round(time.perf_counter() - t0, 2)
    write_json_atomic(self.marker_path(name), result)
    self.ran.append(name)
    self.seconds[name] = result["seconds"]
    self.log("stage %s: done in %.1f s.", name, result["seconds"])
    return result
