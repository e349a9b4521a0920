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

from remedis_tf.train import cli_util
from remedis_tf.train import evaluate as evaluate_lib

main = cli_util.config_main(
  evaluate_lib.EvaluateConfig,
  evaluate_lib.evaluate,
  required=("data", "model_dir", "output_json"),
  results_json=False,
)


def run() -> None:
  """Console-script entry point."""
  app.run(main)


if __name__ == "__main__":
  run()
