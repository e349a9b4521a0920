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
import sys

from absl import app, flags, logging

from tfrecords_tools import convert as convert_lib
from tfrecords_tools.labels import KEY_TYPES, LABEL_MODES
from tfrecords_tools.pixel_policy import VOI_FALLBACKS, PixelPolicy
from tfrecords_tools.splits import parse_fractions

_INPUT = flags.DEFINE_string(
  "input",
  None,
  "Input: a directory tree, a .zip, or a .tar/.tar.gz/.tgz/.tar.bz2/.tar.xz of "
  "DICOM files (any file name, with or without DICOMDIR) and/or PNG/JPEG images.",
)
_OUTPUT_DIR = flags.DEFINE_string(
  "output_dir",
  None,
  "Output directory for {split}-NNNNN-of-NNNNN.tfrecord shards, "
  "manifest.json and errors.json. Rerunning the same command resumes an interrupted run "
  "and does nothing on a finished one.",
)
_LABELS_CSV = flags.DEFINE_string(
  "labels_csv",
  None,
  "Optional labels CSV with a header row: a key column, one or more "
  "label columns and an optional site column.",
)
_LABEL_KEY_COLUMN = flags.DEFINE_string(
  "label_key_column",
  None,
  "Key column of the labels CSV. Default: the first column named "
  "like SOPInstanceUID, StudyInstanceUID, PatientID or path.",
)
_LABEL_KEY_TYPE = flags.DEFINE_enum(
  "label_key_type",
  None,
  list(KEY_TYPES),
  "What the key column holds. Default: inferred "
  "from its name. 'path' keys are paths relative to --input.",
)
_LABEL_COLUMNS = flags.DEFINE_list(
  "label_columns",
  [],
  "Label columns of the CSV (comma-separated). Default: every column "
  "that is not the key, the site or another id column.",
)
_LABEL_MODE = flags.DEFINE_enum(
  "label_mode",
  "multiclass",
  list(LABEL_MODES),
  "multiclass: one label column of class "
  "names / indices, or several one-hot columns. multilabel: several 0/1 columns "
  "(empty or -1 = unknown).",
)
_SITE_COLUMN = flags.DEFINE_string(
  "site_column", None, "Site column of the CSV. Default: 'site' when present."
)
_DEFAULT_SITE = flags.DEFINE_string(
  "default_site", "", "Site written for images whose label row gives none."
)
_DROP_UNLABELED = flags.DEFINE_bool(
  "drop_unlabeled",
  False,
  "Skip images that match no label row (they are always reported). "
  "Default: write them with label -1 / has_label 0.",
)
_SALT = flags.DEFINE_string(
  "salt",
  None,
  "Secret key for the HMAC-SHA256 of patient, study and SOP instance ids. "
  "Default: $REMEDIS_CONVERT_SALT, else a random salt discarded at the end (ids then match "
  "no other conversion). Keep it secret and reuse it to link conversions.",
)
_SPLIT_FRACTIONS = flags.DEFINE_string(
  "split_fractions",
  "0.8,0.1,0.1",
  "train,validation,test fractions of patients. A "
  "patient's split is a function of its hashed id: deterministic, never two splits.",
)
_NUM_WORKERS = flags.DEFINE_integer(
  "num_workers", 1, "Local worker processes converting files (1: in this process)."
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
_PNG_COMPRESSION = flags.DEFINE_integer(
  "png_compression",
  1,
  "zlib level 0..9 of the PNGs (1 is fast; 9 is ~5% smaller and several times slower).",
)
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Replace whatever conversion output_dir holds.")
_RUNNER = flags.DEFINE_enum(
  "runner",
  "local",
  list(convert_lib.RUNNERS),
  "local: this process or --num_workers "
  "processes. beam: an Apache Beam pipeline (pip install apache-beam).",
)
_BEAM_OPTIONS = flags.DEFINE_list(
  "beam_options",
  [],
  "Extra Beam pipeline options, e.g. --beam_options=--runner=DirectRunner,--direct_num_workers=2.",
)
_PROGRESS = flags.DEFINE_bool("progress", True, "Show a progress bar on stderr.")

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
    fractions = parse_fractions(_SPLIT_FRACTIONS.value)
  except ValueError as e:
    logging.error("%s", e)
    return 2
  config = convert_lib.ConvertConfig(
    input_path=_INPUT.value,
    output_dir=_OUTPUT_DIR.value,
    labels_csv=_LABELS_CSV.value,
    label_key_column=_LABEL_KEY_COLUMN.value,
    label_key_type=_LABEL_KEY_TYPE.value,
    label_columns=tuple(_LABEL_COLUMNS.value),
    label_mode=_LABEL_MODE.value,
    site_column=_SITE_COLUMN.value,
    default_site=_DEFAULT_SITE.value,
    salt=_SALT.value,
    split_fractions=fractions,
    num_workers=_NUM_WORKERS.value,
    shard_size_mb=_SHARD_SIZE_MB.value,
    policy=policy,
    png_compression=_PNG_COMPRESSION.value,
    drop_unlabeled=_DROP_UNLABELED.value,
    overwrite=_OVERWRITE.value,
    runner=_RUNNER.value,
    beam_options=tuple(_BEAM_OPTIONS.value),
    progress=_PROGRESS.value and sys.stderr.isatty(),
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
  # `--help` describes the main module's key flags and docstring; make both
  # this module's whichever script or module started the program.
  for flag in set(flags.FLAGS.get_flags_for_module(__name__)):
    flags.FLAGS.register_key_flag_for_module(sys.argv[0], flag)
  sys.modules["__main__"].__doc__ = __doc__
  app.run(main)


if __name__ == "__main__":
  run()
