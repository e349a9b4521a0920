r"""remedis-convert: DICOM / PNG / JPEG archives -> sharded TFRecords.

Usage:
  remedis-convert --input PATH --output_dir DIR [--labels_csv CSV] \
      [--salt SECRET] [--num_workers N] [--split_fractions 0.8,0.1,0.1]

Exit status: 0 on success; 1 when nothing could be converted, or when the run
stopped on an internal error (a bug: its traceback is printed, finished chunks
are kept and rerunning resumes); 2 on a user error (missing input, bad labels
CSV, bad flag values, an output directory holding a different conversion).
Bad input files never stop a run: they are listed in errors.json.
"""

from __future__ import annotations

import json

from absl import app, flags, logging

from tfrecords_tools import convert as convert_lib
from tfrecords_tools import run_flags
from tfrecords_tools.labels import KEY_TYPES
from tfrecords_tools.pixel_policy import VOI_FALLBACKS, PixelPolicy

_RUN = run_flags.define(
  input_help="Input: a directory tree, a .zip, or a .tar/.tar.gz/.tgz/.tar.bz2/.tar.xz of "
  "DICOM files (any file name, with or without DICOMDIR) and/or PNG/JPEG images.",
  output_help="Output directory for {split}-NNNNN-of-NNNNN.tfrecord shards, manifest.json and "
  "errors.json. Rerunning the same command resumes an interrupted run and does nothing on a "
  "finished one.",
  labels_help="Optional labels CSV with a header row: a key column (SOPInstanceUID, "
  "StudyInstanceUID, PatientID or path), one or more label columns and an optional site column.",
  item="images",
  salt_ids="patient, study and SOP instance ids",
)

_LABEL_KEY_TYPE = flags.DEFINE_enum(
  "label_key_type",
  None,
  list(KEY_TYPES),
  "What the key column holds. Default: inferred "
  "from its name. 'path' keys are paths relative to --input.",
)
_SHARD_SIZE_MB = flags.DEFINE_float(
  "shard_size_mb",
  256.0,
  "Target shard size in MiB, estimated from input bytes (compressed inputs give larger shards).",
)
_FRAME = flags.DEFINE_integer(
  "frame",
  None,
  "Multi-frame objects: convert only this 0-based frame. Default: every frame (one record each).",
)
_MAX_SIZE = flags.DEFINE_integer(
  "max_size",
  0,
  "Resize so that the long side is at most this many pixels, keeping the "
  "aspect ratio (never enlarges). 0: full resolution.",
)
_USE_DICOM_VOI = flags.DEFINE_bool(
  "use_dicom_voi",
  True,
  "Apply the object's window / VOI LUT when present. With "
  "--nouse_dicom_voi the --voi_fallback is always used.",
)
_PREFER_VOI_LUT = flags.DEFINE_bool(
  "prefer_voi_lut",
  True,
  "When both a VOI LUT Sequence and a window are present, use the LUT (else the window).",
)
_WINDOW_INDEX = flags.DEFINE_integer(
  "window_index",
  0,
  "Which value of multi-valued WindowCenter/WindowWidth (and which VOI "
  "LUT item) to apply; clamped to the number present.",
)
_VOI_FALLBACK = flags.DEFINE_enum(
  "voi_fallback",
  "minmax",
  list(VOI_FALLBACKS),
  "VOI when the object has none: minmax maps "
  "[min, max] to the full range; percentile maps and clips [--percentile_low, "
  "--percentile_high].",
)
_PERCENTILE_LOW = flags.DEFINE_float(
  "percentile_low", 0.5, "Lower percentile for --voi_fallback=percentile."
)
_PERCENTILE_HIGH = flags.DEFINE_float(
  "percentile_high", 99.5, "Upper percentile for --voi_fallback=percentile."
)

flags.mark_flags_as_required(["input", "output_dir"])


def _summary(result: dict) -> str:
  counts, errors = result["counts"], result["errors"]
  lines = [
    f"inputs {counts['inputs']}: converted {counts['files_converted']}, "
    f"failed {counts['files_failed']}, dropped {counts['files_dropped']}, "
    f"skipped {counts['files_skipped']}",
    f"records {counts['records']}: "
    + ", ".join(f"{s} {n}" for s, n in counts["records_by_split"].items()),
    f"errors/warnings {errors['total']}: {json.dumps(errors['by_reason'])} "
    f"(see {errors['report']})",
  ]
  return "\n".join(lines)


def main(argv: list[str]) -> int:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  try:
    policy = PixelPolicy(
      use_dicom_voi=_USE_DICOM_VOI.value,
      prefer_voi_lut=_PREFER_VOI_LUT.value,
      window_index=_WINDOW_INDEX.value,
      voi_fallback=_VOI_FALLBACK.value,
      percentile_low=_PERCENTILE_LOW.value,
      percentile_high=_PERCENTILE_HIGH.value,
      frame=_FRAME.value,
      max_size=_MAX_SIZE.value,
    )
    shared = run_flags.config_fields(_RUN)
  except ValueError as e:
    logging.error("%s", e)
    return 2
  config = convert_lib.ConvertConfig(
    **shared,
    label_key_type=_LABEL_KEY_TYPE.value,
    shard_size_mb=_SHARD_SIZE_MB.value,
    policy=policy,
  )
  try:
    result = convert_lib.convert(config)
  except convert_lib.UserError as e:
    logging.error("%s", e)
    return 2
  print(_summary(result))
  if result["counts"]["records"] == 0:
    logging.error("nothing was converted")
    return 1
  return 0


def run() -> None:
  """Console-script entry point (`remedis-convert`, `python -m tfrecords_tools.convert`)."""
  run_flags.run_cli(main, __name__, __doc__)


if __name__ == "__main__":
  run()
