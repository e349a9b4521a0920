"""Whole-slide images -> tissue-patch TFRecords: the library entry point of `remedis-tile`.

`tile(TileConfig(...))` lists the slides of the input (`slide_inputs`), then
runs two resumable phases, in this process, in local worker processes
(`num_workers`: slides, then chunks of patches, spread over processes) or with
Apache Beam (`runner="beam"`):

  1. Survey, one task per slide (`slide_survey`): mpp, hashed ids, label, read
     level, tissue mask, kept patches, thumbnail; the slide's marker
     `_work/slides/NNNNN.json` holds no name or path.
  2. Tiling (`tile_chunks`): each slide's kept patches are cut into chunks of
     at most `patches_per_shard`; a chunk becomes one shard
     `{split}-{chunk:05d}-of-{num_chunks:05d}.tfrecord`, written under a
     temporary name, renamed when complete, then marked done in
     `_work/chunks/NNNNN.json`. The process that tiles a chunk writes it (no
     patch crosses a process boundary); a chunk's bytes depend only on the
     chunk, so 1 and N workers write the same bytes.
A slide that cannot be read, has no mpp, or is too coarse goes to errors.json
with its reason and the run goes on. After `kill -9`, rerunning the same
command keeps finished slides and chunks and redoes the rest, so every patch is
written exactly once. errors.json and manifest.json (`tile_manifest`) are
written last; the work folder (and a random salt) is then deleted.

Nothing written names a slide file or folder, or carries text from the slide's
metadata: slides are named by keyed hashes and, in errors.json, by their index
in the sorted input list (`list_inputs` maps indices to paths, locally).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import json
import logging
import multiprocessing
import os
import shutil
import sys
import time
from collections.abc import Sequence

from tfrecords_tools import (
  beam_pipeline,
  hashing,
  manifest,
  patch_example,
  shards,
  slide_inputs,
  slide_labels,
  slide_survey,
  splits,
  tile_chunks,
  tile_manifest,
  tiling,
  tissue,
)
from tfrecords_tools.labels import LabelCsvError
from tfrecords_tools.slide_reader import SlideSource
from tfrecords_tools.slide_survey import SlideWork
from tfrecords_tools.tile_chunks import Chunk
from tfrecords_tools.version import CONVERTER_VERSION

# The same variable as remedis-convert: both tools then hash a patient alike.
SALT_ENV = hashing.SALT_ENV
RUNNERS = beam_pipeline.RUNNERS


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

  def patches_this_run(self, n: int) -> None:
    """Sets the patches tiled by this invocation so far (shown only when it changed)."""
    if self._patches_before + n != self.patches_done:
      self.patches_done = self._patches_before + n
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


def _kill_points(config: TileConfig, pending: Sequence[Chunk]) -> list[int]:
  """Per pending chunk, the record after which to SIGKILL (0 = none; testing only).

  `kill_after_records` = N names the N-th patch of this invocation, in chunk
  order: the process writing it kills the run.
  """
  points, offset = [], 0
  for chunk in pending:
    size = chunk.stop - chunk.start
    n = config.kill_after_records - offset
    points.append(n if config.kill_after_records and 0 < n <= size else 0)
    offset += size
  return points


def _make_pool(job: Job, patches_done) -> concurrent.futures.ProcessPoolExecutor | None:
  if job.config.num_workers <= 1:
    return None
  # 'spawn': the parent may hold TensorFlow, which is not fork-safe; workers
  # import OpenSlide / wsidicom / NumPy / Pillow only.
  return concurrent.futures.ProcessPoolExecutor(
    job.config.num_workers,
    mp_context=multiprocessing.get_context("spawn"),
    initializer=tile_chunks.init_pool_worker,
    initargs=(job, os.getpid(), patches_done),
  )


def _survey_local(job: Job, pending: Sequence[int], pool, progress: _Progress) -> None:
  fn = functools.partial(slide_survey.survey_and_mark, job)
  results = pool.map(fn, pending) if pool is not None else map(fn, pending)
  for _ in results:
    progress.slide()


def _tile_local(
  job: Job,
  pending: Sequence[Chunk],
  works: dict[int, SlideWork],
  num_chunks: int,
  pool,
  patches_done,
  progress: _Progress,
) -> None:
  """Tiles the pending chunks here (one worker) or in the pool; each writes its shards."""
  kill_points = _kill_points(job.config, pending)
  if pool is None:
    tile_chunks.init_worker(job)
    try:
      for chunk, kill_at in zip(pending, kill_points, strict=True):
        on_record = tile_chunks.kill_after(kill_at, (os.getpid(),))
        tile_chunks.write_chunk(chunk, works[chunk.slide], num_chunks, progress.patches, on_record)
    finally:
      tile_chunks.close_cached()
    return
  # Each worker writes whole chunks, so no patch crosses a process boundary.
  futures = {
    pool.submit(
      tile_chunks.write_chunk_in_pool,
      *tile_chunks.chunk_task(chunk, works[chunk.slide]),
      num_chunks,
      kill_at,
    )
    for chunk, kill_at in zip(pending, kill_points, strict=True)
  }
  while futures:
    done, futures = concurrent.futures.wait(
      futures, timeout=0.5, return_when=concurrent.futures.FIRST_EXCEPTION
    )
    for future in done:
      future.result()  # A worker's exception, with its traceback, ends the run.
    progress.patches_this_run(patches_done.value)


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
    shards.clear_output(output_dir, (slide_survey.THUMBNAIL_DIR,))

  salt, salt_origin = hashing.resolve_salt(config.salt, work_dir)
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
    shards.clear_output(output_dir, (slide_survey.THUMBNAIL_DIR,))
    salt, salt_origin = hashing.resolve_salt(config.salt, work_dir)
    configuration = _configuration(config, salt_origin, salt, names)
    plan = {"configuration": configuration, "slides": [hashing.keyed_hash(salt, n) for n in names]}
  shards.write_json_atomic(plan_path, plan)

  job = Job(output_dir, listing.slides, config, salt, labels)
  progress = _Progress(len(names), config.progress)
  pending_slides = [
    i
    for i in range(len(names))
    if not os.path.exists(slide_survey.slide_marker_path(output_dir, i))
  ]
  progress.slide(len(names) - len(pending_slides))
  # Patches tiled by pool workers in this invocation (shown as progress).
  patches_done = multiprocessing.get_context("spawn").Value("q", 0)
  pool = _make_pool(job, patches_done) if config.runner == "local" else None
  try:
    if config.runner == "beam":
      from tfrecords_tools import beam_pipeline

      beam_pipeline.run_each(
        functools.partial(slide_survey.survey_and_mark, job), pending_slides, config.beam_options
      )
      progress.slide(len(pending_slides))
    else:
      _survey_local(job, pending_slides, pool, progress)

    slide_markers = [
      _read_json(slide_survey.slide_marker_path(output_dir, i)) for i in range(len(names))
    ]
    works = {w.index: w for w in map(slide_survey.slide_work, slide_markers) if w is not None}
    chunks = tile_chunks.plan_chunks([works[i] for i in sorted(works)], config.patches_per_shard)
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
      _tile_local(job, pending, works, len(chunks), pool, patches_done, progress)
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
  return tile_chunks.tile_chunk(job, chunk, works[chunk.slide], num_chunks)


if __name__ == "__main__":
  from tfrecords_tools import tile_main

  tile_main.run()
