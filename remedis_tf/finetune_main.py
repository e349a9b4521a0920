"""remedis-finetune: fine-tuning or linear evaluation from a checkpoint, .npz or SavedModel.

Example:

  remedis-finetune --train_data='/data/chexpert/train-*.tfrecord' --model_dir=/runs/ft10 \
    --init_from=/runs/simclr --encoder=bit-r50x1 --label_fraction=0.1 \
    --global_batch_size=512 --image_size=448

Without --train_steps the BiT-HyperRule length is used. --freeze_up_to=all
gives linear evaluation.
"""

from __future__ import annotations

from absl import app, flags

from remedis_tf.data.presets import parse_overrides
from remedis_tf.train import cli_util, distribute
from remedis_tf.train import finetune as finetune_lib

_TRAIN_DATA = flags.DEFINE_string("train_data", None, "Glob of labelled TFRecords.", required=True)
_MODEL_DIR = flags.DEFINE_string("model_dir", None, "Output directory.", required=True)
_INIT_FROM = flags.DEFINE_string(
  "init_from", None, "Our model_dir / checkpoint, a BiT .npz, a SavedModel dir, or empty."
)
_ENCODER = flags.DEFINE_string("encoder", "bit-r50x1", "Encoder name (not for SavedModels).")
_LABEL_FRACTION = flags.DEFINE_float("label_fraction", 1.0, "Fraction of labelled patients.")
_TRAIN_STEPS = flags.DEFINE_integer("train_steps", None, "Steps (default: BiT-HyperRule).")
_GLOBAL_BATCH_SIZE = flags.DEFINE_integer("global_batch_size", 512, "Examples per step.")
_IMAGE_SIZE = flags.DEFINE_integer("image_size", 224, "Input side (multiple of 32).")
_STRATEGY = flags.DEFINE_enum("strategy", "default", list(distribute.STRATEGIES), "Strategy.")
_TPU = flags.DEFINE_string("tpu", None, "TPU for --strategy=tpu.")
_LABEL_MODE = flags.DEFINE_enum(
  "label_mode", None, ["multi_class", "multi_label"], "Default: the data's manifest.json."
)
_NUM_CLASSES = flags.DEFINE_integer("num_classes", None, "Default: manifest label_names.")
_LEARNING_RATE = flags.DEFINE_float("learning_rate", None, "Peak lr (default 0.003 * B / 512).")
_MOMENTUM = flags.DEFINE_float("momentum", 0.9, "SGD momentum.")
_WEIGHT_DECAY = flags.DEFINE_float("weight_decay", 0.0, "L2 on kernels.")
_FREEZE_UP_TO = flags.DEFINE_enum(
  "freeze_up_to",
  None,
  list(finetune_lib.FREEZE_POINTS),
  "Freeze the encoder up to this block ('all' = linear eval).",
)
_CLASS_WEIGHTS = flags.DEFINE_list("class_weights", None, "Per-class weights, comma separated.")
_SPLIT = flags.DEFINE_string("split", None, "Only train on this split.")
_AUGMENT_PRESET = flags.DEFINE_enum(
  "augment_preset", "natural", ["natural", "cxr", "pathology"], "Augmentation preset."
)
_AUGMENT_OVERRIDE = flags.DEFINE_multi_string(
  "augment_override", [], "AugmentConfig field=value (Python literal), repeatable."
)
_CHECKPOINT_STEPS = flags.DEFINE_integer("checkpoint_steps", 500, "Checkpoint period.")
_KEEP_CHECKPOINT_MAX = flags.DEFINE_integer("keep_checkpoint_max", 5, "Kept (0 = all).")
_SEED = flags.DEFINE_integer("seed", 0, "Seed.")
_MIXED_PRECISION = flags.DEFINE_enum("mixed_precision", None, ["bfloat16", "float32"], "Policy.")
_JIT_COMPILE = flags.DEFINE_bool("jit_compile", False, "XLA-compile the step.")
_STEPS_PER_LOOP = flags.DEFINE_integer("steps_per_loop", 1, "Steps per compiled call.")
_LOG_EVERY = flags.DEFINE_integer("log_every_steps", 10, "Progress line period.")
_RESULTS_JSON = flags.DEFINE_string("results_json", None, "Write the results dict here.")


def config_from_flags() -> finetune_lib.FinetuneConfig:
  """The FinetuneConfig described by the flags."""
  weights = _CLASS_WEIGHTS.value
  return finetune_lib.FinetuneConfig(
    train_data=_TRAIN_DATA.value,
    model_dir=_MODEL_DIR.value,
    init_from=_INIT_FROM.value or None,
    encoder=_ENCODER.value,
    label_fraction=_LABEL_FRACTION.value,
    train_steps=_TRAIN_STEPS.value,
    global_batch_size=_GLOBAL_BATCH_SIZE.value,
    image_size=_IMAGE_SIZE.value,
    strategy=_STRATEGY.value,
    tpu_address=_TPU.value,
    label_mode=_LABEL_MODE.value,
    num_classes=_NUM_CLASSES.value,
    learning_rate=_LEARNING_RATE.value,
    momentum=_MOMENTUM.value,
    weight_decay=_WEIGHT_DECAY.value,
    freeze_up_to=_FREEZE_UP_TO.value,
    class_weights=tuple(float(w) for w in weights) if weights else None,
    split=_SPLIT.value,
    augment_preset=_AUGMENT_PRESET.value,
    augment_overrides=tuple(parse_overrides(_AUGMENT_OVERRIDE.value).items()),
    checkpoint_steps=_CHECKPOINT_STEPS.value,
    keep_checkpoint_max=_KEEP_CHECKPOINT_MAX.value or None,
    seed=_SEED.value,
    mixed_precision=_MIXED_PRECISION.value,
    jit_compile=_JIT_COMPILE.value,
    steps_per_loop=_STEPS_PER_LOOP.value,
    log_every_steps=_LOG_EVERY.value,
  )


def main(argv: list[str]) -> int:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  return cli_util.run_reporting_errors(
    lambda: finetune_lib.finetune(config_from_flags()), _RESULTS_JSON.value
  )


def run() -> None:
  """Console-script entry point."""
  app.run(main)


if __name__ == "__main__":
  run()
