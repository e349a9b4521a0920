"""Deterministic chunks, atomic shard writing and per-chunk completion markers.

Resumability rests on three rules:
  1. The sorted input list is cut into chunks by cumulative input size
     (`plan_chunks`), so the same inputs always give the same chunks.
  2. A chunk's records go to one shard per split,
     `{split}-{chunk:05d}-of-{num_chunks:05d}.tfrecord`, each written under a
     temporary name and renamed only when complete.
  3. After its shards are renamed, a chunk's marker (`_work/chunks/NNNNN.json`,
     itself written atomically) records its counts, errors and checksums. A
     chunk without a marker is redone from scratch on rerun; one with a
     marker is never touched again. So after `kill -9` a rerun yields every
     record exactly once.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import os
import shutil
from collections.abc import Sequence
from typing import TYPE_CHECKING

from tfrecords_tools.archive_io import Member

if TYPE_CHECKING:  # Only a type here; importing it would load pydicom in tile workers.
  from tfrecords_tools.file_converter import FileResult

WORK_DIR = "_work"
TMP_TAG = ".tmp-"


@dataclasses.dataclass(frozen=True)
class Chunk:
  """A deterministic group of input files written to one shard per split."""

  index: int
  files: tuple[str, ...]


def plan_chunks(members: Sequence[Member], target_bytes: int) -> list[Chunk]:
  """Cuts the sorted members into chunks of about `target_bytes` of input.

  Args:
    members: inputs in sorted order.
    target_bytes: target input bytes per chunk (>= 1).

  Returns:
    Chunks in order; every member in exactly one.
  """
  chunks, current, size = [], [], 0
  for m in members:
    current.append(m.path)
    size += max(m.size, 1)
    if size >= target_bytes:
      chunks.append(Chunk(len(chunks), tuple(current)))
      current, size = [], 0
  if current:
    chunks.append(Chunk(len(chunks), tuple(current)))
  return chunks


def shard_name(split: str, chunk_index: int, num_chunks: int) -> str:
  """Returns the shard file name of a split for a chunk."""
  return f"{split}-{chunk_index:05d}-of-{num_chunks:05d}.tfrecord"


def marker_path(output_dir: str, chunk_index: int) -> str:
  """Returns the path of a chunk's completion marker."""
  return os.path.join(output_dir, WORK_DIR, "chunks", f"{chunk_index:05d}.json")


def write_json_atomic(path: str, obj: object) -> None:
  """Writes JSON to a temporary file, fsyncs it and renames it into place."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  tmp = f"{path}{TMP_TAG}{os.getpid()}"
  with open(tmp, "w", encoding="utf-8") as f:
    json.dump(obj, f, indent=1, sort_keys=True)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)


def sha256_file(path: str) -> str:
  """Returns the hex SHA-256 of a file."""
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      h.update(block)
  return h.hexdigest()


def remove_stale(
  output_dir: str, chunks: Sequence[Chunk], num_chunks: int, splits: Sequence[str]
) -> None:
  """Deletes temporary files and the shards of chunks that have no marker."""
  for name in os.listdir(output_dir):
    if TMP_TAG in name:
      os.remove(os.path.join(output_dir, name))
  for chunk in chunks:
    for split in splits:
      path = os.path.join(output_dir, shard_name(split, chunk.index, num_chunks))
      if os.path.exists(path):
        os.remove(path)


def label_counts(
  result_label: int,
  multi: Sequence[float],
  has_label: bool,
  label_names: Sequence[str],
  label_mode: str,
) -> list[str]:
  """Returns the label names a record counts toward ("unlabeled" if none)."""
  if not has_label:
    return ["unlabeled"]
  if label_mode == "multilabel":
    return [label_names[i] for i, v in enumerate(multi) if v == 1.0] or ["none_positive"]
  return [label_names[result_label]]


class ChunkWriter:
  """Writes one chunk's records (tmp files), then renames and marks it done."""

  def __init__(
    self,
    output_dir: str,
    chunk: Chunk,
    num_chunks: int,
    label_names: Sequence[str] = (),
    label_mode: str = "multiclass",
  ):
    self._dir = output_dir
    self._chunk = chunk
    self._num_chunks = num_chunks
    self._label_names = tuple(label_names)
    self._label_mode = label_mode
    self._writers: dict[str, object] = {}
    self._tmp: dict[str, str] = {}
    self._records = collections.Counter()
    self._by_label = collections.defaultdict(collections.Counter)
    self._by_site = collections.defaultdict(collections.Counter)
    self._errors: list[dict] = []
    self._label_rows: set[int] = set()
    self._files_converted = 0
    self._files_failed = 0
    self._files_dropped = 0
    self._timings = collections.Counter()

  def _writer(self, split: str):
    if split not in self._writers:
      import tensorflow as tf  # Only the writing process needs TensorFlow.

      final = os.path.join(self._dir, shard_name(split, self._chunk.index, self._num_chunks))
      self._tmp[split] = f"{final}{TMP_TAG}{os.getpid()}"
      self._writers[split] = tf.io.TFRecordWriter(self._tmp[split])
    return self._writers[split]

  def add(self, result: FileResult) -> None:
    """Writes a file's records and accumulates its statistics."""
    import time

    t0 = time.perf_counter()
    for split, serialized, info in result.records:
      self._writer(split).write(serialized)
      self._records[split] += 1
      for name in label_counts(
        info.label, info.multi_label, info.has_label, self._label_names, self._label_mode
      ):
        self._by_label[split][name] += 1
      self._by_site[split][info.site] += 1
    self._errors.extend(result.errors)
    if result.label_row is not None:
      self._label_rows.add(result.label_row)
    if result.records:
      self._files_converted += 1
    elif result.errors and all(e["reason"] == "unlabeled_image" for e in result.errors):
      self._files_dropped += 1
    else:
      self._files_failed += 1
    self._timings.update(result.timings)
    self._timings["write"] += time.perf_counter() - t0

  def finish(self) -> dict:
    """Closes, renames the shards, writes and returns the chunk marker."""
    import time

    t0 = time.perf_counter()
    shards = []
    for split, writer in sorted(self._writers.items()):
      writer.close()
      tmp = self._tmp[split]
      final = tmp[: tmp.index(TMP_TAG)]
      shards.append(
        {
          "file": os.path.basename(final),
          "split": split,
          "records": self._records[split],
          "bytes": os.path.getsize(tmp),
          "sha256": sha256_file(tmp),
        }
      )
      os.replace(tmp, final)
    self._timings["write"] += time.perf_counter() - t0
    marker = {
      "chunk": self._chunk.index,
      "files": len(self._chunk.files),
      "files_converted": self._files_converted,
      "files_failed": self._files_failed,
      "files_dropped": self._files_dropped,
      "records": dict(self._records),
      "by_label": {k: dict(v) for k, v in self._by_label.items()},
      "by_site": {k: dict(v) for k, v in self._by_site.items()},
      "shards": shards,
      "errors": self._errors,
      "label_rows": sorted(self._label_rows),
      "timings": dict(self._timings),
    }
    write_json_atomic(marker_path(self._dir, self._chunk.index), marker)
    return marker


def clear_output(output_dir: str, extra_dirs: Sequence[str] = ()) -> None:
  """Deletes a previous run's shards, temporary files, manifest, errors and work dir.

  Args:
    output_dir: the output folder.
    extra_dirs: more folder names of the run to delete (e.g. thumbnails).
  """
  from tfrecords_tools import manifest  # Lazy: manifest imports this module.

  for name in os.listdir(output_dir):
    path = os.path.join(output_dir, name)
    if (
      name.endswith(".tfrecord") or TMP_TAG in name or name in (manifest.MANIFEST, manifest.ERRORS)
    ):
      os.remove(path)
    elif name == WORK_DIR or name in extra_dirs:
      shutil.rmtree(path)
