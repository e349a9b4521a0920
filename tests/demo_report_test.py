"""Tests for remedis_tf.demo.report: curve statistics, efficiency factor, plots."""

import math

import numpy as np
import pytest
from PIL import Image

from remedis_tf.demo import report, study_report


def test_summarize_curve_matches_numpy_t_interval():
  curve = {10: [0.6, 0.7, 0.8], 100: [0.9, 0.9, 0.9]}
  s = report.summarize_curve(curve)
  assert s.n_labels == [10, 100]
  assert s.seeds == 3
  values = np.array([0.6, 0.7, 0.8])
  half = 4.303 * values.std(ddof=1) / math.sqrt(3)
  assert s.mean[0] == pytest.approx(0.7)
  assert s.low[0] == pytest.approx(0.7 - half)
  assert s.high[0] == pytest.approx(min(1.0, 0.7 + half))
  assert s.low[1] == pytest.approx(0.9) and s.high[1] == pytest.approx(0.9)


def test_labels_to_reach_interpolates_in_log_space():
  curve = {10: [0.6], 1000: [0.8]}
  # 0.7 is halfway between 0.6 and 0.8 -> geometric mean of 10 and 1000.
  assert report.labels_to_reach(curve, 0.7) == pytest.approx(100.0)
  assert report.labels_to_reach(curve, 0.55) == pytest.approx(10.0)
  assert report.labels_to_reach(curve, 0.81) is None


def test_data_efficiency_factor():
  baseline = {10: [0.6], 100: [0.7], 1000: [0.75]}
  remedis = {10: [0.7], 100: [0.8], 1000: [0.85]}
  result = report.data_efficiency(remedis, baseline)
  assert result["target_auroc"] == pytest.approx(0.75)
  assert result["baseline_labels"] == 1000
  expected_n = math.exp(math.log(10) + 0.5 * (math.log(100) - math.log(10)))
  assert result["remedis_labels"] == pytest.approx(expected_n)
  assert result["factor"] == pytest.approx(1000 / expected_n)


def test_data_efficiency_not_reached():
  result = report.data_efficiency({10: [0.5], 100: [0.6]}, {10: [0.7], 100: [0.65]})
  assert result["factor"] == "not reached"
  assert result["baseline_labels"] == 10


def test_plot_and_table(tmp_path):
  path = str(tmp_path / "plot.png")
  curves = {
    "REMEDIS": {8: [0.7, 0.75], 32: [0.8, 0.82]},
    "baseline": {8: [0.6, 0.62], 32: [0.7, 0.71]},
  }
  report.plot_curves(path, "site A", curves)
  with Image.open(path) as im:
    assert im.format == "PNG"
    assert im.size == (550, 400)
  table = report.curve_table(curves)
  assert table.splitlines()[0] == "| labels | REMEDIS | baseline |"
  assert "| 8 | 0.725" in table


def test_plot_with_reference_lines(tmp_path):
  path = str(tmp_path / "ood.png")
  curves = {"REMEDIS": {8: [0.7]}, "baseline": {8: [0.6], 32: [0.65]}}
  report.plot_curves(path, "site B", curves, references={"zero-shot": 0.55, "undefined": math.nan})
  with Image.open(path) as im:
    assert im.format == "PNG"


def _run(method, n, seed, site_metrics, all_labels=False):
  return {
    "method": method,
    "n_labels": n,
    "seed": seed,
    "all_labels": all_labels,
    "metrics": {
      site: {"auroc": {"opacity": auc}, "macro_auroc": auc} for site, auc in site_metrics.items()
    },
  }


def test_study_report_curves_skip_undefined_auroc_and_read_zero_shot():
  runs = [
    _run("remedis", 16, 0, {"siteA": 0.7}),
    _run("remedis", 16, 1, {"siteA": math.nan}),
    _run("baseline", 16, 0, {"siteA": 0.6}),
    _run("remedis", 100, 0, {"siteA": 0.9, "siteB": 0.8}, all_labels=True),
    _run("baseline", 100, 0, {"siteA": 0.85, "siteB": 0.5}, all_labels=True),
  ]
  assert study_report.build_curve(runs, "remedis", "siteA", "opacity") == {16: [0.7], 100: [0.9]}
  assert study_report.build_curve(runs, "baseline", "siteB", "macro") == {100: [0.5]}
  zero_shot = study_report._zero_shot(runs, "opacity")
  assert zero_shot["remedis"] == {"values": [0.8], "mean": 0.8}
  assert zero_shot["baseline"]["mean"] == 0.5
