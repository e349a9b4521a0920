"""Supervised fine-tuning and linear evaluation (REMEDIS step 3).

`finetune(FinetuneConfig(...))` starts the encoder from one of our model_dirs
(pretraining or fine-tuning), a BiT `.npz`, a SavedModel directory (ours or
the PhysioNet release, loaded with `hub_export.load.load_encoder`) or random
weights, adds a zero-initialised Dense head on the pooled embedding and trains
end to end, or only above `freeze_up_to` (linear evaluation: 'all').

Heads and losses: 'multi_class' uses softmax cross-entropy on (N,) int labels;
'multi_label' uses sigmoid binary cross-entropy on (N, K) labels where entries
equal to -1 are ignored. Optional class weights multiply a class's examples
(multi-class) or a label's positive entries (multi-label).

Default schedule: BiT-HyperRule (Kolesnikov et al. 2020): SGD momentum 0.9,
lr 0.003 * B / 512, linear warmup then x0.1 decays; steps by training-set
size (< 20k: 500 steps, decays at 200/300/400 after 100 warmup; < 500k:
10k; else 20k). With explicit `train_steps`, warmup is 5% and decays are at
30/60/90% of the steps.

Checkpoint: `tf.train.Checkpoint(encoder=..., head=<Sequential Dense>,
optimizer=..., step=...)`; config.json adds 'num_classes', 'label_mode',
'label_names', 'encoder_source' ('bit' or 'saved_model') and
'saved_model_path' (needed to rebuild a SavedModel-based encoder).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from typing import Any

import keras
import tensorflow as tf
from absl import logging

from remedis_tf import data as data_lib
from remedis_tf import models
from remedis_tf.data import input_pipeline
from remedis_tf.train import checkpointing, distribute, loop, precision, progress
from remedis_tf.train.preemption import PreemptionWatcher
from remedis_tf.train.pretrain import seed_initializers, weights_fingerprint
from tfrecords_tools import schema

FREEZE_POINTS = ("root_block", "block1", "block2", "block3", "block4", "all")
_RESUME_KEYS = ("task", "encoder", "image_size", "label_mode", "num_classes")


@dataclasses.dataclass(frozen=True)
class HyperRuleSchedule:
  """Warmup + step decays (x0.1) as BiT-HyperRule.

  Attributes:
    warmup_steps: linear warmup from 0.
    decay_steps: steps at which the rate is multiplied by 0.1.
    total_steps: training length.
  """

  warmup_steps: int
  decay_steps: tuple[int, ...]
  total_steps: int


def hyperrule_schedule(dataset_size: int, train_steps: int | None = None) -> HyperRuleSchedule:
  """BiT-HyperRule steps for a training set of `dataset_size` examples.

  Args:
    dataset_size: labelled training examples.
    train_steps: override of the length (then warmup 5%, decays at 30/60/90%).

  Returns:
    A HyperRuleSchedule.
  """
  if train_steps is not None:
    return HyperRuleSchedule(
      int(0.05 * train_steps), tuple(int(f * train_steps) for f in (0.3, 0.6, 0.9)), train_steps
    )
  if dataset_size < 20_000:
    return HyperRuleSchedule(100, (200, 300, 400), 500)
  if dataset_size < 500_000:
    return HyperRuleSchedule(500, (3000, 6000, 9000), 10_000)
  return HyperRuleSchedule(500, (6000, 12_000, 18_000), 20_000)


@keras.saving.register_keras_serializable(package="remedis_tf")
class WarmupStepDecay(keras.optimizers.schedules.LearningRateSchedule):
  """lr = peak * step / warmup during warmup, then peak * 0.1**(decays passed)."""

  def __init__(self, peak: float, warmup_steps: int, decay_steps: Sequence[int]) -> None:
    self.peak = float(peak)
    self.warmup_steps = int(warmup_steps)
    self.decay_steps = tuple(int(s) for s in decay_steps)

  def __call__(self, step: Any) -> Any:
    step = keras.ops.cast(step, "float32")
    lr = keras.ops.convert_to_tensor(self.peak, "float32")
    for boundary in self.decay_steps:
      lr = keras.ops.where(step >= boundary, lr * 0.1, lr)
    if self.warmup_steps > 0:
      lr = keras.ops.where(step < self.warmup_steps, self.peak * step / self.warmup_steps, lr)
    return lr

  def get_config(self) -> dict[str, Any]:
    return {"peak": self.peak, "warmup_steps": self.warmup_steps, "decay_steps": self.decay_steps}


@dataclasses.dataclass(frozen=True)
class FinetuneConfig:
  """Everything a fine-tuning run needs.

  Attributes:
    train_data: glob of labelled TFRecord shards.
    model_dir: output directory (resumed when it holds a checkpoint).
    init_from: our model_dir or checkpoint prefix, a BiT `.npz`, a SavedModel
      directory, or None (random).
    encoder: encoder name (ignored for a SavedModel start).
    label_fraction: fraction of patients whose labels are used (0, 1].
    train_steps: None = BiT-HyperRule length from the dataset size.
    global_batch_size: examples per step over all replicas.
    image_size: input side.
    strategy: 'default', 'mirrored', 'multi_worker' or 'tpu'.
    tpu_address: TPU for strategy 'tpu'.
    label_mode: 'multi_class' / 'multi_label'; None = manifest (else multi_class).
    num_classes: classes / labels; None = len(manifest label_names).
    label_names: names; None = manifest or "0", "1", ...
    learning_rate: peak lr; None = 0.003 * global_batch_size / 512.
    momentum: SGD momentum.
    weight_decay: L2 coefficient on kernels (0 as BiT).
    freeze_up_to: None (end to end), a block name (freeze it and all below)
      or 'all' (linear evaluation).
    class_weights: per class / label weight, or None.
    split: split to train on (None = all records).
    augment_preset: augmentation preset.
    augment_overrides: (field, value) pairs changing the preset's AugmentConfig.
    checkpoint_steps: checkpoint period (0 = end only).
    keep_checkpoint_max: retained checkpoints (None = all).
    seed: seed of the head init, data order and label-fraction subset.
    mixed_precision: None or 'bfloat16'.
    jit_compile: XLA-compile the replica step (only the encoder when
      replicas span several workers; see distribute.jit_scope).
    steps_per_loop: steps per compiled call.
    log_every_steps: progress line period.
  """

  train_data: str
  model_dir: str
  init_from: str | None = None
  encoder: str = "bit-r50x1"
  label_fraction: float = 1.0
  train_steps: int | None = None
  global_batch_size: int = 512
  image_size: int = 224
  strategy: str = "default"
  tpu_address: str | None = None
  label_mode: str | None = None
  num_classes: int | None = None
  label_names: tuple[str, ...] | None = None
  learning_rate: float | None = None
  momentum: float = 0.9
  weight_decay: float = 0.0
  freeze_up_to: str | None = None
  class_weights: tuple[float, ...] | None = None
  split: str | None = None
  augment_preset: str = "natural"
  augment_overrides: tuple[tuple[str, Any], ...] = ()
  checkpoint_steps: int = 500
  keep_checkpoint_max: int | None = 5
  seed: int = 0
  mixed_precision: str | None = None
  jit_compile: bool = False
  steps_per_loop: int = 1
  log_every_steps: int = 10


def init_kind(path: str | None) -> str:
  """'random', 'bit_npz', 'saved_model' or 'checkpoint' for an --init_from value."""
  if not path:
    return "random"
  if path.endswith(".npz"):
    if not tf.io.gfile.exists(path):
      raise FileNotFoundError(f"init_from {path!r} does not exist.")
    return "bit_npz"
  if tf.io.gfile.isdir(path) and tf.io.gfile.exists(os.path.join(path, "saved_model.pb")):
    return "saved_model"
  if tf.io.gfile.isdir(path) or tf.io.gfile.exists(path + ".index"):
    return "checkpoint"
  raise FileNotFoundError(
    f"init_from {path!r} is not a .npz, a SavedModel directory, a model_dir or a checkpoint."
  )


def build_encoder(
  kind: str, encoder_name: str, saved_model_path: str | None, image_size: int, trainable: bool
) -> keras.Model:
  """The encoder for a start kind (SavedModel encoders come from hub_export)."""
  if kind == "saved_model":
    from hub_export import load as hub_load  # Only needed for SavedModel starts.

    return hub_load.load_encoder(saved_model_path, trainable=trainable, image_size=image_size)
  return models.build_encoder_by_name(encoder_name)


def build_head(embedding_dim: int, num_classes: int) -> keras.Model:
  """Zero-initialised Dense head on the pooled embedding (checkpoint key 'head')."""
  return keras.Sequential(
    [
      keras.Input((embedding_dim,)),
      keras.layers.Dense(num_classes, kernel_initializer="zeros", dtype="float32", name="logits"),
    ],
    name="head",
  )


def freeze(encoder: keras.Model, freeze_up_to: str | None) -> None:
  """Freezes the root block and blocks up to `freeze_up_to` ('all': everything)."""
  if freeze_up_to is None:
    return
  if freeze_up_to not in FREEZE_POINTS:
    raise ValueError(f"freeze_up_to must be one of {FREEZE_POINTS}, got {freeze_up_to!r}.")
  if freeze_up_to == "all":
    encoder.trainable = False
    return
  order = FREEZE_POINTS[:-1]
  names = order[: order.index(freeze_up_to) + 1]
  layer_names = {layer.name for layer in encoder.layers}
  if not set(names) <= layer_names:
    raise ValueError(f"freeze_up_to={freeze_up_to!r} needs a BiT encoder with layers {names}.")
  for name in names:
    encoder.get_layer(name).trainable = False


def _resolve_labels(config: FinetuneConfig) -> tuple[str, int, list[str]]:
  manifest = data_lib.read_manifest(config.train_data) or {}
  label_mode = schema.normalize_label_mode(
    config.label_mode or manifest.get("label_mode") or "multi_class"
  )
  names = list(config.label_names or manifest.get("label_names") or [])
  num_classes = config.num_classes or len(names)
  if not num_classes:
    raise ValueError(
      "Cannot tell the number of classes: pass num_classes or put a manifest.json with "
      f"label_names next to {config.train_data!r}."
    )
  if names and len(names) != num_classes:
    raise ValueError(f"{len(names)} label names for {num_classes} classes.")
  return label_mode, num_classes, names or [str(i) for i in range(num_classes)]


def supervised_loss(
  logits: tf.Tensor,
  labels: tf.Tensor,
  label_mode: str,
  global_batch_size: int,
  class_weights: tf.Tensor | None = None,
) -> tuple[tf.Tensor, tf.Tensor]:
  """Per-replica loss (sums over replicas to the global mean) and summed accuracy.

  Args:
    logits: (n, K) float32.
    labels: (n,) int (multi_class) or (n, K) float in {0, 1, -1} (multi_label).
    label_mode: 'multi_class' or 'multi_label'.
    global_batch_size: B over all replicas.
    class_weights: (K,) weights or None.

  Returns:
    (loss_r, correct_r): loss_r = sum of per-example losses / B, where a
    multi-label example's loss is the mean over its K entries of the masked
    BCE; correct_r = number of correct decisions (top-1 or known entries).
  """
  logits = tf.cast(logits, tf.float32)
  if label_mode == "multi_class":
    labels = tf.cast(labels, tf.int32)
    ce = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)
    if class_weights is not None:
      ce = ce * tf.gather(class_weights, labels)
    correct = tf.reduce_sum(
      tf.cast(tf.equal(tf.argmax(logits, -1, output_type=tf.int32), labels), tf.float32)
    )
    return tf.reduce_sum(ce) / float(global_batch_size), correct
  labels = tf.cast(labels, tf.float32)
  known = tf.cast(labels >= 0, tf.float32)
  target = tf.clip_by_value(labels, 0.0, 1.0)
  bce = tf.nn.sigmoid_cross_entropy_with_logits(labels=target, logits=logits) * known
  if class_weights is not None:
    bce = bce * tf.where(target > 0, class_weights[tf.newaxis, :], 1.0)
  num_labels = float(logits.shape[-1])
  correct = tf.reduce_sum(
    tf.cast(tf.equal(tf.cast(logits > 0, tf.float32), target), tf.float32) * known
  )
  return tf.reduce_sum(bce) / (float(global_batch_size) * num_labels), correct


def finetune(config: FinetuneConfig) -> dict[str, Any]:
  """Runs (or resumes) fine-tuning; see the module docstring.

  Args:
    config: a FinetuneConfig.

  Returns:
    {'model_dir', 'start_step', 'final_step', 'preempted', 'resumed_from',
     'initialized_from', 'checkpoint', 'metrics', 'loss_history',
     'images_per_second', 'num_replicas', 'is_chief', 'num_classes',
     'label_mode', 'label_names', 'schedule', 'train_examples',
     'encoder_weights'}.
  """
  if not 0.0 < config.label_fraction <= 1.0:
    raise ValueError(f"label_fraction must be in (0, 1], got {config.label_fraction}.")
  if config.image_size <= 0 or config.image_size % 32:
    raise ValueError(f"image_size must be a positive multiple of 32, got {config.image_size}.")
  if config.strategy not in distribute.STRATEGIES:
    raise ValueError(f"strategy must be one of {distribute.STRATEGIES}, got {config.strategy!r}.")
  precision.check_policy_name(config.mixed_precision)
  if config.freeze_up_to is not None and config.freeze_up_to not in FREEZE_POINTS:
    raise ValueError(f"freeze_up_to must be one of {FREEZE_POINTS}, got {config.freeze_up_to!r}.")
  kind = init_kind(config.init_from)
  if kind != "saved_model":
    models.parse_encoder_name(config.encoder)
  files = data_lib.list_files(config.train_data)
  label_mode, num_classes, label_names = _resolve_labels(config)
  if config.class_weights is not None and len(config.class_weights) != num_classes:
    raise ValueError(f"{len(config.class_weights)} class weights for {num_classes} classes.")
  train_examples = int(round(input_pipeline.count_records(files) * config.label_fraction))
  rule = hyperrule_schedule(train_examples, config.train_steps)
  peak_lr = config.learning_rate or 0.003 * config.global_batch_size / 512

  strategy = distribute.create_strategy(config.strategy, config.tpu_address)
  chief = distribute.is_chief(strategy)
  write_dir = distribute.write_dir(config.model_dir, strategy)
  replicas = strategy.num_replicas_in_sync
  distribute.per_replica_batch_size(config.global_batch_size, strategy)
  run_config = {
    **dataclasses.asdict(config),
    "task": "finetune",
    "encoder": "saved_model" if kind == "saved_model" else config.encoder,
    "encoder_source": "saved_model" if kind == "saved_model" else "bit",
    "saved_model_path": _absolute(config.init_from) if kind == "saved_model" else None,
    "label_mode": label_mode,
    "num_classes": num_classes,
    "label_names": label_names,
    "train_steps": rule.total_steps,
    "num_replicas": replicas,
  }
  checkpointing.check_compatible(config.model_dir, run_config, _RESUME_KEYS)

  with precision.policy(config.mixed_precision):
    seed_initializers(config.seed)
    with strategy.scope():
      trainable = config.freeze_up_to != "all"
      encoder = build_encoder(kind, config.encoder, config.init_from, config.image_size, trainable)
      resuming = tf.train.latest_checkpoint(config.model_dir) is not None
      initialized_from = "resume"
      if not resuming:
        initialized_from = _initialize(encoder, kind, config.init_from)
      freeze(encoder, config.freeze_up_to)
      embedding_dim = int(encoder.output["embedding"].shape[-1])
      head = build_head(embedding_dim, num_classes)
      variables = encoder.trainable_variables + head.trainable_variables
      schedule = WarmupStepDecay(peak_lr, rule.warmup_steps, rule.decay_steps)
      optimizer = keras.optimizers.SGD(schedule, momentum=config.momentum)
      optimizer.build(variables)
      step = tf.Variable(
        0,
        dtype=tf.int64,
        trainable=False,
        name="global_step",
        aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA,
      )
      checkpoint = tf.train.Checkpoint(encoder=encoder, head=head, optimizer=optimizer, step=step)
      roles = models.variable_roles(encoder) if config.weight_decay else {}
      decayed = [
        v
        for v in variables
        if config.weight_decay and roles.get(v.path, "kernel") == "kernel" and len(v.shape) > 1
      ]
    checkpointer = checkpointing.Checkpointer(
      checkpoint, config.model_dir, write_dir, max_to_keep=config.keep_checkpoint_max
    )
    resumed_from = checkpointer.restore_latest()
    if chief:
      checkpointing.write_config_json(config.model_dir, run_config)
    class_weights = (
      tf.constant(config.class_weights, tf.float32) if config.class_weights is not None else None
    )
    start_step = int(step.numpy())
    logging.info(
      "Fine-tuning (%s, %d classes, %s) from step %d of %d; start: %s.",
      label_mode,
      num_classes,
      config.freeze_up_to or "end-to-end",
      start_step,
      rule.total_steps,
      initialized_from,
    )

    def dataset_fn(ctx: tf.distribute.InputContext) -> tf.data.Dataset:
      return data_lib.make_supervised_dataset(
        files,
        batch_size=ctx.get_per_replica_batch_size(config.global_batch_size),
        image_size=config.image_size,
        training=True,
        preset=data_lib.get_preset(config.augment_preset, **dict(config.augment_overrides)),
        # Fixed seed (the label subset and order never depend on the step);
        # a resumed run skips what the finished steps consumed.
        seed=config.seed,
        deterministic=True,
        skip_examples=distribute.consumed_examples(ctx, config.global_batch_size, start_step),
        label_mode=label_mode,
        num_labels=num_classes if label_mode == "multi_label" else None,
        label_fraction=config.label_fraction,
        split=config.split,
        input_context=ctx,
      )

    dataset = strategy.distribute_datasets_from_function(dataset_fn)
    writer = progress.summary_writer(os.path.join(write_dir, "train") if chief else None)

    net, jit_step = loop.apply_jit_scope(strategy, encoder, config.jit_compile)

    def replica_step(batch: tuple[tf.Tensor, tf.Tensor]) -> dict[str, tf.Tensor]:
      images, labels = batch
      with tf.GradientTape() as tape:
        features = net(images, training=trainable)["embedding"]
        logits = head(tf.cast(features, tf.float32), training=True)
        loss, correct = supervised_loss(
          logits, labels, label_mode, config.global_batch_size, class_weights
        )
        if decayed:
          loss += (
            0.5
            * config.weight_decay
            * tf.add_n([tf.reduce_sum(tf.square(v)) for v in decayed])
            / replicas
          )
      grads = tape.gradient(loss, variables)
      optimizer.apply_gradients(zip(grads, variables, strict=True))
      ctx = tf.distribute.get_replica_context()
      n = tf.cast(tf.size(labels), tf.float32)
      total_loss, total_correct, total_n = ctx.all_reduce(
        tf.distribute.ReduceOp.SUM, [loss, correct, n]
      )
      return {"loss": total_loss, "accuracy": total_correct / tf.maximum(total_n, 1.0)}

    with PreemptionWatcher() as watcher:
      result = loop.run_loop(
        strategy=strategy,
        replica_step=replica_step,
        iterator=iter(dataset),
        step=step,
        total_steps=rule.total_steps,
        global_batch_size=config.global_batch_size,
        checkpointer=checkpointer,
        checkpoint_steps=config.checkpoint_steps,
        writer=writer,
        steps_per_loop=config.steps_per_loop,
        jit_compile=jit_step,
        log_every_steps=config.log_every_steps,
        summary_every_steps=config.log_every_steps,
        learning_rate=lambda s: float(schedule(s)),
        watcher=watcher,
      )
    fingerprint = weights_fingerprint(encoder.weights + head.weights)
    checkpointer.cleanup()

  return {
    "model_dir": config.model_dir,
    "start_step": result.start_step,
    "final_step": result.final_step,
    "preempted": result.preempted,
    "resumed_from": resumed_from,
    "initialized_from": initialized_from,
    "checkpoint": result.checkpoint if chief else None,
    "metrics": result.last_metrics,
    "loss_history": result.loss_history,
    "images_per_second": result.images_per_second,
    "num_replicas": replicas,
    "is_chief": chief,
    "num_classes": num_classes,
    "label_mode": label_mode,
    "label_names": label_names,
    "schedule": dataclasses.asdict(rule) | {"peak_learning_rate": peak_lr},
    "train_examples": train_examples,
    "encoder_weights": fingerprint,
  }


def _absolute(path: str | None) -> str | None:
  """A local path made absolute (config.json is read from other directories)."""
  if path is None or "://" in path:
    return path
  return os.path.abspath(path)


def _initialize(encoder: keras.Model, kind: str, path: str | None) -> str:
  if kind == "bit_npz":
    report = models.load_bit_checkpoint(encoder, path, skip_head=True)
    return f"bit_npz:{path} ({len(report.loaded)} arrays)"
  if kind == "checkpoint":
    prefix = checkpointing.resolve_checkpoint_path(path)
    checkpointing.restore(tf.train.Checkpoint(encoder=encoder), prefix, partial=True)
    return f"checkpoint:{prefix}"
  if kind == "saved_model":
    return f"saved_model:{path}"
  return "random"
