"""remedis-pretrain: self-supervised pretraining from TFRecords (REMEDIS step 2).

Example (one machine):

  remedis-pretrain --train_data='/data/cxr/train-*.tfrecord' --model_dir=/runs/simclr \\
    --objective=simclr --encoder=bit-r50x1 --init_checkpoint=/weights/BiT-M-R50x1.npz \\
    --train_steps=100000 --global_batch_size=1024 --image_size=224 --strategy=mirrored

Multi-worker: run the same command on every machine with --strategy=multi_worker
and TF_CONFIG set to that machine's task. The run resumes from the newest
checkpoint in --model_dir; SIGTERM or SIGINT writes a checkpoint and exits 0.
Every flag is a field of `remedis_tf.train.pretrain.PretrainConfig`.
"""

from __future__ import annotations

from remedis_tf import cpu_setup  # noqa: F401  (oneDNN default, before TensorFlow)

# isort: split
from absl import app, flags

from remedis_tf import config_flags
from remedis_tf.train import cli_util
from remedis_tf.train import pretrain as pretrain_lib

_CONFIG = config_flags.define_flags(
  pretrain_lib.PretrainConfig, required=("train_data", "model_dir")
)
_RESULTS_JSON = flags.DEFINE_string("results_json", None, "Write the results dict here.")


def main(argv: list[str]) -> int:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  return cli_util.run_reporting_errors(
    lambda: pretrain_lib.pretrain(
      config_flags.config_from_flags(pretrain_lib.PretrainConfig, _CONFIG)
    ),
    _RESULTS_JSON.value,
  )


def run() -> None:
  """Console-script entry point."""
  app.run(main)


if __name__ == "__main__":
  run()
