"""remedis-evaluate: AUROC / accuracy with patient-bootstrap 95% CIs for a fine-tuned model.

Example:

  remedis-evaluate --data='/data/chexpert/valid-*.tfrecord' --model_dir=/runs/ft10 \\
    --output_json=/runs/ft10/eval_valid.json --predictions_npz=/runs/ft10/valid_preds.npz

Every flag is a field of `remedis_tf.train.evaluate.EvaluateConfig`. Exit
status 2: a user error (one line, no traceback).
"""

from __future__ import annotations

from remedis_tf import cpu_setup  # noqa: F401  (oneDNN default, before TensorFlow)

# isort: split
from absl import app

from remedis_tf import config_flags
from remedis_tf.train import cli_util
from remedis_tf.train import evaluate as evaluate_lib

_CONFIG = config_flags.define_flags(
  evaluate_lib.EvaluateConfig, required=("data", "model_dir", "output_json")
)


def main(argv: list[str]) -> int:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  return cli_util.run_reporting_errors(
    lambda: evaluate_lib.evaluate(
      config_flags.config_from_flags(evaluate_lib.EvaluateConfig, _CONFIG)
    ),
    None,
  )


def run() -> None:
  """Console-script entry point."""
  app.run(main)


if __name__ == "__main__":
  run()
