"""Self-supervised pretraining (REMEDIS step 2): the pretraining task of the trainer.

`pretrain(PretrainConfig(...))` builds a BiT encoder (initialised from a BiT
`.npz`, from one of our checkpoints, or randomly), an objective from
`remedis_tf.objectives`, LARS or AdamW with the warmup-cosine schedule, and
trains on two augmented views per image with `trainer.train`, which resumes
from the newest checkpoint in `model_dir`, checkpoints on SIGTERM/SIGINT and
returns a results dict. See `run_dir` for the files it writes.

Optional linear head (as in SimCLR): when `linear_eval_head` is set and the
records carry class labels, a zero-initialised Dense on the *stop-gradient*
encoder embedding of the first view (`LossOutput.embedding`) is trained
jointly with softmax cross-entropy (unlabelled examples, label -1,
contribute zero); it monitors representation quality and never changes the
encoder.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import keras
import tensorflow as tf
from absl import logging

from remedis_tf import config_flags, data, models, objectives, optim
from remedis_tf.errors import ConfigError, InputDataError
from remedis_tf.models.outputs import LOGITS
from remedis_tf.train import loop, progress, run_dir, trainer
from remedis_tf.train.preemption import PreemptionWatcher
from remedis_tf.train.trainer import seed_initializers, weights_fingerprint
from tfrecords_tools.schema import LabelMode

OBJECTIVES = objectives.NAMES
OPTIMIZERS = ("lars", "adamw")
LARS_MOMENTUM = 0.9

__all__ = [
  "OBJECTIVES",
  "OPTIMIZERS",
  "PretrainConfig",
  "PretrainTask",
  "build_objective",
  "build_optimizer",
  "pretrain",
  "seed_initializers",
  "weights_fingerprint",
]


@dataclasses.dataclass(frozen=True, kw_only=True)
class PretrainConfig(trainer.TrainConfig):
  """Everything a pretraining run needs (and `trainer.TrainConfig`'s fields).

  Attributes:
    objective: self-supervised objective.
    init_checkpoint: BiT .npz, one of our model_dirs or checkpoint prefixes,
      or empty (random initialisation). Ignored when model_dir already holds a
      checkpoint (the run resumes).
    train_steps: total training steps (the run ends at this global step).
    base_learning_rate: learning rate before batch scaling.
    learning_rate_scaling: 'linear' (lr * B / 256), 'sqrt' (lr * sqrt(B)) or
      'none'.
    warmup_steps: linear warmup steps (default 5% of train_steps).
    optimizer: 'lars' (SimCLR's choice for large batches) or 'adamw' (AdamW
      with the same schedule and weight decay; steadier for the small batches
      of one CPU machine). Norm parameters and biases are never decayed.
    momentum: LARS momentum (default 0.9); an error with AdamW.
    weight_decay: weight decay of LARS or AdamW.
    temperature: objective temperature (default: the objective's); only for
      objectives that have one (SimCLR, MoCo-v2, ReLIC).
    objective_overrides: more objective config fields as (name, value)
      pairs; on the command line --objective_override=name=value, repeatable.
    shuffle_buffer: examples in the per-epoch shuffle buffer.
    linear_eval_head: train a linear classifier on stop-gradient features
      (needs labelled records).
    num_classes: classes of that head (default: the manifest's label_names).
    image_summaries: write a few example views to TensorBoard at the start.
    positive_pairs: 'augment' (two views of one image, SimCLR) or 'micle' (two
      different images of one patient or study, each augmented; MICLe, Azizi
      et al. 2021); a record alone in its group falls back to two views of
      itself. Works with every objective.
    micle_group: what groups MICLe pairs: 'patient' or 'study'.
    micle_store: where MICLe keeps partner images: 'memory', 'disk' (read
      from their shard when needed) or 'auto' (memory when they fit in
      micle_memory_limit_bytes).
    micle_memory_limit_bytes: the most encoded image bytes the memory store
      may hold.
  """

  objective: str = dataclasses.field(
    default="simclr", metadata=config_flags.flag(choices=objectives.NAMES)
  )
  init_checkpoint: str | None = None
  train_steps: int = 1000
  base_learning_rate: float = dataclasses.field(
    default=0.3, metadata=config_flags.flag(name="learning_rate")
  )
  learning_rate_scaling: str = dataclasses.field(
    default="linear", metadata=config_flags.flag(choices=optim.SCALINGS)
  )
  warmup_steps: int | None = None
  optimizer: str = dataclasses.field(default="lars", metadata=config_flags.flag(choices=OPTIMIZERS))
  momentum: float | None = None
  weight_decay: float = 1e-6
  temperature: float | None = None
  objective_overrides: tuple[tuple[str, Any], ...] = dataclasses.field(
    default=(), metadata=config_flags.flag(name="objective_override")
  )
  shuffle_buffer: int = 1024
  linear_eval_head: bool = False
  num_classes: int | None = None
  image_summaries: bool = True
  positive_pairs: str = dataclasses.field(
    default="augment", metadata=config_flags.flag(choices=data.POSITIVE_PAIRS)
  )
  micle_group: str = dataclasses.field(
    default="patient", metadata=config_flags.flag(choices=data.MICLE_GROUPS)
  )
  micle_store: str = dataclasses.field(
    default="auto", metadata=config_flags.flag(choices=data.MICLE_STORES)
  )
  micle_memory_limit_bytes: int = data.MICLE_MEMORY_LIMIT_BYTES

  def validate(self) -> None:
    """Raises ConfigError (a ValueError) for inconsistent settings."""
    super().validate()
    if self.objective not in OBJECTIVES:
      raise ConfigError(f"objective must be one of {OBJECTIVES}, got {self.objective!r}.")
    if self.train_steps <= 0:
      raise ConfigError(f"train_steps must be positive, got {self.train_steps}.")
    if self.optimizer not in OPTIMIZERS:
      raise ConfigError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}.")
    if self.optimizer == "adamw" and self.momentum is not None:
      raise ConfigError("momentum applies to the LARS optimizer only (AdamW has no momentum).")
    if self.positive_pairs not in data.POSITIVE_PAIRS:
      raise ConfigError(
        f"positive_pairs must be one of {data.POSITIVE_PAIRS}, got {self.positive_pairs!r}."
      )
    if self.micle_group not in data.MICLE_GROUPS or self.micle_store not in data.MICLE_STORES:
      raise ConfigError(
        f"micle_group must be one of {data.MICLE_GROUPS} and micle_store one of "
        f"{data.MICLE_STORES}, got {self.micle_group!r} and {self.micle_store!r}."
      )
    if self.warmup_steps is not None and not 0 <= self.warmup_steps < self.train_steps:
      raise ConfigError(f"warmup_steps must be in [0, train_steps), got {self.warmup_steps}.")
    try:
      optim.scaled_learning_rate(1.0, 1, self.learning_rate_scaling)
      build_objective(self)
    except (TypeError, ValueError) as e:
      raise ConfigError(str(e)) from e
    # InputNotFoundError when the path is missing.
    if run_dir.start_kind(self.init_checkpoint) == run_dir.StartKind.SAVED_MODEL:
      raise ConfigError(
        f"init_checkpoint {self.init_checkpoint!r} is a SavedModel; pretraining starts from a "
        "BiT .npz or one of our checkpoints (fine-tuning starts from SavedModels)."
      )


def build_objective(config: PretrainConfig) -> objectives.Objective:
  """The objective named by the config, with its overrides.

  `config.temperature` applies to the objectives that have one (SimCLR,
  MoCo-v2, ReLIC); naming it for another objective is an error.
  """
  overrides = dict(config.objective_overrides)
  if config.temperature is not None:
    fields = {f.name for f in dataclasses.fields(objectives.get_config_class(config.objective))}
    if "temperature" not in fields:
      raise ConfigError(f"temperature does not apply to objective {config.objective!r}.")
    overrides["temperature"] = config.temperature
  return objectives.get(config.objective, **overrides)


def build_optimizer(
  config: PretrainConfig,
  schedule: keras.optimizers.schedules.LearningRateSchedule | float,
  networks: list[keras.Model],
) -> keras.optimizers.Optimizer:
  """LARS or AdamW on `schedule`; norm parameters and biases are never decayed."""
  exclusions = models.norm_and_bias_variables(*networks)
  if config.optimizer == "lars":
    momentum = LARS_MOMENTUM if config.momentum is None else config.momentum
    return optim.LARS(
      schedule,
      momentum=momentum,
      weight_decay=config.weight_decay,
      exclude_from_weight_decay=exclusions,
    )
  optimizer = keras.optimizers.AdamW(schedule, weight_decay=config.weight_decay)
  optimizer.exclude_from_weight_decay(var_list=exclusions)
  return optimizer


def linear_head_loss(
  head: keras.Model,
  embedding: tf.Tensor,
  labels: tf.Tensor,
  global_batch_size: int,
) -> tuple[tf.Tensor, dict[str, tf.Tensor]]:
  """Cross-entropy of the linear head on the stop-gradient embedding.

  Args:
    head: (n, C) -> (n, K) logits.
    embedding: (n, C) encoder embedding of view 1 (its gradient is stopped).
    labels: (n,) int, -1 = unlabelled (contributes nothing).
    global_batch_size: B over all replicas.

  Returns:
    (loss_r, metrics): loss_r = this replica's sum of cross-entropies / B
    (replicas sum to the global mean); metrics 'sup_loss' and
    'sup_accuracy' (over the labelled examples of the global batch).
  """
  labels = tf.cast(labels, tf.int32)
  features = tf.stop_gradient(tf.cast(embedding, tf.float32))
  logits = tf.cast(head(features, training=True), tf.float32)
  valid = tf.cast(labels >= 0, tf.float32)
  ce = keras.losses.sparse_categorical_crossentropy(tf.maximum(labels, 0), logits, from_logits=True)
  correct = tf.cast(tf.equal(tf.argmax(logits, -1, output_type=tf.int32), labels), tf.float32)
  ctx = tf.distribute.get_replica_context()
  sums = ctx.all_reduce(
    tf.distribute.ReduceOp.SUM,
    [tf.reduce_sum(ce * valid), tf.reduce_sum(correct * valid), tf.reduce_sum(valid)],
  )
  loss_r = tf.reduce_sum(ce * valid) / float(global_batch_size)
  return loss_r, {
    "sup_loss": sums[0] / float(global_batch_size),
    "sup_accuracy": sums[1] / tf.maximum(sums[2], 1.0),
  }


class PretrainTask(trainer.Task):
  """Two augmented views per image, an objective, LARS/AdamW with warmup-cosine."""

  kind = run_dir.TaskKind.PRETRAIN
  resume_keys = ("task", "encoder", "objective", "image_size", "linear_eval_head")

  def __init__(self, config: PretrainConfig) -> None:
    super().__init__(config)
    self.config: PretrainConfig = config
    self.num_classes: int | None = None

  @property
  def total_steps(self) -> int:
    return self.config.train_steps

  def prepare(self) -> None:
    super().prepare()
    c = self.config
    if c.linear_eval_head:
      self.num_classes = self._linear_head_classes()
    self.micle_index = None
    if c.positive_pairs == "micle":
      # One pass over all shards (groups span them); every worker builds the same index.
      self.micle_index = data.build_micle_index(
        self.files,
        group=c.micle_group,
        split=c.split,
        store=c.micle_store,
        memory_limit_bytes=c.micle_memory_limit_bytes,
      )
      logging.info("MICLe: %s", self.micle_index.summary())

  def _linear_head_classes(self) -> int:
    if self.config.num_classes:
      return self.config.num_classes
    manifest = data.read_manifest(self.config.train_data) or {}
    names = manifest.get("label_names")
    mode = manifest.get("label_mode")
    if names and mode and LabelMode.parse(mode) == LabelMode.MULTI_CLASS:
      return len(names)
    raise InputDataError(
      "linear_eval_head needs num_classes or a multi-class manifest.json with label_names "
      f"next to {self.config.train_data!r}."
    )

  def run_config(self, num_replicas: int) -> run_dir.RunConfig:
    c = self.config
    return run_dir.RunConfig(
      task=self.kind,
      encoder=c.encoder,
      image_size=c.image_size,
      objective=c.objective,
      settings={
        **trainer.dataclass_settings(c),
        "num_replicas": num_replicas,
        "micle": dataclasses.asdict(self.micle_index.stats) if self.micle_index else None,
      },
    )

  def build(self, strategy: tf.distribute.Strategy, resuming: bool) -> trainer.Built:
    c = self.config
    encoder = models.build_encoder_by_name(c.encoder)
    embedding_dim = int(encoder.output["embedding"].shape[-1])
    # Initialise before `objective.build`, which copies the encoder into
    # target networks; a resume overwrites everything anyway.
    initialized_from = (
      "resume" if resuming else run_dir.initialize_encoder(encoder, c.init_checkpoint)
    )
    self.objective = build_objective(c)
    self.objective.build(
      encoder, embedding_dim, encoder_factory=lambda: models.build_encoder_by_name(c.encoder)
    )
    networks = [encoder, *self.objective.trainable_networks]
    self.linear_head = None
    items: dict[str, Any] = {"objective": tf.train.Checkpoint(**self.objective.checkpoint_items())}
    if self.num_classes:
      self.linear_head = keras.Sequential(
        [
          keras.Input((embedding_dim,)),
          keras.layers.Dense(
            self.num_classes, kernel_initializer="zeros", dtype="float32", name=LOGITS
          ),
        ],
        name="linear_head",
      )
      networks.append(self.linear_head)
      items["linear_head"] = self.linear_head
    self.variables = [v for net in networks for v in net.trainable_variables]
    warmup = c.warmup_steps if c.warmup_steps is not None else int(0.05 * c.train_steps)
    self.schedule = optim.WarmupCosine(
      c.base_learning_rate,
      c.global_batch_size,
      warmup,
      c.train_steps,
      scaling=c.learning_rate_scaling,
    )
    self.optimizer = build_optimizer(c, self.schedule, networks)
    self.optimizer.build(self.variables)
    return trainer.Built(
      encoder=encoder,
      checkpoint_items={"encoder": encoder, "optimizer": self.optimizer, **items},
      initialized_from=initialized_from,
      fingerprinted=[encoder],
    )

  def dataset(self, ctx: tf.distribute.InputContext, skip_examples: int) -> tf.data.Dataset:
    c = self.config
    return data.make_pretrain_dataset(
      self.files,
      batch_size=ctx.get_per_replica_batch_size(c.global_batch_size),
      image_size=c.image_size,
      preset=c.augment_config(),
      seed=c.seed,
      input_context=ctx,
      split=c.split,
      shuffle_buffer=c.shuffle_buffer,
      deterministic=True,
      skip_examples=skip_examples,
      positive_pairs=c.positive_pairs,
      micle_group=c.micle_group,
      micle_index=self.micle_index,
    )

  def replica_step(self, encoder: Callable[..., Any]) -> loop.ReplicaStep:
    c = self.config

    def step(batch: Mapping[str, tf.Tensor]) -> dict[str, tf.Tensor]:
      with tf.GradientTape() as tape:
        out = self.objective.compute_loss(encoder, batch["view1"], batch["view2"], training=True)
        loss, metrics = out.loss, dict(out.metrics)
        if self.linear_head is not None:
          sup_loss, sup_metrics = linear_head_loss(
            self.linear_head, out.embedding, batch["label"], c.global_batch_size
          )
          loss += sup_loss
          metrics.update(sup_metrics)
      grads = tape.gradient(loss, self.variables)
      self.optimizer.apply_gradients(zip(grads, self.variables, strict=True))
      self.objective.after_step()
      return metrics

    return step

  def learning_rate(self, step: int) -> float:
    return float(self.schedule(step))

  def results(self) -> dict[str, Any]:
    if self.micle_index is None:
      return {}
    return {"micle": dataclasses.asdict(self.micle_index.stats)}

  def on_start(
    self, writer: tf.summary.SummaryWriter, step: int, dataset_fn: Callable[..., Any]
  ) -> None:
    if self.config.image_summaries:
      sample = next(iter(dataset_fn(tf.distribute.InputContext())))
      progress.write_images(writer, step, "views/view1", sample["view1"])
      progress.write_images(writer, step, "views/view2", sample["view2"])


def pretrain(config: PretrainConfig, watcher: PreemptionWatcher | None = None) -> dict[str, Any]:
  """Runs (or resumes) self-supervised pretraining.

  Args:
    config: a PretrainConfig.
    watcher: shared stop requests (see `trainer.train`).

  Returns:
    `trainer.train`'s results dict.

  Raises:
    remedis_tf.errors.UserError: bad settings, missing data, incompatible
      checkpoints, an impossible strategy.
  """
  return trainer.train(PretrainTask(config), watcher)
