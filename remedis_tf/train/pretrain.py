"""Self-supervised pretraining (REMEDIS step 2) under tf.distribute.

`pretrain(PretrainConfig(...))` builds a BiT encoder (initialised from a BiT
`.npz`, from one of our checkpoints, or randomly), an objective from
`remedis_tf.objectives`, LARS with the warmup-cosine schedule, and trains with
the custom loop of `remedis_tf.train.loop` on two augmented views per image.
It resumes from the newest checkpoint in `model_dir`, checkpoints on SIGTERM
and returns a results dict. See `checkpointing` for the files it writes.

Optional linear head (as in SimCLR): when `linear_eval_head` is set and the
records carry class labels, a zero-initialised Dense on the *stop-gradient*
encoder embedding of the first view is trained jointly with softmax
cross-entropy (unlabelled examples, label -1, contribute zero); it monitors
representation quality and never changes the encoder.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import random
from collections.abc import Mapping
from typing import Any

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from remedis_tf import data as data_lib
from remedis_tf import models, objectives, optim
from remedis_tf.train import checkpointing, distribute, loop, precision, progress
from remedis_tf.train.preemption import PreemptionWatcher

OBJECTIVES = ("simclr", "moco_v2", "barlow_twins", "relic", "byol")
OPTIMIZERS = ("lars", "adamw")
# Keys of config.json that must match to resume a model_dir.
_RESUME_KEYS = ("task", "encoder", "objective", "image_size", "linear_eval_head")


@dataclasses.dataclass(frozen=True)
class PretrainConfig:
  """Everything a pretraining run needs.

  Attributes:
    train_data: glob pattern of TFRecord shards.
    model_dir: checkpoints, config.json, summaries (resumed when non-empty).
    objective: one of OBJECTIVES.
    encoder: 'bit-r50x1', 'bit-r101x1', 'bit-r152x2', any 'bit-r{d}x{w}' or 'bit-tiny'.
    init_checkpoint: BiT `.npz`, one of our model_dirs / checkpoint prefixes,
      or None (random init). Ignored when model_dir already has a checkpoint.
    train_steps: total steps (the run ends at this global step).
    global_batch_size: images per step over all replicas.
    image_size: side of the square views.
    strategy: 'default', 'mirrored', 'multi_worker' or 'tpu'.
    tpu_address: TPU name/address for strategy 'tpu'.
    checkpoint_steps: checkpoint period in steps (0 = only at the end).
    keep_checkpoint_max: checkpoints retained (0 or None keeps all).
    keep_checkpoint_every_n_hours: also keep one checkpoint per this period.
    base_learning_rate: LARS learning rate before batch scaling.
    learning_rate_scaling: 'linear' (lr * B / 256), 'sqrt' or 'none'.
    warmup_steps: linear warmup steps; None = 5% of train_steps.
    momentum: LARS momentum.
    weight_decay: LARS weight decay (norm and bias variables excluded).
    temperature: objective temperature override (None = objective default).
    objective_overrides: more objective config fields, as (name, value) pairs.
    augment_preset: 'natural', 'cxr' or 'pathology'.
    augment_overrides: (field, value) pairs changing the preset's
      AugmentConfig (e.g. (("crop_area_range", (0.35, 1.0)),)).
    optimizer: 'lars' (SimCLR's choice for large batches) or 'adamw'
      (AdamW with the same schedule and weight decay; steadier for the small
      batches of a single CPU machine). Norm parameters and biases are
      excluded from weight decay either way.
    split: keep only records of this split (None = all records).
    shuffle_buffer: shuffle buffer of the input pipeline.
    linear_eval_head: train a linear classifier on stop-gradient features.
    num_classes: classes of that head; None = len(manifest label_names).
    seed: seed of initialisation and input pipeline.
    mixed_precision: None or 'bfloat16' (Keras 'mixed_bfloat16' policy).
    jit_compile: XLA-compile the per-replica step (only the encoder when
      replicas span several workers; see distribute.jit_scope).
    steps_per_loop: steps per compiled call.
    log_every_steps: progress line period.
    summary_every_steps: TensorBoard scalar period.
    image_summaries: write a few example views to TensorBoard at the start.
  """

  train_data: str
  model_dir: str
  objective: str = "simclr"
  encoder: str = "bit-r50x1"
  init_checkpoint: str | None = None
  train_steps: int = 1000
  global_batch_size: int = 256
  image_size: int = 224
  strategy: str = "default"
  tpu_address: str | None = None
  checkpoint_steps: int = 1000
  keep_checkpoint_max: int | None = 5
  keep_checkpoint_every_n_hours: float | None = None
  base_learning_rate: float = 0.3
  learning_rate_scaling: str = "linear"
  warmup_steps: int | None = None
  momentum: float = 0.9
  weight_decay: float = 1e-6
  temperature: float | None = None
  objective_overrides: tuple[tuple[str, Any], ...] = ()
  augment_preset: str = "natural"
  augment_overrides: tuple[tuple[str, Any], ...] = ()
  optimizer: str = "lars"
  split: str | None = None
  shuffle_buffer: int = 1024
  linear_eval_head: bool = False
  num_classes: int | None = None
  seed: int = 0
  mixed_precision: str | None = None
  jit_compile: bool = False
  steps_per_loop: int = 1
  log_every_steps: int = 10
  summary_every_steps: int = 10
  image_summaries: bool = True

  def validate(self) -> None:
    """Raises ValueError with a clear message for inconsistent settings."""
    if self.objective not in OBJECTIVES:
      raise ValueError(f"objective must be one of {OBJECTIVES}, got {self.objective!r}.")
    models.parse_encoder_name(self.encoder)  # Raises for a bad name.
    if self.train_steps <= 0:
      raise ValueError(f"train_steps must be positive, got {self.train_steps}.")
    if self.optimizer not in OPTIMIZERS:
      raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}.")
    data_lib.get_preset(self.augment_preset, **dict(self.augment_overrides))  # Raises if bad.
    if self.global_batch_size <= 0:
      raise ValueError(f"global_batch_size must be positive, got {self.global_batch_size}.")
    if self.image_size <= 0 or self.image_size % 32:
      raise ValueError(f"image_size must be a positive multiple of 32, got {self.image_size}.")
    if self.strategy not in distribute.STRATEGIES:
      raise ValueError(f"strategy must be one of {distribute.STRATEGIES}, got {self.strategy!r}.")
    if self.steps_per_loop <= 0 or self.checkpoint_steps < 0:
      raise ValueError("steps_per_loop must be positive and checkpoint_steps non-negative.")
    if self.warmup_steps is not None and not 0 <= self.warmup_steps < self.train_steps:
      raise ValueError(f"warmup_steps must be in [0, train_steps), got {self.warmup_steps}.")
    precision.check_policy_name(self.mixed_precision)
    if self.init_checkpoint and not (
      tf.io.gfile.exists(self.init_checkpoint)
      or tf.io.gfile.exists(self.init_checkpoint + ".index")
    ):
      raise FileNotFoundError(f"init_checkpoint {self.init_checkpoint!r} does not exist.")


def build_objective(config: PretrainConfig) -> objectives.Objective:
  """The objective named by the config, with its overrides.

  `config.temperature` applies to the objectives that have one (SimCLR,
  MoCo-v2, ReLIC); naming it for another objective is an error.
  """
  overrides = dict(config.objective_overrides)
  if config.temperature is not None:
    fields = {f.name for f in dataclasses.fields(objectives.get_config_class(config.objective))}
    if "temperature" not in fields:
      raise ValueError(f"--temperature does not apply to objective {config.objective!r}.")
    overrides["temperature"] = config.temperature
  return objectives.get(config.objective, **overrides)


def build_optimizer(
  config: PretrainConfig,
  schedule: keras.optimizers.schedules.LearningRateSchedule,
  networks: list[keras.Model],
) -> keras.optimizers.Optimizer:
  """LARS or AdamW on `schedule`, excluding norm parameters and biases from decay."""
  exclusions = lars_exclusions(*networks)
  if config.optimizer == "lars":
    return optim.LARS(
      schedule,
      momentum=config.momentum,
      weight_decay=config.weight_decay,
      exclude_from_weight_decay=exclusions,
    )
  optimizer = keras.optimizers.AdamW(schedule, weight_decay=config.weight_decay)
  optimizer.exclude_from_weight_decay(var_list=exclusions)
  return optimizer


def initialize_encoder(encoder: keras.Model, path: str | None) -> str:
  """Loads `path` (BiT .npz or our checkpoint) into `encoder`; returns a description."""
  if not path:
    return "random"
  if path.endswith(".npz"):
    report = models.load_bit_checkpoint(encoder, path, skip_head=True)
    return f"bit_npz:{path} ({len(report.loaded)} arrays)"
  prefix = checkpointing.resolve_checkpoint_path(path)
  checkpointing.restore(tf.train.Checkpoint(encoder=encoder), prefix, partial=True)
  return f"checkpoint:{prefix}"


def seed_initializers(seed: int) -> None:
  """Seeds Keras 3 weight initialisers (drawn from Python's and NumPy's RNGs).

  `tf.random.set_seed` is deliberately not called: a global TF seed changes
  how tf.data treats tensor-valued shuffle seeds (used per epoch by the input
  pipeline) and is not needed by Keras 3 initialisers.
  """
  random.seed(seed)
  np.random.seed(seed)


def lars_exclusions(*networks: keras.Model) -> list[keras.Variable]:
  """Variables of normalisation layers and biases (by layer type), for LARS."""
  excluded = []
  for net in networks:
    roles = models.variable_roles(net)
    excluded += [v for v in net.weights if roles.get(v.path) in ("norm", "bias")]
  return excluded


def weights_fingerprint(variables: list[Any]) -> dict[str, Any]:
  """SHA-256 and L2 norm of variables (to compare replicas / workers)."""
  digest = hashlib.sha256()
  total = 0.0
  for v in variables:
    array = np.ascontiguousarray(keras.ops.convert_to_numpy(v), dtype=np.float32)
    digest.update(array.tobytes())
    total += float(np.sum(array.astype(np.float64) ** 2))
  return {"sha256": digest.hexdigest(), "l2": float(np.sqrt(total))}


class _RecordingEncoder:
  """Calls the encoder and keeps the first call's outputs (for the linear head)."""

  def __init__(self, encoder: keras.Model) -> None:
    self.encoder = encoder
    self.first: Mapping[str, tf.Tensor] | None = None

  def __call__(self, images: tf.Tensor, training: bool = False, **kwargs: Any) -> Any:
    outputs = self.encoder(images, training=training, **kwargs)
    if self.first is None:
      self.first = outputs
    return outputs

  def __getattr__(self, name: str) -> Any:
    return getattr(self.encoder, name)


def _num_classes(config: PretrainConfig) -> int:
  if config.num_classes:
    return config.num_classes
  manifest = data_lib.read_manifest(config.train_data) or {}
  names = manifest.get("label_names")
  if manifest.get("label_mode", "multi_class") == "multi_class" and names:
    return len(names)
  raise ValueError(
    "linear_eval_head needs num_classes or a multi-class manifest.json with label_names "
    f"next to {config.train_data!r}."
  )


def _run_config(config: PretrainConfig, replicas: int) -> dict[str, Any]:
  return {
    **dataclasses.asdict(config),
    "task": "pretrain",
    "num_replicas": replicas,
    "objective_overrides": dict(config.objective_overrides),
  }


def pretrain(config: PretrainConfig) -> dict[str, Any]:
  """Runs (or resumes) self-supervised pretraining.

  Args:
    config: a PretrainConfig.

  Returns:
    {'model_dir', 'start_step', 'final_step', 'preempted', 'resumed_from',
     'initialized_from', 'checkpoint', 'metrics' (last step), 'loss_history'
     [(step, loss)], 'images_per_second', 'num_replicas', 'is_chief',
     'encoder_weights' {'sha256', 'l2'}}.

  Raises:
    ValueError / FileNotFoundError: bad settings or missing data.
    checkpointing.CheckpointError: incompatible checkpoints.
    distribute.StrategyError: the strategy cannot be created.
  """
  config.validate()
  files = data_lib.list_files(config.train_data)  # FileNotFoundError when empty.
  strategy = distribute.create_strategy(config.strategy, config.tpu_address)
  chief = distribute.is_chief(strategy)
  write_dir = distribute.write_dir(config.model_dir, strategy)
  replicas = strategy.num_replicas_in_sync
  per_replica = distribute.per_replica_batch_size(config.global_batch_size, strategy)
  run_config = _run_config(config, replicas)
  checkpointing.check_compatible(config.model_dir, run_config, _RESUME_KEYS)
  num_classes = _num_classes(config) if config.linear_eval_head else None

  with precision.policy(config.mixed_precision):
    seed_initializers(config.seed)
    with strategy.scope():
      encoder = models.build_encoder_by_name(config.encoder)
      embedding_dim = int(encoder.output["embedding"].shape[-1])
      # Initialise before `objective.build`, which copies the encoder into
      # target networks; a resume overwrites everything below anyway.
      resuming = tf.train.latest_checkpoint(config.model_dir) is not None
      initialized_from = (
        "resume" if resuming else initialize_encoder(encoder, config.init_checkpoint)
      )
      objective = build_objective(config)
      objective.build(
        encoder, embedding_dim, encoder_factory=lambda: models.build_encoder_by_name(config.encoder)
      )
      linear_head = None
      networks = [encoder, *objective.trainable_networks]
      if num_classes:
        linear_head = keras.Sequential(
          [
            keras.Input((embedding_dim,)),
            keras.layers.Dense(
              num_classes, kernel_initializer="zeros", dtype="float32", name="linear"
            ),
          ],
          name="linear_head",
        )
        networks.append(linear_head)
      variables = [v for net in networks for v in net.trainable_variables]
      warmup = (
        config.warmup_steps if config.warmup_steps is not None else int(0.05 * config.train_steps)
      )
      schedule = optim.WarmupCosine(
        config.base_learning_rate,
        config.global_batch_size,
        warmup,
        config.train_steps,
        scaling=config.learning_rate_scaling,
      )
      optimizer = build_optimizer(config, schedule, networks)
      optimizer.build(variables)
      step = tf.Variable(
        0,
        dtype=tf.int64,
        trainable=False,
        name="global_step",
        aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA,
      )
      # The objective's state lives in its own namespace so its keys (BYOL's
      # `step`, MoCo's `queue`, ...) never collide with the trainer's.
      items: dict[str, Any] = {"objective": tf.train.Checkpoint(**objective.checkpoint_items())}
      if linear_head is not None:
        items["linear_head"] = linear_head
      checkpoint = tf.train.Checkpoint(encoder=encoder, optimizer=optimizer, step=step, **items)

    checkpointer = checkpointing.Checkpointer(
      checkpoint,
      config.model_dir,
      write_dir,
      max_to_keep=config.keep_checkpoint_max or None,
      keep_checkpoint_every_n_hours=config.keep_checkpoint_every_n_hours,
    )
    resumed_from = checkpointer.restore_latest()
    if chief:
      checkpointing.write_config_json(config.model_dir, run_config)
    start_step = int(step.numpy())
    logging.info(
      "Pretraining %s/%s on %d replica(s), per-replica batch %d, from step %d (%s).",
      config.encoder,
      config.objective,
      replicas,
      per_replica,
      start_step,
      initialized_from,
    )

    def dataset_fn(ctx: tf.distribute.InputContext) -> tf.data.Dataset:
      # Deterministic order; a resumed run skips what the first start_step
      # steps consumed, so it sees the same examples and views as a run
      # that was never interrupted (same seed, data and cluster shape).
      return data_lib.make_pretrain_dataset(
        files,
        batch_size=ctx.get_per_replica_batch_size(config.global_batch_size),
        image_size=config.image_size,
        preset=data_lib.get_preset(config.augment_preset, **dict(config.augment_overrides)),
        seed=config.seed,
        input_context=ctx,
        split=config.split,
        shuffle_buffer=config.shuffle_buffer,
        deterministic=True,
        skip_examples=distribute.consumed_examples(ctx, config.global_batch_size, start_step),
      )

    dataset = strategy.distribute_datasets_from_function(dataset_fn)
    writer = progress.summary_writer(os.path.join(write_dir, "train") if chief else None)
    if chief and config.image_summaries:
      sample = next(iter(dataset_fn(tf.distribute.InputContext())))
      progress.write_images(writer, start_step, "views/view1", sample["view1"])
      progress.write_images(writer, start_step, "views/view2", sample["view2"])

    net, jit_step = loop.apply_jit_scope(strategy, encoder, config.jit_compile)

    def replica_step(batch: Mapping[str, tf.Tensor]) -> dict[str, tf.Tensor]:
      recorder = _RecordingEncoder(net)
      with tf.GradientTape() as tape:
        loss, metrics = objective.compute_loss(
          recorder if linear_head is not None else net,
          batch["view1"],
          batch["view2"],
          training=True,
        )
        metrics = dict(metrics)
        if linear_head is not None:
          sup_loss, sup_metrics = _linear_head_loss(
            linear_head, recorder, encoder, batch, config.global_batch_size
          )
          loss = loss + sup_loss
          metrics.update(sup_metrics)
      grads = tape.gradient(loss, variables)
      optimizer.apply_gradients(zip(grads, variables, strict=True))
      objective.after_step()
      return metrics

    with PreemptionWatcher() as watcher:
      result = loop.run_loop(
        strategy=strategy,
        replica_step=replica_step,
        iterator=iter(dataset),
        step=step,
        total_steps=config.train_steps,
        global_batch_size=config.global_batch_size,
        checkpointer=checkpointer,
        checkpoint_steps=config.checkpoint_steps,
        writer=writer,
        steps_per_loop=config.steps_per_loop,
        jit_compile=jit_step,
        log_every_steps=config.log_every_steps,
        summary_every_steps=config.summary_every_steps,
        learning_rate=lambda s: float(schedule(s)),
        watcher=watcher,
      )
    fingerprint = weights_fingerprint(encoder.weights)
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
    "encoder_weights": fingerprint,
  }


def _linear_head_loss(
  head: keras.Model,
  recorder: _RecordingEncoder,
  encoder: keras.Model,
  batch: Mapping[str, tf.Tensor],
  global_batch_size: int,
) -> tuple[tf.Tensor, dict[str, tf.Tensor]]:
  """Cross-entropy of the linear head on stop-gradient embeddings of view1.

  Returns the per-replica loss (local sum / global batch, so replicas sum to
  the global mean) and global-batch metrics 'sup_loss', 'sup_accuracy'.
  """
  labels = tf.cast(batch["label"], tf.int32)
  n = tf.shape(labels)[0]
  if recorder.first is not None:
    features = recorder.first["embedding"][:n]  # view1 rows come first.
  else:
    features = encoder(batch["view1"], training=False)["embedding"]
  features = tf.stop_gradient(tf.cast(features, tf.float32))
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
