"""REMEDIS's data-efficient generalisation study on the synthetic two-site archive.

`run_study(config)` runs, in this process, the project's real tools:

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
  report           report.md, report.json and PNG plots (remedis_tf.demo.report)

The two methods share the initial encoder, the fine-tuning budget and the
label subsets; REMEDIS fine-tunes the SimCLR encoder, the supervised baseline
the initial one. Every stage writes a marker when done and every fine-tuning
run caches its result, so a rerun skips finished work.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import keras
import tensorflow as tf

from remedis_tf import models
from remedis_tf.demo import label_subsets, study_report, synthetic_archive
from remedis_tf.demo.stage_markers import StageRunner, read_json, write_json_atomic
from remedis_tf.demo.study_config import FINDINGS, METHODS, SITES, STAGES, StudyConfig
from remedis_tf.train import evaluate, finetune, pretrain, run_dir, trainer

_SALT = "remedis-demo-synthetic"  # Hashes ids of synthetic data only; not a secret.


class Paths:
  """Where each artefact of a study lives."""

  def __init__(self, root: str) -> None:
    self.root = os.path.abspath(root)
    self.archive = os.path.join(self.root, "archive")
    self.records_root = os.path.join(self.root, "records")
    self.init = os.path.join(self.root, "init", "encoder")
    self.pretrain = os.path.join(self.root, "pretrain")
    self.runs = os.path.join(self.root, "runs")
    self.export = os.path.join(self.root, "export", "remedis_encoder")
    self.stages = os.path.join(self.root, "stages")
    self.config = os.path.join(self.root, "study_config.json")

  def records(self, site: str, split: str = "*") -> str:
    """Glob of a site's shards of one split."""
    return os.path.join(self.records_root, site, f"{split}-*.tfrecord")

  def run_dir(self, method: str, site: str, n: int | str, seed: int) -> str:
    """Model dir of one fine-tuning run."""
    return os.path.join(self.runs, method, f"{site}_n{n}_seed{seed}")


def _clear() -> None:
  """Drops Keras state between runs (graphs, names) to keep memory flat."""
  keras.backend.clear_session()


def _check_resumable(config: StudyConfig, paths: Paths) -> None:
  """Refuses to mix results of different settings in one output directory."""
  previous = read_json(paths.config)
  if previous is not None and previous != config.fingerprint():
    changed = sorted(k for k in config.fingerprint() if previous.get(k) != config.fingerprint()[k])
    raise ValueError(
      f"{paths.root} holds a study with other settings ({', '.join(changed)}); "
      "use another --output_dir or delete it."
    )
  write_json_atomic(paths.config, config.fingerprint())


# ---------------------------------------------------------------- stages


def stage_generate(config: StudyConfig, paths: Paths) -> dict[str, Any]:
  """Writes the synthetic archive; returns its summary."""
  summary = synthetic_archive.generate_archive(
    paths.archive, scale=config.scale, seed=config.seed, num_workers=config.num_workers
  )
  return {"summary": summary}


def stage_convert(config: StudyConfig, paths: Paths) -> dict[str, Any]:
  """Converts each site's DICOM folder into its own TFRecords."""
  from tfrecords_tools import convert  # noqa: PLC0415 - pydicom plugins load late
  from tfrecords_tools.pixel_policy import PixelPolicy  # noqa: PLC0415

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
        split_fractions=config.split_fractions,
        num_workers=config.num_workers,
        policy=PixelPolicy(max_size=config.max_size),
      )
    )
    counts = manifest["counts"]
    out[site] = {
      "records_by_split": counts["records_by_split"],
      "positives_by_split": counts["records_by_split_and_label"],
      "files_failed": counts["files_failed"],
    }
  return {"sites": out}


def stage_init(config: StudyConfig, paths: Paths) -> dict[str, Any]:
  """Saves the initial encoder that both methods start from."""
  trainer.seed_initializers(config.seed)
  encoder = models.build_encoder_by_name(config.encoder)
  described = run_dir.initialize_encoder(encoder, config.bit_checkpoint)
  if described == "random":
    described = f"random (seed {config.seed}; no --bit_checkpoint given)"
  os.makedirs(os.path.dirname(paths.init), exist_ok=True)
  prefix = tf.train.Checkpoint(encoder=encoder).write(paths.init)
  _clear()
  return {"initialization": described, "checkpoint": prefix}


def stage_pretrain(config: StudyConfig, paths: Paths, init_prefix: str) -> dict[str, Any]:
  """SimCLR on the train splits of both sites (labels are not read)."""
  result = pretrain.pretrain(
    pretrain.PretrainConfig(
      train_data=[paths.records(site, "train") for site in SITES],
      model_dir=paths.pretrain,
      objective="simclr",
      encoder=config.encoder,
      init_checkpoint=init_prefix,
      train_steps=config.pretrain_steps,
      global_batch_size=config.pretrain_batch_size,
      image_size=config.image_size,
      base_learning_rate=config.pretrain_learning_rate,
      learning_rate_scaling="none" if config.pretrain_optimizer == "adamw" else "sqrt",
      optimizer=config.pretrain_optimizer,
      temperature=config.temperature,
      augment_preset=config.augment_preset,
      augment_overrides=config.augment_overrides,
      split="train",
      shuffle_buffer=4096,
      checkpoint_steps=max(50, config.pretrain_steps // 4),
      keep_checkpoint_max=1,
      seed=config.seed,
      image_summaries=False,
      log_every_steps=max(1, config.pretrain_steps // 10),
      summary_every_steps=max(1, config.pretrain_steps // 10),
    )
  )
  _clear()
  history = result["loss_history"]
  return {
    "model_dir": paths.pretrain,
    "steps": result["final_step"],
    "images_per_second": result["images_per_second"],
    "initialized_from": result["initialized_from"],
    "first_loss": float(history[0][1]) if history else None,
    "final_loss": float(history[-1][1]) if history else None,
    "loss_history": [[int(s), float(v)] for s, v in history],
  }


def _finetune_and_evaluate(
  config: StudyConfig,
  paths: Paths,
  *,
  model_dir: str,
  init_from: str,
  site: str,
  fraction: float,
  seed: int,
  eval_sites: tuple[str, ...],
) -> dict[str, Any]:
  """One fine-tuning run and its evaluation on the test split of `eval_sites`."""
  result = finetune.finetune(
    finetune.FinetuneConfig(
      train_data=paths.records(site, "train"),
      model_dir=model_dir,
      init_from=init_from,
      encoder=config.encoder,
      label_fraction=fraction,
      train_steps=config.finetune_steps,
      global_batch_size=config.finetune_batch_size,
      image_size=config.image_size,
      # The converter's manifest says 'multilabel'; the input pipeline and the
      # fine-tuning library expect 'multi_label', so it is given explicitly.
      label_mode="multi_label",
      num_classes=len(FINDINGS),
      label_names=FINDINGS,
      learning_rate=config.finetune_learning_rate,
      split="train",
      augment_preset=config.augment_preset,
      augment_overrides=config.augment_overrides,
      checkpoint_steps=0,
      keep_checkpoint_max=1,
      seed=seed,
      log_every_steps=config.finetune_steps,
    )
  )
  _clear()
  metrics = {}
  for eval_site in eval_sites:
    m = evaluate.evaluate(
      evaluate.EvaluateConfig(
        data=paths.records(eval_site, "test"),
        model_dir=model_dir,
        split="test",
        num_bootstrap=0,
        batch_size=128,
      )
    )
    _clear()
    metrics[eval_site] = {
      "auroc": {k: v["value"] for k, v in m["auroc"]["per_label"].items()},
      "macro_auroc": m["auroc"]["macro"]["value"],
      "accuracy": m["accuracy"]["value"],
      "n_examples": m["n_examples"],
    }
  return {"final_loss": _last_loss(result), "metrics": metrics}


def _last_loss(result: dict[str, Any]) -> float | None:
  history = result.get("loss_history") or []
  return float(history[-1][1]) if history else None


def _cached_run(
  runner: StageRunner, path: str, describe: str, fn: Callable[[], dict[str, Any]]
) -> dict[str, Any]:
  """Runs one fine-tuning run unless its result file exists."""
  cached = read_json(path)
  if cached is not None:
    runner.log("%s: cached.", describe)
    return cached
  result = fn()
  write_json_atomic(path, result)
  return result


def _run_label_sweep(
  config: StudyConfig,
  paths: Paths,
  runner: StageRunner,
  *,
  site: str,
  counts: list[int | str],
  starts: dict[str, str],
  eval_sites_for: Callable[[int | str], tuple[str, ...]],
) -> list[dict[str, Any]]:
  """Fine-tunes both methods at each label count and seed on `site`'s train split."""
  index = label_subsets.read_index(paths.records(site, "train"), len(FINDINGS))
  # A count that is not below the training set size is the "all" model.
  counts = [n for n in counts if n == "all" or int(n) < len(index.patients)] or ["all"]
  jobs = []
  for n in counts:
    seeds = [config.seed] if n == "all" else [config.seed + i for i in range(config.num_seeds)]
    for seed in seeds:
      for method in METHODS:
        jobs.append((n, seed, method))
  records = []
  for i, (n, seed, method) in enumerate(jobs, start=1):
    target = len(index.patients) if n == "all" else int(n)
    subset = label_subsets.fraction_for_count(index, target, seed)
    model_dir = paths.run_dir(method, site, n, seed)
    describe = (
      f"{site} fine-tune {i}/{len(jobs)}: {method}, n={n} ({subset.num_images} images), seed={seed}"
    )

    def job(model_dir=model_dir, method=method, subset=subset, seed=seed, n=n, describe=describe):
      runner.log("%s ...", describe)
      return _finetune_and_evaluate(
        config,
        paths,
        model_dir=model_dir,
        init_from=starts[method],
        site=site,
        fraction=subset.fraction,
        seed=seed,
        eval_sites=eval_sites_for(n),
      )

    result = _cached_run(runner, os.path.join(model_dir, "result.json"), describe, job)
    record = {
      "method": method,
      "train_site": site,
      "n_labels": target if n == "all" else int(n),
      "all_labels": n == "all",
      "n_images": subset.num_images,
      "n_patients": subset.num_patients,
      "positives": dict(zip(FINDINGS, subset.positives, strict=True)),
      "label_fraction": subset.fraction,
      "seed": seed,
      "model_dir": model_dir,
      **result,
    }
    headline = {s: v["auroc"][config.headline_finding] for s, v in result["metrics"].items()}
    runner.log("%s -> %s AUROC %s", describe, config.headline_finding, _fmt(headline))
    records.append(record)
  return records


def _fmt(values: dict[str, float]) -> str:
  return ", ".join(f"{k} {v:.3f}" if v == v else f"{k} n/a" for k, v in values.items())


def stage_finetune_site_a(
  config: StudyConfig, paths: Paths, runner: StageRunner, init_prefix: str
) -> dict[str, Any]:
  """Site-A label sweep for both methods; the all-labels model is also tested on site B."""
  starts = {"remedis": paths.pretrain, "baseline": init_prefix}
  counts: list[int | str] = sorted(set(config.site_a_labels))
  runs = _run_label_sweep(
    config,
    paths,
    runner,
    site="siteA",
    counts=[*counts, "all"],
    starts=starts,
    eval_sites_for=lambda n: ("siteA", "siteB") if n == "all" else ("siteA",),
  )
  return {"runs": runs}


def stage_finetune_site_b(config: StudyConfig, paths: Paths, runner: StageRunner) -> dict[str, Any]:
  """Few-label site-B fine-tuning, starting from each method's all-site-A model."""
  starts = {m: paths.run_dir(m, "siteA", "all", config.seed) for m in METHODS}
  runs = _run_label_sweep(
    config,
    paths,
    runner,
    site="siteB",
    counts=sorted(set(config.site_b_labels)),
    starts=starts,
    eval_sites_for=lambda n: ("siteB",),
  )
  return {"runs": runs, "started_from": starts}


def stage_export(config: StudyConfig, paths: Paths, init_description: str) -> dict[str, Any]:
  """Exports the SimCLR-pretrained (REMEDIS) encoder as a TF-Hub SavedModel."""
  import hub_export  # noqa: PLC0415 - only this stage needs it

  restored = run_dir.restore_model(paths.pretrain)
  encoder, prefix = restored.encoder, restored.checkpoint
  feature_dim = int(encoder.output["feature_map"].shape[-1])
  metadata = hub_export.metadata_for(
    "remedis-demo-synthetic-cxr",
    feature_dim=feature_dim,
    architecture=f"BiT ResNetV2 ({config.encoder})",
    pretrain_image_size=config.image_size,
    modality="SYNTHETIC chest X-ray phantoms (demo; not clinical)",
    objective="SimCLR",
    upstream=init_description,
    training_data=(
      f"remedis-demo synthetic two-site archive (scale={config.scale}, seed={config.seed}), "
      "train splits of both sites, labels unused"
    ),
  )
  hub_export.export_encoder(encoder, paths.export, metadata)
  _clear()
  loaded = tf.saved_model.load(paths.export)
  images = tf.zeros([2, config.image_size, config.image_size, 3], tf.float32)
  shape = [int(d) for d in loaded(images).shape]
  return {"saved_model": paths.export, "checkpoint": prefix, "feature_map_shape": shape}


# ---------------------------------------------------------------- driver


def run_study(config: StudyConfig) -> dict[str, Any]:
  """Runs (or resumes) the whole study and returns the report dict.

  Args:
    config: a StudyConfig (see `study_config.make_config`).

  Returns:
    The report (also written to `<output_dir>/report.json`), with 'stages':
    {'ran': [...], 'skipped': [...]} for this invocation. When `config.until`
    stops the study early, a partial dict {'stages': ..., 'until': name}.
  """
  config.validate()
  paths = Paths(config.output_dir)
  os.makedirs(paths.root, exist_ok=True)
  _check_resumable(config, paths)
  runner = StageRunner(paths.stages)
  runner.log("study in %s (scale %s, seed %d).", paths.root, config.scale, config.seed)
  results: dict[str, dict[str, Any]] = {}

  def done(name: str) -> bool:
    return config.until is not None and STAGES.index(name) >= STAGES.index(config.until)

  plan: list[tuple[str, Callable[[], dict[str, Any]]]] = [
    ("generate", lambda: stage_generate(config, paths)),
    ("convert", lambda: stage_convert(config, paths)),
    ("init", lambda: stage_init(config, paths)),
    ("pretrain", lambda: stage_pretrain(config, paths, results["init"]["checkpoint"])),
    (
      "finetune_site_a",
      lambda: stage_finetune_site_a(config, paths, runner, results["init"]["checkpoint"]),
    ),
    ("finetune_site_b", lambda: stage_finetune_site_b(config, paths, runner)),
    ("export", lambda: stage_export(config, paths, results["init"]["initialization"])),
    (
      "report",
      lambda: study_report.write_report(
        config, paths.root, results, runner.seconds, runner.elapsed()
      ),
    ),
  ]
  for name, fn in plan:
    results[name] = runner.run(name, fn)
    if done(name):
      runner.log("stopping after stage %s (--until).", name)
      return {"stages": {"ran": runner.ran, "skipped": runner.skipped}, "until": name}
  report = dict(read_json(os.path.join(paths.root, "report.json")) or {})
  report["stages"] = {"ran": runner.ran, "skipped": runner.skipped}
  report["invocation_seconds"] = round(runner.elapsed(), 2)
  runner.log("study finished; report in %s.", os.path.join(paths.root, "report.md"))
  return report


def headline_table(report: dict[str, Any]) -> str:
  """Plain-text summary of the headline AUROCs (for stdout)."""
  return study_report.text_summary(report)
