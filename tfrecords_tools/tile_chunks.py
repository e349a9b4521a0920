"""Phase 2 of `remedis-tile`: chunks of a slide's patches, read, encoded and written.

A surveyed slide's kept patches are cut into chunks of at most
`patches_per_shard` (`plan_chunks`); a chunk becomes one shard. The process
that tiles a chunk (this one, a pool worker or a Beam worker) also writes it:
`write_chunk` reads and encodes the chunk's patches in blocks of
BLOCK_PATCHES (`tile_block`), keeping the slide it last opened, and feeds the
records to a `ShardWriter`, which writes the shard under a temporary name
(`record_file`, no TensorFlow), renames it when complete and then writes the
chunk's marker. A chunk's bytes depend only on the chunk, so any number of
workers writes the same shards. A patch that cannot be read is reported
(`patch_read_error`, with its level-0 coordinates) and skipped.
"""

from __future__ import annotations

import collections
import dataclasses
import os
import signal
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from tfrecords_tools import patch_example, record_file, shards, tiling
from tfrecords_tools.slide_reader import SlideError, open_slide
from tfrecords_tools.slide_survey import SlideWork, error_entry, scrub

if TYPE_CHECKING:
  from tfrecords_tools.tile import Job

BLOCK_PATCHES = 32  # patches per worker task


@dataclasses.dataclass(frozen=True)
class Chunk:
  """Patches [start, stop) of one slide, written to one shard."""

  index: int
  slide: int
  start: int
  stop: int


@dataclasses.dataclass(frozen=True)
class Block:
  """A worker task of phase 2: patches [start, stop) of a slide, within one chunk.

  `work` holds only these patches' coordinates and fractions, so a task stays
  small however many patches the slide has.
  """

  chunk: int
  work: SlideWork
  start: int
  stop: int


def plan_chunks(works: Sequence[SlideWork], patches_per_shard: int) -> list[Chunk]:
  """Cuts each slide's patches into chunks, in slide order."""
  chunks: list[Chunk] = []
  for work in works:
    for start in range(0, len(work.coords), patches_per_shard):
      stop = min(start + patches_per_shard, len(work.coords))
      chunks.append(Chunk(len(chunks), work.index, start, stop))
  return chunks


# Per-process state of workers: the job and the slide last opened.
_WORKER: dict[str, object] = {}


def init_worker(job: Job) -> None:
  """Sets this process's job (local runs, pool workers and Beam workers)."""
  close_cached()
  _WORKER["job"] = job


def _watch_parent(parent: int) -> None:
  """Ends this worker process when its parent is gone (e.g. after kill -9)."""
  while os.getppid() == parent:
    time.sleep(0.5)
  os._exit(1)


def init_pool_worker(job: Job, parent: int, patches_done) -> None:
  """Pool initializer: the job, the shared patch counter, and a watch on the parent.

  Args:
    job: the run.
    parent: the process id of the pool's owner.
    patches_done: a shared `multiprocessing.Value` counting patches tiled.
  """
  # A pool worker holds both ends of its task queue, so it would wait forever
  # for work from a parent killed with SIGKILL; this thread ends it instead.
  threading.Thread(target=_watch_parent, args=(parent,), daemon=True).start()
  init_worker(job)
  _WORKER["parent"] = parent
  _WORKER["patches_done"] = patches_done


def close_cached() -> None:
  """Closes the slide this process keeps open, if any."""
  cached = _WORKER.pop("slide", None)
  if cached is not None:
    cached[1].close()  # type: ignore[index]


def _open_cached(index: int):
  cached = _WORKER.get("slide")
  if cached is not None and cached[0] == index:  # type: ignore[index]
    return cached[1]  # type: ignore[index]
  close_cached()
  job: Job = _WORKER["job"]  # type: ignore[assignment]
  slide = open_slide(job.slides[index])
  _WORKER["slide"] = (index, slide)
  return slide


def _read_images(work: SlideWork, errors: list[dict]) -> list:
  """Reads the patches of `work`; a patch that fails reads as None."""
  job: Job = _WORKER["job"]  # type: ignore[assignment]
  size = job.config.policy.patch_size
  level_coords = tiling.from_level0(work.coords, work.plan.downsample)
  try:
    return list(tiling.read_patches(_open_cached(work.index), work.plan, level_coords, size))
  except SlideError:
    close_cached()  # A reader may be unusable after an error: retry patch by patch.
  images = []
  for k in range(len(level_coords)):
    try:
      slide = _open_cached(work.index)
      images.append(next(tiling.read_patches(slide, work.plan, level_coords[k : k + 1], size)))
    except SlideError as e:
      close_cached()
      x, y = (int(v) for v in work.coords[k])
      errors.append(
        error_entry(
          work.index,
          work.fields.slide_hash,
          "patch_read_error",
          scrub(str(e), job.slides[work.index]),
          x=x,
          y=y,
        )
      )
      images.append(None)
  return images


def tile_block(block: Block) -> tuple[list[bytes], list[dict], dict[str, float]]:
  """Reads and encodes a block of patches (in a worker process).

  Args:
    block: the task.

  Returns:
    (serialized tf.Examples in patch order, error entries, timings).
  """
  job: Job = _WORKER["job"]  # type: ignore[assignment]
  config, work = job.config, block.work
  errors: list[dict] = []
  t0 = time.perf_counter()
  images = _read_images(work, errors)
  t1 = time.perf_counter()
  records = []
  for k, image in enumerate(images):
    if image is None:
      continue
    encoded = patch_example.encode_patch(
      image, config.patch_format, config.png_compression, config.jpeg_quality
    )
    x, y = (int(v) for v in work.coords[k])
    records.append(
      patch_example.serialize(
        encoded,
        config.patch_format,
        config.policy.patch_size,
        work.fields,
        x,
        y,
        float(work.fractions[k]),
      )
    )
  return records, errors, {"read": t1 - t0, "encode": time.perf_counter() - t1}


class ShardWriter:
  """Writes one chunk's shard under a temporary name, renames it, marks it done."""

  def __init__(self, output_dir: str, chunk: Chunk, num_chunks: int, work: SlideWork):
    self._dir, self._chunk, self._work = output_dir, chunk, work
    self._final = os.path.join(
      output_dir, shards.shard_name(work.fields.split, chunk.index, num_chunks)
    )
    self._tmp = f"{self._final}{shards.TMP_TAG}{os.getpid()}"
    self._writer = record_file.RecordFileWriter(self._tmp)
    self._records = 0
    self._errors: list[dict] = []
    self._timings: collections.Counter = collections.Counter()

  def write(self, record: bytes) -> None:
    """Writes one record."""
    t0 = time.perf_counter()
    self._writer.write(record)
    self._records += 1
    self._timings["write"] += time.perf_counter() - t0

  def note(self, errors: Sequence[dict], timings: dict[str, float]) -> None:
    """Adds a block's errors and timings to the chunk marker."""
    self._errors.extend(errors)
    self._timings.update(timings)

  def finish(self) -> dict:
    """Closes and renames the shard, writes and returns the chunk marker."""
    self._writer.close()
    shard = {
      "file": os.path.basename(self._final),
      "split": self._work.fields.split,
      "records": self._records,
      "bytes": os.path.getsize(self._tmp),
      "sha256": shards.sha256_file(self._tmp),
    }
    os.replace(self._tmp, self._final)
    fields = self._work.fields
    marker = {
      "chunk": self._chunk.index,
      "slide": self._chunk.slide,
      "records": self._records,
      "split": fields.split,
      "label": fields.label,
      "multi_label": list(fields.multi_label),
      "has_label": fields.has_label,
      "site": fields.site,
      "shard": shard,
      "errors": self._errors,
      "timings": dict(self._timings),
    }
    shards.write_json_atomic(shards.marker_path(self._dir, self._chunk.index), marker)
    return marker


def blocks(chunk: Chunk, work: SlideWork) -> list[Block]:
  """The worker tasks of a chunk, in order."""
  blocks = []
  for start in range(chunk.start, chunk.stop, BLOCK_PATCHES):
    stop = min(start + BLOCK_PATCHES, chunk.stop)
    part = dataclasses.replace(
      work, coords=work.coords[start:stop], fractions=work.fractions[start:stop]
    )
    blocks.append(Block(chunk.index, part, start, stop))
  return blocks


def chunk_task(chunk: Chunk, work: SlideWork) -> tuple[Chunk, SlideWork]:
  """The chunk with only its own patches' coordinates (a small message for a pool worker)."""
  part = dataclasses.replace(
    work,
    coords=work.coords[chunk.start : chunk.stop],
    fractions=work.fractions[chunk.start : chunk.stop],
  )
  return dataclasses.replace(chunk, start=0, stop=chunk.stop - chunk.start), part


def write_chunk(
  chunk: Chunk,
  work: SlideWork,
  num_chunks: int,
  on_block: Callable[[int], None] | None = None,
  on_record: Callable[[], None] | None = None,
) -> dict:
  """Tiles one chunk and writes its shard and marker (after `init_worker`).

  Args:
    chunk: the chunk.
    work: its slide's work (or the chunk's part, see `chunk_task`).
    num_chunks: chunks in the run (for the shard name).
    on_block: called with each block's patch count once it is written.
    on_record: called after each record written.

  Returns:
    The chunk marker.
  """
  job: Job = _WORKER["job"]  # type: ignore[assignment]
  writer = ShardWriter(job.output_dir, chunk, num_chunks, work)
  for block in blocks(chunk, work):
    records, errors, timings = tile_block(block)
    for record in records:
      writer.write(record)
      if on_record is not None:
        on_record()
    writer.note(errors, timings)
    if on_block is not None:
      on_block(block.stop - block.start)
  return writer.finish()


def write_chunk_in_pool(chunk: Chunk, work: SlideWork, num_chunks: int, kill_at: int) -> dict:
  """`write_chunk` in a pool worker: counts patches in the shared counter.

  Args:
    chunk, work, num_chunks: as `write_chunk` (see `chunk_task`).
    kill_at: testing only (`TileConfig.kill_after_records`): after writing
      its `kill_at`-th record this worker kills the pool's owner and itself
      with SIGKILL (0 = never).
  """
  counter = _WORKER["patches_done"]

  def on_block(n: int) -> None:
    with counter.get_lock():  # type: ignore[attr-defined]
      counter.value += n  # type: ignore[attr-defined]

  on_record = kill_after(kill_at, (_WORKER["parent"], os.getpid()))  # type: ignore[arg-type]
  return write_chunk(chunk, work, num_chunks, on_block, on_record)


def kill_after(kill_at: int, pids: Sequence[int]) -> Callable[[], None]:
  """An `on_record` that SIGKILLs `pids`, in order, after the `kill_at`-th record (0: never)."""
  written = 0

  def on_record() -> None:
    nonlocal written
    written += 1
    if written == kill_at:
      for pid in pids:
        os.kill(pid, signal.SIGKILL)

  return on_record


def tile_chunk(job: Job, chunk: Chunk, work: SlideWork, num_chunks: int) -> dict:
  """Tiles and writes one chunk in this process (Beam workers).

  Returns:
    The chunk marker.
  """
  init_worker(job)
  try:
    return write_chunk(chunk, work, num_chunks)
  finally:
    close_cached()
