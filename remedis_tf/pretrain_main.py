"""remedis-pretrain: self-supervised pretraining from TFRecords (REMEDIS step 2).

Example (one machine):

  remedis-pretrain --train_data='/data/cxr/train-*.tfrecord' --model_dir=/runs/simclr \
    --objective=simclr --encoder=bit-r50x1 --init_checkpoint=/weights/BiT-M-R50x1.npz \
    --train_steps=100000 --global_batch_size=1024 --image_size=224 --strategy=mirrored

Multi-worker: run the same command on every machine with --strategy=multi_worker
and TF_CONFIG set to that machine's task. The run resumes from the newest
checkpoint in --model_dir; SIGTERM writes a checkpoint and exits 0.
"""

from __future__ import annotations

from absl import app, flags

from remedis_tf.data.presets import parse_overrides
from remedis_tf.train import cli_util
from remedis_tf.train import pretrain as pretrain_lib

_TRAIN_DATA = flags.DEFINE_string("train_data", None, "Glob of TFRecord shards.", required=True)
_MODEL_DIR = flags.DEFINE_string("model_dir", None, "Checkpoints and summaries.", required=True)
_OBJECTIVE = flags.DEFINE_enum("objective", "simclr", pretrain_lib.OBJECTIVES, "SSL objective.")
_ENCODER = flags.DEFINE_string(
  "encoder", "bit-r50x1", "bit-r{depth}x{width} (e.g. bit-r50x1, bit-r152x2) or bit-tiny."
)
_INIT_CHECKPOINT = flags.DEFINE_string(
  "init_checkpoint", None, "BiT .npz, our model_dir / checkpoint prefix, or empty (random)."
)
_TRAIN_STEPS = flags.DEFINE_integer("train_steps", 1000, "Total training steps.")
_GLOBAL_BATCH_SIZE = flags.DEFINE_integer(
  "global_batch_size", 256, "Images per step, all replicas."
)
_IMAGE_SIZE = flags.DEFINE_integer("image_size", 224, "Side of the square views (multiple of 32).")
_STRATEGY = flags.DEFINE_enum(
  "strategy",
  "default",
  list(pretrain_lib.distribute.STRATEGIES),
  "Distribution strategy; multi_worker reads TF_CONFIG.",
)
_TPU = flags.DEFINE_string("tpu", None, "TPU name or address for --strategy=tpu.")
_CHECKPOINT_STEPS = flags.DEFINE_integer(
  "checkpoint_steps", 1000, "Checkpoint period (0: end only)."
)
_KEEP_CHECKPOINT_MAX = flags.DEFINE_integer("keep_checkpoint_max", 5, "Checkpoints kept (0: all).")
_KEEP_EVERY_N_HOURS = flags.DEFINE_float(
  "keep_checkpoint_every_n_hours", None, "Also keep one checkpoint per this many hours."
)
_LEARNING_RATE = flags.DEFINE_float(
  "learning_rate", 0.3, "Base LARS learning rate (before scaling)."
)
_LR_SCALING = flags.DEFINE_enum(
  "learning_rate_scaling",
  "linear",
  ["linear", "sqrt", "none"],
  "Batch scaling of the learning rate.",
)
_WARMUP_STEPS = flags.DEFINE_integer("warmup_steps", None, "Warmup steps (default 5% of steps).")
_MOMENTUM = flags.DEFINE_float("momentum", 0.9, "LARS momentum.")
_WEIGHT_DECAY = flags.DEFINE_float("weight_decay", 1e-6, "Weight decay (LARS or AdamW).")
_TEMPERATURE = flags.DEFINE_float(
  "temperature", None, "Objective temperature (default: objective's)."
)
_AUGMENT_PRESET = flags.DEFINE_enum(
  "augment_preset", "natural", ["natural", "cxr", "pathology"], "Augmentation preset."
)
_AUGMENT_OVERRIDE = flags.DEFINE_multi_string(
  "augment_override",
  [],
  "Change one field of the preset's AugmentConfig: field=value (Python literal), repeatable, "
  "e.g. --augment_override=crop_area_range=(0.35,1.0).",
)
_OPTIMIZER = flags.DEFINE_enum(
  "optimizer", "lars", ["lars", "adamw"], "LARS (large batches) or AdamW (small batches)."
)
_SPLIT = flags.DEFINE_string("split", None, "Only use records of this split (default: all).")
_LINEAR_EVAL_HEAD = flags.DEFINE_bool(
  "linear_eval_head", False, "Train a linear head on stop-gradient features (needs labels)."
)
_NUM_CLASSES = flags.DEFINE_integer("num_classes", None, "Classes of the linear head.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed.")
_MIXED_PRECISION = flags.DEFINE_enum(
  "mixed_precision", None, ["bfloat16", "float32"], "Mixed precision policy."
)
_JIT_COMPILE = flags.DEFINE_bool("jit_compile", False, "XLA-compile the train step.")
_STEPS_PER_LOOP = flags.DEFINE_integer("steps_per_loop", 1, "Steps per compiled call.")
_LOG_EVERY = flags.DEFINE_integer("log_every_steps", 10, "Progress line period.")
_RESULTS_JSON = flags.DEFINE_string("results_json", None, "Write the results dict here.")


def config_from_flags() -> pretrain_lib.PretrainConfig:
  """The PretrainConfig described by the flags."""
  return pretrain_lib.PretrainConfig(
    train_data=_TRAIN_DATA.value,
    model_dir=_MODEL_DIR.value,
    objective=_OBJECTIVE.value,
    encoder=_ENCODER.value,
    init_checkpoint=_INIT_CHECKPOINT.value or None,
    train_steps=_TRAIN_STEPS.value,
    global_batch_size=_GLOBAL_BATCH_SIZE.value,
    image_size=_IMAGE_SIZE.value,
    strategy=_STRATEGY.value,
    tpu_address=_TPU.value,
    checkpoint_steps=_CHECKPOINT_STEPS.value,
    keep_checkpoint_max=_KEEP_CHECKPOINT_MAX.value or None,
    keep_checkpoint_every_n_hours=_KEEP_EVERY_N_HOURS.value,
    base_learning_rate=_LEARNING_RATE.value,
    learning_rate_scaling=_LR_SCALING.value,
    warmup_steps=_WARMUP_STEPS.value,
    momentum=_MOMENTUM.value,
    weight_decay=_WEIGHT_DECAY.value,
    temperature=_TEMPERATURE.value,
    augment_preset=_AUGMENT_PRESET.value,
    augment_overrides=tuple(parse_overrides(_AUGMENT_OVERRIDE.value).items()),
    optimizer=_OPTIMIZER.value,
    split=_SPLIT.value,
    linear_eval_head=_LINEAR_EVAL_HEAD.value,
    num_classes=_NUM_CLASSES.value,
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
    lambda: pretrain_lib.pretrain(config_from_flags()), _RESULTS_JSON.value
  )


def run() -> None:
  """Console-script entry point."""
  app.run(main)


if __name__ == "__main__":
  run()
