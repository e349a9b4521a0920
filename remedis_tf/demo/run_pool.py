"""Independent fine-tuning runs in parallel worker processes, one TensorFlow thread each.

The demo's fine-tuning runs are small (bit-tiny, 64 px, batch 32): one
process with two threads leaves cores idle in per-run setup (model building,
tracing) and in small kernels, while two single-threaded processes keep both
cores busy (`benchmarks/demo_profile.py` measures both). Each run uses one
intra-op and one inter-op thread whatever the number of workers, so its
result does not depend on how many workers ran.

Stops: the study's main process forwards a stop request (SIGTERM or SIGINT to
the study) to every worker as SIGTERM; a worker's `PreemptionWatcher` makes
the current run checkpoint and return, and the worker takes no further run.
"""

from __future__ import annotations

# A worker process imports this module first: oneDNN's default before TensorFlow.
from remedis_tf import cpu_setup  # noqa: F401

# isort: split
import collections
import multiprocessing
import os
import pickle
import queue
import signal
import traceback
from collections.abc import Callable, Sequence
from typing import Any

import tensorflow as tf

from remedis_tf.demo import study_runs
from remedis_tf.train import trainer
from remedis_tf.train.preemption import PreemptionWatcher

THREADS_PER_RUN = 1
_POLL_SECONDS = 0.2


class WorkerError(RuntimeError):
  """A worker process died without reporting (killed, out of memory, crashed)."""


class RemoteTraceback(Exception):
  """The traceback of an exception raised in a worker (chained as the cause)."""

  def __str__(self) -> str:
    return str(self.args[0])


def _worker(tasks: Any, results: Any, study_pid: int) -> None:
  """Worker process: runs the specs it is given until it receives None."""
  tf.config.threading.set_intra_op_parallelism_threads(THREADS_PER_RUN)
  tf.config.threading.set_inter_op_parallelism_threads(THREADS_PER_RUN)
  # Models and traced steps kept across this worker's runs (same results as fresh ones).
  warm = trainer.WarmStart()
  with PreemptionWatcher((signal.SIGTERM, signal.SIGINT)) as watcher:
    results.put(("ready", None, os.getpid()))
    while True:
      task = tasks.get()
      if task is None:
        return
      index, spec = task
      if watcher.requested:
        results.put(("skipped", index, None))
        continue
      try:
        outcome = study_runs.execute(spec, watcher, study_pid, warm)
      except BaseException as e:  # Sent to the main process, which re-raises it.
        text = traceback.format_exc()
        try:
          payload = pickle.dumps(e)
        except Exception:  # noqa: BLE001 - an unpicklable exception still reports its text
          payload = None
        results.put(("error", index, (payload, text)))
        return
      results.put(("done", index, outcome))


class RunPool:
  """`num_workers` spawned processes that execute `study_runs.RunSpec`s.

  Example:
    with RunPool(2) as pool:
      outcomes, stopped = pool.run(specs, watcher, on_outcome)
  """

  def __init__(self, num_workers: int) -> None:
    if num_workers < 1:
      raise ValueError(f"num_workers must be positive, got {num_workers}.")
    self.num_workers = num_workers
    self._context = multiprocessing.get_context("spawn")
    self._tasks: Any = None
    self._results: Any = None
    self._processes: list[Any] = []
    self._released = False
    self.processes_started = 0  # Over the pool's life; at most num_workers run at once.

  def __enter__(self) -> RunPool:
    return self

  def __exit__(self, *exc_info: object) -> None:
    self.close()

  def _start(self, wanted: int) -> None:
    """Starts workers until min(wanted, num_workers) are running.

    A stage with fewer runs than workers (a resumed study, the last runs of
    a curve) does not pay for starting processes it cannot use; a later stage
    with more runs adds workers to the same task queue.
    """
    if self._released:
      raise RuntimeError("The pool was released; create a new one.")
    if not self._processes:
      self._tasks = self._context.Queue()
      self._results = self._context.Queue()
    for i in range(len(self._processes), min(wanted, self.num_workers)):
      process = self._context.Process(
        target=_worker,
        args=(self._tasks, self._results, os.getpid()),
        name=f"remedis-demo-finetune-{i}",
        daemon=True,
      )
      process.start()
      self._processes.append(process)
      self.processes_started += 1

  def _forward_stop(self) -> None:
    for process in self._processes:
      if process.is_alive() and process.pid is not None:
        os.kill(process.pid, signal.SIGTERM)

  def _check_alive(self) -> None:
    for process in self._processes:
      if process.exitcode is not None:
        raise WorkerError(
          f"Fine-tuning worker {process.name} (pid {process.pid}) exited with code "
          f"{process.exitcode} without reporting its run (killed or out of memory?)."
        )

  def run(
    self,
    specs: Sequence[study_runs.RunSpec],
    watcher: PreemptionWatcher,
    on_outcome: Callable[[int, dict[str, Any]], None] | None = None,
  ) -> tuple[list[dict[str, Any] | None], bool]:
    """Executes `specs`, at most `num_workers` at a time.

    Args:
      specs: the runs.
      watcher: the study's stop requests; when set, no further run starts,
        running ones are checkpointed (their workers get SIGTERM).
      on_outcome: called with (index, outcome) as each run reports.

    Returns:
      (outcomes, stopped): `study_runs.execute`'s dict per spec (None for a
      run not started because of a stop) and whether a stop was requested.

    Raises:
      The exception a run raised in a worker (its traceback chained as the
      cause), or WorkerError when a worker died.
    """
    outcomes: list[dict[str, Any] | None] = [None] * len(specs)
    if not specs:
      return outcomes, watcher.requested
    self._start(len(specs))
    pending = collections.deque(range(len(specs)))
    in_flight: set[int] = set()
    forwarded = False
    try:
      while pending or in_flight:
        if watcher.requested and not forwarded:
          self._forward_stop()
          forwarded = True
        while pending and len(in_flight) < len(self._processes) and not watcher.requested:
          index = pending.popleft()
          self._tasks.put((index, specs[index]))
          in_flight.add(index)
        if not in_flight:
          break
        try:
          kind, index, payload = self._results.get(timeout=_POLL_SECONDS)
        except queue.Empty:
          if not watcher.requested:
            self._check_alive()
          elif all(p.exitcode is not None for p in self._processes):
            break  # Every worker stopped (e.g. SIGINT before its watcher was installed).
          continue
        if kind == "ready":
          continue
        in_flight.discard(index)
        if kind == "error":
          pickled, text = payload
          error = pickle.loads(pickled) if pickled is not None else RuntimeError(text)
          raise error from RemoteTraceback(f"In fine-tuning run {specs[index].name}:\n{text}")
        if kind == "done":
          outcomes[index] = payload
          if on_outcome is not None:
            on_outcome(index, payload)
    except BaseException:
      self._forward_stop()
      self.close()
      raise
    return outcomes, watcher.requested

  def release(self) -> None:
    """Tells idle workers to exit without waiting for them (they shut down meanwhile)."""
    if self._processes and not self._released:
      for _ in self._processes:
        self._tasks.put(None)
      self._released = True

  def close(self) -> None:
    """Stops the workers (they finish their current run or checkpoint first)."""
    if not self._processes:
      return
    self.release()
    for process in self._processes:
      process.join(timeout=120)
      if process.is_alive():
        process.kill()
        process.join()
    self._processes = []
    self._released = False
