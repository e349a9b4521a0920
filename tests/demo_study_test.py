"""End-to-end test of the demo study (remedis_tf.demo.study) at its tiny scale."""

import json
import math
import os
import time

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from remedis_tf.data import input_pipeline
from remedis_tf.demo import label_subsets, study, study_config


def _finite_unit(value):
  return isinstance(value, float) and math.isfinite(value) and 0.0 <= value <= 1.0


@pytest.mark.slow
@pytest.mark.integration
def test_tiny_study_produces_every_artefact_and_resumes(tmp_path):
  out = str(tmp_path / "demo")
  config = study_config.make_config(out, "tiny")
  report = study.run_study(config)
  assert report["stages"]["ran"] == list(study_config.STAGES)

  # report.json: structure and values.
  with open(os.path.join(out, "report.json")) as f:
    saved = json.load(f)
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
      assert all(
        lo <= m <= hi
        for lo, m, hi in zip(summary["low"], summary["mean"], summary["high"], strict=True)
      )
    factor = saved["data_efficiency"][key]["factor"]
    assert factor == "not reached" or (isinstance(factor, float) and factor > 0)
  for method in study_config.METHODS:
    assert _finite_unit(saved["zero_shot_ood"][method]["mean"])
  # Both methods ran at the same label counts, seeds and fine-tuning budget.
  runs = saved["runs"]
  keys = {
    m: sorted((r["train_site"], r["n_labels"], r["seed"]) for r in runs if r["method"] == m)
    for m in study_config.METHODS
  }
  assert keys["remedis"] == keys["baseline"] and keys["remedis"]
  assert {r["train_site"] for r in runs} == {"siteA", "siteB"}
  assert saved["pretraining"]["steps"] == config.pretrain_steps
  assert math.isfinite(saved["pretraining"]["final_loss"])
  assert set(saved["timings"]["stage_seconds"]) >= set(study_config.STAGES) - {"report"}

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
  images = tf.random.uniform([3, size, size, 3], seed=1)
  feature_map = encoder(images)
  assert tuple(feature_map.shape) == (3, size // 32, size // 32, 2048)
  assert np.all(np.isfinite(feature_map.numpy()))

  # The labelled subset the study chose is exactly what the input pipeline reads.
  site_a_runs = [r for r in runs if r["train_site"] == "siteA" and r["method"] == "remedis"]
  smallest = min(site_a_runs, key=lambda r: r["n_labels"])
  index = label_subsets.read_index(os.path.join(out, "records/siteA/train-*.tfrecord"), 2)
  subset = label_subsets.fraction_for_count(index, smallest["n_labels"], smallest["seed"])
  assert subset.num_images == smallest["n_images"] >= min(smallest["n_labels"], len(index.patients))
  ds = input_pipeline.make_supervised_dataset(
    os.path.join(out, "records/siteA/train-*.tfrecord"),
    batch_size=64,
    image_size=32,
    training=False,
    label_mode="multi_label",
    num_labels=2,
    label_fraction=subset.fraction,
    seed=smallest["seed"],
  )
  assert sum(int(images.shape[0]) for images, _ in ds) == subset.num_images

  # Rerun: every stage is skipped and the report is unchanged.
  start = time.perf_counter()
  again = study.run_study(config)
  assert again["stages"] == {"ran": [], "skipped": list(study_config.STAGES)}
  assert time.perf_counter() - start < 30
  assert again["curves"] == saved["curves"]


@pytest.mark.slow
def test_resume_refuses_other_settings(tmp_path):
  out = str(tmp_path / "demo")
  study.run_study(study_config.make_config(out, "tiny", until="generate"))
  with pytest.raises(ValueError, match="other settings"):
    study.run_study(study_config.make_config(out, "tiny", seed=1, until="generate"))


def test_make_config_applies_scale_and_overrides(tmp_path):
  tiny = study_config.make_config(str(tmp_path), "tiny", pretrain_steps=3, encoder=None)
  assert tiny.pretrain_steps == 3 and tiny.num_seeds == 1 and tiny.encoder == "bit-tiny"
  assert study_config.make_config(str(tmp_path), "large").image_size == 96
  with pytest.raises(ValueError):
    study_config.make_config(str(tmp_path), "huge")
  with pytest.raises(ValueError):
    study_config.make_config(str(tmp_path), "tiny", until="nope")
