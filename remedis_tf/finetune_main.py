"""remedis-finetune: fine-tuning or linear evaluation from a checkpoint, .npz or SavedModel.

Example:

  remedis-finetune --train_data='/data/chexpert/train-*.tfrecord' --model_dir=/runs/ft10 \\
    --init_from=/runs/simclr --encoder=bit-r50x1 --label_fraction=0.1 \\
    --global_batch_size=512 --image_size=448

Without --train_steps the BiT-HyperRule length is used. --freeze_up_to=all
gives linear evaluation. Every flag is a field of
`remedis_tf.train.finetune.FinetuneConfig`.
"""

from __future__ import annotations

from remedis_tf import cpu_setup  # noqa: F401  (oneDNN default, before TensorFlow)

# isort: split
from absl import app

from remedis_tf.train import cli_util
from remedis_tf.train import finetune as finetune_lib

main = cli_util.config_main(
  finetune_lib.FinetuneConfig, finetune_lib.finetune, required=("train_data", "model_dir")
)


def run() -> None:
  """Console-script entry point."""
  app.run(main)


if __name__ == "__main__":
  run()
