"""Tests for the demo study's report: plots, formats, verdict rules, report.md/json end to end.

The end-to-end tests build a `results` dict as the study driver hands it over
(run records with 'steps_trained' and 'predictions' .npz files of fixed
synthetic predictions) and check the written files.
"""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest
from PIL import Image

from remedis_tf.demo import report, study_config, study_report

METHODS = study_config.METHODS
FINDINGS = study_config.FINDINGS


def _strict_json(path):
  def refuse(constant):
    raise ValueError(f"non-strict JSON constant {constant}")

  with open(path, encoding="utf-8") as f:
    return json.load(f, parse_constant=refuse)


def _png(path):
  with open(path, "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  with Image.open(path) as image:
    image.verify()


# ---------------------------------------------------------------- rendering helpers


def test_plot_ticks_are_the_measured_counts_as_plain_numbers(tmp_path):
  counts = [8, 16, 32, 128]
  panel = report.Panel(
    title="OOD",
    series=[
      report.Series("REMEDIS", counts, [0.6, 0.7, 0.75, 0.8], [0.55, 0.65, 0.7, 0.75], [0.65] * 4),
      # A point without an interval is drawn as a bare marker.
      report.Series("baseline", [8, 32], [0.55, 0.6], [None, 0.5], [None, 0.7]),
    ],
    ylabel="AUROC",
    xlabel="labels",
    references={"zero-shot": 0.6, "undefined": math.nan},
  )
  path = str(tmp_path / "plot.png")
  drawn = report.plot_panels(path, [panel, panel])
  _png(path)
  with Image.open(path) as image:
    assert image.size == (1100, 420)
  for axes in drawn:
    assert axes["x_ticks"] == [8.0, 16.0, 32.0, 128.0]
    assert axes["x_tick_labels"] == ["8", "16", "32", "128"]
    assert all(label == "" for label in axes["minor_tick_labels"])


def test_formats_never_print_a_missing_interval():
  assert report.fmt_interval(0.5, None, None) == "0.500 (no CI)"
  assert report.fmt_interval(0.61234, 0.5, 0.7) == "0.612 [0.500, 0.700]"
  assert report.fmt_interval(0.01, -0.02, 0.04, sign=True) == "+0.010 [-0.020, +0.040]"
  assert report.fmt_interval(None, None, None) == "n/a"
  assert report.fmt_factor("not reached") == "not reached"
  assert report.fmt_factor(3.2) == "3.20×" and report.fmt_factor(12.34) == "12.3×"
  assert report.fmt_p(0.000499) == "0.0005"


def test_write_json_is_strict(tmp_path):
  with pytest.raises(ValueError):
    report.write_json(str(tmp_path / "x.json"), {"a": math.nan})
  safe = report.json_safe({1: [np.float64(math.nan), np.int64(3), (math.inf, 0.5)]})
  assert safe == {"1": [None, 3, [None, 0.5]]}
  report.write_json(str(tmp_path / "x.json"), safe)
  assert _strict_json(str(tmp_path / "x.json")) == safe


# ---------------------------------------------------------------- verdict rules


def _factor(median, low, high, **extra):
  factor = {
    "computed": True,
    "median": median,
    "ci_low": low,
    "ci_high": high,
    "point": median,
    "target_auroc": 0.75,
    "baseline_labels": 128,
    "fraction_reached": 0.9,
    "fraction_lower_bound": 0.0,
    "ci_low_above_1": not isinstance(low, str) and low > 1,
    "ci_high_below_1": isinstance(high, str) or high < 1,
    "meets_remedis_bar": not isinstance(low, str) and median >= 3 and low > 1,
  }
  return {"factor": {**factor, **extra}}


def test_factor_verdict_follows_the_interval():
  text = study_report.factor_verdict(_factor(3.2, 1.5, 6.0), "OOD (site B)")
  assert "REMEDIS needs 3.20× fewer labels (95% CI 1.50× to 6.00×)" in text
  assert "0.750, at 128 labels" in text and "90%" in text
  # The interval includes 1x: no claim, whatever the median.
  text = study_report.factor_verdict(_factor(2.3, 0.8, 5.0), "OOD (site B)")
  assert "do not establish a difference" in text and "fewer labels" not in text
  text = study_report.factor_verdict(_factor(2.3, "not reached", 5.0), "OOD (site B)")
  assert "do not establish a difference" in text and "95% CI not reached to 5.00×" in text
  text = study_report.factor_verdict(
    _factor("not reached", "not reached", "not reached", fraction_reached=0.0), "ID (site A)"
  )
  assert "needs more labels than the baseline" in text and "0% of bootstrap replicates" in text
  lower = study_report.factor_verdict(_factor(4.0, 2.0, 8.0, fraction_lower_bound=0.25), "x")
  assert "25% of them already at its smallest measured label count" in lower


def test_near_chance_and_unestimable_factors_give_no_factor_sentence():
  both = {"factor": {"computed": False, "reason": "both methods stay near chance"}}
  text = study_report.factor_verdict(both, "ID (site A)")
  assert "no evidence" in text and "×" not in text
  base = {"factor": {"computed": False, "reason": "the baseline stays near chance"}}
  assert "no baseline level to match" in study_report.factor_verdict(base, "OOD (site B)")
  assert "not met; no factor" in study_report.bar_verdict(both)


def test_bar_verdict():
  assert ": met (median 3.20×" in study_report.bar_verdict(_factor(3.2, 1.5, 6.0))
  assert ": not met (median 2.50×" in study_report.bar_verdict(_factor(2.5, 1.5, 6.0))
  assert ": not met (median 4.00×" in study_report.bar_verdict(_factor(4.0, 0.9, 9.0))


# ---------------------------------------------------------------- end to end


def _site_arrays(rng, name, n):
  labels = (rng.random((n, len(FINDINGS))) < 0.35).astype(np.float32)
  labels[rng.random((n, len(FINDINGS))) < 0.05] = -1.0
  return {
    "labels": labels,
    "patient_ids": np.array([f"{name}-patient{i // 2}" for i in range(n)]),
    "source_ids": np.array([f"{name}-image{i}" for i in range(n)]),
  }


def _predictions(rng, directory, name, site, strength):
  """Writes a predictions .npz; class separation grows with strength (None: all 0.5)."""
  if strength is None:
    probabilities = np.full(site["labels"].shape, 0.5, np.float32)
  else:
    logits = strength * (site["labels"] > 0.5) + rng.normal(size=site["labels"].shape)
    probabilities = (1.0 / (1.0 + np.exp(-logits))).astype(np.float32)
  path = os.path.join(directory, f"{name}.npz")
  np.savez(path, probabilities=probabilities, **site)
  return path


def _results(tmp_path, config, strength, n_test=200):
  """A `results` dict as the driver delivers it; strength(method, labels) sets quality."""
  rng = np.random.default_rng(0)
  directory = str(tmp_path / "predictions")
  os.makedirs(directory, exist_ok=True)
  sites = {s: _site_arrays(rng, s, n_test) for s in study_config.SITES}
  n_all = 600

  def run(method, site, n, seed, preds, all_labels=False):
    return {
      "method": method,
      "train_site": site,
      "n_labels": n,
      "all_labels": all_labels,
      "seed": seed,
      "n_images": n,
      "n_patients": n // 2,
      "positives": {f: n // 3 for f in FINDINGS},
      "label_fraction": n / n_all,
      "model_dir": f"{directory}/{method}_{site}_n{n}_seed{seed}",
      "final_loss": 0.5,
      "steps_trained": config.finetune_steps,
      "metrics": {s: {"auroc": {}, "macro_auroc": 0.6} for s in preds},
      "predictions": preds,
    }

  runs_a, runs_b = [], []
  for method in METHODS:
    for n in config.site_a_labels:
      for seed in range(config.num_seeds):
        path = _predictions(
          rng, directory, f"{method}_A{n}_{seed}", sites["siteA"], strength(method, n)
        )
        runs_a.append(run(method, "siteA", n, seed, {"siteA": path}))
    preds = {
      "siteA": _predictions(
        rng, directory, f"{method}_Aall", sites["siteA"], strength(method, n_all)
      ),
      "siteB": _predictions(rng, directory, f"{method}_zero", sites["siteB"], strength(method, 4)),
    }
    runs_a.append(run(method, "siteA", n_all, 0, preds, all_labels=True))
    for n in config.site_b_labels:
      for seed in range(config.num_seeds):
        path = _predictions(
          rng, directory, f"{method}_B{n}_{seed}", sites["siteB"], strength(method, n)
        )
        runs_b.append(run(method, "siteB", n, seed, {"siteB": path}))
  site_summary = {
    "images": 1000,
    "patients": 500,
    "positives": [300, 330],
    "matrix": 96,
    "photometric": "MONOCHROME2",
  }
  return {
    "generate": {
      "summary": {
        "num_images": 2000,
        "scale": "default",
        "seed": 0,
        "sites": {s: site_summary for s in study_config.SITES},
      }
    },
    "convert": {
      "sites": {
        s: {"records_by_split": {"train": 600, "validation": 100, "test": 300}}
        for s in study_config.SITES
      }
    },
    "init": {"initialization": "random (seed 0; no --bit_checkpoint given)"},
    "pretrain": {
      "steps": 250,
      "first_loss": 9.5,
      "final_loss": 7.4,
      "images_per_second": 11.5,
      "loss_history": [[1, 9.5], [250, 7.4]],
    },
    "finetune_site_a": {"runs": runs_a},
    "finetune_site_b": {"runs": runs_b},
    "export": {"saved_model": "/x/export/remedis_encoder", "feature_map_shape": [2, 2, 2, 2048]},
  }


def _config(tmp_path, **overrides):
  return study_config.make_config(
    str(tmp_path),
    "default",
    site_a_labels=(16, 64, 256),
    site_b_labels=(8, 16, 32, 64, 128),
    num_seeds=2,
    **overrides,
  )


ENVIRONMENT = {
  "cpu": {
    "model": "AMD EPYC 7B13",
    "avx2": True,
    "avx512f": False,
    "avx512_bf16": False,
    "amx": False,
    "cores": 2,
    "class": "AVX2 only",
  },
  "finetune_workers": 2,
  "threads_per_finetune_run": 1,
  "onednn": "1",
  "tensorflow": "2.21.0",
  "stages": {
    "pretrain": {
      "seconds": 120.5,
      "cpu_seconds": 230.1,
      "examples": 16000,
      "examples_per_second": 132.8,
    },
    "finetune_site_a": {"seconds": 200.0, "examples": 40960, "examples_per_second": 204.8},
  },
}


def test_write_report_end_to_end_with_a_clear_effect(tmp_path):
  config = _config(tmp_path)

  # REMEDIS at n labels separates like the baseline at 8n (a factor of 8 by construction).
  def strength(method, n):
    return 0.6 * math.log2(n * (8 if method == "remedis" else 1)) / 2

  results = _results(tmp_path, config, strength)
  stage_seconds = {"generate": 30.0, "convert": 15.0, "pretrain": 120.5}
  out = study_report.write_report(
    config, str(tmp_path), results, stage_seconds, 400.0, ENVIRONMENT, num_replicates=300
  )
  saved = _strict_json(out["report_json"])
  for path in out["plots"]:
    _png(path)
  assert saved["environment"] == ENVIRONMENT
  assert saved["statistics"]["bootstrap"]["replicates"] == 300
  assert saved["statistics"]["bootstrap"]["seed"] == config.seed

  # Plot ticks: exactly the measured label counts, as plain numbers.
  assert saved["plot_x_ticks"]["ood"][0]["x_tick_labels"] == ["8", "16", "32", "64", "128"]
  assert saved["plot_x_ticks"]["id"][0]["x_tick_labels"] == ["16", "64", "256", "600"]
  assert [p["x_tick_labels"] for p in saved["plot_x_ticks"]["delta"]] == [
    ["16", "64", "256", "600"],
    ["8", "16", "32", "64", "128"],
  ]

  # Verdicts follow the factor's interval.
  ood = saved["data_efficiency"]["ood"]
  assert ood["computed"] and ood["ci_low_above_1"], ood
  assert saved["verdict"]["ood"].startswith(
    f"OOD (site B): REMEDIS needs {report.fmt_factor(ood['median'])} fewer labels (95% CI "
    f"{report.fmt_factor(ood['ci_low'])} to {report.fmt_factor(ood['ci_high'])})"
  )
  want_bar = "met" if ood["median"] >= 3 else "not met"
  assert f": {want_bar} (median" in saved["verdict"]["bar"]
  for key in ("id", "ood"):
    claims = "fewer labels (95% CI" in saved["verdict"][key]
    assert claims == saved["data_efficiency"][key]["ci_low_above_1"]
  for drawn in saved["plot_x_ticks"].values():
    assert all(label == "" for axes in drawn for label in axes["minor_tick_labels"])

  # report.md: every point's row with ΔAUROC [CI] and p, the factor table, the environment.
  with open(out["report_md"], encoding="utf-8") as f:
    markdown = f.read()
  assert "SYNTHETIC" in markdown
  points = saved["statistics"]["findings"][config.headline_finding]
  for key in ("id", "ood"):
    for p in points[key]["points"]:
      d = p["delta"]
      label = f"{p['n_labels']} (all)" if p["all_labels"] else str(p["n_labels"])
      row = f"| {label} | 2/2 | " if not p["all_labels"] else f"| {label} | 1/1 | "
      assert row in markdown
      assert report.fmt_interval(d["value"], d["ci_low"], d["ci_high"], sign=True) in markdown
  zero = points["zero_shot"]["points"][0]
  assert (
    f"| zero-shot | 1/1 | {report.fmt_interval(zero['remedis']['auroc'], zero['remedis']['ci_low'], zero['remedis']['ci_high'])}"
    in markdown
  )
  assert "| cardiomegaly | OOD (site B) |" in markdown and "| opacity | ID (site A) |" in markdown
  assert "AMD EPYC 7B13, 2 cores, class AVX2 only (AVX-512: no; AVX2: yes)" in markdown
  assert "2 worker process(es), 1 TensorFlow thread(s) per run" in markdown
  assert "oneDNN: on" in markdown
  assert "| pretrain | 120.5 | 230.1 | 16000 | 132.8 |" in markdown
  assert "| generate | 30.0 | - | - |" in markdown
  for name in saved["plots"].values():
    assert f"]({name})" in markdown
  assert "4.303" not in markdown and "t-interval" not in markdown

  # stdout summary from the JSON as read back.
  text = study_report.text_summary(saved)
  assert saved["verdict"]["ood"] in text and "zero-shot" in text


def _make_null(results, seed=0):
  """REMEDIS's predictions := the baseline's, with scores shuffled within each class.

  Every AUROC on the full test set is then equal for both methods (it depends
  only on the sets of positive and negative scores), while bootstrap
  replicates differ: ΔAUROC = 0 and a factor of 1 by construction.
  """
  rng = np.random.default_rng(seed)
  runs = [*results["finetune_site_a"]["runs"], *results["finetune_site_b"]["runs"]]
  baseline = {
    (r["train_site"], r["n_labels"], r["seed"]): r for r in runs if r["method"] == "baseline"
  }
  for run in runs:
    if run["method"] != "remedis":
      continue
    twin = baseline[(run["train_site"], run["n_labels"], run["seed"])]
    for site, path in twin["predictions"].items():
      with np.load(path) as f:
        arrays = dict(f)
      probabilities = arrays["probabilities"].copy()
      for k in range(probabilities.shape[1]):
        for cls in (0.0, 1.0):
          rows = np.flatnonzero(arrays["labels"][:, k] == cls)
          probabilities[rows, k] = probabilities[rng.permutation(rows), k]
      np.savez(run["predictions"][site], **{**arrays, "probabilities": probabilities})
  return results


def test_null_and_near_chance_reports_claim_nothing(tmp_path):
  config = _config(tmp_path)
  results = _make_null(_results(tmp_path, config, lambda method, n: 0.5 * math.log2(n)))
  same = study_report.build_report(config, results, {}, num_replicates=300)
  for key in ("id", "ood"):
    f = same["data_efficiency"][key]
    assert f["computed"] and f["point"] == pytest.approx(1.0)
    assert not f["ci_low_above_1"] and not f["ci_high_below_1"]
    assert "do not establish a difference" in same["verdict"][key]
    assert "fewer labels" not in same["verdict"][key]
    assert "not met" in same["verdict"]["bar"]
  # Both methods score every image 0.5: no evidence, no factor.
  chance = study_report.build_report(
    config, _results(tmp_path, config, lambda method, n: None), {}, num_replicates=100
  )
  markdown = study_report.render_markdown(chance)
  for key in ("id", "ood"):
    assert not chance["data_efficiency"][key]["computed"]
    assert "no evidence either way" in chance["verdict"][key]
  assert "not computed: both methods stay near chance" in markdown
  assert "fewer labels (95% CI" not in markdown and "not met; no factor" in markdown
  assert "Environment not recorded." in markdown
  json.dumps(chance, allow_nan=False)


def test_truncated_runs_are_refused(tmp_path):
  config = _config(tmp_path)
  results = _results(tmp_path, config, lambda method, n: 1.0)
  results["finetune_site_b"]["runs"][3]["steps_trained"] = 4
  with pytest.raises(ValueError, match=f"trained 4 of {config.finetune_steps} steps"):
    study_report.build_report(config, results, {}, num_replicates=10)


def test_build_curve_reads_recorded_metrics_and_skips_undefined_values():
  def run(method, n, seed, value):
    return {
      "method": method,
      "n_labels": n,
      "seed": seed,
      "metrics": {"siteA": {"macro_auroc": value, "auroc": {"opacity": value}}},
    }

  runs = [run("remedis", 16, 0, 0.7), run("remedis", 16, 1, math.nan), run("baseline", 16, 0, 0.6)]
  assert study_report.build_curve(runs, "remedis", "siteA", "macro") == {16: [0.7]}
  assert study_report.build_curve(runs, "baseline", "siteA", "opacity") == {16: [0.6]}
  assert study_report.build_curve(runs, "remedis", "siteB", "macro") == {}
