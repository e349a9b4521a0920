"""DICOM / PNG / JPEG archive -> sharded TFRecords: the library entry point.

`convert(ConvertConfig(...))` lists the inputs, cuts them into deterministic
chunks, converts the chunks that are not yet done (in this process, in local
worker processes, or with Apache Beam) and writes manifest.json and
errors.json. Rerunning after an interruption finishes the missing chunks;
rerunning on a finished output returns its manifest and does nothing.

`python -m tfrecords_tools.convert` runs the command-line interface
(tfrecords_tools.convert_main).

Testing aid: with `REMEDIS_CONVERT_KILL_AFTER_FILES=N` in the environment, the
local runner kills its own process with SIGKILL right after it has written the
records of its N-th file (counted from the start of this run), so a test can
interrupt a run at a known point, e.g. in the middle of a chunk after
earlier chunks were committed, and check that a rerun resumes exactly. Never
set it otherwise.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import logging
import multiprocessing
import os
import shutil
import signal
import sys
import time
import zipfile
import zlib
from collections.abc import Iterable, Sequence

from tfrecords_tools import archive_io, beam_pipeline, hashing, manifest, shards, splits
from tfrecords_tools.file_converter import FileContext, FileResult, convert_bytes
from tfrecords_tools.labels import LabelCsvError, LabelTable, read_labels
from tfrecords_tools.pixel_policy import PixelPolicy
from tfrecords_tools.version import CONVERTER_VERSION

SALT_ENV = hashing.SALT_ENV
RUNNERS = beam_pipeline.RUNNERS
# Testing aid (see the module docstring): SIGKILL this process after N files.
KILL_AFTER_FILES_ENV = "REMEDIS_CONVERT_KILL_AFTER_FILES"
# What reading a member of a directory, zip or tar raises when the input is
# damaged: I/O errors, a bad zip entry or CRC, a broken deflate stream, an
# unsupported zip compression method, an encrypted zip entry (RuntimeError).
_READ_ERRORS = (
  OSError,
  EOFError,
  zipfile.BadZipFile,
  zlib.error,
  NotImplementedError,
  RuntimeError,
)


class UserError(Exception):
  """A problem with the user's input or arguments (missing input, bad CSV...)."""


@dataclasses.dataclass(frozen=True)
class ConvertConfig:
  """Configuration of a conversion run.

  Attributes:
    input_path: directory, .zip, .tar, .tar.gz/.tgz/.tar.bz2/.tar.xz.
    output_dir: where shards, manifest.json and errors.json go.
    labels_csv: optional labels CSV (see tfrecords_tools.labels).
    label_key_column: key column of the CSV (default: auto-detected).
    label_key_type: sop_instance_uid | study_instance_uid | patient_id | path
      (default: from the key column's name).
    label_columns: label columns (default: all non-key, non-site columns).
    label_mode: "multiclass" or "multilabel".
    site_column: site column of the CSV (default: "site" when present).
    default_site: site written for images without a CSV site.
    salt: HMAC key for identifiers; default: $REMEDIS_CONVERT_SALT, else a
      random salt kept only until the run completes.
    split_fractions: train, validation, test fractions of patients.
    num_workers: local worker processes (1 = convert in this process).
    shard_size_mb: target shard size, estimated from input bytes.
    policy: the pixel policy.
    png_compression: zlib level 0..9 for the PNGs.
    drop_unlabeled: skip images without a label (default: write them with
      label -1 and report them).
    overwrite: replace a finished or different conversion in output_dir.
    runner: "local" or "beam".
    beam_options: extra Apache Beam pipeline options (runner "beam").
    progress: show a progress bar on stderr.
  """

  input_path: str
  output_dir: str
  labels_csv: str | None = None
  label_key_column: str | None = None
  label_key_type: str | None = None
  label_columns: tuple[str, ...] = ()
  label_mode: str = "multiclass"
  site_column: str | None = None
  default_site: str = ""
  salt: str | None = None
  split_fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)
  num_workers: int = 1
  shard_size_mb: float = 256.0
  policy: PixelPolicy = PixelPolicy()
  png_compression: int = 1
  drop_unlabeled: bool = False
  overwrite: bool = False
  runner: str = "local"
  beam_options: tuple[str, ...] = ()
  progress: bool = False


@dataclasses.dataclass(frozen=True)
class Job:
  """What a worker (local process or Beam) needs to convert chunks."""

  output_dir: str
  source: archive_io.Source
  context: FileContext
  num_chunks: int
  label_names: tuple[str, ...]
  label_mode: str


# Per-process state of local worker processes.
_WORKER: dict[str, object] = {}


def _init_worker(source: archive_io.Source, context: FileContext) -> None:
  _WORKER["reader"] = archive_io.Reader(source)
  _WORKER["context"] = context


def _convert_one(rel_path: str) -> FileResult:
  reader: archive_io.Reader = _WORKER["reader"]  # type: ignore[assignment]
  context: FileContext = _WORKER["context"]  # type: ignore[assignment]
  t0 = time.perf_counter()
  try:
    data = reader.read(rel_path)
  except _READ_ERRORS as e:  # A damaged member is reported; the run goes on.
    result = FileResult(rel_path)
    result.errors.append(
      {"path": rel_path, "reason": "corrupt", "detail": f"cannot read: {type(e).__name__}: {e}"}
    )
    return result
  read_s = time.perf_counter() - t0
  result = convert_bytes(rel_path, data, context)
  result.timings["read"] = read_s
  return result


def convert_chunk(job: Job, chunk: shards.Chunk) -> dict:
  """Converts one chunk in this process and returns its marker (used by Beam).

  Args:
    job: the job description.
    chunk: the chunk to convert.

  Returns:
    The chunk marker.
  """
  _init_worker(job.source, job.context)
  writer = shards.ChunkWriter(
    job.output_dir, chunk, job.num_chunks, job.label_names, job.label_mode
  )
  for path in chunk.files:
    writer.add(_convert_one(path))
  return writer.finish()


class _Progress:
  """A minimal progress bar on stderr."""

  def __init__(self, total: int, enabled: bool):
    self._total, self._done, self._enabled = total, 0, enabled
    self._start = time.time()

  def update(self, n: int = 1) -> None:
    self._done += n
    if not self._enabled:
      return
    elapsed = max(time.time() - self._start, 1e-9)
    rate = self._done / elapsed
    eta = (self._total - self._done) / rate if rate > 0 else 0.0
    width = 30
    filled = int(width * self._done / max(self._total, 1))
    sys.stderr.write(
      f"\r[{'#' * filled}{'.' * (width - filled)}] {self._done}/{self._total} "
      f"files  {rate:.1f} files/s  ETA {eta:5.0f}s "
    )
    sys.stderr.flush()

  def close(self) -> None:
    if self._enabled:
      sys.stderr.write("\n")
      sys.stderr.flush()


def _run_local(
  job: Job, pending: Sequence[shards.Chunk], num_workers: int, progress: _Progress
) -> None:
  """Converts pending chunks with local processes; the parent writes shards."""
  tasks = [(chunk, path) for chunk in pending for path in chunk.files]
  paths = [path for _, path in tasks]
  pool = None
  if num_workers > 1:
    # 'spawn': the parent holds TensorFlow, which is not fork-safe. Workers
    # import only pydicom / NumPy / Pillow (no TensorFlow). A worker that dies
    # (e.g. a native decoder crash) raises BrokenProcessPool instead of hanging;
    # finished chunks are kept and a rerun resumes.
    pool = concurrent.futures.ProcessPoolExecutor(
      num_workers,
      mp_context=multiprocessing.get_context("spawn"),
      initializer=_init_worker,
      initargs=(job.source, job.context),
    )
    results: Iterable[FileResult] = pool.map(_convert_one, paths)
  else:
    _init_worker(job.source, job.context)
    results = map(_convert_one, paths)
  kill_after = int(os.environ.get(KILL_AFTER_FILES_ENV, "0") or 0)
  try:
    writer, current, remaining, files_done = None, None, 0, 0
    for (chunk, _), result in zip(tasks, results, strict=True):
      if chunk is not current:
        current, remaining = chunk, len(chunk.files)
        writer = shards.ChunkWriter(
          job.output_dir, chunk, job.num_chunks, job.label_names, job.label_mode
        )
      writer.add(result)
      remaining -= 1
      if remaining == 0:
        writer.finish()
      progress.update()
      files_done += 1
      if files_done == kill_after:
        logging.warning(
          "%s=%d: killing this process (testing aid)", KILL_AFTER_FILES_ENV, kill_after
        )
        os.kill(os.getpid(), signal.SIGKILL)
  finally:
    if pool is not None:
      pool.shutdown(wait=True, cancel_futures=True)


def _configuration(config: ConvertConfig, salt_origin: str, salt: bytes) -> dict:
  """The run's configuration as recorded in the manifest (no secrets)."""
  out = dataclasses.asdict(config)
  for key in ("salt", "num_workers", "overwrite", "runner", "beam_options", "progress"):
    out.pop(key)
  out["input_path"] = os.path.abspath(config.input_path)
  out["output_dir"] = os.path.abspath(config.output_dir)
  out["split_fractions"] = list(config.split_fractions)
  out["label_columns"] = list(config.label_columns)
  out["salt_origin"] = salt_origin
  out["salt_fingerprint"] = hashing.salt_fingerprint(salt) if salt_origin == "user" else ""
  out["converter_version"] = CONVERTER_VERSION
  return json.loads(json.dumps(out))


def _load_labels(config: ConvertConfig) -> LabelTable | None:
  if not config.labels_csv:
    return None
  try:
    return read_labels(
      config.labels_csv,
      key_column=config.label_key_column,
      key_type=config.label_key_type,
      label_columns=config.label_columns,
      label_mode=config.label_mode,
      site_column=config.site_column,
    )
  except LabelCsvError as e:
    raise UserError(str(e)) from e


def convert(config: ConvertConfig) -> dict:
  """Runs (or resumes, or confirms) a conversion and returns its manifest.

  Args:
    config: the run configuration.

  Returns:
    The manifest dict (also written to output_dir/manifest.json).

  Raises:
    UserError: missing input, bad labels CSV, bad arguments, or an output
      directory holding a different conversion.
  """
  if config.runner not in RUNNERS:
    raise UserError(f"runner must be one of {RUNNERS}, got {config.runner!r}")
  if config.num_workers < 1 or config.shard_size_mb <= 0:
    raise UserError("num_workers must be >= 1 and shard_size_mb > 0")
  if not 0 <= config.png_compression <= 9:
    raise UserError("png_compression must be in 0..9")
  try:
    splits.validate_fractions(config.split_fractions)
  except ValueError as e:
    raise UserError(str(e)) from e
  if not os.path.exists(config.input_path):
    raise UserError(f"input not found: {config.input_path}")
  labels = _load_labels(config)
  label_names = labels.label_names if labels else ()

  output_dir = os.path.abspath(config.output_dir)
  os.makedirs(output_dir, exist_ok=True)
  work_dir = os.path.join(output_dir, shards.WORK_DIR)

  finished = manifest.read_manifest(output_dir)
  if finished is not None and not config.overwrite:
    user_salt = config.salt or os.environ.get(SALT_ENV)
    salt, origin = (user_salt.encode("utf-8"), "user") if user_salt else (b"unused", "random")
    if finished["configuration"] == _configuration(config, origin, salt):
      logging.info("%s already holds this conversion; nothing to do.", output_dir)
      return finished
    raise UserError(
      f"{output_dir} holds a different conversion; use another directory or --overwrite"
    )
  if config.overwrite and finished is not None:
    shards.clear_output(output_dir)

  salt, salt_origin = hashing.resolve_salt(config.salt, work_dir)
  configuration = _configuration(config, salt_origin, salt)

  # Inputs (compressed tars are extracted once into the work dir).
  input_path = os.path.abspath(config.input_path)
  if archive_io.is_tar(input_path) and archive_io.is_compressed_tar(input_path):
    extracted = os.path.join(work_dir, "extracted")
    if not os.path.exists(extracted + ".done"):
      shutil.rmtree(extracted, ignore_errors=True)
      archive_io.extract_tar(input_path, extracted)
      open(extracted + ".done", "w").close()
    input_path = extracted
  try:
    source, members = archive_io.open_source(input_path)
  except (OSError, ValueError) as e:
    raise UserError(str(e)) from e
  skipped = [
    {
      "path": m.path,
      "reason": "dicomdir",
      "detail": "DICOMDIR index skipped; the files it lists are read directly",
    }
    for m in members
    if m.path.rsplit("/", 1)[-1].upper() == "DICOMDIR"
  ]
  num_inputs = len(members)
  members = [m for m in members if m.path.rsplit("/", 1)[-1].upper() != "DICOMDIR"]
  chunks = shards.plan_chunks(members, int(config.shard_size_mb * (1 << 20)))

  # The plan must match on resume.
  plan = {"configuration": configuration, "chunks": [list(c.files) for c in chunks]}
  plan_path = os.path.join(work_dir, "plan.json")
  if os.path.exists(plan_path):
    with open(plan_path, encoding="utf-8") as f:
      if json.load(f) != plan:
        if not config.overwrite:
          raise UserError(
            f"{output_dir} holds an unfinished conversion of other inputs or "
            "settings; use another directory or --overwrite"
          )
        shards.clear_output(output_dir)
        salt, salt_origin = hashing.resolve_salt(config.salt, work_dir)
  shards.write_json_atomic(plan_path, plan)

  pending = [c for c in chunks if not os.path.exists(shards.marker_path(output_dir, c.index))]
  shards.remove_stale(output_dir, pending, len(chunks), splits.SPLIT_NAMES)
  context = FileContext(
    policy=config.policy,
    salt=salt,
    split_fractions=config.split_fractions,
    labels=labels,
    default_site=config.default_site,
    png_compression=config.png_compression,
    drop_unlabeled=config.drop_unlabeled,
  )
  job = Job(output_dir, source, context, len(chunks), tuple(label_names), config.label_mode)
  progress = _Progress(sum(len(c.files) for c in pending), config.progress)
  if config.runner == "beam":
    from tfrecords_tools import beam_pipeline

    beam_pipeline.run_chunks(job, pending, config.beam_options)
    progress.update(sum(len(c.files) for c in pending))
  else:
    _run_local(job, pending, config.num_workers, progress)
  progress.close()

  markers = []
  for chunk in chunks:
    with open(shards.marker_path(output_dir, chunk.index), encoding="utf-8") as f:
      markers.append(json.load(f))
  result, errors = manifest.build(
    markers,
    num_inputs=num_inputs,
    skipped=skipped,
    labels=labels,
    configuration=configuration,
    label_mode=config.label_mode,
    label_names=label_names,
  )
  manifest.write(output_dir, result, errors)
  shutil.rmtree(work_dir, ignore_errors=True)  # Drops any random salt too.
  return result


if __name__ == "__main__":
  from tfrecords_tools import convert_main

  convert_main.run()
