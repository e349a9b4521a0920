"""One fine-tuning run of the demo study: what determines it, running it, and when it is done.

A `RunSpec` holds the settings of a run (`FinetuneConfig` fields) and its
identity: those settings plus SHA-256 digests of the records it trains and is
evaluated on and of the checkpoint it starts from. The hash of the identity
is the run's configuration hash. `execute` runs (or resumes) the run and,
only when it reached its step count, predicts each evaluation site's test
split, saves the predictions (.npz, plain arrays) and writes `result.json`
with `steps_trained` and `config_hash`. `load_finished` accepts a result only
when its hash matches and its steps are complete, so a truncated or foreign
run is never reused. A model_dir whose `run_spec.json` belongs to another
configuration is emptied before the run starts, so a checkpoint of another
configuration is never resumed.
"""

from __future__ import annotations

import dataclasses
import glob
import hashlib
import json
import os
import shutil
import signal
import time
from collections.abc import Iterable, Mapping
from typing import Any

import tensorflow as tf

from remedis_tf.train import evaluate, evaluation_metrics, finetune, trainer
from remedis_tf.train.preemption import PreemptionWatcher
from tfrecords_tools import json_io

# Bumped when the meaning of a result changes (what is saved or how it is computed).
RUN_FORMAT = 1
RESULT_JSON = "result.json"
SPEC_JSON = "run_spec.json"
# Test-only hook (see `interrupt_hook`): "<run name>@<poll>", e.g. "remedis/siteA_n8_seed0@2".
INTERRUPT_ENV = "REMEDIS_DEMO_TEST_INTERRUPT"


def file_digest(paths: Iterable[str]) -> str:
  """SHA-256 over the names and bytes of `paths` (sorted by name)."""
  digest = hashlib.sha256()
  for path in sorted(paths):
    digest.update(os.path.basename(path).encode() + b"\0")
    with open(path, "rb") as f:
      for block in iter(lambda: f.read(1 << 20), b""):
        digest.update(block)
  return digest.hexdigest()


def records_digest(pattern: str) -> str:
  """Digest of the TFRecord shards matching `pattern` (ValueError when none)."""
  paths = glob.glob(pattern)
  if not paths:
    raise ValueError(f"No records match {pattern!r}.")
  return file_digest(paths)


def checkpoint_digest(path: str) -> str:
  """Digest of a checkpoint's files; `path` is a model_dir (its newest) or a prefix."""
  prefix = tf.train.latest_checkpoint(path) if os.path.isdir(path) else path
  if prefix is None:
    raise ValueError(f"No checkpoint in {path!r}.")
  paths = glob.glob(prefix + ".index") + glob.glob(prefix + ".data-*")
  if not paths:
    raise ValueError(f"No checkpoint files with prefix {prefix!r}.")
  return file_digest(paths)


@dataclasses.dataclass(frozen=True)
class RunSpec:
  """A fine-tuning run of the study.

  Attributes:
    name: '<method>/<site>_n<count|all>_seed<seed>' (unique in a study).
    model_dir: where the run's checkpoints, predictions and result go.
    root: the study's output directory (prediction paths are stored
      relative to it).
    init_from: model_dir or checkpoint prefix the encoder starts from.
    train_data: glob of the training records.
    eval_data: (site, glob of that site's test records) pairs.
    settings: the other `FinetuneConfig` fields (label_fraction, train_steps,
      global_batch_size, learning_rate, encoder, image_size, ...).
    eval_batch_size: prediction batch size.
    digests: SHA-256 of the start checkpoint ('init'), the training records
      ('train') and each evaluation site's test records (site name).
  """

  name: str
  model_dir: str
  root: str
  init_from: str
  train_data: str
  eval_data: tuple[tuple[str, str], ...]
  settings: Mapping[str, Any]
  eval_batch_size: int
  digests: Mapping[str, str]

  def identity(self) -> dict[str, Any]:
    """Everything that determines the run's result (no paths: the study may move)."""
    return json_io.to_json_value(
      {
        "format": RUN_FORMAT,
        "settings": dict(self.settings),
        "eval_sites": [site for site, _ in self.eval_data],
        "eval_batch_size": self.eval_batch_size,
        "digests": dict(self.digests),
      }
    )

  def config_hash(self) -> str:
    """SHA-256 of the canonical JSON of `identity()`."""
    text = json.dumps(self.identity(), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()

  @property
  def train_steps(self) -> int:
    """The step count a finished run reached."""
    return int(self.settings["train_steps"])

  def finetune_config(self) -> finetune.FinetuneConfig:
    """The run's FinetuneConfig."""
    return finetune.FinetuneConfig(
      train_data=self.train_data,
      model_dir=self.model_dir,
      init_from=self.init_from,
      **self.settings,
    )

  def predictions_path(self, site: str) -> str:
    """Absolute path of the run's predictions on `site`'s test split."""
    return os.path.join(self.model_dir, f"predictions_{site}.npz")


def load_finished(spec: RunSpec) -> dict[str, Any] | None:
  """The run's result when it is finished with this configuration, else None.

  Finished: result.json exists, its config_hash equals the spec's, its
  steps_trained reached the spec's step count and its prediction files exist.
  """
  result = json_io.read_json(os.path.join(spec.model_dir, RESULT_JSON))
  if not isinstance(result, dict):
    return None
  if result.get("config_hash") != spec.config_hash():
    return None
  if int(result.get("steps_trained") or 0) < spec.train_steps:
    return None
  predictions = result.get("predictions") or {}
  if sorted(predictions) != sorted(site for site, _ in spec.eval_data):
    return None
  if not all(os.path.exists(os.path.join(spec.root, p)) for p in predictions.values()):
    return None
  return result


def prepare_model_dir(spec: RunSpec) -> bool:
  """Empties a model_dir that holds another configuration's run; records this one's.

  Returns:
    Whether the directory was emptied.
  """
  spec_path = os.path.join(spec.model_dir, SPEC_JSON)
  wiped = False
  if os.path.isdir(spec.model_dir) and os.listdir(spec.model_dir):
    previous = json_io.read_json(spec_path)
    if not isinstance(previous, dict) or previous.get("config_hash") != spec.config_hash():
      shutil.rmtree(spec.model_dir)
      wiped = True
  if not os.path.exists(spec_path):
    json_io.write_json(spec_path, {"config_hash": spec.config_hash(), **spec.identity()})
  return wiped


class SignalAfterPolls(PreemptionWatcher):
  """Test hook: on its `after`-th poll, sends SIGTERM to `pid`, then waits for the stop.

  The training loop polls its watcher once before each step (and the step
  still runs), so the run stops after exactly `after` steps. The signal goes
  to the study's main process, which forwards it to its workers; the poll
  returns only when that forwarded request has reached `inner`, so the stop
  does not depend on timing.
  """

  def __init__(self, inner: PreemptionWatcher, after: int, pid: int) -> None:
    super().__init__(signals=())
    self._inner = inner
    self._after = after
    self._pid = pid
    self._polls = 0

  @property
  def requested(self) -> bool:
    """The inner watcher's state; on the `after`-th call, signals first."""
    self._polls += 1
    if self._polls == self._after:
      os.kill(self._pid, signal.SIGTERM)
      deadline = time.monotonic() + 300.0
      while not self._inner.requested:
        if time.monotonic() > deadline:
          raise RuntimeError(f"SIGTERM sent to process {self._pid} never came back as a stop.")
        time.sleep(0.01)
    return self._inner.requested

  def request(self, signum: int | None = None) -> None:
    self._inner.request(signum)


def interrupt_hook(spec: RunSpec, watcher: PreemptionWatcher, study_pid: int) -> PreemptionWatcher:
  """`watcher`, or a `SignalAfterPolls` around it when the test hook names this run.

  The hook (environment variable REMEDIS_DEMO_TEST_INTERRUPT='<name>@<poll>')
  applies only to a run that starts from step 0, so rerunning the same
  command with the same environment resumes instead of stopping again.
  """
  value = os.environ.get(INTERRUPT_ENV)
  if not value:
    return watcher
  name, _, polls = value.rpartition("@")
  if name != spec.name or tf.train.latest_checkpoint(spec.model_dir) is not None:
    return watcher
  return SignalAfterPolls(watcher, int(polls), study_pid)


def _metrics(predictions: Mapping[str, Any]) -> dict[str, Any]:
  m = evaluation_metrics.compute_metrics(
    predictions["labels"],
    predictions["probabilities"],
    predictions["label_mode"],
    patient_ids=predictions["patient_ids"],
    label_names=[str(n) for n in predictions["label_names"]],
    num_bootstrap=0,
  )
  return {
    "auroc": {k: v["value"] for k, v in m["auroc"]["per_label"].items()},
    "macro_auroc": m["auroc"]["macro"]["value"],
    "accuracy": m["accuracy"]["value"],
    "n_examples": m["n_examples"],
  }


def execute(
  spec: RunSpec,
  watcher: PreemptionWatcher,
  study_pid: int,
  warm: trainer.WarmStart | None = None,
) -> dict[str, Any]:
  """Runs or resumes one fine-tuning run; when complete, predicts and writes result.json.

  Args:
    spec: the run.
    watcher: stop requests (a stop checkpoints the run and returns).
    study_pid: the study's main process (for the test hook).
    warm: the worker's models and traced steps, kept across its runs
      (results equal a fresh process's; see `trainer.WarmStart`).

  Returns:
    {'status': 'done', 'result': result.json's dict} or {'status':
    'preempted', 'steps_trained': int, 'train_examples': int,
    'train_seconds': float, 'cpu_seconds': float}.
  """
  prepare_model_dir(spec)
  cpu0 = time.process_time()
  t0 = time.perf_counter()
  trained = finetune.finetune(
    spec.finetune_config(), interrupt_hook(spec, watcher, study_pid), warm
  )
  train_seconds = time.perf_counter() - t0
  steps = int(trained["final_step"])
  train_examples = (steps - int(trained["start_step"])) * int(spec.settings["global_batch_size"])
  if trained["preempted"] or steps < spec.train_steps:
    return {
      "status": "preempted",
      "steps_trained": steps,
      "train_examples": train_examples,
      "train_seconds": round(train_seconds, 2),
      "cpu_seconds": round(time.process_time() - cpu0, 2),
    }
  t1 = time.perf_counter()
  metrics, paths = {}, {}
  eval_examples = 0
  each = evaluate.predict_each(
    [
      evaluate.EvaluateConfig(
        data=data, model_dir=spec.model_dir, split="test", batch_size=spec.eval_batch_size
      )
      for _, data in spec.eval_data
    ],
    warm,
  )
  for (site, _), predictions in zip(spec.eval_data, each, strict=True):
    path = spec.predictions_path(site)
    evaluate.write_predictions(path, predictions)
    paths[site] = os.path.relpath(path, spec.root)
    metrics[site] = _metrics(predictions)
    eval_examples += len(predictions["labels"])
  history = trained.get("loss_history") or []
  result = {
    "config_hash": spec.config_hash(),
    "identity": spec.identity(),
    "steps_trained": steps,
    "start_step": int(trained["start_step"]),
    "final_loss": float(history[-1][1]) if history else None,
    "checkpoint": trained["checkpoint"],
    "metrics": metrics,
    "predictions": paths,
    "train_examples": train_examples,
    "eval_examples": eval_examples,
    "train_seconds": round(train_seconds, 2),
    "eval_seconds": round(time.perf_counter() - t1, 2),
    # CPU time of the worker process (all its threads) for this invocation's part.
    "cpu_seconds": round(time.process_time() - cpu0, 2),
  }
  json_io.write_json(os.path.join(spec.model_dir, RESULT_JSON), result)
  return {"status": "done", "result": result}
