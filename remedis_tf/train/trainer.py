"""One trainer for every training task (pretraining, fine-tuning).

The trainer owns the plumbing; a `Task` supplies only what differs:

  trainer (`train(task)`)                task (`PretrainTask`, `FinetuneTask`)
  ------------------------------------   -------------------------------------
  strategy, chief and write directory    prepare(): validate, read data facts
  precision policy, seeding              run_config(): what config.json says
  config.json compatibility and writing  build(): models, optimizer, state
  step variable, Checkpointer, resume    dataset(ctx, skip): the input stream
  distributed input with exact resume    replica_step(encoder): one step
  XLA scope, the loop, progress,         learning_rate(step), on_start(...)
  summaries, preemption                  results(): task-specific results
  results dict

Modelled on TF Model Garden's Task/Trainer split. The loop itself is
`remedis_tf.train.loop.run_loop`; checkpoint mechanics are in
`checkpointing`; the model_dir contract is in `run_dir`.
"""

from __future__ import annotations

import abc
import dataclasses
import hashlib
import os
import random
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from remedis_tf import config_flags, data, models
from remedis_tf.errors import ConfigError
from remedis_tf.train import checkpointing, distribute, loop, precision, progress, run_dir
from remedis_tf.train.preemption import PreemptionWatcher


@dataclasses.dataclass(frozen=True, kw_only=True)
class TrainConfig:
  """Settings every training task shares.

  Attributes:
    train_data: glob pattern(s) of TFRecord shards.
    model_dir: checkpoints, config.json and summaries; a run resumes from
      the newest checkpoint there.
    encoder: 'bit-r50x1', 'bit-r101x1', 'bit-r152x2', any 'bit-r{d}x{w}' or
      'bit-tiny'.
    global_batch_size: images per step over all replicas.
    image_size: side of the square training images (a multiple of 32).
    strategy: distribution strategy; multi_worker reads TF_CONFIG.
    tpu_address: TPU name or address for strategy 'tpu'.
    checkpoint_steps: checkpoint period in steps (0 = only at the end).
    keep_checkpoint_max: checkpoints retained (0 or None keeps all).
    keep_checkpoint_every_n_hours: also keep one checkpoint per this period.
    split: use only records of this split (None = all records).
    augment_preset: augmentation preset.
    augment_overrides: (field, value) pairs changing the preset's
      AugmentConfig; on the command line --augment_override=field=value
      (a Python literal), repeatable, e.g. crop_area_range=(0.35,1.0).
    seed: seed of initialisation, data order, views and label subsets.
    mixed_precision: None/'float32' or 'bfloat16' (bfloat16 compute, float32
      weights and checkpoints).
    jit_compile: XLA-compile the per-replica step (only the encoder when
      replicas span several workers; see distribute.jit_scope).
    steps_per_loop: training steps per compiled call.
    log_every_steps: progress line period.
    summary_every_steps: TensorBoard scalar period.
  """

  train_data: str | Sequence[str]
  model_dir: str
  encoder: str = "bit-r50x1"
  global_batch_size: int = 256
  image_size: int = 224
  strategy: str = dataclasses.field(
    default="default", metadata=config_flags.flag(choices=distribute.STRATEGIES)
  )
  tpu_address: str | None = dataclasses.field(default=None, metadata=config_flags.flag(name="tpu"))
  checkpoint_steps: int = 1000
  keep_checkpoint_max: int | None = 5
  keep_checkpoint_every_n_hours: float | None = None
  split: str | None = None
  augment_preset: str = dataclasses.field(
    default="natural", metadata=config_flags.flag(choices=data.PRESETS)
  )
  augment_overrides: tuple[tuple[str, Any], ...] = dataclasses.field(
    default=(), metadata=config_flags.flag(name="augment_override")
  )
  seed: int = 0
  mixed_precision: str | None = dataclasses.field(
    default=None, metadata=config_flags.flag(choices=("bfloat16", "float32"))
  )
  jit_compile: bool = False
  steps_per_loop: int = 1
  log_every_steps: int = 10
  summary_every_steps: int = 10

  def names_encoder(self) -> bool:
    """Whether `encoder` names the architecture to build (see FinetuneConfig)."""
    return True

  def validate(self) -> None:
    """Raises ConfigError for an inconsistent setting (names the field)."""
    if self.names_encoder():
      try:
        models.parse_encoder_name(self.encoder)
      except ValueError as e:
        raise ConfigError(f"encoder: {e}") from e
    if self.global_batch_size <= 0:
      raise ConfigError(f"global_batch_size must be positive, got {self.global_batch_size}.")
    if self.image_size <= 0 or self.image_size % 32:
      raise ConfigError(f"image_size must be a positive multiple of 32, got {self.image_size}.")
    if self.strategy not in distribute.STRATEGIES:
      raise ConfigError(f"strategy must be one of {distribute.STRATEGIES}, got {self.strategy!r}.")
    if self.steps_per_loop <= 0:
      raise ConfigError(f"steps_per_loop must be positive, got {self.steps_per_loop}.")
    if self.checkpoint_steps < 0:
      raise ConfigError(f"checkpoint_steps must be >= 0, got {self.checkpoint_steps}.")
    if self.log_every_steps <= 0 or self.summary_every_steps <= 0:
      raise ConfigError("log_every_steps and summary_every_steps must be positive.")
    try:
      precision.check_policy_name(self.mixed_precision)
      self.augment_config()
    except ValueError as e:
      raise ConfigError(str(e)) from e

  def augment_config(self) -> data.AugmentConfig:
    """The preset with its overrides (ValueError when a field or value is bad)."""
    return data.get_preset(self.augment_preset, **dict(self.augment_overrides))


@dataclasses.dataclass
class Built:
  """What `Task.build` created (inside the strategy scope).

  Attributes:
    encoder: the encoder the step trains (its weights are fingerprinted).
    checkpoint_items: trackables saved next to 'step' (must include
      'encoder' and 'optimizer').
    initialized_from: where the encoder's weights came from ('resume' when
      the trainer restores a checkpoint afterwards).
    fingerprinted: networks whose weights make the results' fingerprint.
  """

  encoder: keras.Model
  checkpoint_items: dict[str, Any]
  initialized_from: str
  fingerprinted: list[keras.Model]


class Task(abc.ABC):
  """What one kind of training supplies to the trainer (see the module docstring)."""

  kind: run_dir.TaskKind
  # config.json keys that must match for a model_dir to be resumed.
  resume_keys: tuple[str, ...] = ()

  def __init__(self, config: TrainConfig) -> None:
    self.config = config
    self.files: list[str] = []

  def prepare(self) -> None:
    """Validates the config and reads what the run needs from the data (host side)."""
    self.config.validate()
    self.files = data.list_files(self.config.train_data)

  @property
  @abc.abstractmethod
  def total_steps(self) -> int:
    """The global step the run ends at."""

  @abc.abstractmethod
  def run_config(self, num_replicas: int) -> run_dir.RunConfig:
    """What config.json records for this run."""

  @abc.abstractmethod
  def build(self, strategy: tf.distribute.Strategy, resuming: bool) -> Built:
    """Creates models, optimizer and state; called inside `strategy.scope()`.

    Args:
      strategy: the strategy (for the number of replicas).
      resuming: a checkpoint will be restored after `build`, so initial
        weights need not be loaded.
    """

  @abc.abstractmethod
  def dataset(self, ctx: tf.distribute.InputContext, skip_examples: int) -> tf.data.Dataset:
    """This input pipeline's batches, `skip_examples` into the deterministic stream."""

  @abc.abstractmethod
  def replica_step(self, encoder: Callable[..., Any]) -> loop.ReplicaStep:
    """The per-replica step, calling `encoder` (maybe XLA-wrapped) for the encoder."""

  @abc.abstractmethod
  def learning_rate(self, step: int) -> float:
    """The learning rate at `step` (for summaries)."""

  def on_start(
    self, writer: tf.summary.SummaryWriter, step: int, dataset_fn: Callable[..., Any]
  ) -> None:
    """Hook run once before the loop on the chief (e.g. image summaries)."""
    del writer, step, dataset_fn

  def results(self) -> dict[str, Any]:
    """Task-specific entries of the results dict."""
    return {}

  # Attributes `build` sets that the traced replica step reads (see `adopt`).
  warm_attributes: tuple[str, ...] = ()

  def warm_key(self) -> tuple[Any, ...] | None:
    """What makes two runs' built objects and traced steps interchangeable (see WarmStart).

    None (the default): this task is never reused. Called after `prepare`.
    """
    return None

  def adopt(self, other: Task) -> None:
    """Takes over the objects `other.build` created (a WarmStart reuse)."""
    for name in self.warm_attributes:
      setattr(self, name, getattr(other, name))


def seed_initializers(seed: int) -> None:
  """Seeds Keras 3 weight initialisers (drawn from Python's and NumPy's RNGs).

  `tf.random.set_seed` is deliberately not called: a global TF seed changes
  how tf.data treats tensor-valued shuffle seeds and is not needed by Keras 3
  initialisers.
  """
  random.seed(seed)
  np.random.seed(seed)


def weights_fingerprint(variables: Sequence[Any]) -> dict[str, Any]:
  """SHA-256 and L2 norm of variables (to compare replicas, workers and runs)."""
  digest = hashlib.sha256()
  total = 0.0
  for v in variables:
    array = np.ascontiguousarray(keras.ops.convert_to_numpy(v), dtype=np.float32)
    digest.update(array.tobytes())
    total += float(np.sum(array.astype(np.float64) ** 2))
  return {"sha256": digest.hexdigest(), "l2": float(np.sqrt(total))}


def global_step_variable() -> tf.Variable:
  """The int64 step counter (read on replica 0; the loop increments it)."""
  return tf.Variable(
    0,
    dtype=tf.int64,
    trainable=False,
    name="global_step",
    aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA,
  )


def _state_variables(step: tf.Variable, items: Mapping[str, Any]) -> list[Any]:
  """Every variable a checkpoint of `items` holds: models' weights, optimizers' variables."""
  out: list[Any] = [step]
  for item in items.values():
    if isinstance(item, keras.optimizers.Optimizer):
      out.extend(item.variables)
    elif isinstance(item, keras.Model):
      out.extend(item.weights)
    else:
      raise TypeError(f"Cannot snapshot checkpoint item {item!r} for a warm start.")
  return out


@dataclasses.dataclass
class WarmSlot:
  """One set of built objects and traced steps, and the values a run starts from.

  Attributes:
    task: the task whose `build` created the objects (its step is traced).
    built, step, checkpoint: as in `train`.
    encoder_call, jit_step: `loop.apply_jit_scope`'s results.
    functions: traced train functions by steps per call.
    initial: every state variable's value right after `build` (before any
      restore or step): a run that reuses the slot starts from these.
    holds: the checkpoint the variables equal now (set when a run ends).
    extras: other per-slot caches (e.g. evaluate's prediction functions).
  """

  task: Task
  built: Built
  step: tf.Variable
  checkpoint: tf.train.Checkpoint
  encoder_call: Any
  jit_step: bool
  functions: dict[int, Any] = dataclasses.field(default_factory=dict)
  initial: list[np.ndarray] = dataclasses.field(default_factory=list)
  holds: str | None = None
  extras: dict[Any, Any] = dataclasses.field(default_factory=dict)

  def variables(self) -> list[Any]:
    """The state variables, in the order of `initial`."""
    return _state_variables(self.step, self.built.checkpoint_items)

  def reset(self) -> None:
    """Puts every state variable back to its value right after `build`."""
    for variable, value in zip(self.variables(), self.initial, strict=True):
      variable.assign(value)
    # The checkpoint's own counter, so checkpoints match a fresh process's.
    self.checkpoint.save_counter.assign(0)
    self.holds = None


class WarmStart:
  """Keeps models, optimizer and traced train steps across runs in one process.

  A process that runs many similar trainings (the demo's fine-tuning workers)
  passes one WarmStart to every `train` call. A run whose task has the same
  `warm_key` as an earlier one reuses that run's objects and traced step:
  every variable is set back to its value right after the earlier `build`
  (same start point, same settings, so the same values a fresh build gives),
  the optimizer's slots and step to zero, and the new run's data stream is fed
  to the traced step. Tracing, graph optimisation and model building are paid
  once per key instead of once per run; the results equal a fresh process's.
  Only the default (single-device) strategy is reused.
  """

  def __init__(self) -> None:
    self.slots: dict[tuple[Any, ...], WarmSlot] = {}

  def holding(self, checkpoint: str) -> WarmSlot | None:
    """The slot whose variables equal `checkpoint` (a prefix), if any."""
    for slot in self.slots.values():
      if slot.holds is not None and os.path.abspath(slot.holds) == os.path.abspath(checkpoint):
        return slot
    return None


def train(
  task: Task, watcher: PreemptionWatcher | None = None, warm: WarmStart | None = None
) -> dict[str, Any]:
  """Runs (or resumes) `task` to its last step, or until a stop request.

  Args:
    task: the task.
    watcher: stop requests shared with the caller (e.g. the demo, so one
      signal stops the whole study); None watches SIGTERM and SIGINT during
      the loop.
    warm: objects and traced steps kept across runs of this process (see
      WarmStart); None builds and traces everything for this run only.

  Returns:
    {'model_dir', 'start_step', 'final_step', 'total_steps', 'preempted',
     'resumed_from', 'initialized_from', 'checkpoint', 'metrics' (last step),
     'loss_history' [(step, loss)], 'images_per_second', 'num_replicas',
     'is_chief', 'encoder_weights' {'sha256', 'l2'}, 'warm_start' (whether
     this run reused a WarmStart slot)} plus `task.results()`.

  Raises:
    remedis_tf.errors.UserError: bad settings, missing data, incompatible
      checkpoints, an impossible strategy.
  """
  config = task.config
  task.prepare()
  strategy = distribute.create_strategy(config.strategy, config.tpu_address)
  chief = distribute.is_chief(strategy)
  write_dir = distribute.write_dir(config.model_dir, strategy)
  replicas = strategy.num_replicas_in_sync
  per_replica = distribute.per_replica_batch_size(config.global_batch_size, strategy)
  run = task.run_config(replicas)
  run_dir.check_compatible(config.model_dir, run, task.resume_keys)

  key = None
  if warm is not None and config.strategy == "default":
    key = task.warm_key()
  slot = warm.slots.get(key) if warm is not None and key is not None else None

  with precision.policy(config.mixed_precision):
    seed_initializers(config.seed)
    resuming = tf.train.latest_checkpoint(config.model_dir) is not None
    if slot is None:
      with strategy.scope():
        built = task.build(strategy, resuming)
        step = global_step_variable()
        checkpoint = tf.train.Checkpoint(step=step, **built.checkpoint_items)
      encoder_call, jit_step = loop.apply_jit_scope(strategy, built.encoder, config.jit_compile)
      # A resumed build skips loading the start point, so it is not a start to reuse.
      if key is not None and not resuming:
        slot = WarmSlot(task, built, step, checkpoint, encoder_call, jit_step)
        slot.initial = [np.array(v.numpy()) for v in slot.variables()]
        warm.slots[key] = slot  # type: ignore[union-attr]
    else:
      task.adopt(slot.task)
      slot.reset()
      built, step, checkpoint = slot.built, slot.step, slot.checkpoint
      encoder_call, jit_step = slot.encoder_call, slot.jit_step
      logging.info("Warm start: reusing the built models and traced step of an earlier run.")
    warm_start = slot is not None and slot.task is not task
    checkpointer = checkpointing.Checkpointer(
      checkpoint,
      config.model_dir,
      write_dir,
      max_to_keep=config.keep_checkpoint_max or None,
      keep_checkpoint_every_n_hours=config.keep_checkpoint_every_n_hours,
    )
    resumed_from = checkpointer.restore_latest()
    initialized_from = "resume" if resumed_from else built.initialized_from
    if chief:
      run_dir.write_run_config(config.model_dir, run)
    start_step = int(step.numpy())
    logging.info(
      "%s %s on %d replica(s), per-replica batch %d, from step %d of %d (%s).",
      task.kind.value,
      run.encoder,
      replicas,
      per_replica,
      start_step,
      task.total_steps,
      initialized_from,
    )

    def dataset_fn(ctx: tf.distribute.InputContext) -> tf.data.Dataset:
      # A resumed run skips what the first start_step steps consumed, so it
      # sees the same examples and views as an uninterrupted run (same seed,
      # data and cluster shape).
      skip = distribute.consumed_examples(ctx, config.global_batch_size, start_step)
      return task.dataset(ctx, skip)

    dataset = strategy.distribute_datasets_from_function(dataset_fn)
    writer = progress.summary_writer(os.path.join(write_dir, "train") if chief else None)
    if chief:
      task.on_start(writer, start_step, dataset_fn)
    own_watcher = watcher is None
    watcher = watcher or PreemptionWatcher()
    if own_watcher:
      watcher.__enter__()
    try:
      result = loop.run_loop(
        strategy=strategy,
        replica_step=task.replica_step(encoder_call),
        iterator=iter(dataset),
        step=step,
        total_steps=task.total_steps,
        global_batch_size=config.global_batch_size,
        checkpointer=checkpointer,
        checkpoint_steps=config.checkpoint_steps,
        writer=writer,
        steps_per_loop=config.steps_per_loop,
        jit_compile=jit_step,
        log_every_steps=config.log_every_steps,
        summary_every_steps=config.summary_every_steps,
        learning_rate=task.learning_rate,
        watcher=watcher,
        fault=loop.Fault.from_env(task.kind.value),
        functions=slot.functions if slot is not None else None,
      )
    finally:
      if own_watcher:
        watcher.__exit__(None, None, None)
    fingerprint = weights_fingerprint([w for net in built.fingerprinted for w in net.weights])
    checkpointer.cleanup()
    if slot is not None:
      slot.holds = result.checkpoint if chief else None

  return {
    "model_dir": config.model_dir,
    "start_step": result.start_step,
    "final_step": result.final_step,
    "total_steps": task.total_steps,
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
    "warm_start": warm_start,
    **task.results(),
  }


def dataclass_settings(config: Any) -> Mapping[str, Any]:
  """A config dataclass as JSON values (for config.json's settings)."""
  return {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}
