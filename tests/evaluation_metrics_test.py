"""Tests of AUROC / accuracy / patient bootstrap against scikit-learn and NumPy."""

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, roc_auc_score

from remedis_tf.train import evaluation_metrics as em


def _rng(seed=0):
  return np.random.default_rng(seed)


def _f64(n: int) -> float:
  """Tolerance between two float64 evaluations of a normalised sum of n terms in [0, 1].

  An AUROC (a sum of rank or trapezoid terms over n examples, divided by the
  pair count), an accuracy or a mean: ours and scikit-learn's / NumPy's sum in
  other orders, each within gamma_n = n 2^-53 of exact, plus a few roundings
  for the normalisation or a percentile's interpolation (4); times SAFETY (2).
  """
  return 2 * 2 * (n + 4) * 2.0**-53


def test_auroc_matches_sklearn_with_ties():
  rng = _rng(1)
  for n in (2, 7, 50, 301):
    y = rng.integers(0, 2, n)
    y[0], y[1] = 0, 1
    s = np.round(rng.normal(size=n) + y, 1)  # rounding makes many ties
    assert em.weighted_auroc(y, s) == pytest.approx(roc_auc_score(y, s), abs=_f64(n))


def test_weighted_auroc_equals_auroc_of_repeated_examples():
  rng = _rng(2)
  y = rng.integers(0, 2, 40)
  s = np.round(rng.normal(size=40), 1)
  counts = rng.integers(0, 4, size=(3, 40)).astype(float)
  got = em.weighted_auroc(y, s, counts)
  for b in range(3):
    idx = np.repeat(np.arange(40), counts[b].astype(int))
    assert got[b] == pytest.approx(roc_auc_score(y[idx], s[idx]), abs=_f64(len(idx)))
  # sklearn's sample_weight agrees as well.
  assert em.weighted_auroc(y, s, counts[0]) == pytest.approx(
    roc_auc_score(y, s, sample_weight=counts[0]), abs=_f64(int(counts[0].sum()))
  )


def test_auroc_undefined_without_both_classes_is_nan():
  assert np.isnan(em.weighted_auroc(np.ones(4), np.arange(4.0)))
  assert np.isnan(em.weighted_auroc(np.zeros(0), np.zeros(0)))


def test_multi_label_per_label_and_macro_ignore_unknown():
  rng = _rng(3)
  y = rng.integers(0, 2, size=(80, 5)).astype(float)
  s = np.clip(0.3 * y + rng.uniform(size=(80, 5)), 0, 1)
  y[rng.uniform(size=y.shape) < 0.2] = -1
  got = em.auroc_per_label(y, s, "multi_label")
  for k in range(5):
    m = y[:, k] >= 0
    assert got[k] == pytest.approx(roc_auc_score(y[m, k], s[m, k]), abs=_f64(80))
  res = em.compute_metrics(y, s, "multi_label", num_bootstrap=0)
  m = y >= 0
  ref_acc = np.mean(((s >= 0.5) == (y > 0.5))[m])
  assert res["accuracy"]["value"] == pytest.approx(ref_acc, abs=_f64(400))
  assert res["auroc"]["macro"]["value"] == pytest.approx(np.mean(got), abs=_f64(5))
  assert res["auroc"]["per_label"]["0"]["n_positive"] == int(np.sum(y[:, 0] == 1))


def test_multi_class_one_vs_rest_and_accuracy():
  rng = _rng(4)
  y = rng.integers(0, 3, 90)
  logits = rng.normal(size=(90, 3)) + np.eye(3)[y]
  p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
  y_obs = y.copy()
  y_obs[:5] = -1
  res = em.compute_metrics(y_obs, p, "multi_class", label_names=["a", "b", "c"], num_bootstrap=0)
  keep = y_obs >= 0
  ref = roc_auc_score(y[keep], p[keep], multi_class="ovr", average=None)
  for name, r in zip("abc", ref, strict=True):
    assert res["auroc"]["per_label"][name]["value"] == pytest.approx(r, abs=_f64(90))
  assert res["auroc"]["macro"]["value"] == pytest.approx(
    roc_auc_score(y[keep], p[keep], multi_class="ovr", average="macro"), abs=_f64(90 + 3)
  )
  assert res["accuracy"]["value"] == pytest.approx(
    accuracy_score(y[keep], p[keep].argmax(1)), abs=_f64(90)
  )


def test_patient_bootstrap_weights_resample_whole_patients():
  patients = np.array(["p1", "p1", "p2", "p3", "p3", "p3"])
  w = em.patient_bootstrap_weights(patients, 200, seed=0)
  assert w.shape == (200, 6)
  # Examples of one patient always share a weight; each replicate draws 3 patients.
  np.testing.assert_array_equal(w[:, 0], w[:, 1])
  np.testing.assert_array_equal(w[:, 3], w[:, 5])
  np.testing.assert_array_equal(w[:, [0, 2, 3]].sum(1), np.full(200, 3.0))


def test_bootstrap_intervals_cover_point_and_match_explicit_resampling():
  rng = _rng(5)
  patients = np.repeat(np.arange(30), 3)
  y = np.repeat(rng.integers(0, 2, 30), 3)
  s = y * 0.8 + rng.normal(size=90)
  res = em.compute_metrics(
    y,
    np.stack([1 - s, s], 1),
    "multi_class",
    patient_ids=patients,
    num_bootstrap=300,
    seed=7,
    chunk_size=64,
  )
  auc = res["auroc"]["per_label"]["1"]
  assert auc["value"] == pytest.approx(roc_auc_score(y, s), abs=_f64(90))
  assert auc["ci_low"] < auc["value"] < auc["ci_high"]
  acc = res["accuracy"]
  assert acc["ci_low"] <= acc["value"] <= acc["ci_high"]
  # Reference: explicit resampling of patients with the same draws, sklearn per replicate.
  w = em.patient_bootstrap_weights(patients, 300, seed=7)
  ref = []
  for b in range(300):
    idx = np.repeat(np.arange(90), w[b].astype(int))
    if len(np.unique(y[idx])) == 2:
      ref.append(roc_auc_score(y[idx], s[idx]))
  lo, hi = np.percentile(ref, [2.5, 97.5])
  # Replicates hold up to 90 repeated examples (each AUROC within _f64(90)); a percentile
  # interpolates two of them.
  assert auc["ci_low"] == pytest.approx(lo, abs=_f64(90))
  assert auc["ci_high"] == pytest.approx(hi, abs=_f64(90))
  assert res["n_patients"] == 30 and res["n_examples"] == 90


def test_bad_inputs_raise_clear_errors():
  with pytest.raises(ValueError, match="label_mode"):
    em.compute_metrics(np.zeros(3), np.zeros((3, 2)), "binary")
  with pytest.raises(ValueError, match="multi_label needs"):
    em.compute_metrics(np.zeros((3, 2)), np.zeros((3, 3)), "multi_label")
  with pytest.raises(ValueError, match="out of range"):
    em.compute_metrics(np.array([0, 5]), np.zeros((2, 2)), "multi_class")
