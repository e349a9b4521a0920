"""The flags remedis-convert and remedis-tile share: labels, ids, splits, workers, runner.

Both jobs read a labels CSV, hash ids with a salt, split by hashed patient,
run on local processes or Apache Beam and resume; their flags for these
are defined here once (`define`, called by each CLI module with its own help
for the three flags whose meaning differs) and turned into the config fields
of `ConvertConfig` / `TileConfig` by `config_fields`. `run_cli` is the shared
console-script entry point.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable
from typing import Any

from absl import app, flags

from tfrecords_tools.beam_pipeline import RUNNERS
from tfrecords_tools.labels import LABEL_MODES
from tfrecords_tools.splits import parse_fractions


@dataclasses.dataclass(frozen=True)
class RunFlags:
  """Holders of the shared flags (see `define`)."""

  input: flags.FlagHolder
  output_dir: flags.FlagHolder
  labels_csv: flags.FlagHolder
  label_key_column: flags.FlagHolder
  label_columns: flags.FlagHolder
  label_mode: flags.FlagHolder
  site_column: flags.FlagHolder
  default_site: flags.FlagHolder
  drop_unlabeled: flags.FlagHolder
  salt: flags.FlagHolder
  split_fractions: flags.FlagHolder
  num_workers: flags.FlagHolder
  png_compression: flags.FlagHolder
  runner: flags.FlagHolder
  beam_options: flags.FlagHolder
  overwrite: flags.FlagHolder
  progress: flags.FlagHolder


def define(
  *, input_help: str, output_help: str, labels_help: str, item: str, salt_ids: str
) -> RunFlags:
  """Defines the shared flags in the calling CLI module.

  Args:
    input_help: what --input takes.
    output_help: what --output_dir receives.
    labels_help: how the labels CSV is keyed.
    item: what one input is ("images", "slides"), for help texts.
    salt_ids: which ids the salt hashes, for --salt's help.
  """
  module = sys._getframe(1).f_globals.get("__name__", "__main__")
  module = sys.argv[0] if module == "__main__" else module
  kw = {"module_name": module}
  return RunFlags(
    input=flags.DEFINE_string("input", None, input_help, **kw),
    output_dir=flags.DEFINE_string("output_dir", None, output_help, **kw),
    labels_csv=flags.DEFINE_string("labels_csv", None, labels_help, **kw),
    label_key_column=flags.DEFINE_string(
      "label_key_column", None, "Key column of the labels CSV (default: auto-detected).", **kw
    ),
    label_columns=flags.DEFINE_list(
      "label_columns",
      [],
      "Label columns of the CSV (comma-separated). Default: every column that is not the key, "
      "the site or another id column.",
      **kw,
    ),
    label_mode=flags.DEFINE_enum(
      "label_mode",
      "multiclass",
      list(LABEL_MODES),
      "multiclass: one label column of class names / indices, or several one-hot columns. "
      "multilabel: several 0/1 columns (empty or -1 = unknown).",
      **kw,
    ),
    site_column=flags.DEFINE_string(
      "site_column", None, "Site column of the CSV. Default: 'site' when present.", **kw
    ),
    default_site=flags.DEFINE_string(
      "default_site", "", f"Site written for {item} whose label row gives none.", **kw
    ),
    drop_unlabeled=flags.DEFINE_bool(
      "drop_unlabeled",
      False,
      f"Skip {item} that match no label row (they are always reported). Default: write them "
      "with label -1 / has_label 0.",
      **kw,
    ),
    salt=flags.DEFINE_string(
      "salt",
      None,
      f"Secret key for the HMAC-SHA256 of {salt_ids}. Default: $REMEDIS_CONVERT_SALT, else a "
      "random salt discarded at the end (ids then match no other run). Keep it secret; the "
      "same salt gives the same patient hashes in remedis-convert and remedis-tile.",
      **kw,
    ),
    split_fractions=flags.DEFINE_string(
      "split_fractions",
      "0.8,0.1,0.1",
      "train,validation,test fractions of patients. A patient's split is a function of its "
      "hashed id: deterministic, never two splits.",
      **kw,
    ),
    num_workers=flags.DEFINE_integer(
      "num_workers", 1, "Local worker processes (1: in this process).", **kw
    ),
    png_compression=flags.DEFINE_integer(
      "png_compression",
      1,
      "zlib level 0..9 of the PNGs (1 is fast; 9 is ~5% smaller and several times slower).",
      **kw,
    ),
    runner=flags.DEFINE_enum(
      "runner",
      "local",
      list(RUNNERS),
      "local: this process or --num_workers processes. beam: an Apache Beam pipeline "
      "(pip install apache-beam).",
      **kw,
    ),
    beam_options=flags.DEFINE_list(
      "beam_options",
      [],
      "Extra Beam pipeline options, e.g. --beam_options=--runner=DirectRunner,"
      "--direct_num_workers=2.",
      **kw,
    ),
    overwrite=flags.DEFINE_bool("overwrite", False, "Replace whatever run output_dir holds.", **kw),
    progress=flags.DEFINE_bool("progress", True, "Show progress on stderr.", **kw),
  )


def config_fields(run: RunFlags) -> dict[str, Any]:
  """The shared fields of ConvertConfig / TileConfig from the parsed flags.

  Raises:
    ValueError: a bad --split_fractions (the message names the flag).
  """
  try:
    fractions = parse_fractions(run.split_fractions.value)
  except ValueError as e:
    raise ValueError(f"--split_fractions: {e}") from e
  return {
    "input_path": run.input.value,
    "output_dir": run.output_dir.value,
    "labels_csv": run.labels_csv.value,
    "label_key_column": run.label_key_column.value,
    "label_columns": tuple(run.label_columns.value),
    "label_mode": run.label_mode.value,
    "site_column": run.site_column.value,
    "default_site": run.default_site.value,
    "drop_unlabeled": run.drop_unlabeled.value,
    "salt": run.salt.value,
    "split_fractions": fractions,
    "num_workers": run.num_workers.value,
    "png_compression": run.png_compression.value,
    "runner": run.runner.value,
    "beam_options": tuple(run.beam_options.value),
    "overwrite": run.overwrite.value,
    "progress": run.progress.value and sys.stderr.isatty(),
  }


def run_cli(main: Callable[[list[str]], int], module_name: str, doc: str | None) -> None:
  """Console-script entry point: `--help` shows `module_name`'s flags and docstring."""
  for flag in set(flags.FLAGS.get_flags_for_module(module_name)):
    flags.FLAGS.register_key_flag_for_module(sys.argv[0], flag)
  sys.modules["__main__"].__doc__ = doc
  app.run(main)
