"""What the training CLIs share: exit codes and the results file.

Exit status: 0 done (or stopped by SIGTERM/SIGINT after a checkpoint), 2 a
`remedis_tf.errors.UserError` (bad flags, inputs or model_dir: one line, no
traceback). Any other exception propagates with its traceback (status 1).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from absl import app, flags, logging

from remedis_tf import config_flags
from remedis_tf.errors import UserError
from tfrecords_tools import json_io

EXIT_OK = 0
EXIT_USER_ERROR = 2
# A signal (SIGTERM/SIGINT) stopped a multi-run job after checkpointing; rerun to resume.
EXIT_INTERRUPTED = 3


def run_reporting_errors(fn: Callable[[], Mapping[str, Any]], results_json: str | None) -> int:
  """Runs `fn`, writes its results, returns an exit status (0 ok, 2 user error)."""
  try:
    results = fn()
  except UserError as e:
    logging.error("%s: %s", type(e).__name__, e)
    return EXIT_USER_ERROR
  if results_json:
    json_io.write_json(results_json, results)
  summary = {k: v for k, v in results.items() if k != "loss_history"}
  logging.info("Results: %s", json.dumps(json_io.to_json_value(summary)))
  return EXIT_OK


def config_main(
  config_cls: type,
  run_fn: Callable[[Any], Mapping[str, Any]],
  *,
  required: Sequence[str],
  results_json: bool = True,
) -> Callable[[list[str]], int]:
  """The `main` of a CLI whose flags are the fields of `config_cls`.

  Defines the flags (in the calling module, so --helpshort lists them) and
  returns `main(argv)` that builds the config from them, runs `run_fn(config)`
  and returns the exit status of `run_reporting_errors`.

  Args:
    config_cls: the config dataclass.
    run_fn: config -> results dict.
    required: fields whose flags must be given.
    results_json: also define --results_json (write the results there).
  """
  caller = sys._getframe(1).f_globals.get("__name__", "__main__")
  holders = config_flags.define_flags(config_cls, required=required, module_name=caller)
  output = (
    flags.DEFINE_string("results_json", None, "Write the results dict here.", module_name=caller)
    if results_json
    else None
  )

  def main(argv: list[str]) -> int:
    if len(argv) > 1:
      raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    return run_reporting_errors(
      lambda: run_fn(config_flags.config_from_flags(config_cls, holders)),
      output.value if output is not None else None,
    )

  return main
