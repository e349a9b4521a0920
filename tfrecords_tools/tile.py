"""Whole-slide images -> tissue-patch TFRecords: the library entry point of `remedis-tile`.

`tile(TileConfig(...))` lists the slides of the input (`slide_inputs`), then
works in two resumable phases, in this process, in local worker processes
(`num_workers`, one slide or one block of patches per task) or with Apache
Beam (`runner="beam"`):

  1. Survey, one task per slide: open it, take its microns per pixel (or
     `assume_mpp`, or reject it), resolve and hash its ids, look up its label,
     choose the read level, detect tissue on a low-resolution image, lay the
     patch grid, keep patches with enough tissue, sample at most
     `max_patches_per_slide`, write the thumbnail, and write the slide's marker
     `_work/slides/NNNNN.json` (hashed ids, coordinates; no name or path).
  2. Tiling: each slide's kept patches are cut into chunks of at most
     `patches_per_shard`; a chunk becomes one shard
     `{split}-{chunk:05d}-of-{num_chunks:05d}.tfrecord`, written under a
     temporary name and renamed when complete, then marked done in
     `_work/chunks/NNNNN.json`. Workers read and encode blocks of patches; the
     parent process writes, in chunk order, so 1 and N workers write the
     same bytes.
A slide that cannot be read, has no mpp, or is too coarse goes to errors.json
with its reason and the run goes on. After `kill -9`, rerunning the same
command skips finished slides and chunks and redoes the rest, so every patch
is written exactly once. manifest.json and errors.json are written last; the
work folder (and a random salt) is then deleted.

Nothing written names a slide file or folder, or carries any text from the
slide's metadata: slides are named by keyed hashes and, in errors.json, by
their index in the sorted input list (`list_inputs` maps indices to paths
locally).
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import functools
import json
import logging
import multiprocessing
import os
import posixpath
import secrets
import shutil
import signal
import sys
import threading
import time
from collections.abc import Iterable, Sequence

import numpy as np

from tfrecords_tools import (
  hashing,
  manifest,
  patch_example,
  shards,
  slide_ids,
  slide_inputs,
  slide_labels,
  splits,
  thumbnails,
  tile_manifest,
  tiling,
  tissue,
)
from tfrecords_tools.labels import LabelCsvError
from tfrecords_tools.slide_reader import SlideError, SlideSource, open_slide
from tfrecords_tools.version import CONVERTER_VERSION

# The same variable as remedis-convert: both tools then hash a patient alike.
SALT_ENV = "REMEDIS_CONVERT_SALT"
RUNNERS = ("local", "beam")
THUMBNAIL_DIR = "thumbnails"
BLOCK_PATCHES = 32  # patches per worker task in phase 2


class UserError(Exception):
  """A problem with the user's input or arguments."""


@dataclasses.dataclass(frozen=True)
class TileConfig:
  """Configuration of a tiling run.

  Attributes:
    input_path: a folder of slides (searched recursively) or one slide.
    output_dir: shards, manifest.json, errors.json, thumbnails/.
    policy: patch size, mpp, stride, tissue threshold, sampling.
    tissue: tissue detection settings.
    assume_mpp: microns per pixel for slides without that metadata (None:
      such slides are rejected with reason "no_mpp").
    patch_format: "png" or "jpeg".
    png_compression: zlib level 0..9.
    jpeg_quality: 1..95.
    labels_csv: labels keyed by slide, case or patient (see slide_labels).
    label_key_column: key column of the CSV (default: auto-detected).
    label_columns: label columns (default: all others).
    label_mode: "multiclass" or "multilabel".
    site_column: site column of the CSV (default: "site" when present).
    default_site: site of slides without a CSV site.
    drop_unlabeled: skip slides without a label row (default: tile them with
      label -1, reported as warnings).
    salt: HMAC key for ids; default $REMEDIS_CONVERT_SALT, else a random salt
      kept only until the run completes.
    split_fractions: train, validation, test fractions of patients.
    patches_per_shard: patches per shard (a slide spans one or more shards).
    thumbnail_max_side: longest side of the check thumbnails.
    num_workers: local worker processes (1 = this process).
    runner: "local" or "beam".
    beam_options: Apache Beam pipeline options (runner "beam").
    overwrite: replace a finished or different run in output_dir.
    progress: show progress on stderr.
    kill_after_records: testing only: the writing process kills itself with
      SIGKILL after writing this many records (0 = never), to test resuming.
  """

  input_path: str
  output_dir: str
  policy: tiling.PatchPolicy = tiling.PatchPolicy()
  tissue: tissue.TissueConfig = tissue.TissueConfig()
  assume_mpp: float | None = None
  patch_format: str = "png"
  png_compression: int = 1
  jpeg_quality: int = 90
  labels_csv: str | None = None
  label_key_column: str | None = None
  label_columns: tuple[str, ...] = ()
  label_mode: str = "multiclass"
  site_column: str | None = None
  default_site: str = ""
  drop_unlabeled: bool = False
  salt: str | None = None
  split_fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)
  patches_per_shard: int = 2048
  thumbnail_max_side: int = 2048
  num_workers: int = 1
  runner: str = "local"
  beam_options: tuple[str, ...] = ()
  overwrite: bool = False
  progress: bool = False
  kill_after_records: int = 0


@dataclasses.dataclass(frozen=True)
class Job:
  """What every worker needs (picklable; raw slide names stay in memory only)."""

  output_dir: str
  slides: tuple[SlideSource, ...]
  config: TileConfig
  salt: bytes
  labels: slide_labels.SlideLabelTable | None


@dataclasses.dataclass(frozen=True)
class SlideWork:
  """One surveyed slide, as phase 2 needs it."""

  index: int
  fields: patch_example.SlideFields
  plan: tiling.LevelPlan
  coords: np.ndarray  # (N, 2) int64 level-0 (x, y)
  fractions: np.ndarray  # (N,) float64


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


# ---------------------------------------------------------------- helpers


def slide_marker_path(output_dir: str, index: int) -> str:
  """The completion marker of a slide's survey."""
  return os.path.join(output_dir, shards.WORK_DIR, "slides", f"{index:05d}.json")


def thumbnail_name(slide_hash: str) -> str:
  """The thumbnail's path relative to the output folder."""
  return posixpath.join(THUMBNAIL_DIR, f"{slide_hash}.png")


def _scrub(text: str, source: SlideSource) -> str:
  """Removes the slide's paths and names from a message."""
  names = {*source.paths, source.name}
  for path in list(names):
    base = os.path.basename(path)
    names.update({base, os.path.splitext(base)[0], os.path.dirname(path)})
  for name in sorted((n for n in names if len(n) > 2), key=len, reverse=True):
    text = text.replace(name, "<slide>")
  return text[:500]


def _error(index: int, slide_hash: str, reason: str, detail: str, **extra) -> dict:
  return {
    "slide_index": index,
    "slide_id_hash": slide_hash,
    "reason": reason,
    "detail": detail,
    **extra,
  }


def _write_atomic(path: str, data: bytes) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  tmp = f"{path}{shards.TMP_TAG}{os.getpid()}"
  with open(tmp, "wb") as f:
    f.write(data)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)


# ---------------------------------------------------------------- phase 1: survey


def survey_slide(job: Job, index: int) -> dict:
  """Surveys one slide and returns its marker (also writes the thumbnail).

  Args:
    job: the job.
    index: the slide's index in `job.slides`.

  Returns:
    The marker dict: "ok" with the slide's fields, read plan, kept patch
    coordinates and tissue fractions, or not "ok" with errors.
  """
  config, source = job.config, job.slides[index]
  t0 = time.perf_counter()
  slide_hash = hashing.keyed_hash(job.salt, source.name)
  marker: dict = {"slide": index, "slide_id_hash": slide_hash, "ok": False, "errors": []}

  def fail(reason: str, detail: str) -> dict:
    marker["errors"].append(_error(index, slide_hash, reason, _scrub(detail, source)))
    marker["timings"] = {"survey": time.perf_counter() - t0}
    return marker

  try:
    slide = open_slide(source)
  except SlideError as e:
    return fail(e.reason, str(e))
  with slide:
    mpp, mpp_source = slide.mpp, "metadata"
    if mpp is None:
      if config.assume_mpp is None:
        return fail(
          "no_mpp",
          "the slide has no microns-per-pixel metadata; pass --assume_mpp if you know it",
        )
      mpp, mpp_source = (config.assume_mpp, config.assume_mpp), "assumed"
    try:
      plan = tiling.level_plan(slide.level_downsamples, mpp, config.policy)
    except tiling.ResolutionError as e:
      return fail("resolution_too_low", str(e))

    ids = slide_ids.resolve(source.name, slide.identifiers, job.labels, job.salt)
    row = None
    if job.labels is not None:
      row = slide_labels.lookup(
        job.labels, job.labels.slide_key(source.name), ids.case, ids.patient
      )
      marker["label_row"] = row.row_number if row else None
      if row is None:
        action = "skipped" if config.drop_unlabeled else "tiled with label -1"
        marker["errors"].append(
          _error(index, slide_hash, "unlabeled_slide", f"no label row matches this slide; {action}")
        )
        if config.drop_unlabeled:
          marker["dropped"] = True
          marker["timings"] = {"survey": time.perf_counter() - t0}
          return marker
    num_labels = len(job.labels.label_names) if job.labels else 0
    split = splits.assign_split(ids.patient_hash, config.split_fractions)
    fields = patch_example.SlideFields(
      slide_hash=slide_hash,
      case_hash=ids.case_hash,
      patient_hash=ids.patient_hash,
      split=split,
      site=(row.site if row and row.site else "") or config.default_site,
      label=row.label if row else -1,
      multi_label=tuple(row.multi_label) if row else (-1.0,) * num_labels,
      has_label=row is not None,
      vendor=slide.vendor,
      level=plan.level,
      level_mpp=plan.level_mpp[0],
      patch_mpp=plan.patch_mpp[0],
      resize=tiling.RESIZE_FILTER if plan.resized else "none",
    )

    try:
      image, mask_level, factor = tiling.mask_image(
        slide, mpp, config.tissue.mask_mpp, config.policy.mpp_tolerance
      )
      t1 = time.perf_counter()
      grid = tiling.patch_grid(slide.level_dimensions[plan.level], plan)
    except SlideError as e:
      return fail(e.reason, str(e))
  mask_ds = slide.level_downsamples[mask_level] * factor
  mask, info = tissue.detect_tissue(image, mpp[0] * mask_ds, config.tissue)
  coords = tiling.to_level0(grid, plan.downsample)
  footprint = (plan.read_size[0] * plan.downsample, plan.read_size[1] * plan.downsample)
  boxes = np.column_stack(
    [coords.astype(np.float64), np.full((len(coords), 2), footprint, np.float64)]
  )
  fractions = tiling.tissue_fractions(mask, (mask_ds, mask_ds), boxes)
  keep = np.flatnonzero(fractions >= config.policy.min_tissue_fraction)
  keep = keep[
    tiling.sample(len(keep), config.policy.max_patches_per_slide, config.policy.seed, source.name)
  ]
  png = thumbnails.render(image, mask, boxes[keep], (mask_ds, mask_ds), config.thumbnail_max_side)
  _write_atomic(os.path.join(job.output_dir, thumbnail_name(slide_hash)), png)
  if len(keep) == 0:
    marker["errors"].append(
      _error(index, slide_hash, "no_tissue", "no patch reaches the minimum tissue fraction")
    )
  marker.update(
    ok=True,
    fields=dataclasses.asdict(fields),
    plan=dataclasses.asdict(plan),
    mpp=list(mpp),
    mpp_source=mpp_source,
    mask={
      "level": mask_level,
      "factor": factor,
      "mpp": mpp[0] * mask_ds,
      "shape": list(mask.shape),
      **info,
    },
    grid_patches=len(coords),
    tissue_patches=int((fractions >= config.policy.min_tissue_fraction).sum()),
    coords=coords[keep].tolist(),
    fractions=[round(float(f), 6) for f in fractions[keep]],
    thumbnail=thumbnail_name(slide_hash),
    timings={"survey_read": t1 - t0, "survey_detect": time.perf_counter() - t1},
  )
  return marker


def survey_and_mark(job: Job, index: int) -> int:
  """Surveys a slide and writes its marker atomically (local workers and Beam).

  Returns:
    The slide index.
  """
  shards.write_json_atomic(slide_marker_path(job.output_dir, index), survey_slide(job, index))
  return index


def slide_work(marker: dict) -> SlideWork | None:
  """The phase-2 view of a surveyed slide's marker (None if it has no patches)."""
  if not marker.get("ok") or not marker["coords"]:
    return None
  fields = dict(marker["fields"])
  fields["multi_label"] = tuple(fields["multi_label"])
  plan = {k: tuple(v) if isinstance(v, list) else v for k, v in marker["plan"].items()}
  return SlideWork(
    marker["slide"],
    patch_example.SlideFields(**fields),
    tiling.LevelPlan(**plan),
    np.asarray(marker["coords"], np.int64).reshape(-1, 2),
    np.asarray(marker["fractions"], np.float64),
  )


def plan_chunks(works: Sequence[SlideWork], patches_per_shard: int) -> list[Chunk]:
  """Cuts each slide's patches into chunks, in slide order."""
  chunks: list[Chunk] = []
  for work in works:
    for start in range(0, len(work.coords), patches_per_shard):
      stop = min(start + patches_per_shard, len(work.coords))
      chunks.append(Chunk(len(chunks), work.index, start, stop))
  return chunks


# ---------------------------------------------------------------- phase 2: tiling

# Per-process state of workers: the job and the slide last opened.
_WORKER: dict[str, object] = {}


def _init_worker(job: Job) -> None:
  _close_cached()
  _WORKER["job"] = job


def _watch_parent(parent: int) -> None:
  """Ends this worker process when its parent is gone (e.g. after kill -9)."""
  while os.getppid() == parent:
    time.sleep(0.5)
  os._exit(1)


def _init_pool_worker(job: Job, parent: int) -> None:
  # A pool worker holds both ends of its task queue, so it would wait forever
  # for work from a parent killed with SIGKILL; this thread ends it instead.
  threading.Thread(target=_watch_parent, args=(parent,), daemon=True).start()
  _init_worker(job)


def _close_cached() -> None:
  cached = _WORKER.pop("slide", None)
  if cached is not None:
    cached[1].close()  # type: ignore[index]


def _open_cached(index: int):
  cached = _WORKER.get("slide")
  if cached is not None and cached[0] == index:  # type: ignore[index]
    return cached[1]  # type: ignore[index]
  _close_cached()
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
    _close_cached()  # A reader may be unusable after an error: retry patch by patch.
  images = []
  for k in range(len(level_coords)):
    try:
      slide = _open_cached(work.index)
      images.append(next(tiling.read_patches(slide, work.plan, level_coords[k : k + 1], size)))
    except SlideError as e:
      _close_cached()
      x, y = (int(v) for v in work.coords[k])
      errors.append(
        _error(
          work.index,
          work.fields.slide_hash,
          "patch_read_error",
          _scrub(str(e), job.slides[work.index]),
          x=x,
          y=y,
        )
      )
      images.append(None)
  return images


def tile_block(block: Block) -> tuple[list[tuple[bytes, str]], list[dict], dict[str, float]]:
  """Reads and encodes a block of patches (in a worker process).

  Args:
    block: the task.

  Returns:
    (records as (serialized tf.Example, label name for the manifest counts),
    error entries, timings).
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
    import tensorflow as tf  # Only the writing process needs TensorFlow.

    self._dir, self._chunk, self._work = output_dir, chunk, work
    self._final = os.path.join(
      output_dir, shards.shard_name(work.fields.split, chunk.index, num_chunks)
    )
    self._tmp = f"{self._final}{shards.TMP_TAG}{os.getpid()}"
    self._writer = tf.io.TFRecordWriter(self._tmp)
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


def _blocks(chunk: Chunk, work: SlideWork) -> list[Block]:
  blocks = []
  for start in range(chunk.start, chunk.stop, BLOCK_PATCHES):
    stop = min(start + BLOCK_PATCHES, chunk.stop)
    part = dataclasses.replace(
      work, coords=work.coords[start:stop], fractions=work.fractions[start:stop]
    )
    blocks.append(Block(chunk.index, part, start, stop))
  return blocks


def tile_chunk(job: Job, chunk: Chunk, work: SlideWork, num_chunks: int) -> dict:
  """Tiles and writes one chunk in this process (Beam workers).

  Returns:
    The chunk marker.
  """
  _init_worker(job)
  writer = ShardWriter(job.output_dir, chunk, num_chunks, work)
  for block in _blocks(chunk, work):
    records, errors, timings = tile_block(block)
    for record in records:
      writer.write(record)
    writer.note(errors, timings)
  _close_cached()
  return writer.finish()


# ---------------------------------------------------------------- orchestration


class _Progress:
  """Slides surveyed, patches written and patches/s on stderr."""

  def __init__(self, slides: int, enabled: bool):
    self.slides_total, self.slides_done = slides, 0
    self.patches_total, self.patches_done, self._patches_before = 0, 0, 0
    self._enabled = enabled
    self._patch_start = time.time()

  def slide(self, n: int = 1) -> None:
    self.slides_done += n
    self._show()

  def start_patches(self, total: int, done: int) -> None:
    """Starts the patch count (`done` were written by an earlier, interrupted run)."""
    self.patches_total, self.patches_done, self._patches_before = total, done, done
    self._patch_start = time.time()
    self._show()

  def patches(self, n: int) -> None:
    self.patches_done += n
    self._show()

  def _show(self) -> None:
    if not self._enabled:
      return
    new = self.patches_done - self._patches_before
    rate = new / max(time.time() - self._patch_start, 1e-9)
    eta = (self.patches_total - self.patches_done) / rate if rate > 0 else 0.0
    sys.stderr.write(
      f"\rslides {self.slides_done}/{self.slides_total} surveyed  "
      f"patches {self.patches_done}/{self.patches_total}  {rate:.1f} patches/s  "
      f"ETA {eta:5.0f}s "
    )
    sys.stderr.flush()

  def close(self) -> None:
    if self._enabled:
      sys.stderr.write("\n")
      sys.stderr.flush()


def _kill_check(config: TileConfig, written: int) -> None:
  if config.kill_after_records and written >= config.kill_after_records:
    os.kill(os.getpid(), signal.SIGKILL)


def _make_pool(job: Job) -> concurrent.futures.ProcessPoolExecutor | None:
  if job.config.num_workers <= 1:
    return None
  # 'spawn': the parent may hold TensorFlow, which is not fork-safe; workers
  # import OpenSlide / wsidicom / NumPy / Pillow only.
  return concurrent.futures.ProcessPoolExecutor(
    job.config.num_workers,
    mp_context=multiprocessing.get_context("spawn"),
    initializer=_init_pool_worker,
    initargs=(job, os.getpid()),
  )


def _survey_local(job: Job, pending: Sequence[int], pool, progress: _Progress) -> None:
  fn = functools.partial(survey_and_mark, job)
  results = pool.map(fn, pending) if pool is not None else map(fn, pending)
  for _ in results:
    progress.slide()


def _tile_local(
  job: Job,
  pending: Sequence[Chunk],
  works: dict[int, SlideWork],
  num_chunks: int,
  pool,
  progress: _Progress,
) -> None:
  tasks = [b for chunk in pending for b in _blocks(chunk, works[chunk.slide])]
  if pool is not None:
    results: Iterable = pool.map(tile_block, tasks)
  else:
    _init_worker(job)
    results = map(tile_block, tasks)
  by_index = {c.index: c for c in pending}
  writer, current, written = None, None, 0
  for block, (records, errors, timings) in zip(tasks, results, strict=True):
    if block.chunk != current:
      current = block.chunk
      writer = ShardWriter(job.output_dir, by_index[current], num_chunks, works[block.work.index])
    for record in records:
      writer.write(record)
      written += 1
      _kill_check(job.config, written)
    writer.note(errors, timings)
    progress.patches(block.stop - block.start)
    if block.stop == by_index[current].stop:
      writer.finish()
  if pool is None:
    _close_cached()


def _resolve_salt(config: TileConfig, work_dir: str) -> tuple[bytes, str]:
  """Returns (salt, origin); a random salt is kept in the work dir until done."""
  if config.salt:
    return config.salt.encode("utf-8"), "user"
  if os.environ.get(SALT_ENV):
    return os.environ[SALT_ENV].encode("utf-8"), "user"
  path = os.path.join(work_dir, "salt")
  if os.path.exists(path):
    with open(path, "rb") as f:
      return f.read(), "random"
  logging.warning(
    "No --salt given: using a random salt that is discarded when the run "
    "completes; hashed ids will not match any other run."
  )
  os.makedirs(work_dir, exist_ok=True)
  salt = secrets.token_hex(32).encode("ascii")
  fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
  with os.fdopen(fd, "wb") as f:
    f.write(salt)
  return salt, "random"


def _configuration(config: TileConfig, salt_origin: str, salt: bytes, names: Sequence[str]) -> dict:
  """The run's configuration as recorded in the manifest (no secret, no slide name)."""
  out = dataclasses.asdict(config)
  for key in (
    "input_path",
    "salt",
    "num_workers",
    "overwrite",
    "runner",
    "beam_options",
    "progress",
    "kill_after_records",
  ):
    out.pop(key)
  out["output_dir"] = os.path.abspath(config.output_dir)
  out["resize_filter"] = tiling.RESIZE_FILTER
  out["salt_origin"] = salt_origin
  user = salt_origin == "user"
  out["salt_fingerprint"] = hashing.salt_fingerprint(salt) if user else ""
  out["inputs_fingerprint"] = hashing.keyed_hash(salt, "\n".join(names)) if user else ""
  out["converter_version"] = CONVERTER_VERSION
  return json.loads(json.dumps(out))


def _validate(config: TileConfig) -> None:
  if config.runner not in RUNNERS:
    raise UserError(f"runner must be one of {RUNNERS}, got {config.runner!r}")
  if config.num_workers < 1:
    raise UserError(f"num_workers must be >= 1, got {config.num_workers}")
  if config.patches_per_shard < 1:
    raise UserError(f"patches_per_shard must be >= 1, got {config.patches_per_shard}")
  if config.patch_format not in patch_example.PATCH_FORMATS:
    raise UserError(
      f"patch_format must be one of {patch_example.PATCH_FORMATS}, got {config.patch_format!r}"
    )
  if not 0 <= config.png_compression <= 9:
    raise UserError(f"png_compression must be in 0..9, got {config.png_compression}")
  if not 1 <= config.jpeg_quality <= 95:
    raise UserError(f"jpeg_quality must be in 1..95, got {config.jpeg_quality}")
  if config.assume_mpp is not None and not config.assume_mpp > 0:
    raise UserError(f"assume_mpp must be > 0, got {config.assume_mpp}")
  try:
    config.policy.validate()
    splits.validate_fractions(config.split_fractions)
  except ValueError as e:
    raise UserError(str(e)) from e
  if not config.tissue.mask_mpp > 0:
    raise UserError(f"mask_mpp must be > 0, got {config.tissue.mask_mpp}")


def _load_labels(config: TileConfig) -> slide_labels.SlideLabelTable | None:
  if not config.labels_csv:
    return None
  try:
    return slide_labels.read_slide_labels(
      config.labels_csv,
      key_column=config.label_key_column,
      label_columns=config.label_columns,
      label_mode=config.label_mode,
      site_column=config.site_column,
    )
  except LabelCsvError as e:
    raise UserError(str(e)) from e


def _clear_output(output_dir: str) -> None:
  for name in os.listdir(output_dir):
    path = os.path.join(output_dir, name)
    if (
      name.endswith(".tfrecord")
      or shards.TMP_TAG in name
      or name in (manifest.MANIFEST, manifest.ERRORS)
    ):
      os.remove(path)
    elif name in (shards.WORK_DIR, THUMBNAIL_DIR):
      shutil.rmtree(path)


def list_inputs(input_path: str) -> slide_inputs.Listing:
  """The slides a run on `input_path` would tile, in index order (for local use).

  Raises:
    UserError: the input does not exist.
  """
  try:
    return slide_inputs.list_slides(input_path)
  except FileNotFoundError as e:
    raise UserError(str(e)) from e


def _read_json(path: str) -> dict:
  with open(path, encoding="utf-8") as f:
    return json.load(f)


def tile(config: TileConfig) -> dict:
  """Runs (or resumes, or confirms) a tiling run and returns its manifest.

  Args:
    config: the run configuration.

  Returns:
    The manifest dict (also written to output_dir/manifest.json).

  Raises:
    UserError: missing input, bad labels CSV, bad arguments, or an output
      folder holding a different run.
  """
  _validate(config)
  listing = list_inputs(config.input_path)
  labels = _load_labels(config)
  names = [s.name for s in listing.slides]

  output_dir = os.path.abspath(config.output_dir)
  os.makedirs(output_dir, exist_ok=True)
  work_dir = os.path.join(output_dir, shards.WORK_DIR)

  finished = manifest.read_manifest(output_dir)
  if finished is not None and not config.overwrite:
    user_salt = config.salt or os.environ.get(SALT_ENV)
    salt, origin = (user_salt.encode("utf-8"), "user") if user_salt else (b"unused", "random")
    if finished.get("configuration") == _configuration(config, origin, salt, names):
      logging.info("%s already holds this run; nothing to do.", output_dir)
      return finished
    raise UserError(f"{output_dir} holds a different run; use another folder or --overwrite")
  if config.overwrite and finished is not None:
    _clear_output(output_dir)

  salt, salt_origin = _resolve_salt(config, work_dir)
  configuration = _configuration(config, salt_origin, salt, names)
  plan = {
    "configuration": configuration,
    "slides": [hashing.keyed_hash(salt, n) for n in names],
  }
  plan_path = os.path.join(work_dir, "plan.json")
  if os.path.exists(plan_path) and _read_json(plan_path) != plan:
    if not config.overwrite:
      raise UserError(
        f"{output_dir} holds an unfinished run of other slides or settings; "
        "use another folder or --overwrite"
      )
    _clear_output(output_dir)
    salt, salt_origin = _resolve_salt(config, work_dir)
    configuration = _configuration(config, salt_origin, salt, names)
    plan = {"configuration": configuration, "slides": [hashing.keyed_hash(salt, n) for n in names]}
  shards.write_json_atomic(plan_path, plan)

  job = Job(output_dir, listing.slides, config, salt, labels)
  progress = _Progress(len(names), config.progress)
  pending_slides = [
    i for i in range(len(names)) if not os.path.exists(slide_marker_path(output_dir, i))
  ]
  progress.slide(len(names) - len(pending_slides))
  pool = _make_pool(job) if config.runner == "local" else None
  try:
    if config.runner == "beam":
      from tfrecords_tools import beam_pipeline

      beam_pipeline.run_each(
        functools.partial(survey_and_mark, job), pending_slides, config.beam_options
      )
      progress.slide(len(pending_slides))
    else:
      _survey_local(job, pending_slides, pool, progress)

    slide_markers = [_read_json(slide_marker_path(output_dir, i)) for i in range(len(names))]
    works = {w.index: w for w in map(slide_work, slide_markers) if w is not None}
    chunks = plan_chunks([works[i] for i in sorted(works)], config.patches_per_shard)
    pending = [c for c in chunks if not os.path.exists(shards.marker_path(output_dir, c.index))]
    shards.remove_stale(output_dir, pending, len(chunks), splits.SPLIT_NAMES)
    total = sum(c.stop - c.start for c in chunks)
    progress.start_patches(total, total - sum(c.stop - c.start for c in pending))
    if config.runner == "beam":
      from tfrecords_tools import beam_pipeline

      beam_pipeline.run_each(
        functools.partial(_tile_chunk_by_index, job, tuple(chunks), works, len(chunks)),
        [c.index for c in pending],
        config.beam_options,
      )
      progress.patches(sum(c.stop - c.start for c in pending))
    else:
      _tile_local(job, pending, works, len(chunks), pool, progress)
  finally:
    if pool is not None:
      pool.shutdown(wait=True, cancel_futures=True)
  progress.close()

  chunk_markers = [_read_json(shards.marker_path(output_dir, c.index)) for c in chunks]
  result, errors = tile_manifest.build(
    slide_markers,
    chunk_markers,
    listing=listing,
    labels=labels,
    configuration=configuration,
    label_mode=config.label_mode,
  )
  manifest.write(output_dir, result, errors)
  shutil.rmtree(work_dir, ignore_errors=True)  # Drops any random salt too.
  return result


def _tile_chunk_by_index(
  job: Job, chunks: tuple[Chunk, ...], works: dict[int, SlideWork], num_chunks: int, index: int
) -> dict:
  chunk = chunks[index]
  return tile_chunk(job, chunk, works[chunk.slide], num_chunks)


if __name__ == "__main__":
  from tfrecords_tools import tile_main

  tile_main.run()
