"""Supervised fine-tuning and linear evaluation (REMEDIS step 3): the fine-tuning task.

`finetune(FinetuneConfig(...))` starts the encoder from one of our model_dirs
(pretraining or fine-tuning), a BiT `.npz`, a SavedModel directory (ours or
the PhysioNet release, `remedis_tf.models.load_encoder`) or random weights,
adds the zero-initialised classifier of `run_dir.build_head` on the pooled
embedding and trains end to end, or only above `freeze_up_to` (linear
evaluation: 'all'), with `trainer.train`.

Heads and losses: multi-class uses softmax cross-entropy on (N,) int labels;
multi-label uses sigmoid binary cross-entropy on (N, K) labels where entries
equal to -1 are ignored. Optional class weights multiply a class's examples
(multi-class) or a label's positive entries (multi-label). Optional weight
decay adds 0.5 * wd * sum(w^2) over kernels (never norm parameters or biases).

Default schedule: BiT-HyperRule (Kolesnikov et al. 2020): SGD momentum 0.9,
lr 0.003 * B / 512, linear warmup then x0.1 decays; steps by training-set
size (< 20k: 500 steps, decays at 200/300/400 after 100 warmup; < 500k:
10k; else 20k). With explicit `train_steps`, warmup is 5% and decays are at
30/60/90% of the steps.

Checkpoint and config.json: see `run_dir` (the classifier is saved as
'head'; config.json records label_mode, num_classes, label_names and, for a
SavedModel start, encoder_source 'saved_model' and saved_model_path).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import keras
import tensorflow as tf
from absl import logging

from remedis_tf import config_flags, data, models
from remedis_tf.data import input_pipeline
from remedis_tf.errors import ConfigError, InputDataError
from remedis_tf.models.outputs import EMBEDDING
from remedis_tf.train import loop, run_dir, trainer
from remedis_tf.train.preemption import PreemptionWatcher
from tfrecords_tools.schema import LabelMode

FREEZE_POINTS = ("root_block", "block1", "block2", "block3", "block4", "all")
LABEL_MODE_CHOICES = tuple(m.value for m in LabelMode)


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


@dataclasses.dataclass(frozen=True, kw_only=True)
class FinetuneConfig(trainer.TrainConfig):
  """Everything a fine-tuning run needs (and `trainer.TrainConfig`'s fields).

  Attributes:
    init_from: our model_dir or checkpoint prefix, a BiT .npz, a SavedModel
      directory (ours or PhysioNet's), or empty (random initialisation).
    label_fraction: fraction of patients whose labels are used, in (0, 1]
      (whole patients, chosen by the seed; nested across fractions).
    train_steps: total steps (default: the BiT-HyperRule length for the
      dataset size).
    label_mode: multiclass (softmax) or multilabel (sigmoid); default: the
      data's manifest.json.
    num_classes: classes or labels (default: the manifest's label_names).
    label_names: class or label names (default: the manifest's).
    learning_rate: peak SGD learning rate (default 0.003 * batch / 512).
    momentum: SGD momentum.
    weight_decay: L2 penalty on kernels (norm parameters and biases spared).
    freeze_up_to: freeze the encoder up to this block ('all' = linear
      evaluation of the frozen encoder).
    class_weights: per-class (multi-class) or per-label positive (multi-label)
      loss weights, comma separated on the command line.
  """

  global_batch_size: int = 512
  checkpoint_steps: int = 500
  init_from: str | None = None
  label_fraction: float = 1.0
  train_steps: int | None = None
  label_mode: LabelMode | None = dataclasses.field(
    default=None, metadata=config_flags.flag(choices=LABEL_MODE_CHOICES, parse=LabelMode.parse)
  )
  num_classes: int | None = None
  label_names: tuple[str, ...] | None = None
  learning_rate: float | None = None
  momentum: float = 0.9
  weight_decay: float = 0.0
  freeze_up_to: str | None = dataclasses.field(
    default=None, metadata=config_flags.flag(choices=FREEZE_POINTS)
  )
  class_weights: tuple[float, ...] | None = None

  def names_encoder(self) -> bool:
    """A SavedModel start brings its own encoder; `encoder` is then not used."""
    return run_dir.start_kind(self.init_from) != run_dir.StartKind.SAVED_MODEL

  def validate(self) -> None:
    """Raises ConfigError (a ValueError) for inconsistent settings."""
    super().validate()
    if not 0.0 < self.label_fraction <= 1.0:
      raise ConfigError(f"label_fraction must be in (0, 1], got {self.label_fraction}.")
    if self.train_steps is not None and self.train_steps <= 0:
      raise ConfigError(f"train_steps must be positive, got {self.train_steps}.")
    if self.freeze_up_to is not None and self.freeze_up_to not in FREEZE_POINTS:
      raise ConfigError(f"freeze_up_to must be one of {FREEZE_POINTS}, got {self.freeze_up_to!r}.")
    if self.weight_decay < 0:
      raise ConfigError(f"weight_decay must be >= 0, got {self.weight_decay}.")
    if self.label_mode is not None:
      try:
        LabelMode.parse(self.label_mode)
      except ValueError as e:
        raise ConfigError(str(e)) from e


def freeze(encoder: keras.Model, freeze_up_to: str | None) -> None:
  """Freezes the root block and blocks up to `freeze_up_to` ('all': everything)."""
  if freeze_up_to is None:
    return
  if freeze_up_to not in FREEZE_POINTS:
    raise ConfigError(f"freeze_up_to must be one of {FREEZE_POINTS}, got {freeze_up_to!r}.")
  if freeze_up_to == "all":
    encoder.trainable = False
    return
  order = FREEZE_POINTS[:-1]
  names = order[: order.index(freeze_up_to) + 1]
  layer_names = {layer.name for layer in encoder.layers}
  if not set(names) <= layer_names:
    raise ConfigError(f"freeze_up_to={freeze_up_to!r} needs a BiT encoder with layers {names}.")
  for name in names:
    encoder.get_layer(name).trainable = False


@dataclasses.dataclass(frozen=True)
class LabelSpec:
  """The classification task of a run: mode, width and names."""

  mode: LabelMode
  num_classes: int
  names: tuple[str, ...]


def resolve_labels(config: FinetuneConfig) -> LabelSpec:
  """The label mode, class count and names from the config, else the manifest.

  Raises:
    InputDataError: the class count cannot be told, or names and count disagree.
  """
  manifest = data.read_manifest(config.train_data) or {}
  mode = config.label_mode or manifest.get("label_mode") or LabelMode.MULTI_CLASS
  try:
    mode = LabelMode.parse(mode)
  except ValueError as e:
    raise InputDataError(f"manifest.json next to {config.train_data!r}: {e}") from e
  names = list(config.label_names or manifest.get("label_names") or [])
  num_classes = config.num_classes or len(names)
  if not num_classes:
    raise InputDataError(
      "Cannot tell the number of classes: pass num_classes or put a manifest.json with "
      f"label_names next to {config.train_data!r}."
    )
  if names and len(names) != num_classes:
    raise InputDataError(f"{len(names)} label names for {num_classes} classes.")
  if config.class_weights is not None and len(config.class_weights) != num_classes:
    raise ConfigError(f"{len(config.class_weights)} class weights for {num_classes} classes.")
  return LabelSpec(mode, num_classes, tuple(names) or tuple(str(i) for i in range(num_classes)))


def supervised_loss(
  logits: tf.Tensor,
  labels: tf.Tensor,
  label_mode: LabelMode | str,
  global_batch_size: int,
  class_weights: tf.Tensor | None = None,
) -> tuple[tf.Tensor, tf.Tensor]:
  """Per-replica loss (sums over replicas to the global mean) and summed accuracy.

  Args:
    logits: (n, K) float32.
    labels: (n,) int (multi-class) or (n, K) float in {0, 1, -1} (multi-label).
    label_mode: a LabelMode (or any spelling `LabelMode.parse` accepts).
    global_batch_size: B over all replicas.
    class_weights: (K,) weights or None.

  Returns:
    (loss_r, correct_r): loss_r = sum of per-example losses / B, where a
    multi-label example's loss is the mean over its K entries of the masked
    BCE; correct_r = number of correct decisions (top-1 or known entries).
  """
  logits = tf.cast(logits, tf.float32)
  if LabelMode.parse(label_mode) == LabelMode.MULTI_CLASS:
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


# Largest label subset (file bytes x label fraction) kept in memory by fine-tuning.
SUBSET_CACHE_BYTES = 256 << 20


class FinetuneTask(trainer.Task):
  """A classifier on the pooled embedding, trained with SGD on BiT-HyperRule."""

  kind = run_dir.TaskKind.FINETUNE
  resume_keys = ("task", "encoder", "image_size", "label_mode", "num_classes")

  def __init__(self, config: FinetuneConfig) -> None:
    super().__init__(config)
    self.config: FinetuneConfig = config

  @property
  def total_steps(self) -> int:
    return self.rule.total_steps

  def prepare(self) -> None:
    super().prepare()
    c = self.config
    self.start = run_dir.start_kind(c.init_from)
    self.labels = resolve_labels(c)
    self.train_examples = int(round(input_pipeline.count_records(self.files) * c.label_fraction))
    self.rule = hyperrule_schedule(self.train_examples, c.train_steps)
    self.peak_lr = (
      c.learning_rate if c.learning_rate is not None else 0.003 * c.global_batch_size / 512
    )
    self.schedule = WarmupStepDecay(self.peak_lr, self.rule.warmup_steps, self.rule.decay_steps)
    self.trainable = c.freeze_up_to != "all"
    self.cache_subset = self._small_single_file_subset()

  def _small_single_file_subset(self) -> bool:
    """Whether to keep the parsed label subset in memory (see `dataset`).

    A label subset is found by parsing every record of the files in every
    epoch: a 16-label run of the demo parses its 646-record split 50 times,
    about 10 s of CPU. Cached, the records are parsed once. Only a single file
    is cached: with several, the uncached stream reshuffles the file order each
    epoch, which a cache would freeze (the stream must not depend on caching).
    """
    c = self.config
    if c.label_fraction >= 1.0 or len(self.files) != 1:
      return False
    return tf.io.gfile.stat(self.files[0]).length * c.label_fraction <= SUBSET_CACHE_BYTES

  def run_config(self, num_replicas: int) -> run_dir.RunConfig:
    c = self.config
    from_saved_model = self.start == run_dir.StartKind.SAVED_MODEL
    return run_dir.RunConfig(
      task=self.kind,
      encoder=run_dir.EncoderSource.SAVED_MODEL.value if from_saved_model else c.encoder,
      image_size=c.image_size,
      encoder_source=(
        run_dir.EncoderSource.SAVED_MODEL if from_saved_model else run_dir.EncoderSource.BIT
      ),
      saved_model_path=run_dir.absolute(c.init_from) if from_saved_model else None,
      label_mode=self.labels.mode,
      num_classes=self.labels.num_classes,
      label_names=self.labels.names,
      settings={
        **trainer.dataclass_settings(c),
        "train_steps": self.rule.total_steps,
        "num_replicas": num_replicas,
      },
    )

  def build(self, strategy: tf.distribute.Strategy, resuming: bool) -> trainer.Built:
    c = self.config
    run = self.run_config(strategy.num_replicas_in_sync)
    encoder = run_dir.build_encoder(run, image_size=c.image_size, trainable=self.trainable)
    if resuming:
      initialized_from = "resume"
    elif self.start == run_dir.StartKind.SAVED_MODEL:
      initialized_from = f"saved_model:{c.init_from}"
    else:
      initialized_from = run_dir.initialize_encoder(encoder, c.init_from)
    freeze(encoder, c.freeze_up_to)
    self.head = run_dir.build_head(
      int(encoder.output[EMBEDDING].shape[-1]), self.labels.num_classes
    )
    networks = [encoder, self.head]
    self.variables = [v for net in networks for v in net.trainable_variables]
    trainable_ids = {id(v) for v in self.variables}
    self.decayed = (
      [v for v in models.kernel_variables(*networks) if id(v) in trainable_ids and len(v.shape) > 1]
      if c.weight_decay
      else []
    )
    self.optimizer = keras.optimizers.SGD(self.schedule, momentum=c.momentum)
    self.optimizer.build(self.variables)
    self.class_weights = (
      tf.constant(c.class_weights, tf.float32) if c.class_weights is not None else None
    )
    self.replicas = strategy.num_replicas_in_sync
    logging.info(
      "Fine-tuning (%s, %d classes, %s); %d decayed kernels.",
      self.labels.mode.value,
      self.labels.num_classes,
      c.freeze_up_to or "end-to-end",
      len(self.decayed),
    )
    return trainer.Built(
      encoder=encoder,
      checkpoint_items={"encoder": encoder, "head": self.head, "optimizer": self.optimizer},
      initialized_from=initialized_from,
      fingerprinted=[encoder, self.head],
    )

  def dataset(self, ctx: tf.distribute.InputContext, skip_examples: int) -> tf.data.Dataset:
    c = self.config
    multi_label = self.labels.mode == LabelMode.MULTI_LABEL
    return data.make_supervised_dataset(
      self.files,
      batch_size=ctx.get_per_replica_batch_size(c.global_batch_size),
      image_size=c.image_size,
      training=True,
      preset=c.augment_config(),
      # Fixed seed: the label subset and the order never depend on the step;
      # a resumed run skips what the finished steps consumed.
      seed=c.seed,
      deterministic=True,
      skip_examples=skip_examples,
      label_mode=self.labels.mode.value,
      num_labels=self.labels.num_classes if multi_label else None,
      label_fraction=c.label_fraction,
      split=c.split,
      input_context=ctx,
      cache=self.cache_subset,
    )

  def replica_step(self, encoder: Callable[..., Any]) -> loop.ReplicaStep:
    c = self.config

    def step(batch: tuple[tf.Tensor, tf.Tensor]) -> dict[str, tf.Tensor]:
      images, labels = batch
      with tf.GradientTape() as tape:
        features = encoder(images, training=self.trainable)[EMBEDDING]
        logits = self.head(tf.cast(features, tf.float32), training=True)
        loss, correct = supervised_loss(
          logits, labels, self.labels.mode, c.global_batch_size, self.class_weights
        )
        if self.decayed:
          # Each replica adds 1/R of the penalty, so the replicas sum to it once.
          penalty = tf.add_n([tf.reduce_sum(tf.square(v)) for v in self.decayed])
          loss += 0.5 * c.weight_decay * penalty / self.replicas
      grads = tape.gradient(loss, self.variables)
      self.optimizer.apply_gradients(zip(grads, self.variables, strict=True))
      ctx = tf.distribute.get_replica_context()
      n = tf.cast(tf.size(labels), tf.float32)
      total_loss, total_correct, total_n = ctx.all_reduce(
        tf.distribute.ReduceOp.SUM, [loss, correct, n]
      )
      return {"loss": total_loss, "accuracy": total_correct / tf.maximum(total_n, 1.0)}

    return step

  def learning_rate(self, step: int) -> float:
    return float(self.schedule(step))

  # What `build` creates and `replica_step` reads.
  warm_attributes = ("head", "optimizer", "variables", "decayed", "class_weights", "replicas")

  # Settings that only choose the data, the output and the logging: runs that
  # differ only in these share built models and a traced step.
  _DATA_ONLY = frozenset(
    {
      "train_data",
      "model_dir",
      "label_fraction",
      "split",
      "augment_preset",
      "augment_overrides",
      "checkpoint_steps",
      "keep_checkpoint_max",
      "keep_checkpoint_every_n_hours",
      "log_every_steps",
      "summary_every_steps",
      "seed",
    }
  )

  def warm_key(self) -> tuple[Any, ...] | None:
    """Every setting the built objects or the traced step depend on (see trainer.WarmStart).

    The start point is part of the key (its newest checkpoint file, so a
    start point rewritten since counts as another); a random or SavedModel
    start is never reused.
    """
    c = self.config
    if self.start in (run_dir.StartKind.RANDOM, run_dir.StartKind.SAVED_MODEL):
      return None
    start = c.init_from
    if self.start == run_dir.StartKind.CHECKPOINT and tf.io.gfile.isdir(start):
      start = tf.train.latest_checkpoint(start)
    settings = {k: v for k, v in trainer.dataclass_settings(c).items() if k not in self._DATA_ONLY}
    return (
      self.kind.value,
      run_dir.absolute(start),
      repr(sorted(settings.items())),
      self.labels.mode.value,
      self.labels.num_classes,
      dataclasses.astuple(self.rule),
      self.peak_lr,
      self.trainable,
    )

  def results(self) -> dict[str, Any]:
    return {
      "num_classes": self.labels.num_classes,
      "label_mode": self.labels.mode.value,
      "label_names": list(self.labels.names),
      "schedule": dataclasses.asdict(self.rule) | {"peak_learning_rate": self.peak_lr},
      "train_examples": self.train_examples,
    }


def finetune(
  config: FinetuneConfig,
  watcher: PreemptionWatcher | None = None,
  warm: trainer.WarmStart | None = None,
) -> dict[str, Any]:
  """Runs (or resumes) fine-tuning; see the module docstring.

  Args:
    config: a FinetuneConfig.
    watcher: shared stop requests (see `trainer.train`).
    warm: built models and traced steps kept across runs (`trainer.WarmStart`).

  Returns:
    `trainer.train`'s results dict plus 'num_classes', 'label_mode',
    'label_names', 'schedule', 'train_examples'.
  """
  return trainer.train(FinetuneTask(config), watcher, warm)
