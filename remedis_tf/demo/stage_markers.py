"""Resumable stages: a JSON marker per finished stage, progress lines with elapsed time.

A stage's marker (`<dir>/<name>.done.json`) is written atomically
(`tfrecords_tools.json_io`) after the stage finishes and holds the stage's
JSON result; a rerun returns that result without running the stage again. A
stage that raises (an interruption included) writes no marker, so a rerun
runs it again; stages make their own work resumable (fine-tuning runs keep
checkpoints and results, see `remedis_tf.demo.study_runs`).
"""

from __future__ import annotations

import os
import resource
import time
from collections.abc import Callable
from typing import Any

from absl import logging

from tfrecords_tools import json_io


class StageRunner:
  """Runs named stages once, logging progress with the time since the study began.

  Attributes:
    marker_dir: where the markers are.
    ran: stages run by this invocation, in order.
    skipped: stages whose marker existed.
    seconds: stage -> its run time (from the marker for skipped stages).
    results: stage -> its result (from the marker for skipped stages).
  """

  def __init__(self, marker_dir: str) -> None:
    self.marker_dir = marker_dir
    self.start = time.perf_counter()
    self.ran: list[str] = []
    self.skipped: list[str] = []
    self.seconds: dict[str, float] = {}
    self.results: dict[str, dict[str, Any]] = {}

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
      fn: computes the stage; returns a JSON-serialisable dict, optionally
        with 'examples' (examples the stage processed, for its throughput)
        and 'worker_cpu_seconds' (CPU time of long-lived worker processes
        that this process has not reaped).

    Returns:
      The stage result, with 'seconds' (the stage's own run time),
      'cpu_seconds' (CPU time of this process, its reaped children and the
      reported workers: on a shared machine a steadier measure of the work
      than wall time) and, when `fn` gave 'examples', 'examples_per_second'.
    """
    cached = json_io.read_json(self.marker_path(name))
    if cached is not None:
      self.skipped.append(name)
      self.seconds[name] = float(cached.get("seconds", 0.0))
      self.results[name] = cached
      self.log("stage %s: already done (marker %s), skipped.", name, self.marker_path(name))
      return cached
    self.log("stage %s: started.", name)
    t0, cpu0 = time.perf_counter(), _cpu_seconds()
    result = dict(fn())
    seconds = time.perf_counter() - t0
    result["seconds"] = round(seconds, 2)
    cpu = _cpu_seconds() - cpu0 + float(result.get("worker_cpu_seconds") or 0.0)
    result["cpu_seconds"] = round(cpu, 2)
    examples = result.get("examples")
    rate = ""
    if examples is not None:
      result["examples_per_second"] = round(examples / max(seconds, 1e-9), 2)
      rate = f" ({examples} examples, {result['examples_per_second']:.1f} examples/s)"
    json_io.write_json(self.marker_path(name), result)
    self.ran.append(name)
    self.seconds[name] = result["seconds"]
    self.results[name] = result
    self.log("stage %s: done in %.1f s (CPU %.1f s)%s.", name, seconds, cpu, rate)
    return result

  def throughput(self) -> dict[str, dict[str, Any]]:
    """stage -> {'seconds', 'cpu_seconds', 'examples', 'examples_per_second'} of every stage seen."""
    return {
      name: {
        "seconds": result.get("seconds"),
        "cpu_seconds": result.get("cpu_seconds"),
        "examples": result.get("examples"),
        "examples_per_second": result.get("examples_per_second"),
      }
      for name, result in self.results.items()
    }


def _cpu_seconds() -> float:
  """User + system CPU seconds of this process and of its reaped children."""
  own = resource.getrusage(resource.RUSAGE_SELF)
  children = resource.getrusage(resource.RUSAGE_CHILDREN)
  return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime
