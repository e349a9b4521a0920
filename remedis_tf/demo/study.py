"""REMEDIS's data-efficient generalisation study on the synthetic two-site archive.

`run_study(config)` runs the project's real tools:

  generate         synthetic labelled two-site DICOM archive (remedis_tf.demo)
  convert          DICOM -> TFRecords per site (tfrecords_tools.convert)
  init             the shared initial encoder: BiT `.npz` or random (seeded)
  pretrain         SimCLR on the train splits of BOTH sites, labels unused
  finetune_site_a  both methods, site-A label counts x seeds; evaluated on
                   site-A test (ID) and, for the all-site-A model, zero-shot
                   on site-B test (OOD)
  finetune_site_b  the all-site-A model of each method fine-tuned further on
                   few site-B labels; evaluated on site-B test (OOD)
  export           the REMEDIS encoder as a TF-Hub SavedModel (hub_export)
  report           report.md, report.json and PNG plots (study_report)

The two methods share the initial encoder, the fine-tuning budget and the
label subsets; REMEDIS fine-tunes the SimCLR encoder, the supervised baseline
the initial one. Fine-tuning runs are independent and run in parallel worker
processes (`run_pool`), each saving its test predictions for the report's
paired bootstrap.

Resuming: every stage writes a marker when done, and every fine-tuning run
writes result.json only when it reached its step count, with the hash of
everything that determines it (`study_runs`); a rerun skips finished stages
and runs and redoes a run whose hash does not match. SIGTERM or SIGINT stops
the study: the running pretraining or fine-tuning runs checkpoint, no new
work starts, and `run_study` raises `StudyInterrupted` (remedis-demo exits
with code 3); the same command then resumes the checkpointed runs.
"""

from __future__ import annotations

import concurrent.futures
import concurrent.futures.process  # BrokenProcessPool; the package does not import it itself
import os
import signal
from collections.abc import Callable
from typing import Any

import keras
import tensorflow as tf

from remedis_tf import cpu_setup, models
from remedis_tf.demo import label_subsets, run_pool, study_report, study_runs, synthetic_archive
from remedis_tf.demo.stage_markers import StageRunner
from remedis_tf.demo.study_config import FINDINGS, METHODS, SITES, STAGES, StudyConfig
from remedis_tf.train import pretrain, run_dir, trainer
from remedis_tf.train.preemption import PreemptionWatcher
from tfrecords_tools import json_io

_SALT = "remedis-demo-synthetic"  # Hashes ids of synthetic data only; not a secret.
# The largest prediction batch: the test split of the default archive fits in one
# batch, so the prediction function is traced once per run.
_MAX_EVAL_BATCH = 1024


class StudyInterrupted(Exception):  # noqa: N818 - a stop request, not an error
  """A stop request (SIGTERM/SIGINT) ended the study early; rerunning resumes it."""


class Paths:
  """Where each artefact of a study lives."""

  def __init__(self, root: str) -> None:
    self.root = os.path.abspath(root)
    self.archive = os.path.join(self.root, "archive")
    self.records_root = os.path.join(self.root, "records")
    self.init = os.path.join(self.root, "init", "encoder")  # a checkpoint prefix
    self.pretrain = os.path.join(self.root, "pretrain")
    self.runs = os.path.join(self.root, "runs")
    self.export = os.path.join(self.root, "export", "remedis_encoder")
    self.stages = os.path.join(self.root, "stages")
    self.config = os.path.join(self.root, "study_config.json")

  def records(self, site: str, split: str = "*") -> str:
    """Glob of a site's shards of one split."""
    return os.path.join(self.records_root, site, f"{split}-*.tfrecord")

  def run_name(self, method: str, site: str, n: int | str, seed: int) -> str:
    """Name of one fine-tuning run ('<method>/<site>_n<n>_seed<seed>')."""
    return f"{method}/{site}_n{n}_seed{seed}"

  def run_dir(self, method: str, site: str, n: int | str, seed: int) -> str:
    """Model dir of one fine-tuning run."""
    return os.path.join(self.runs, self.run_name(method, site, n, seed))


class Study:
  """One invocation of the study: settings, paths, stop requests, worker pool, progress."""

  def __init__(self, config: StudyConfig, watcher: PreemptionWatcher, pool: run_pool.RunPool):
    self.config = config
    self.paths = Paths(config.output_dir)
    self.watcher = watcher
    self.pool = pool
    self.runner = StageRunner(self.paths.stages)
    self.results: dict[str, dict[str, Any]] = {}

  def log(self, message: str, *args: Any) -> None:
    """A progress line with the elapsed time."""
    self.runner.log(message, *args)


def _clear() -> None:
  """Drops Keras state between stages (graphs, names) to keep memory flat."""
  keras.backend.clear_session()


def _check_resumable(config: StudyConfig, paths: Paths) -> None:
  """Refuses to mix results of different settings in one output directory."""
  previous = json_io.read_json(paths.config)
  if previous is not None and previous != config.fingerprint():
    changed = sorted(k for k in config.fingerprint() if previous.get(k) != config.fingerprint()[k])
    raise ValueError(
      f"{paths.root} holds a study with other settings ({', '.join(changed)}); "
      "use another --output_dir or delete it."
    )
  json_io.write_json(paths.config, config.fingerprint())


# ---------------------------------------------------------------- stages


def stage_generate(study: Study) -> dict[str, Any]:
  """Writes the synthetic archive; returns its summary."""
  c = study.config
  summary = synthetic_archive.generate_archive(
    study.paths.archive, scale=c.scale, seed=c.seed, num_workers=c.num_workers
  )
  return {"summary": summary, "examples": int(summary["num_images"])}


def stage_convert(study: Study) -> dict[str, Any]:
  """Converts each site's DICOM folder into its own TFRecords."""
  from tfrecords_tools import convert  # noqa: PLC0415 - pydicom plugins load late
  from tfrecords_tools.pixel_policy import PixelPolicy  # noqa: PLC0415

  c, paths = study.config, study.paths
  out: dict[str, Any] = {}
  for site in SITES:
    manifest = convert.convert(
      convert.ConvertConfig(
        input_path=os.path.join(paths.archive, "dicom", site),
        output_dir=os.path.join(paths.records_root, site),
        labels_csv=os.path.join(paths.archive, "labels.csv"),
        label_mode="multilabel",
        label_columns=FINDINGS,
        salt=_SALT,
        split_fractions=c.split_fractions,
        num_workers=c.num_workers,
        policy=PixelPolicy(max_size=c.max_size),
      )
    )
    counts = manifest["counts"]
    out[site] = {
      "records_by_split": counts["records_by_split"],
      "positives_by_split": counts["records_by_split_and_label"],
      "files_failed": counts["files_failed"],
    }
  examples = sum(int(n) for s in out.values() for n in s["records_by_split"].values())
  return {"sites": out, "examples": examples}


def stage_init(study: Study) -> dict[str, Any]:
  """Saves the initial encoder that both methods start from."""
  c, paths = study.config, study.paths
  trainer.seed_initializers(c.seed)
  encoder = models.build_encoder_by_name(c.encoder)
  described = run_dir.initialize_encoder(encoder, c.bit_checkpoint)
  if described == "random":
    described = f"random (seed {c.seed}; no --bit_checkpoint given)"
  os.makedirs(os.path.dirname(paths.init), exist_ok=True)
  prefix = tf.train.Checkpoint(encoder=encoder).write(paths.init)
  _clear()
  return {"initialization": described, "checkpoint": prefix}


def stage_pretrain(study: Study) -> dict[str, Any]:
  """SimCLR on the train splits of both sites (labels are not read); resumable."""
  c, paths = study.config, study.paths
  result = pretrain.pretrain(
    pretrain.PretrainConfig(
      train_data=[paths.records(site, "train") for site in SITES],
      model_dir=paths.pretrain,
      objective="simclr",
      positive_pairs=c.positive_pairs,
      encoder=c.encoder,
      init_checkpoint=paths.init,
      train_steps=c.pretrain_steps,
      global_batch_size=c.pretrain_batch_size,
      image_size=c.image_size,
      base_learning_rate=c.pretrain_learning_rate,
      learning_rate_scaling="none" if c.pretrain_optimizer == "adamw" else "sqrt",
      optimizer=c.pretrain_optimizer,
      temperature=c.temperature,
      augment_preset=c.augment_preset,
      augment_overrides=c.augment_overrides,
      split="train",
      shuffle_buffer=4096,
      checkpoint_steps=max(50, c.pretrain_steps // 4),
      keep_checkpoint_max=1,
      seed=c.seed,
      image_summaries=False,
      log_every_steps=max(1, c.pretrain_steps // 10),
      summary_every_steps=max(1, c.pretrain_steps // 10),
    ),
    watcher=study.watcher,
  )
  _clear()
  steps = int(result["final_step"])
  if result["preempted"] or steps < c.pretrain_steps:
    raise StudyInterrupted(
      f"pretraining stopped at step {steps} of {c.pretrain_steps} (checkpoint "
      f"{result['checkpoint']})"
    )
  history = result["loss_history"]
  return {
    "model_dir": paths.pretrain,
    "steps": steps,
    "steps_trained": steps,
    "images_per_second": result["images_per_second"],
    "initialized_from": result["initialized_from"],
    "positive_pairs": c.positive_pairs,
    "micle": result.get("micle"),
    "first_loss": float(history[0][1]) if history else None,
    "final_loss": float(history[-1][1]) if history else None,
    "loss_history": [[int(s), float(v)] for s, v in history],
    # Images of this invocation (two augmented views each).
    "examples": (steps - int(result["start_step"])) * c.pretrain_batch_size,
  }


def _finetune_settings(study: Study, fraction: float, seed: int) -> dict[str, Any]:
  """The FinetuneConfig fields of a run besides its paths (all of them enter its hash)."""
  c = study.config
  return {
    "encoder": c.encoder,
    "label_fraction": fraction,
    "train_steps": c.finetune_steps,
    "global_batch_size": c.finetune_batch_size,
    "image_size": c.image_size,
    # The converter's manifest says 'multilabel'; the fine-tuning library is
    # told the mode explicitly.
    "label_mode": "multi_label",
    "num_classes": len(FINDINGS),
    "label_names": FINDINGS,
    "learning_rate": c.finetune_learning_rate,
    "split": "train",
    "augment_preset": c.augment_preset,
    "augment_overrides": c.augment_overrides,
    "checkpoint_steps": 0,  # Only at the end (and when stopped).
    "keep_checkpoint_max": 1,
    "seed": seed,
    "log_every_steps": c.finetune_steps,
    "summary_every_steps": c.finetune_steps,
  }


def _test_sizes(study: Study) -> dict[str, int]:
  return {
    site: int(study.results["convert"]["sites"][site]["records_by_split"].get("test", 0))
    for site in SITES
  }


def _plan_sweep(
  study: Study,
  *,
  site: str,
  counts: list[int | str],
  starts: dict[str, str],
  eval_sites_for: Callable[[int | str], tuple[str, ...]],
) -> list[tuple[dict[str, Any], study_runs.RunSpec]]:
  """(record, spec) of every run of a label sweep: counts x seeds x methods."""
  c, paths = study.config, study.paths
  index = label_subsets.read_index(paths.records(site, "train"), len(FINDINGS))
  # A count that is not below the training set size is the "all" model.
  counts = [n for n in counts if n == "all" or int(n) < len(index.patients)] or ["all"]
  test_sizes = _test_sizes(study)
  digests = {s: study_runs.records_digest(paths.records(s, "test")) for s in SITES}
  digests["train"] = study_runs.records_digest(paths.records(site, "train"))
  init_digests = {m: study_runs.checkpoint_digest(starts[m]) for m in METHODS}
  planned = []
  for n in counts:
    seeds = [c.seed] if n == "all" else [c.seed + i for i in range(c.num_seeds)]
    for seed in seeds:
      target = len(index.patients) if n == "all" else int(n)
      subset = label_subsets.fraction_for_count(index, target, seed)
      for method in METHODS:
        eval_sites = eval_sites_for(n)
        spec = study_runs.RunSpec(
          name=paths.run_name(method, site, n, seed),
          model_dir=paths.run_dir(method, site, n, seed),
          root=paths.root,
          init_from=starts[method],
          train_data=paths.records(site, "train"),
          eval_data=tuple((s, paths.records(s, "test")) for s in eval_sites),
          settings=_finetune_settings(study, subset.fraction, seed),
          eval_batch_size=max(1, min(_MAX_EVAL_BATCH, max(test_sizes[s] for s in eval_sites))),
          digests={
            "init": init_digests[method],
            "train": digests["train"],
            **{s: digests[s] for s in eval_sites},
          },
        )
        record = {
          "method": method,
          "train_site": site,
          "n_labels": target,
          "all_labels": n == "all",
          "n_images": subset.num_images,
          "n_patients": subset.num_patients,
          "positives": dict(zip(FINDINGS, subset.positives, strict=True)),
          "label_fraction": subset.fraction,
          "seed": seed,
          "model_dir": spec.model_dir,
          "run": spec.name,
        }
        planned.append((record, spec))
  return planned


def _fmt(values: dict[str, float | None]) -> str:
  return ", ".join(f"{k} {v:.3f}" if v is not None else f"{k} n/a" for k, v in values.items())


def _run_sweep(study: Study, stage: str, planned: list[tuple[dict[str, Any], study_runs.RunSpec]]):
  """Runs the unfinished runs of `planned` in the worker pool; returns the stage result."""
  finding = study.config.headline_finding
  total = len(planned)
  results: list[dict[str, Any] | None] = []
  todo = []
  for i, (_, spec) in enumerate(planned):
    finished = study_runs.load_finished(spec)
    results.append(finished)
    if finished is None:
      todo.append(i)
  study.log(
    "%s: %d runs, %d finished earlier, %d to run in %d worker process(es).",
    stage,
    total,
    total - len(todo),
    len(todo),
    min(study.pool.num_workers, max(len(todo), 1)),
  )

  def on_outcome(k: int, outcome: dict[str, Any]) -> None:
    i = todo[k]
    name = planned[i][1].name
    if outcome["status"] == "done":
      metrics = outcome["result"]["metrics"]
      headline = {s: m["auroc"].get(finding) for s, m in metrics.items()}
      study.log(
        "%s run %d/%d %s -> %s AUROC %s", stage, i + 1, total, name, finding, _fmt(headline)
      )
    else:
      study.log(
        "%s run %d/%d %s stopped at step %d (checkpointed).",
        stage,
        i + 1,
        total,
        name,
        outcome["steps_trained"],
      )

  outcomes, stopped = study.pool.run([planned[i][1] for i in todo], study.watcher, on_outcome)
  unfinished = []
  train_examples = eval_examples = 0
  cpu_seconds = 0.0
  for k, outcome in enumerate(outcomes):
    i = todo[k]
    if outcome is None:
      unfinished.append(f"{planned[i][1].name} (not started)")
      continue
    if outcome["status"] == "done":
      results[i] = outcome["result"]
      cpu_seconds += outcome["result"]["cpu_seconds"]
      train_examples += outcome["result"]["train_examples"]
      eval_examples += outcome["result"]["eval_examples"]
    else:
      train_examples += outcome["train_examples"]
      cpu_seconds += outcome["cpu_seconds"]
      unfinished.append(f"{planned[i][1].name} (step {outcome['steps_trained']})")
  if stopped or unfinished:
    raise StudyInterrupted(
      f"stage {stage} stopped with {len(unfinished)} of {total} runs unfinished: "
      + ", ".join(unfinished)
    )
  runs = []
  for (record, _), result in zip(planned, results, strict=True):
    assert result is not None
    keep = ("steps_trained", "config_hash", "final_loss", "metrics", "predictions")
    runs.append({**record, **{k: result[k] for k in keep}})
  return {
    "runs": runs,
    "examples": train_examples + eval_examples,
    "train_examples": train_examples,
    "eval_examples": eval_examples,
    "worker_cpu_seconds": round(cpu_seconds, 2),
  }


def stage_finetune_site_a(study: Study) -> dict[str, Any]:
  """Site-A label sweep for both methods; the all-labels model is also tested on site B."""
  # Paths come from the output directory, not from stage markers, so a study
  # directory that was moved or copied still resumes.
  starts = {"remedis": study.paths.pretrain, "baseline": study.paths.init}
  counts: list[int | str] = sorted(set(study.config.site_a_labels))
  planned = _plan_sweep(
    study,
    site="siteA",
    counts=[*counts, "all"],
    starts=starts,
    eval_sites_for=lambda n: ("siteA", "siteB") if n == "all" else ("siteA",),
  )
  # The all-labels runs first: they are the longest (two evaluations).
  planned.sort(key=lambda item: not item[0]["all_labels"])
  return _run_sweep(study, "finetune_site_a", planned)


def stage_finetune_site_b(study: Study) -> dict[str, Any]:
  """Few-label site-B fine-tuning, starting from each method's all-site-A model."""
  c = study.config
  starts = {m: study.paths.run_dir(m, "siteA", "all", c.seed) for m in METHODS}
  planned = _plan_sweep(
    study,
    site="siteB",
    counts=sorted(set(c.site_b_labels)),
    starts=starts,
    eval_sites_for=lambda n: ("siteB",),
  )
  return {**_run_sweep(study, "finetune_site_b", planned), "started_from": starts}


def stage_export(study: Study) -> dict[str, Any]:
  """Exports the SimCLR-pretrained (REMEDIS) encoder as a TF-Hub SavedModel."""
  import hub_export  # noqa: PLC0415 - only this stage needs it

  c, paths = study.config, study.paths
  restored = run_dir.restore_model(paths.pretrain)
  encoder, prefix = restored.encoder, restored.checkpoint
  feature_dim = int(encoder.output["feature_map"].shape[-1])
  metadata = hub_export.metadata_for(
    "remedis-demo-synthetic-cxr",
    feature_dim=feature_dim,
    architecture=f"BiT ResNetV2 ({c.encoder})",
    pretrain_image_size=c.image_size,
    modality="SYNTHETIC chest X-ray phantoms (demo; not clinical)",
    objective="SimCLR",
    upstream=study.results["init"]["initialization"],
    training_data=(
      f"remedis-demo synthetic two-site archive (scale={c.scale}, seed={c.seed}), "
      "train splits of both sites, labels unused"
    ),
  )
  hub_export.export_encoder(encoder, paths.export, metadata)
  _clear()
  loaded = tf.saved_model.load(paths.export)
  images = tf.zeros([2, c.image_size, c.image_size, 3], tf.float32)
  shape = [int(d) for d in loaded(images).shape]
  return {"saved_model": paths.export, "checkpoint": prefix, "feature_map_shape": shape}


def environment(study: Study) -> dict[str, Any]:
  """CPU, oneDNN, TensorFlow, worker layout and per-stage throughput of this study."""
  return {
    "cpu": {**cpu_setup.cpu_info(), "class": cpu_setup.cpu_class()},
    "onednn": os.environ.get(cpu_setup.ONEDNN_ENV, ""),
    "onednn_source": cpu_setup.onednn_setting()["source"],
    "tensorflow": tf.__version__,
    "finetune_workers": study.pool.num_workers,
    "threads_per_finetune_run": run_pool.THREADS_PER_RUN,
    "stages": study.runner.throughput(),
  }


def stage_report(study: Study) -> dict[str, Any]:
  """report.md, report.json and plots (study_report)."""
  return study_report.write_report(
    study.config,
    study.paths.root,
    study.results,
    study.runner.seconds,
    study.runner.elapsed(),
    environment(study),
  )


# ---------------------------------------------------------------- driver

_STAGE_FUNCTIONS: dict[str, Callable[[Study], dict[str, Any]]] = {
  "generate": stage_generate,
  "convert": stage_convert,
  "init": stage_init,
  "pretrain": stage_pretrain,
  "finetune_site_a": stage_finetune_site_a,
  "finetune_site_b": stage_finetune_site_b,
  "export": stage_export,
  "report": stage_report,
}


def finetune_workers(config: StudyConfig) -> int:
  """Worker processes for fine-tuning: the setting, else one per usable CPU core (at most 8)."""
  if config.finetune_workers:
    return config.finetune_workers
  return max(1, min(8, len(os.sched_getaffinity(0))))


def run_study(config: StudyConfig) -> dict[str, Any]:
  """Runs (or resumes) the whole study and returns the report dict.

  Args:
    config: a StudyConfig (see `study_config.make_config`).

  Returns:
    The report (also written to `<output_dir>/report.json`), with 'stages':
    {'ran': [...], 'skipped': [...]} and 'runs_executed' (fine-tuning runs
    trained by this invocation). When `config.until` stops the study early,
    a partial dict {'stages': ..., 'until': name}.

  Raises:
    StudyInterrupted: SIGTERM or SIGINT arrived; running training
      checkpointed, and calling again with the same config resumes.
  """
  config.validate()
  paths = Paths(config.output_dir)
  os.makedirs(paths.root, exist_ok=True)
  _check_resumable(config, paths)
  with (
    PreemptionWatcher((signal.SIGTERM, signal.SIGINT)) as watcher,
    run_pool.RunPool(finetune_workers(config)) as pool,
  ):
    study = Study(config, watcher, pool)
    study.log("study in %s (scale %s, seed %d).", paths.root, config.scale, config.seed)
    for name in STAGES:
      try:
        study.results[name] = study.runner.run(name, lambda n=name: _STAGE_FUNCTIONS[n](study))
      except (KeyboardInterrupt, concurrent.futures.process.BrokenProcessPool) as e:
        # SIGINT from a terminal also reaches the pools of generation and
        # conversion; a stage broken by the stop request is redone on rerun.
        if not watcher.requested:
          raise
        raise StudyInterrupted(f"stage {name} stopped by signal {watcher.signal_received}") from e
      if name == "finetune_site_b":
        pool.release()  # The workers exit while the last stages run.
      if watcher.requested:
        raise StudyInterrupted(f"stop requested (signal {watcher.signal_received}) during {name}")
      if config.until is not None and name == config.until:
        study.log("stopping after stage %s (--until).", name)
        return {"stages": {"ran": study.runner.ran, "skipped": study.runner.skipped}, "until": name}
  report = dict(json_io.read_json(os.path.join(paths.root, "report.json")) or {})
  report["stages"] = {"ran": study.runner.ran, "skipped": study.runner.skipped}
  report["invocation_seconds"] = round(study.runner.elapsed(), 2)
  study.log("study finished; report in %s.", os.path.join(paths.root, "report.md"))
  return report


def headline_table(report: dict[str, Any]) -> str:
  """Plain-text summary of the headline AUROCs (for stdout)."""
  return study_report.text_summary(report)
