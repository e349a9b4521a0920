"""Tests for remedis_tf.demo.study_stats: paired patient bootstrap, p-values, factor.

References are independent of the code under test: scikit-learn's
`roc_auc_score` (with `sample_weight`, and on explicitly resampled arrays),
a float64 pairwise-comparison AUROC, `numpy.percentile` on replicate values
recomputed here, and a scalar re-implementation of the factor's rules.
"""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from remedis_tf.demo import study_stats

FINDINGS = ("opacity", "cardiomegaly")
# AUROCs here are ratios of sums of products of small integers (and halves),
# exact in float64; only the final division and the seed average round, so
# agreement is to a few ulp of 1.0.
EXACT = 1e-12


def _pairwise_auroc(positive, scores, weights):
  """float64 sum over all positive/negative pairs (the definition)."""
  sp, sn = scores[positive], scores[~positive]
  wp, wn = weights[positive], weights[~positive]
  kernel = (sp[:, None] > sn[None, :]) + 0.5 * (sp[:, None] == sn[None, :])
  return float(wp @ kernel @ wn / (wp.sum() * wn.sum()))


def test_weighted_auroc_matches_sklearn_sample_weight_and_pairwise_definition():
  rng = np.random.default_rng(1)
  n = 60
  positive = rng.random(n) < 0.4
  scores = np.round(rng.random(n), 1)  # many ties
  weights = rng.integers(0, 4, size=(n, 6)).astype(np.float64)
  weights[:, 0] = 1.0
  got = study_stats.weighted_auroc(positive, scores, weights)
  for r in range(weights.shape[1]):
    want = roc_auc_score(positive, scores, sample_weight=weights[:, r])
    assert got[r] == pytest.approx(want, abs=EXACT)
    assert got[r] == pytest.approx(_pairwise_auroc(positive, scores, weights[:, r]), abs=EXACT)


def test_weighted_auroc_is_nan_without_both_classes():
  positive = np.array([True, True, False, False])
  weights = np.array([[1.0, 0.0], [2.0, 0.0], [0.0, 1.0], [0.0, 3.0]])
  got = study_stats.weighted_auroc(positive, np.array([0.1, 0.2, 0.3, 0.4]), weights)
  assert np.all(np.isnan(got))


def test_patient_weights_resample_whole_patients():
  patients = np.array(["c", "a", "a", "b", "c", "c", "d"])
  w = study_stats.patient_weights(patients, 500, seed=3, stream=0)
  assert w.shape == (500, 7)
  assert np.all(w == np.round(w)) and np.all(w >= 0)
  # One multiplicity per patient, and 4 patients drawn per replicate.
  first = {p: i for i, p in reversed(list(enumerate(patients)))}
  for i, p in enumerate(patients):
    np.testing.assert_array_equal(w[:, i], w[:, first[p]])
  per_patient = w[:, [first[p] for p in sorted(first)]]
  np.testing.assert_array_equal(per_patient.sum(axis=1), 4)
  # Deterministic per (seed, stream); streams differ.
  np.testing.assert_array_equal(w, study_stats.patient_weights(patients, 500, 3, 0))
  assert not np.array_equal(w, study_stats.patient_weights(patients, 500, 3, 1))
  # Each patient's count is Binomial(4, 1/4): mean 1, variance 3/4. Over
  # 2000 cells the mean's standard error is sqrt(0.75 / 2000) = 0.019; 5 sigma.
  assert per_patient.mean() == pytest.approx(1.0, abs=5 * math.sqrt(0.75 / 2000))


def test_finding_bootstrap_equals_auroc_of_explicitly_resampled_images():
  rng = np.random.default_rng(2)
  n = 80
  patients = np.array([f"p{i // 3}" for i in range(n)])
  labels = (rng.random(n) < 0.35).astype(np.float32)
  labels[rng.random(n) < 0.15] = -1.0
  scores = np.clip(0.3 * labels + rng.random(n), 0, None).astype(np.float32)
  weights = study_stats.patient_weights(patients, 40, seed=0, stream=0)
  task = study_stats.FindingBootstrap(labels, weights)
  point, reps = task.auroc(scores)
  known = labels >= 0
  assert point == pytest.approx(roc_auc_score(labels[known], scores[known]), abs=EXACT)
  for r in range(40):
    counts = weights[r].astype(int)
    resampled_labels = np.repeat(labels, counts)
    resampled_scores = np.repeat(scores, counts)
    keep = resampled_labels >= 0
    y = resampled_labels[keep]
    if y.min() == y.max():
      assert not task.valid[r] and math.isnan(reps[r])
      continue
    assert task.valid[r]
    assert reps[r] == pytest.approx(roc_auc_score(y, resampled_scores[keep]), abs=EXACT)


def test_labels_to_reach_and_factor_on_a_hand_computed_curve():
  ns = [8, 32, 128]
  baseline = np.array(
    [
      [0.60, 0.60, 0.60, 0.60, 0.70],
      [0.70, 0.70, 0.70, 0.70, 0.60],
      [0.65, 0.65, 0.65, 0.65, 0.70],
    ]
  )
  remedis = np.array(
    [
      [0.65, 0.50, 0.71, 0.60, 0.65],
      [0.75, 0.55, 0.80, 0.72, 0.65],
      [0.80, 0.69, 0.90, 0.65, 0.75],
    ]
  )
  e = study_stats.efficiency(ns, remedis, ns, baseline)
  np.testing.assert_allclose(e.target, [0.7] * 5)
  # Column 4: two equal maxima (8 and 128); the fewest labels count.
  np.testing.assert_array_equal(e.baseline_labels, [32, 32, 32, 32, 8])
  # 0: halfway between 0.65 and 0.75 -> geometric mean of 8 and 32 = 16.
  # 1: never reaches 0.7.  2: reaches at its smallest count (8).
  # 3: first crossing 0.60 -> 0.72 at fraction 10/12 in log(labels).
  # 4: halfway between 0.65 (32) and 0.75 (128) -> 64.
  n3 = math.exp(math.log(8) + (0.1 / 0.12) * (math.log(32) - math.log(8)))
  want_needed = [16.0, math.inf, 8.0, n3, 64.0]
  np.testing.assert_allclose(e.remedis_labels, want_needed, rtol=1e-12)
  np.testing.assert_allclose(e.factor, [2.0, 0.0, 4.0, 32 / n3, 8 / 64], rtol=1e-12)
  np.testing.assert_array_equal(e.at_smallest, [False, False, True, False, False])


def test_labels_to_reach_rejects_unsorted_counts():
  with pytest.raises(ValueError, match="increasing"):
    study_stats.labels_to_reach([32, 8], np.zeros((2, 1)), np.zeros(1))


# ---------------------------------------------------------------- study level


def _site(rng, name, n, prevalence=0.35):
  patients = np.array([f"{name}-patient{i // 2}" for i in range(n)])
  sources = np.array([f"{name}-image{i}" for i in range(n)])
  labels = (rng.random((n, len(FINDINGS))) < prevalence).astype(np.float32)
  labels[rng.random((n, len(FINDINGS))) < 0.1] = -1.0
  return {"patients": patients, "sources": sources, "labels": labels}


def _write(path, site, probabilities):
  np.savez(
    path,
    labels=site["labels"],
    probabilities=probabilities.astype(np.float32),
    patient_ids=site["patients"],
    source_ids=site["sources"],
  )
  return str(path)


def _scores(rng, site, strength):
  """Probabilities whose separation of the classes grows with `strength`; None: all 0.5."""
  if strength is None:
    return np.full(site["labels"].shape, 0.5)
  logits = strength * (site["labels"] > 0.5) + rng.normal(size=site["labels"].shape)
  return 1.0 / (1.0 + np.exp(-logits))


def _study(tmp_path, strength, seed=0, n_test=60, counts_a=(8, 32), counts_b=(4, 16, 64), seeds=2):
  """Site-A and site-B run records with predictions; strength(method, n) sets quality."""
  rng = np.random.default_rng(seed)
  sites = {"siteA": _site(rng, "A", n_test), "siteB": _site(rng, "B", n_test)}
  runs_a, runs_b = [], []
  for method in study_stats.METHODS:
    for n in counts_a:
      for s in range(seeds):
        path = _write(
          tmp_path / f"{method}_a{n}_{s}.npz",
          sites["siteA"],
          _scores(rng, sites["siteA"], strength(method, n)),
        )
        runs_a.append(_record(method, "siteA", n, s, {"siteA": path}))
    a_all = _write(
      tmp_path / f"{method}_aall.npz",
      sites["siteA"],
      _scores(rng, sites["siteA"], strength(method, 100)),
    )
    zero = _write(
      tmp_path / f"{method}_zs.npz",
      sites["siteB"],
      _scores(rng, sites["siteB"], strength(method, 2)),
    )
    runs_a.append(
      _record(method, "siteA", 100, 0, {"siteA": a_all, "siteB": zero}, all_labels=True)
    )
    for n in counts_b:
      for s in range(seeds):
        path = _write(
          tmp_path / f"{method}_b{n}_{s}.npz",
          sites["siteB"],
          _scores(rng, sites["siteB"], strength(method, n)),
        )
        runs_b.append(_record(method, "siteB", n, s, {"siteB": path}))
  return runs_a, runs_b


def _record(method, site, n, seed, predictions, all_labels=False):
  return {
    "method": method,
    "train_site": site,
    "n_labels": n,
    "all_labels": all_labels,
    "seed": seed,
    "model_dir": f"/runs/{method}/{site}_n{n}_seed{seed}",
    "predictions": predictions,
  }


def _reference_setting(runs, site, k, weights):
  """Per (method, n): seed-mean AUROC on the test set (sklearn) and per replicate (pairwise)."""
  out = {}
  for run in runs:
    with np.load(run["predictions"][site]) as f:
      labels, scores = f["labels"][:, k], f["probabilities"][:, k].astype(np.float64)
    known = labels >= 0
    positive = labels[known] > 0.5
    point = roc_auc_score(positive, scores[known])
    w = weights[:, known]
    sp, sn = scores[known][positive], scores[known][~positive]
    kernel = (sp[:, None] > sn[None, :]) + 0.5 * (sp[:, None] == sn[None, :])
    wp, wn = w[:, positive], w[:, ~positive]
    with np.errstate(invalid="ignore", divide="ignore"):
      reps = np.einsum("rp,rp->r", wp @ kernel, wn) / (wp.sum(1) * wn.sum(1))
    out.setdefault((run["method"], run["n_labels"]), []).append((point, reps))
  return {
    key: (np.mean([p for p, _ in v]), np.mean([r for _, r in v], axis=0)) for key, v in out.items()
  }


def _reference_factor(ns, remedis, baseline):
  """Scalar rules: baseline best (fewest labels), first crossing, log-linear, 0 = not reached."""
  best = max(baseline)
  n_base = ns[baseline.index(best)]
  for i, value in enumerate(remedis):
    if value >= best:
      if i == 0:
        return n_base / ns[0]
      t = (best - remedis[i - 1]) / (value - remedis[i - 1])
      return n_base / math.exp(math.log(ns[i - 1]) + t * (math.log(ns[i]) - math.log(ns[i - 1])))
  return 0.0


def test_study_statistics_match_an_independent_bootstrap(tmp_path):
  strength = lambda method, n: (1.4 if method == "remedis" else 0.8) * math.log(n) / math.log(16)
  runs_a, runs_b = _study(tmp_path, strength)
  replicates, seed = 60, 7
  stats = study_stats.study_statistics(
    runs_a, runs_b, FINDINGS, num_replicates=replicates, seed=seed
  )
  json.dumps(stats, allow_nan=False)  # strict JSON
  k = FINDINGS.index("cardiomegaly")
  # Sites draw with stream = the site's index in sorted order (siteA 0, siteB 1).
  with np.load(runs_b[0]["predictions"]["siteB"]) as f:
    weights_b = study_stats.patient_weights(f["patient_ids"], replicates, seed, 1)
  with np.load(runs_a[0]["predictions"]["siteA"]) as f:
    weights_a = study_stats.patient_weights(f["patient_ids"], replicates, seed, 0)

  for key, runs, site, weights in (
    ("ood", runs_b, "siteB", weights_b),
    ("id", [r for r in runs_a if "siteA" in r["predictions"]], "siteA", weights_a),
  ):
    setting = stats["findings"]["cardiomegaly"][key]
    ref = _reference_setting(runs, site, k, weights)
    valid = np.all([np.isfinite(r) for _, r in ref.values()], axis=0)
    assert setting["valid_replicates"] == valid.sum()
    ns = sorted({n for _, n in ref})
    assert [p["n_labels"] for p in setting["points"]] == ns
    for point in setting["points"]:
      n = point["n_labels"]
      for m in study_stats.METHODS:
        value, reps = ref[(m, n)]
        assert point[m]["auroc"] == pytest.approx(value, abs=EXACT)
        low, high = np.percentile(reps[valid], [2.5, 97.5])
        assert point[m]["ci_low"] == pytest.approx(low, abs=EXACT)
        assert point[m]["ci_high"] == pytest.approx(high, abs=EXACT)
      delta = ref[("remedis", n)][1][valid] - ref[("baseline", n)][1][valid]
      assert point["delta"]["value"] == pytest.approx(
        ref[("remedis", n)][0] - ref[("baseline", n)][0], abs=EXACT
      )
      low, high = np.percentile(delta, [2.5, 97.5])
      assert point["delta"]["ci_low"] == pytest.approx(low, abs=EXACT)
      assert point["delta"]["ci_high"] == pytest.approx(high, abs=EXACT)
      assert point["delta"]["p_value"] == pytest.approx((1 + np.sum(delta <= 0)) / (1 + delta.size))
    # The factor, replicate by replicate with the scalar rules.
    factor = setting["factor"]
    assert factor["computed"], factor
    per_rep = [
      _reference_factor(
        ns, [ref[("remedis", n)][1][b] for n in ns], [ref[("baseline", n)][1][b] for n in ns]
      )
      for b in np.flatnonzero(valid)
    ]
    low, median, high = np.quantile(per_rep, [0.025, 0.5, 0.975], method="inverted_cdf")
    for name, want in (("ci_low", low), ("median", median), ("ci_high", high)):
      got = factor[name]
      assert (got == study_stats.NOT_REACHED) if want == 0 else got == pytest.approx(want, rel=1e-9)
    assert factor["fraction_reached"] == pytest.approx(np.mean(np.array(per_rep) > 0))
    point_factor = _reference_factor(
      ns, [ref[("remedis", n)][0] for n in ns], [ref[("baseline", n)][0] for n in ns]
    )
    assert factor["point"] == pytest.approx(point_factor, rel=1e-9)

  # Zero-shot: the all-site-A runs on site B, paired on the site-B replicates.
  zero = stats["findings"]["cardiomegaly"]["zero_shot"]["points"]
  assert len(zero) == 1 and zero[0]["remedis"]["seeds"] == [0]
  ref = _reference_setting(
    [dict(r, n_labels=0) for r in runs_a if "siteB" in r["predictions"]], "siteB", k, weights_b
  )
  delta = ref[("remedis", 0)][1] - ref[("baseline", 0)][1]
  valid = np.isfinite(delta)
  assert zero[0]["delta"]["p_value"] == pytest.approx(
    (1 + np.sum(delta[valid] <= 0)) / (1 + valid.sum())
  )


def test_large_effect_has_an_interval_above_zero_and_a_small_p(tmp_path):
  # The baseline scores every image 0.5: AUROC exactly 0.5 in every replicate.
  strength = lambda method, n: 4.0 if method == "remedis" else None
  runs_a, runs_b = _study(tmp_path, strength, n_test=80)
  stats = study_stats.study_statistics(runs_a, runs_b, FINDINGS, num_replicates=300, seed=1)
  for key in ("id", "ood", "zero_shot"):
    for point in stats["findings"]["cardiomegaly"][key]["points"]:
      assert point["delta"]["ci_low"] > 0.2
      # No replicate has delta <= 0: the smallest p the estimator gives.
      valid = stats["findings"]["cardiomegaly"][key]["valid_replicates"]
      assert point["delta"]["p_value"] == pytest.approx(1 / (1 + valid))
  ood = stats["findings"]["cardiomegaly"]["ood"]
  assert ood["above_chance"] == {"remedis": True, "baseline": False}
  assert ood["factor"] == {"computed": False, "reason": "the baseline stays near chance"}


def test_identical_methods_give_zero_delta_p_one_and_factor_one(tmp_path):
  runs_a, runs_b = _study(tmp_path, lambda method, n: math.log(n))
  for remedis, baseline in zip(runs_a[: len(runs_a) // 2], runs_a[len(runs_a) // 2 :], strict=True):
    remedis["predictions"] = baseline["predictions"]
  for remedis, baseline in zip(runs_b[: len(runs_b) // 2], runs_b[len(runs_b) // 2 :], strict=True):
    remedis["predictions"] = baseline["predictions"]
  stats = study_stats.study_statistics(runs_a, runs_b, FINDINGS, num_replicates=200, seed=0)
  for key in ("id", "ood"):
    setting = stats["findings"]["cardiomegaly"][key]
    for point in setting["points"]:
      assert point["delta"] == {"value": 0.0, "ci_low": 0.0, "ci_high": 0.0, "p_value": 1.0}
    factor = setting["factor"]
    assert factor["median"] == factor["ci_low"] == factor["ci_high"] == 1.0
    assert factor["fraction_reached"] == 1.0
    assert not factor["ci_low_above_1"] and not factor["meets_remedis_bar"]


def _permute_within_class(rng, path, out_path):
  """The same predictions with scores shuffled among positives and among negatives.

  Per finding, the AUROC on the test set is unchanged (it depends only on the
  sets of positive and negative scores), but each image now carries another
  image's score, so bootstrap replicates differ: a null with Δ = 0 exactly.
  """
  with np.load(path) as f:
    arrays = dict(f)
  probabilities = arrays["probabilities"].copy()
  for k in range(probabilities.shape[1]):
    for cls in (0.0, 1.0):
      rows = np.flatnonzero(arrays["labels"][:, k] == cls)
      probabilities[rows, k] = probabilities[rng.permutation(rows), k]
  np.savez(out_path, **{**arrays, "probabilities": probabilities})
  return str(out_path)


def test_null_case_p_is_not_small_and_swapping_methods_mirrors_it(tmp_path):
  runs_a, runs_b = _study(tmp_path, lambda method, n: 1.0 + math.log(n) / 4, n_test=120)
  rng = np.random.default_rng(0)
  for runs in (runs_a, runs_b):
    half = len(runs) // 2
    for remedis, baseline in zip(runs[:half], runs[half:], strict=True):
      assert (remedis["method"], baseline["method"]) == ("remedis", "baseline")
      remedis["predictions"] = {
        site: _permute_within_class(rng, path, tmp_path / f"null_{os.path.basename(path)}")
        for site, path in baseline["predictions"].items()
      }
  stats = study_stats.study_statistics(runs_a, runs_b, FINDINGS, num_replicates=400, seed=2)
  swapped = [
    [dict(r, method="baseline" if r["method"] == "remedis" else "remedis") for r in runs]
    for runs in (runs_a, runs_b)
  ]
  mirror = study_stats.study_statistics(*swapped, FINDINGS, num_replicates=400, seed=2)
  for key in ("id", "ood", "zero_shot"):
    for point, other in zip(
      stats["findings"]["cardiomegaly"][key]["points"],
      mirror["findings"]["cardiomegaly"][key]["points"],
      strict=True,
    ):
      d, e = point["delta"], other["delta"]
      assert d["value"] == pytest.approx(0.0, abs=EXACT)
      assert e["ci_low"] == pytest.approx(-d["ci_high"], abs=EXACT)
      assert e["ci_high"] == pytest.approx(-d["ci_low"], abs=EXACT)
      # p + p_swapped = (2 + R + #{Δ* = 0}) / (1 + R) >= 1: both cannot be small.
      assert d["p_value"] + e["p_value"] >= 1.0
      # Δ = 0 on the test set: the interval holds 0 and p is far from small.
      assert d["ci_low"] < 0 < d["ci_high"]
      assert 0.1 < d["p_value"] < 0.9
  for key in ("id", "ood"):
    factor = stats["findings"]["cardiomegaly"][key]["factor"]
    assert factor["point"] == pytest.approx(1.0)
    assert not factor["ci_low_above_1"] and not factor["ci_high_below_1"]
    assert not factor["meets_remedis_bar"]


def test_remedis_never_reaching_the_baseline_is_counted_not_dropped(tmp_path):
  strength = lambda method, n: 0.3 if method == "remedis" else 3.0
  runs_a, runs_b = _study(tmp_path, strength, n_test=80)
  stats = study_stats.study_statistics(runs_a, runs_b, FINDINGS, num_replicates=200, seed=0)
  factor = stats["findings"]["cardiomegaly"]["ood"]["factor"]
  assert factor["computed"]
  assert factor["fraction_reached"] == 0.0 and factor["replicates"] == 200
  assert factor["point"] == factor["median"] == study_stats.NOT_REACHED
  assert factor["ci_low"] == factor["ci_high"] == study_stats.NOT_REACHED
  assert factor["ci_high_below_1"] and not factor["ci_low_above_1"]
  assert factor["remedis_labels"] is None


def test_near_chance_curves_get_no_factor(tmp_path):
  runs_a, runs_b = _study(tmp_path, lambda method, n: None)
  stats = study_stats.study_statistics(runs_a, runs_b, FINDINGS, num_replicates=200, seed=0)
  for key in ("id", "ood"):
    setting = stats["findings"]["cardiomegaly"][key]
    assert setting["above_chance"] == {"remedis": False, "baseline": False}
    assert setting["factor"] == {"computed": False, "reason": "both methods stay near chance"}


def test_replicates_without_both_classes_are_dropped_explicitly(tmp_path):
  runs_a, runs_b = _study(tmp_path, lambda method, n: 2.0, n_test=40)
  # Site B: one positive patient for cardiomegaly (two images), all others negative.
  for run in [*runs_a, *runs_b]:
    path = run["predictions"].get("siteB")
    if path is None:
      continue
    with np.load(path) as f:
      arrays = dict(f)
    labels = arrays["labels"]
    labels[:, 1] = 0.0
    labels[:2, 1] = 1.0
    labels[5, 1] = -1.0
    np.savez(path, **arrays)
  replicates, seed = 300, 4
  stats = study_stats.study_statistics(
    runs_a, runs_b, FINDINGS, num_replicates=replicates, seed=seed
  )
  with np.load(runs_b[0]["predictions"]["siteB"]) as f:
    weights = study_stats.patient_weights(f["patient_ids"], replicates, seed, 1)
  # Replicates that did not draw the positive patient have no positive.
  missing = weights[:, 0] == 0
  ood = stats["findings"]["cardiomegaly"]["ood"]
  assert ood["valid_replicates"] == replicates - missing.sum()
  assert ood["n_positive"] == 2 and ood["n_unknown"] == 1
  # P(patient not drawn) = (1 - 1/20)^20 = 0.36 < 0.5 of the replicates: estimated.
  assert ood["intervals_estimated"] and ood["points"][0]["remedis"]["ci_low"] is not None
  strict = study_stats.study_statistics(
    runs_a, runs_b, FINDINGS, num_replicates=replicates, seed=seed, min_valid_fraction=0.9
  )
  ood = strict["findings"]["cardiomegaly"]["ood"]
  assert not ood["intervals_estimated"]
  for point in ood["points"]:
    assert point["remedis"]["auroc"] is not None and point["remedis"]["ci_low"] is None
    assert point["delta"]["ci_low"] is None and point["delta"]["p_value"] is None
  assert not ood["factor"]["computed"] and "replicates hold both classes" in ood["factor"]["reason"]
  json.dumps(strict, allow_nan=False)


def test_misaligned_test_rows_and_bad_files_raise_clear_errors(tmp_path):
  runs_a, runs_b = _study(tmp_path, lambda method, n: 1.0)
  path = runs_b[-1]["predictions"]["siteB"]
  with np.load(path) as f:
    arrays = dict(f)
  np.savez(path, **{**arrays, "source_ids": arrays["source_ids"][::-1].copy()})
  with pytest.raises(ValueError, match=r"differ in source_ids at row 0.*same order"):
    study_stats.study_statistics(runs_a, runs_b, FINDINGS, num_replicates=10)
  np.savez(path, **{k: v for k, v in arrays.items() if k != "patient_ids"})
  with pytest.raises(ValueError, match=r"missing arrays \['patient_ids'\]"):
    study_stats.study_statistics(runs_a, runs_b, FINDINGS, num_replicates=10)
  del runs_b[-1]["predictions"]
  with pytest.raises(ValueError, match="has no 'predictions'"):
    study_stats.study_statistics(runs_a, runs_b, FINDINGS, num_replicates=10)


def test_runs_with_non_finite_probabilities_are_listed_and_left_out(tmp_path):
  runs_a, runs_b = _study(tmp_path, lambda method, n: 1.0)
  path = runs_b[0]["predictions"]["siteB"]
  with np.load(path) as f:
    arrays = dict(f)
  arrays["probabilities"][:, 1] = np.nan
  np.savez(path, **arrays)
  stats = study_stats.study_statistics(runs_a, runs_b, FINDINGS, num_replicates=50)
  excluded = stats["excluded_runs"]
  assert [(e["site"], e["finding"]) for e in excluded] == [("siteB", "cardiomegaly")]
  assert "seed=0" in excluded[0]["run"] and runs_b[0]["method"] in excluded[0]["run"]
  first = stats["findings"]["cardiomegaly"]["ood"]["points"][0]
  assert first[runs_b[0]["method"]]["seeds"] == [1]
  json.dumps(stats, allow_nan=False)
