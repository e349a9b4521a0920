"""What the training CLIs share: exit codes and the results file.

Exit status: 0 done (or stopped by SIGTERM/SIGINT after a checkpoint), 2 a
`remedis_tf.errors.UserError` (bad flags, inputs or model_dir: one line, no
traceback). Any other exception propagates with its traceback (status 1).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

from absl import logging

from remedis_tf.errors import UserError
from tfrecords_tools import json_io

EXIT_OK = 0
EXIT_USER_ERROR = 2


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
