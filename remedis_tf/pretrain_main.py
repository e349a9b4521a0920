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
from absl import app

from remedis_tf.train import cli_util
from remedis_tf.train import pretrain as pretrain_lib

main = cli_util.config_main(
  pretrain_lib.PretrainConfig, pretrain_lib.pretrain, required=("train_data", "model_dir")
)


def run() -> None:
  """Console-script entry point."""
  app.run(main)


if __name__ == "__main__":
  run()
