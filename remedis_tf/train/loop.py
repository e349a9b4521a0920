"""The custom training loop shared by pretraining and fine-tuning.

One compiled call runs `steps_per_loop` steps, each `strategy.run(replica_step)`
on the next distributed batch, then increments the global step. The stop
flag of this process (SIGTERM/SIGINT) goes in as an argument and comes back
summed over replicas (> 0: some process wants to stop), so every worker sees
the same stop decision after the same step. Checkpoints are written every `checkpoint_steps`, at the end, and after
a stop request.
"""

from __future__ import annotations

import dataclasses
import os
import signal
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np
import tensorflow as tf
from absl import logging

from remedis_tf.train import distribute
from remedis_tf.train.checkpointing import Checkpointer
from remedis_tf.train.preemption import PreemptionWatcher
from remedis_tf.train.progress import Progress, write_scalars

ReplicaStep = Callable[[Any], Mapping[str, tf.Tensor]]

# Testing aid: "<kill|term|int>@<step>[:<task>]" makes this process send itself
# SIGKILL, SIGTERM or SIGINT once the global step reaches <step> (after that
# step's checkpoint, if one is due), optionally only in tasks of kind <task>
# ('pretrain', 'finetune'). Tests use it to interrupt a job at a known point
# instead of racing a timer.
FAULT_ENV = "REMEDIS_TRAIN_FAULT"
_FAULT_SIGNALS = {"kill": signal.SIGKILL, "term": signal.SIGTERM, "int": signal.SIGINT}


@dataclasses.dataclass(frozen=True)
class Fault:
  """A signal this process sends itself at a step (from FAULT_ENV)."""

  signum: int
  step: int

  @classmethod
  def from_env(cls, task: str) -> Fault | None:
    """The fault FAULT_ENV asks for in a task of kind `task`, or None.

    Raises:
      ValueError: a malformed FAULT_ENV value.
    """
    spec = os.environ.get(FAULT_ENV, "")
    if not spec:
      return None
    action, _, rest = spec.partition("@")
    step, _, only = rest.partition(":")
    if action not in _FAULT_SIGNALS or not step.isdigit():
      raise ValueError(f"{FAULT_ENV}={spec!r}: expected <kill|term|int>@<step>[:<task>]")
    if only and only != task:
      return None
    return cls(_FAULT_SIGNALS[action], int(step))

  def maybe_fire(self, previous: int, current: int) -> None:
    """Sends the signal when `self.step` lies in (previous, current]."""
    if previous < self.step <= current:
      logging.warning("%s: sending signal %d at step %d.", FAULT_ENV, self.signum, current)
      os.kill(os.getpid(), self.signum)


@dataclasses.dataclass
class LoopResult:
  """What a training loop did.

  Attributes:
    start_step: global step when the loop started (after resume).
    final_step: global step when it ended.
    preempted: stopped early because of a stop request (SIGTERM).
    last_metrics: metrics of the last step, as floats.
    loss_history: (step, loss) of every step this run executed.
    images_per_second: steady-state throughput (first interval excluded).
    checkpoint: path of the last checkpoint written (None if none).
  """

  start_step: int
  final_step: int
  preempted: bool
  last_metrics: dict[str, float]
  loss_history: list[tuple[int, float]]
  images_per_second: float
  checkpoint: str | None


class CompiledEncoder:
  """Calls an encoder through an XLA-compiled tf.function.

  Used when only the encoder may be compiled (see distribute.jit_scope): the
  forward pass and, under a GradientTape, its gradient run as XLA clusters,
  while the rest of the step (heads, losses with collectives, the optimizer)
  runs as ordinary ops. Its one method is the call a training step makes,
  `encoder(images, training=...)` -> the encoder's output dict; anything else
  belongs to the encoder itself (`.encoder`).
  """

  def __init__(self, encoder: Any) -> None:
    self.encoder = encoder
    self._compiled = tf.function(
      self._forward, jit_compile=True, reduce_retracing=True, autograph=False
    )

  def _forward(self, images: tf.Tensor, training: bool) -> Any:
    return self.encoder(images, training=training)

  def __call__(self, images: tf.Tensor, training: bool = False) -> Any:
    return self._compiled(images, training=bool(training))


def apply_jit_scope(
  strategy: tf.distribute.Strategy, encoder: Any, jit_compile: bool
) -> tuple[Any, bool]:
  """What a trainer runs under `--jit_compile` (see distribute.jit_scope).

  Returns:
    (encoder to call in the replica step, whether to XLA-compile the whole
    step): the encoder wrapped in CompiledEncoder when only it may be
    compiled, else the encoder itself. The choice is logged.
  """
  scope = distribute.jit_scope(strategy, jit_compile)
  if scope == "step":
    logging.info("jit_compile: XLA compiles the per-replica step.")
  elif scope == "encoder":
    logging.info(
      "jit_compile: XLA compiles the encoder's forward and backward pass "
      "(collectives across workers stay outside XLA)."
    )
  net = CompiledEncoder(encoder) if scope == "encoder" else encoder
  return net, scope == "step"


def make_train_function(
  strategy: tf.distribute.Strategy,
  replica_step: ReplicaStep,
  step: tf.Variable,
  steps_per_loop: int,
  jit_compile: bool = False,
) -> Callable[[Iterator, tf.Tensor], tuple[dict[str, tf.Tensor], tf.Tensor]]:
  """Builds `train(iterator, stop_flag) -> (metrics, stop)` as a tf.function.

  Args:
    strategy: the distribution strategy.
    replica_step: per-replica step on one per-replica batch; returns float32
      metrics already averaged over the global batch (the Objective
      convention), so replica 0's values are reported.
    step: int64 global-step variable (incremented once per step).
    steps_per_loop: steps per call (unrolled).
    jit_compile: XLA-compile `replica_step`.

  Returns:
    The compiled function. `stop_flag` is a float32 scalar (1.0 = this
    process wants to stop); the returned `stop` is its sum over all replicas (> 0: stop).
  """
  if jit_compile:
    replica_step = tf.function(
      replica_step, jit_compile=True, reduce_retracing=True, autograph=False
    )

  def last_step(batch: Any, flag: tf.Tensor) -> tuple[Mapping[str, tf.Tensor], tf.Tensor]:
    metrics = replica_step(batch)
    # The flag is summed with this step's collectives; tf.identity places it
    # on the replica's device (a bare function input has no device).
    stop = tf.distribute.get_replica_context().all_reduce(
      tf.distribute.ReduceOp.SUM, tf.identity(flag)
    )
    return metrics, stop

  # No AutoGraph: the step's Python control flow is on Python values only, and
  # converting the step's code took seconds of CPU per process.
  @tf.function(autograph=False)
  def train(iterator: Iterator, stop_flag: tf.Tensor):
    for _ in range(steps_per_loop - 1):
      strategy.run(replica_step, args=(next(iterator),))
      step.assign_add(1)
    per_replica, stop = strategy.run(last_step, args=(next(iterator), stop_flag))
    step.assign_add(1)
    local = lambda v: strategy.experimental_local_results(v)[0]
    return {k: local(v) for k, v in per_replica.items()}, local(stop)

  return train


def _crossed(period: int, previous: int, current: int) -> bool:
  """Whether a multiple of `period` lies in (previous, current]."""
  return period > 0 and current // period > previous // period


def run_loop(
  *,
  strategy: tf.distribute.Strategy,
  replica_step: ReplicaStep,
  iterator: Iterator,
  step: tf.Variable,
  total_steps: int,
  global_batch_size: int,
  checkpointer: Checkpointer,
  checkpoint_steps: int,
  writer: tf.summary.SummaryWriter,
  steps_per_loop: int = 1,
  jit_compile: bool = False,
  log_every_steps: int = 10,
  summary_every_steps: int = 10,
  learning_rate: Callable[[int], float] | None = None,
  watcher: PreemptionWatcher | None = None,
  fault: Fault | None = None,
  functions: dict[int, Any] | None = None,
) -> LoopResult:
  """Trains from `step` to `total_steps` (see the module docstring).

  Args:
    strategy: the distribution strategy.
    replica_step: see `make_train_function`.
    iterator: iterator over the distributed dataset.
    step: int64 global-step variable, already restored.
    total_steps: step to stop at.
    global_batch_size: images per step (for images/s).
    checkpointer: saves checkpoints (every worker calls save).
    checkpoint_steps: save every this many steps (0 = only at the end).
    writer: summary writer (no-op on non-chief workers).
    steps_per_loop: steps per compiled call; checkpoints, logs and stop
      checks happen on call boundaries.
    jit_compile: XLA-compile the replica step.
    log_every_steps: progress-line period.
    summary_every_steps: TensorBoard period.
    learning_rate: step -> learning rate, for summaries.
    watcher: stop requests (SIGTERM); None never stops early.
    fault: a testing aid (see `Fault`); None in normal runs.
    functions: traced train functions by steps per call, reused and filled
      in (a WarmStart's); None traces them for this loop only.

  Returns:
    A LoopResult.
  """
  start = int(step.numpy())
  progress = Progress(total_steps, global_batch_size, start)
  functions = {} if functions is None else functions

  def train_function(n: int) -> Callable[[Iterator, tf.Tensor], Any]:
    if n not in functions:
      functions[n] = make_train_function(strategy, replica_step, step, n, jit_compile)
    return functions[n]

  history: list[tuple[int, float]] = []
  last: dict[str, float] = {}
  saved: str | None = None
  saved_step = start
  preempted = False
  current = start
  while current < total_steps:
    n = min(steps_per_loop, total_steps - current)
    flag = tf.constant(1.0 if watcher is not None and watcher.requested else 0.0)
    metrics, stop = train_function(n)(iterator, flag)
    previous, current = current, int(step.numpy())
    last = {k: float(np.asarray(v)) for k, v in metrics.items()}
    if not np.isfinite(last.get("loss", 0.0)):
      raise FloatingPointError(f"Loss became {last['loss']} at step {current}.")
    history.append((current, last.get("loss", float("nan"))))
    scalars = dict(last)
    if learning_rate is not None:
      scalars["learning_rate"] = float(learning_rate(current))
    if (
      _crossed(log_every_steps, previous, current) or current == total_steps or current == start + n
    ):
      progress.update(current, scalars)
    if _crossed(summary_every_steps, previous, current) or current == total_steps:
      write_scalars(writer, current, scalars, prefix="train/")
      write_scalars(writer, current, {"images_per_second": progress.last_images_per_second})
    if float(stop) > 0:
      preempted = True
      break
    if _crossed(checkpoint_steps, previous, current) and current < total_steps:
      saved, saved_step = checkpointer.save(current), current
    if fault is not None:
      fault.maybe_fire(previous, current)
  # The same decision on every worker (saving is collective).
  if current > saved_step:
    saved = checkpointer.save(current)
  elif saved is None:
    saved = tf.train.latest_checkpoint(checkpointer.model_dir)
  writer.flush()
  return LoopResult(
    start_step=start,
    final_step=current,
    preempted=preempted,
    last_metrics=last,
    loss_history=history,
    images_per_second=progress.images_per_second_steady,
    checkpoint=saved,
  )
