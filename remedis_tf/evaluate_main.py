"""remedis-evaluate: AUROC / accuracy with patient-bootstrap 95% CIs for a fine-tuned model.

Example:

  remedis-evaluate --data='/data/chexpert/valid-*.tfrecord' --model_dir=/runs/ft10 \
    --output_json=/runs/ft10/eval_valid.json --predictions_npz=/runs/ft10/valid_preds.npz
"""

from __future__ import annotations

from absl import app, flags

from remedis_tf.train import cli_util
from remedis_tf.train import evaluate as evaluate_lib

_DATA = flags.DEFINE_string("data", None, "Glob of TFRecord shards.", required=True)
_MODEL_DIR = flags.DEFINE_string("model_dir", None, "A remedis-finetune model_dir.", required=True)
_OUTPUT_JSON = flags.DEFINE_string("output_json", None, "Metrics JSON path.", required=True)
_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "Checkpoint prefix (default: newest).")
_SPLIT = flags.DEFINE_string("split", None, "Only this split.")
_SITE = flags.DEFINE_string("site", None, "Only this site.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 64, "Batch size.")
_IMAGE_SIZE = flags.DEFINE_integer("image_size", None, "Default: the fine-tuning size.")
_NUM_BOOTSTRAP = flags.DEFINE_integer("num_bootstrap", 1000, "Bootstrap replicates (patients).")
_SEED = flags.DEFINE_integer("seed", 0, "Bootstrap seed.")
_PREDICTIONS_NPZ = flags.DEFINE_string("predictions_npz", None, "Also save predictions here.")


def main(argv: list[str]) -> int:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  config = evaluate_lib.EvaluateConfig(
    data=_DATA.value,
    model_dir=_MODEL_DIR.value,
    output_json=_OUTPUT_JSON.value,
    checkpoint=_CHECKPOINT.value,
    split=_SPLIT.value,
    site=_SITE.value,
    batch_size=_BATCH_SIZE.value,
    image_size=_IMAGE_SIZE.value,
    num_bootstrap=_NUM_BOOTSTRAP.value,
    seed=_SEED.value,
    predictions_npz=_PREDICTIONS_NPZ.value,
  )
  return cli_util.run_reporting_errors(lambda: evaluate_lib.evaluate(config), None)


def run() -> None:
  """Console-script entry point."""
  app.run(main)


if __name__ == "__main__":
  run()
