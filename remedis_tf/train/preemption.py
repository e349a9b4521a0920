"""SIGTERM handling: set a flag, finish the current step, checkpoint, exit 0.

Cluster schedulers (Kubernetes, Slurm, preemptible VMs) send SIGTERM some
seconds before SIGKILL. The training loop polls `requested` between steps and
passes it into the step function, where it is all-reduced (SUM) across
workers, so every worker of a multi-worker job stops after the same step and
joins the final (collective) checkpoint save.
"""

from __future__ import annotations

import signal
import threading
import types
from collections.abc import Iterable

from absl import logging


class PreemptionWatcher:
  """Context manager that turns the given signals into a stop request.

  Handlers can only be installed from the main thread; elsewhere the watcher
  is inert (`requested` stays False unless `request()` is called).

  Example:
    with PreemptionWatcher() as watcher:
      while step < total and not watcher.requested:
        ...
  """

  def __init__(self, signals: Iterable[int] = (signal.SIGTERM,)) -> None:
    self._signals = tuple(signals)
    self._previous: dict[int, object] = {}
    self._event = threading.Event()
    self.signal_received: int | None = None

  @property
  def requested(self) -> bool:
    """Whether a stop was requested (by a signal or `request`)."""
    return self._event.is_set()

  def request(self, signum: int | None = None) -> None:
    """Requests a stop, as a signal would."""
    self.signal_received = signum
    self._event.set()

  def _handle(self, signum: int, frame: types.FrameType | None) -> None:
    del frame
    logging.warning("Received signal %d: will checkpoint after the current step and exit.", signum)
    self.request(signum)

  def __enter__(self) -> PreemptionWatcher:
    if threading.current_thread() is threading.main_thread():
      for s in self._signals:
        self._previous[s] = signal.signal(s, self._handle)
    return self

  def __exit__(self, *exc_info: object) -> None:
    for s, handler in self._previous.items():
      signal.signal(s, handler)
    self._previous.clear()
