"""End-to-end tests of remedis-demo at its tiny scale, run as real processes.

One uninterrupted tiny study is the reference (module fixture). A copy of it
with one fine-tuning run removed and the later stages undone is then stopped
inside that run by SIGTERM to the remedis-demo process (sent deterministically
by the test-only hook REMEDIS_DEMO_TEST_INTERRUPT, after the run's second
step), resumed with the same command, and must give the reference's report.
The copy shares the reference's archive, records, pretrained encoder and other
runs: fine-tuning runs use one thread and are bitwise reproducible, while
two-thread pretraining is not always (see the README), and this test is about
the fine-tuning driver.
"""

import json
import math
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from remedis_tf.data import input_pipeline
from remedis_tf.demo import label_subsets, study, study_config, study_report, study_runs
from remedis_tf.train.cli_util import EXIT_INTERRUPTED

# Fields of report.json that depend only on the predictions (the report
# helper's list); timings, environment and paths differ between folders.
DETERMINISTIC_FIELDS = (
  "statistics",
  "curves",
  "summaries",
  "data_efficiency",
  "verdict",
  "plot_x_ticks",
)
INTERRUPTED_RUN = "remedis/siteA_n8_seed0"
STOP_AFTER_STEPS = 2


def _demo(output_dir, env=None, flags=()):
  """Runs remedis-demo --scale tiny as a process; returns (exit code, output)."""
  command = [sys.executable, "-m", "remedis_tf.demo_main", f"--output_dir={output_dir}"]
  process = subprocess.run(
    [*command, "--scale=tiny", *flags],
    env={**os.environ, **(env or {})},
    capture_output=True,
    text=True,
    timeout=900,
    check=False,
  )
  return process.returncode, process.stdout + process.stderr


def _finite_unit(value):
  return isinstance(value, float) and math.isfinite(value) and 0.0 <= value <= 1.0


def _read(path):
  with open(path) as f:
    return json.load(f)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  out = str(tmp_path_factory.mktemp("reference") / "demo")
  code, log = _demo(out)
  assert code == 0, log[-5000:]
  return out


@pytest.mark.slow
@pytest.mark.integration
def test_tiny_study_produces_every_artefact(reference):
  out = reference
  config = study_config.make_config(out, "tiny")
  saved = _read(os.path.join(out, "report.json"))
  assert saved["synthetic"] is True and "SYNTHETIC" in saved["disclaimer"]
  assert saved["headline_finding"] == "cardiomegaly"
  assert saved["initialization"].startswith("random")
  for key in ("id", "ood"):
    for method in study_config.METHODS:
      curve = saved["curves"][key][method]
      assert curve, (key, method)
      assert all(_finite_unit(v) for values in curve.values() for v in values)
      summary = saved["summaries"][key][method]
      assert summary["n_labels"] == sorted(int(n) for n in curve)
      for lo, hi in zip(summary["low"], summary["high"], strict=True):
        assert (lo is None and hi is None) or 0.0 <= lo <= hi <= 1.0
    factor = saved["data_efficiency"][key]
    assert isinstance(factor["computed"], bool)
    if factor["computed"]:
      for k in ("median", "ci_low", "ci_high"):
        assert factor[k] == "not reached" or factor[k] > 0
  for method in study_config.METHODS:
    zero_shot = saved["zero_shot_ood"][method]
    assert _finite_unit(zero_shot["auroc"]) and zero_shot["seeds"] == [config.seed]

  # Every run trained its full step count, recorded its configuration hash,
  # and saved predictions that load as plain arrays with the same rows per site.
  runs = saved["runs"]
  keys = {
    m: sorted((r["train_site"], r["n_labels"], r["seed"]) for r in runs if r["method"] == m)
    for m in study_config.METHODS
  }
  assert keys["remedis"] == keys["baseline"] and keys["remedis"]
  assert {r["train_site"] for r in runs} == {"siteA", "siteB"}
  rows = {}
  for run in runs:
    assert run["steps_trained"] == config.finetune_steps
    for site, path in run["predictions"].items():
      with np.load(os.path.join(out, path), allow_pickle=False) as npz:
        assert npz["probabilities"].dtype == np.float32
        assert npz["patient_ids"].dtype.kind == "U" and npz["source_ids"].dtype.kind == "U"
        assert npz["labels"].shape == npz["probabilities"].shape == (len(npz["source_ids"]), 2)
        rows.setdefault(site, npz["source_ids"].tolist())
        assert npz["source_ids"].tolist() == rows[site]
  for run in runs:
    result = _read(os.path.join(out, "runs", run["run"], "result.json"))
    assert len(result["config_hash"]) == 64 and result["steps_trained"] == config.finetune_steps
  assert rows.keys() == {"siteA", "siteB"}
  assert saved["pretraining"]["steps"] == config.pretrain_steps
  assert math.isfinite(saved["pretraining"]["final_loss"])

  # Environment and per-stage work.
  env = saved["environment"]
  assert env["cpu"]["class"] in ("AVX-512", "AVX2 only", "no AVX2")
  assert env["onednn"] in ("0", "1") and env["tensorflow"] == tf.__version__
  assert env["threads_per_finetune_run"] == 1
  stages = env["stages"]
  assert set(stages) == set(study_config.STAGES) - {"report"}
  assert stages["generate"]["examples"] == saved["dataset"]["archive"]["num_images"]
  assert stages["pretrain"]["examples"] == config.pretrain_steps * config.pretrain_batch_size
  trained = sum(config.finetune_steps * config.finetune_batch_size for _ in runs)
  tested = sum(
    len(np.load(os.path.join(out, p))["labels"]) for r in runs for p in r["predictions"].values()
  )
  assert (
    stages["finetune_site_a"]["examples"] + stages["finetune_site_b"]["examples"]
    == trained + tested
  )

  # Markdown and plots.
  with open(os.path.join(out, "report.md")) as f:
    markdown = f.read()
  assert "SYNTHETIC" in markdown and "data-efficiency factor" in markdown
  for name in saved["plots"].values():
    path = os.path.join(out, name)
    with open(path, "rb") as f:
      assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    with Image.open(path) as image:
      image.verify()
    assert f"]({name})" in markdown

  # The SavedModel loads with tensorflow_hub and returns the feature map.
  import tensorflow_hub as hub

  encoder = hub.load(saved["export"]["saved_model"])
  size = config.image_size
  feature_map = encoder(tf.random.uniform([3, size, size, 3], seed=1))
  assert tuple(feature_map.shape) == (3, size // 32, size // 32, 2048)
  assert np.all(np.isfinite(feature_map.numpy()))

  # The labelled subset the study chose is exactly what the input pipeline reads.
  site_a_runs = [r for r in runs if r["train_site"] == "siteA" and r["method"] == "remedis"]
  smallest = min(site_a_runs, key=lambda r: r["n_labels"])
  train = os.path.join(out, "records/siteA/train-*.tfrecord")
  index = label_subsets.read_index(train, 2)
  subset = label_subsets.fraction_for_count(index, smallest["n_labels"], smallest["seed"])
  assert subset.num_images == smallest["n_images"] >= min(smallest["n_labels"], len(index.patients))
  ds = input_pipeline.make_supervised_dataset(
    train,
    batch_size=64,
    image_size=32,
    training=False,
    label_mode="multi_label",
    num_labels=2,
    label_fraction=subset.fraction,
    seed=smallest["seed"],
  )
  assert sum(int(images.shape[0]) for images, _ in ds) == subset.num_images


def _copy_without_one_run(reference, out, run):
  """The reference study with its fine-tuning stages and report undone and `run` removed.

  Every other run keeps its finished result, which the resumed study must take
  as it is (their configuration hashes hold no paths), so only `run` trains.
  """
  shutil.copytree(
    reference, out, ignore=shutil.ignore_patterns("report.json", "report.md", "*.png")
  )
  shutil.rmtree(os.path.join(out, "runs", run))
  for stage in ("finetune_site_a", "finetune_site_b", "report"):
    os.remove(os.path.join(out, "stages", f"{stage}.done.json"))


@pytest.mark.slow
@pytest.mark.integration
def test_sigterm_inside_a_finetune_checkpoints_stops_and_resumes_to_the_same_report(
  reference, tmp_path
):
  out = str(tmp_path / "demo")
  _copy_without_one_run(reference, out, INTERRUPTED_RUN)
  hook = {study_runs.INTERRUPT_ENV: f"{INTERRUPTED_RUN}@{STOP_AFTER_STEPS}"}
  run_dir = os.path.join(out, "runs", INTERRUPTED_RUN)

  # SIGTERM reaches remedis-demo after the run's second step: the run
  # checkpoints there, the study stops with the documented exit code and
  # records nothing as finished.
  code, log = _demo(out, hook)
  assert code == EXIT_INTERRUPTED, log[-5000:]
  assert "4 runs, 3 finished earlier, 1 to run in 1 worker process(es)" in log, log[-5000:]
  assert "Received signal 15" in log and "Rerun the same command to resume" in log
  assert tf.train.latest_checkpoint(run_dir).endswith(f"ckpt-{STOP_AFTER_STEPS}")
  assert not os.path.exists(os.path.join(run_dir, "result.json"))
  assert not os.path.exists(os.path.join(out, "stages", "finetune_site_a.done.json"))
  assert not os.path.exists(os.path.join(out, "report.json"))

  # The same command (same environment) resumes the run from its checkpoint; the
  # report, which also holds this run's predictions, equals the uninterrupted one.
  code, log = _demo(out, hook)
  assert code == 0, log[-5000:]
  assert "finetune_site_b: 2 runs, 2 finished earlier, 0 to run" in log, log[-5000:]
  result = _read(os.path.join(run_dir, "result.json"))
  assert result["start_step"] == STOP_AFTER_STEPS
  assert result["steps_trained"] == study_config.SCALE_PRESETS["tiny"]["finetune_steps"]
  resumed, uninterrupted = (
    _read(os.path.join(out, "report.json")),
    _read(os.path.join(reference, "report.json")),
  )
  for field in DETERMINISTIC_FIELDS:
    assert resumed[field] == uninterrupted[field], field

  # Once more: every stage is skipped and no run is trained.
  again = study.run_study(study_config.make_config(out, "tiny"))
  assert again["stages"] == {"ran": [], "skipped": list(study_config.STAGES)}
  assert again["curves"] == resumed["curves"]


@pytest.mark.slow
@pytest.mark.integration
def test_positive_pairs_micle_pretrains_on_patient_pairs_and_the_report_says_so(tmp_path):
  out = str(tmp_path / "demo")
  code, log = _demo(out, flags=["--positive_pairs=micle", "--until=pretrain"])
  assert code == 0, log[-5000:]
  pre = _read(os.path.join(out, "stages", "pretrain.done.json"))
  assert pre["positive_pairs"] == "micle"
  stats = pre["micle"]
  # The synthetic archive has 2-5 images per patient: no anchor falls back.
  assert stats["num_records"] > stats["num_groups"] > 0
  assert stats["num_fallback"] == 0 and stats["fallback_fraction"] == 0.0
  assert {int(k) for k in stats["group_sizes"]} <= {2, 3, 4, 5}
  text = study_report._positive_pairs({"positive_pairs": "micle"}, pre)
  assert text.startswith("positive pairs: MICLe") and "0.0% of anchors" in text
  assert "two augmented views" in study_report._positive_pairs({}, {})


def test_resume_refuses_other_settings(tmp_path):
  out = str(tmp_path / "demo")
  study.run_study(study_config.make_config(out, "tiny", until="generate"))
  with pytest.raises(ValueError, match="other settings"):
    study.run_study(study_config.make_config(out, "tiny", seed=1, until="generate"))


def test_make_config_applies_scale_and_overrides(tmp_path):
  tiny = study_config.make_config(str(tmp_path), "tiny", pretrain_steps=3, encoder=None)
  assert tiny.pretrain_steps == 3 and tiny.num_seeds == 1 and tiny.encoder == "bit-tiny"
  assert study_config.make_config(str(tmp_path), "large").image_size == 96
  # The worker count does not enter the fingerprint (results do not depend on it).
  assert study_config.make_config(str(tmp_path), "tiny", finetune_workers=2).fingerprint() == (
    study_config.make_config(str(tmp_path), "tiny", finetune_workers=1).fingerprint()
  )
  with pytest.raises(ValueError):
    study_config.make_config(str(tmp_path), "huge")
  with pytest.raises(ValueError):
    study_config.make_config(str(tmp_path), "tiny", until="nope")
  with pytest.raises(ValueError):
    study_config.make_config(str(tmp_path), "tiny", finetune_workers=-1)
