"""Paired, patient-level bootstrap statistics of the demo study.

Every fine-tuning run is evaluated on a site's test split and saves its
predictions; every run evaluated on one site sees the same images in the same
order. The statistics compare the two methods on those same images:

* AUROC of a finding: the Mann-Whitney statistic over the images whose label
  for that finding is known (label -1 = unknown is left out per finding).
* A point (a label count, or zero-shot) averages the AUROC of a method over
  its seeds.
* Bootstrap: test *patients* are drawn with replacement (`num_replicates`
  times, seeded). A replicate is a vector of integer multiplicities, one per
  image (its patient's draw count), and the weighted AUROC under those weights
  equals the AUROC of the resampled test set. The same replicate is applied
  to both methods, to every seed and to every label count evaluated on that
  site, and seeds are averaged inside each replicate; so ΔAUROC = REMEDIS -
  baseline is paired, and curves keep their shape across label counts.
* A replicate in which the resampled test set has no positive or no negative
  for a finding has no AUROC for any run; it is dropped for that finding and
  site (every statistic of that finding and site uses the same remaining
  replicates) and counted in `valid_replicates`. When fewer than
  `min_valid_fraction` of the replicates remain, no interval, p-value or
  factor is estimated.
* Intervals: percentile intervals of the replicates (linear interpolation,
  `numpy.quantile`). One-sided p-value for ΔAUROC <= 0:
  p = (1 + #{Δ* <= 0}) / (1 + R), R = valid replicates: the smallest α at
  which the one-sided 1 - α percentile lower bound of Δ is above 0, counted
  conservatively (it is never 0).
* Data-efficiency factor, per replicate: target = the baseline's best AUROC
  over its measured label counts (the fewest labels where it is reached);
  REMEDIS's labels to reach the target = the first measured label count whose
  AUROC reaches it, interpolated linearly in log(labels) from the count before;
  factor = the baseline's labels at its best / REMEDIS's labels. "Not reached"
  (REMEDIS stays below the target at every measured count) enters as factor 0
  (REMEDIS would need infinitely many labels), so it counts against REMEDIS;
  when REMEDIS already reaches the target at its smallest measured count, the
  factor is a lower bound (fewer labels were not measured), which also counts
  against REMEDIS. Median and 95% interval are order statistics
  (`numpy.quantile(method="inverted_cdf")`, no interpolation with the
  not-reached zeros); a quantile that falls on a not-reached replicate is
  reported as "not reached".

The intervals describe the uncertainty from the finite test set, given the
models that were trained (averaged over the seeds run); they do not model
training randomness beyond those seeds.
"""

from __future__ import annotations

import dataclasses
import math
import os
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

DEFAULT_REPLICATES = 2000
CONFIDENCE = 0.95
CHANCE = 0.5
# A curve counts as above chance only where its AUROC is at least this far
# above 0.5 and its 95% interval excludes 0.5.
CHANCE_MARGIN = 0.05
MIN_VALID_FRACTION = 0.5
# REMEDIS reports 3-100x fewer out-of-distribution labels.
REMEDIS_BAR = 3.0
NOT_REACHED = "not reached"
METHODS = ("remedis", "baseline")
PREDICTION_ARRAYS = ("labels", "probabilities", "patient_ids", "source_ids")


@dataclasses.dataclass(frozen=True)
class Predictions:
  """One run's predictions on one site's test split.

  Attributes:
    path: the .npz they were read from.
    labels: (N, K) float32 in {0, 1, -1} (-1 = unknown entry).
    probabilities: (N, K) float32.
    patient_ids: (N,) str.
    source_ids: (N,) str, one per image.
  """

  path: str
  labels: np.ndarray
  probabilities: np.ndarray
  patient_ids: np.ndarray
  source_ids: np.ndarray


def load_predictions(path: str, num_findings: int) -> Predictions:
  """Reads and checks a predictions .npz.

  Args:
    path: file with arrays `labels` (N, K), `probabilities` (N, K),
      `patient_ids` (N,) and `source_ids` (N,) (string arrays, not objects).
    num_findings: K.

  Returns:
    The Predictions.

  Raises:
    FileNotFoundError: no such file.
    ValueError: missing arrays, wrong shapes or label values (naming `path`).
  """
  if not os.path.isfile(path):
    raise FileNotFoundError(f"predictions file {path!r} does not exist.")
  with np.load(path, allow_pickle=False) as data:
    missing = [k for k in PREDICTION_ARRAYS if k not in data.files]
    if missing:
      raise ValueError(f"{path}: missing arrays {missing}; expected {list(PREDICTION_ARRAYS)}.")
    arrays = {k: data[k] for k in PREDICTION_ARRAYS}
  labels = np.asarray(arrays["labels"], np.float32)
  probabilities = np.asarray(arrays["probabilities"], np.float32)
  n = labels.shape[0] if labels.ndim else 0
  if labels.ndim != 2 or labels.shape[1] != num_findings:
    raise ValueError(f"{path}: labels must be (N, {num_findings}), got {labels.shape}.")
  if probabilities.shape != labels.shape:
    raise ValueError(
      f"{path}: probabilities {probabilities.shape} do not match labels {labels.shape}."
    )
  for key in ("patient_ids", "source_ids"):
    if arrays[key].shape != (n,):
      raise ValueError(f"{path}: {key} must be ({n},), got {arrays[key].shape}.")
  bad = ~np.isin(labels, (0.0, 1.0, -1.0))
  if bad.any():
    raise ValueError(f"{path}: labels must be 0, 1 or -1; found {np.unique(labels[bad])[:5]}.")
  if n == 0:
    raise ValueError(f"{path}: no test images.")
  return Predictions(
    path=path,
    labels=labels,
    probabilities=probabilities,
    patient_ids=arrays["patient_ids"].astype(str),
    source_ids=arrays["source_ids"].astype(str),
  )


def check_same_rows(reference: Predictions, other: Predictions) -> None:
  """Raises ValueError unless both files hold the same test images in the same order."""
  if other.source_ids.shape != reference.source_ids.shape:
    raise ValueError(
      f"{other.path} has {other.source_ids.size} test images, {reference.path} has "
      f"{reference.source_ids.size}: runs evaluated on one site must see the same images."
    )
  for key in ("source_ids", "patient_ids", "labels"):
    a, b = getattr(reference, key), getattr(other, key)
    if not np.array_equal(a, b):
      row = int(np.flatnonzero(np.any((a != b).reshape(a.shape[0], -1), axis=1))[0])
      raise ValueError(
        f"{other.path} and {reference.path} differ in {key} at row {row}: runs evaluated on "
        "one site must list the same test images in the same order."
      )


def patient_weights(patient_ids: np.ndarray, num_replicates: int, seed: int, stream: int):
  """Patient-level bootstrap multiplicities of every image.

  Args:
    patient_ids: (N,) patient of each image.
    num_replicates: R.
    seed: bootstrap seed (a non-negative int).
    stream: a second key (e.g. the site's index) so that sites draw independently.

  Returns:
    (R, N) float64: how many times image i's patient was drawn in replicate r
    (P draws with replacement from the P distinct patients).
  """
  _, index = np.unique(patient_ids, return_inverse=True)
  index = index.ravel()
  num_patients = int(index.max()) + 1
  rng = np.random.default_rng([seed, stream])
  draws = rng.integers(0, num_patients, size=(num_replicates, num_patients))
  flat = (np.arange(num_replicates)[:, None] * num_patients + draws).ravel()
  counts = np.bincount(flat, minlength=num_replicates * num_patients)
  return counts.reshape(num_replicates, num_patients)[:, index].astype(np.float64)


def weighted_auroc(positive: np.ndarray, scores: np.ndarray, weights: np.ndarray) -> np.ndarray:
  """Weighted Mann-Whitney AUROC under many weight vectors at once.

  AUROC_r = sum_{i pos} sum_{j neg} w_ir w_jr ([s_i > s_j] + 0.5 [s_i == s_j])
            / (W_pos,r * W_neg,r).
  With integer weights (bootstrap multiplicities) this is exactly the AUROC
  of the resampled set. The scores are sorted once; each weight vector then
  costs a few passes over N (cumulative negative weight below each score,
  tie groups merged).

  Args:
    positive: (N,) bool.
    scores: (N,) real.
    weights: (N, R) non-negative weights, one column per replicate (this
      layout keeps every pass contiguous).

  Returns:
    (R,) float64; NaN where the weighted positives or negatives are zero.
  """
  order = np.argsort(scores, kind="stable")
  sorted_scores = scores[order]
  w = weights[order]
  w_pos = w * positive[order][:, None]
  w_neg = w - w_pos
  if np.any(sorted_scores[1:] == sorted_scores[:-1]):
    starts = np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])
    w_pos = np.add.reduceat(w_pos, starts, axis=0)
    w_neg = np.add.reduceat(w_neg, starts, axis=0)
  # Negative weight strictly below each tie group plus half of the group's own.
  below = np.cumsum(w_neg, axis=0)
  below -= 0.5 * w_neg
  numerator = np.einsum("gr,gr->r", w_pos, below)
  denominator = w_pos.sum(axis=0) * w_neg.sum(axis=0)
  with np.errstate(invalid="ignore", divide="ignore"):
    return np.where(denominator > 0, numerator / np.where(denominator > 0, denominator, 1), np.nan)


class FindingBootstrap:
  """One finding on one test set: its known entries and its bootstrap replicates.

  Entries labelled -1 (unknown) are left out. A replicate is valid when its
  resampled known entries hold both classes; every run evaluated on this test
  set has a defined AUROC in exactly the valid replicates.
  """

  def __init__(self, labels: np.ndarray, weights: np.ndarray) -> None:
    """Prepares the finding.

    Args:
      labels: (N,) in {0, 1, -1}.
      weights: (R, N) bootstrap multiplicities (e.g. `patient_weights`).
    """
    self.known = labels >= 0
    self.positive = labels[self.known] > 0.5
    self.weights = np.ascontiguousarray(weights[:, self.known].T)  # (N_known, R)
    self.valid = (self.weights[self.positive].sum(axis=0) > 0) & (
      self.weights[~self.positive].sum(axis=0) > 0
    )

  def auroc(self, scores: np.ndarray) -> tuple[float, np.ndarray]:
    """AUROC on the test set and in every replicate.

    Args:
      scores: (N,) predicted probabilities of the finding (all N entries).

    Returns:
      (AUROC on the test set, (R,) float64 per replicate); NaN where the
      (resampled) known entries hold one class only.
    """
    s = np.asarray(scores[self.known], np.float64)
    point = float(weighted_auroc(self.positive, s, np.ones((s.size, 1)))[0])
    return point, weighted_auroc(self.positive, s, self.weights)


def percentile_interval(values: np.ndarray, confidence: float = CONFIDENCE) -> tuple[float, float]:
  """Percentile interval (linear interpolation) of finite replicate values."""
  alpha = (1.0 - confidence) / 2.0
  low, high = np.quantile(values, [alpha, 1.0 - alpha])
  return float(low), float(high)


def one_sided_p(deltas: np.ndarray) -> float:
  """Bootstrap p-value for Δ <= 0: (1 + #{Δ* <= 0}) / (1 + R)."""
  return float((1 + np.count_nonzero(deltas <= 0)) / (1 + deltas.size))


def labels_to_reach(n_labels: Sequence[int], curve: np.ndarray, target: np.ndarray) -> np.ndarray:
  """Labels a curve needs to reach a target, per replicate.

  Args:
    n_labels: (P,) measured label counts, increasing.
    curve: (P, R) AUROC at each count in each replicate.
    target: (R,) AUROC to reach.

  Returns:
    (R,) float64: the first measured count whose AUROC is >= the target,
    interpolated linearly in log(labels) from the count before it; +inf when
    no measured count reaches the target.
  """
  ns = np.asarray(n_labels, np.float64)
  if ns.ndim != 1 or curve.shape[0] != ns.size or np.any(np.diff(ns) <= 0):
    raise ValueError(f"n_labels must be increasing and match curve rows; got {n_labels}.")
  reached = curve >= target[None, :]
  first = np.argmax(reached, axis=0)
  cols = np.arange(curve.shape[1])
  before = np.maximum(first - 1, 0)
  hi, lo = curve[first, cols], curve[before, cols]
  with np.errstate(invalid="ignore", divide="ignore"):
    # For first > 0, lo < target <= hi, so hi - lo > 0.
    frac = np.where(first > 0, (target - lo) / (hi - lo), 1.0)
  log_ns = np.log(ns)
  log_needed = log_ns[before] + frac * (log_ns[first] - log_ns[before])
  # At frac == 1 (the count itself reaches the target exactly, or is the
  # first count) take the count exactly rather than exp(log(n)).
  needed = np.where(frac >= 1.0, ns[first], np.exp(log_needed))
  return np.where(reached.any(axis=0), needed, np.inf)


@dataclasses.dataclass(frozen=True)
class Efficiency:
  """The data-efficiency factor per replicate (arrays of shape (R,)).

  Attributes:
    factor: baseline labels at its best / REMEDIS labels to reach it; 0 when
      REMEDIS does not reach it.
    target: the baseline's best AUROC.
    baseline_labels: the fewest baseline labels where its best is reached.
    remedis_labels: labels REMEDIS needs (+inf: not reached).
    at_smallest: REMEDIS reaches the target at its smallest measured count
      (the factor is then a lower bound).
  """

  factor: np.ndarray
  target: np.ndarray
  baseline_labels: np.ndarray
  remedis_labels: np.ndarray
  at_smallest: np.ndarray


def efficiency(
  remedis_n: Sequence[int],
  remedis_curve: np.ndarray,
  baseline_n: Sequence[int],
  baseline_curve: np.ndarray,
) -> Efficiency:
  """The data-efficiency factor of REMEDIS over the baseline, per replicate.

  Args:
    remedis_n: (P,) REMEDIS's measured label counts, increasing.
    remedis_curve: (P, R) REMEDIS's AUROC (mean over seeds) per count and replicate.
    baseline_n: (Q,) the baseline's measured label counts, increasing.
    baseline_curve: (Q, R).

  Returns:
    The Efficiency.
  """
  target = baseline_curve.max(axis=0)
  best = np.argmax(baseline_curve, axis=0)  # the first (fewest labels) of equal maxima
  baseline_labels = np.asarray(baseline_n, np.float64)[best]
  needed = labels_to_reach(remedis_n, remedis_curve, target)
  return Efficiency(
    factor=baseline_labels / needed,
    target=target,
    baseline_labels=baseline_labels,
    remedis_labels=needed,
    at_smallest=remedis_curve[0] >= target,
  )


# ---------------------------------------------------------------- the study


@dataclasses.dataclass(frozen=True)
class _Evaluation:
  """One run's AUROCs for one finding on one test site."""

  run: Mapping[str, Any]
  point: float
  replicates: np.ndarray  # (R,)


@dataclasses.dataclass
class _Site:
  """A site's test split, its bootstrap, and every run evaluated on it."""

  reference: Predictions
  weights: np.ndarray  # (R, N)
  # (comparison: 'id' | 'ood' | 'zero_shot' | None, run, predictions)
  evaluations: list[tuple[str | None, Mapping[str, Any], Predictions]]


def _describe(run: Mapping[str, Any]) -> str:
  n = "all" if run.get("all_labels") else run.get("n_labels")
  return (
    f"{run.get('method')} run on {run.get('train_site')} (n={n}, seed={run.get('seed')}, "
    f"model_dir={run.get('model_dir')})"
  )


def _resolve(path: str, root: str | None) -> str:
  return path if os.path.isabs(path) or root is None else os.path.join(root, path)


def _comparison(
  sweep: str, run: Mapping[str, Any], site: str, sites: tuple[str, str]
) -> str | None:
  """Which comparison a run's evaluation on `site` belongs to (None: none of them)."""
  site_a, site_b = sites
  if sweep == "a" and site == site_a:
    return "id"
  if sweep == "a" and site == site_b and run.get("all_labels"):
    return "zero_shot"
  if sweep == "b" and site == site_b:
    return "ood"
  return None


def _load_sites(
  sweeps: Mapping[str, Sequence[Mapping[str, Any]]],
  sites: tuple[str, str],
  num_findings: int,
  num_replicates: int,
  seed: int,
  root: str | None,
) -> dict[str, _Site]:
  """Reads every run's predictions, checks rows per site, draws each site's bootstrap.

  Sites draw independently: stream = the site's index in sorted order.
  """
  by_site: dict[str, list[tuple[str | None, Mapping[str, Any], Predictions]]] = {}
  for sweep, runs in sweeps.items():
    for run in runs:
      predictions = run.get("predictions")
      if not predictions:
        raise ValueError(f"{_describe(run)} has no 'predictions' (test-set .npz per site).")
      for site, path in sorted(predictions.items()):
        loaded = load_predictions(_resolve(path, root), num_findings)
        by_site.setdefault(site, []).append((_comparison(sweep, run, site, sites), run, loaded))
  out = {}
  for stream, site in enumerate(sorted(by_site)):
    reference = by_site[site][0][2]
    for _, _, other in by_site[site][1:]:
      check_same_rows(reference, other)
    weights = patient_weights(reference.patient_ids, num_replicates, seed, stream)
    out[site] = _Site(reference, weights, by_site[site])
  return out


def _interval_dict(point: float, reps: np.ndarray | None, confidence: float) -> dict[str, Any]:
  """{'value', 'ci_low', 'ci_high'}: None where not estimable."""
  if not math.isfinite(point):
    return {"value": None, "ci_low": None, "ci_high": None}
  if reps is None:
    return {"value": point, "ci_low": None, "ci_high": None}
  low, high = percentile_interval(reps, confidence)
  return {"value": point, "ci_low": low, "ci_high": high}


def _method_point(
  evaluations: Sequence[_Evaluation], valid: np.ndarray | None, confidence: float
) -> tuple[dict[str, Any], float, np.ndarray]:
  """A method's point: mean over seeds on the test set and in each replicate."""
  evaluations = sorted(evaluations, key=lambda e: e.run["seed"])
  point = float(np.mean([e.point for e in evaluations]))
  reps = np.mean([e.replicates for e in evaluations], axis=0)
  if valid is not None and not np.all(np.isfinite(reps[valid])):
    raise AssertionError("a run has no AUROC in a replicate that holds both classes.")
  summary = _interval_dict(point, None if valid is None else reps[valid], confidence)
  summary["auroc"] = summary.pop("value")
  summary["seeds"] = [int(e.run["seed"]) for e in evaluations]
  summary["per_seed"] = [e.point for e in evaluations]
  return summary, point, reps


def _delta(
  point: float, reps: np.ndarray, valid: np.ndarray | None, confidence: float
) -> dict[str, Any]:
  out = _interval_dict(point, None if valid is None else reps[valid], confidence)
  out["p_value"] = (
    one_sided_p(reps[valid]) if valid is not None and out["value"] is not None else None
  )
  return out


def _quantile_value(value: float) -> float | str:
  return NOT_REACHED if value == 0 else float(value)


def _factor_summary(
  points: Sequence[Mapping[str, Any]],
  curves: Mapping[str, np.ndarray],
  valid: np.ndarray,
  above_chance: Mapping[str, bool],
  confidence: float,
) -> dict[str, Any]:
  """The data-efficiency factor: point on the test set, median and interval over replicates."""
  ns = {m: [p["n_labels"] for p in points if p[m] is not None] for m in METHODS}
  if not ns["remedis"] or not ns["baseline"]:
    return {"computed": False, "reason": "a method has no measured label count"}
  if not above_chance["baseline"]:
    both = not above_chance["remedis"]
    return {
      "computed": False,
      "reason": "both methods stay near chance" if both else "the baseline stays near chance",
    }
  rows = {m: [i for i, p in enumerate(points) if p[m] is not None] for m in METHODS}
  point_curves = {m: np.array([[points[i][m]["auroc"]] for i in rows[m]]) for m in METHODS}
  rep_curves = {m: curves[m][rows[m]][:, valid] for m in METHODS}
  p = efficiency(ns["remedis"], point_curves["remedis"], ns["baseline"], point_curves["baseline"])
  r = efficiency(ns["remedis"], rep_curves["remedis"], ns["baseline"], rep_curves["baseline"])
  alpha = (1.0 - confidence) / 2.0
  low, median, high = np.quantile(r.factor, [alpha, 0.5, 1.0 - alpha], method="inverted_cdf")
  remedis_labels = float(p.remedis_labels[0])
  return {
    "computed": True,
    "point": _quantile_value(float(p.factor[0])),
    "point_is_lower_bound": bool(p.at_smallest[0]),
    "target_auroc": float(p.target[0]),
    "baseline_labels": int(p.baseline_labels[0]),
    "remedis_labels": remedis_labels if math.isfinite(remedis_labels) else None,
    "median": _quantile_value(median),
    "ci_low": _quantile_value(low),
    "ci_high": _quantile_value(high),
    "ci_low_above_1": bool(low > 1.0),
    "ci_high_below_1": bool(high < 1.0),
    "fraction_reached": float(np.mean(np.isfinite(r.remedis_labels))),
    "fraction_lower_bound": float(np.mean(r.at_smallest)),
    "replicates": int(valid.sum()),
    "meets_remedis_bar": bool(median >= REMEDIS_BAR and low > 1.0),
  }


def _above_chance(summary: Mapping[str, Any] | None, margin: float) -> bool:
  return (
    summary is not None
    and summary["ci_low"] is not None
    and summary["ci_low"] > CHANCE
    and summary["auroc"] >= CHANCE + margin
  )


def _setting(
  evaluations: Sequence[_Evaluation],
  labels: np.ndarray,
  valid: np.ndarray,
  *,
  by_count: bool,
  confidence: float,
  chance_margin: float,
  min_valid_fraction: float,
) -> dict[str, Any]:
  """Statistics of one comparison (a label sweep on one site, or zero-shot)."""
  estimable = valid.any() and valid.mean() >= min_valid_fraction
  use = valid if estimable else None
  groups: dict[tuple[int, bool], dict[str, list[_Evaluation]]] = {}
  for e in evaluations:
    key = (int(e.run["n_labels"]), bool(e.run.get("all_labels"))) if by_count else (0, False)
    groups.setdefault(key, {m: [] for m in METHODS})[e.run["method"]].append(e)
  points: list[dict[str, Any]] = []
  curves: dict[str, list[np.ndarray]] = {m: [] for m in METHODS}
  for n, all_labels in sorted(groups):
    group = groups[(n, all_labels)]
    row: dict[str, Any] = {"n_labels": n, "all_labels": all_labels}
    values = {}
    for m in METHODS:
      if group[m]:
        row[m], point, reps = _method_point(group[m], use, confidence)
        values[m] = (point, reps)
        curves[m].append(reps)
      else:
        row[m] = None
        curves[m].append(np.full(valid.size, np.nan))
    if len(values) == len(METHODS):
      (pr, rr), (pb, rb) = values["remedis"], values["baseline"]
      row["delta"] = _delta(pr - pb, rr - rb, use, confidence)
    else:
      row["delta"] = None
    points.append(row)
  positive = labels[labels >= 0] > 0.5
  out: dict[str, Any] = {
    "n_positive": int(positive.sum()),
    "n_negative": int((~positive).sum()),
    "n_unknown": int((labels < 0).sum()),
    "replicates": int(valid.size),
    "valid_replicates": int(valid.sum()),
    "intervals_estimated": bool(estimable),
    "points": points,
  }
  if by_count:
    above = {m: any(_above_chance(p[m], chance_margin) for p in points) for m in METHODS}
    out["above_chance"] = above
    if estimable:
      out["factor"] = _factor_summary(
        points, {m: np.array(c) for m, c in curves.items()}, valid, above, confidence
      )
    else:
      out["factor"] = {
        "computed": False,
        "reason": f"only {int(valid.sum())} of {valid.size} replicates hold both classes",
      }
  return out


def study_statistics(
  runs_a: Sequence[Mapping[str, Any]],
  runs_b: Sequence[Mapping[str, Any]],
  findings: Sequence[str],
  *,
  site_a: str = "siteA",
  site_b: str = "siteB",
  root: str | None = None,
  num_replicates: int = DEFAULT_REPLICATES,
  seed: int = 0,
  confidence: float = CONFIDENCE,
  chance_margin: float = CHANCE_MARGIN,
  min_valid_fraction: float = MIN_VALID_FRACTION,
) -> dict[str, Any]:
  """Paired bootstrap statistics of both label sweeps and of zero-shot OOD.

  Args:
    runs_a: site-A fine-tuning run records (method, train_site, n_labels,
      all_labels, seed, predictions: {eval_site: .npz path}); the all-labels
      runs are evaluated on site A and on site B (zero-shot).
    runs_b: site-B fine-tuning run records, evaluated on site B.
    findings: names of the K label columns, in the predictions' order.
    site_a: name of the in-distribution site.
    site_b: name of the out-of-distribution site.
    root: directory that relative prediction paths are relative to.
    num_replicates: bootstrap replicates R.
    seed: bootstrap seed (non-negative).
    confidence: interval coverage.
    chance_margin: margin above 0.5 a curve must pass (with its interval
      above 0.5) somewhere to count as above chance.
    min_valid_fraction: least fraction of replicates with both classes for
      intervals, p-values and factors to be estimated.

  Returns:
    A JSON-serialisable dict (no NaN):
      {'bootstrap': {...settings...},
       'test_sets': {site: {'images', 'patients'}},
       'excluded_runs': [{'run', 'site', 'finding', 'reason'}],
       'findings': {finding: {'id' | 'ood': setting, 'zero_shot': setting}}}
    A setting: {'n_positive', 'n_negative', 'n_unknown', 'replicates',
    'valid_replicates', 'intervals_estimated', 'points': [{'n_labels',
    'all_labels', method: {'auroc', 'ci_low', 'ci_high', 'seeds',
    'per_seed'} | None, 'delta': {'value', 'ci_low', 'ci_high', 'p_value'} |
    None}], and for 'id'/'ood' 'above_chance': {method: bool} and 'factor':
    {'computed', ...}}. Missing or not estimable values are None.
  """
  if num_replicates < 1:
    raise ValueError(f"num_replicates must be positive, got {num_replicates}.")
  if seed < 0:
    raise ValueError(f"the bootstrap seed must be non-negative, got {seed}.")
  for run in [*runs_a, *runs_b]:
    if run.get("method") not in METHODS:
      raise ValueError(f"{_describe(run)}: method must be one of {METHODS}.")
  sites = _load_sites(
    {"a": runs_a, "b": runs_b}, (site_a, site_b), len(findings), num_replicates, seed, root
  )
  test_site = {"id": site_a, "ood": site_b, "zero_shot": site_b}
  excluded: list[dict[str, Any]] = []
  per_finding: dict[str, Any] = {}
  for k, finding in enumerate(findings):
    evaluations: dict[str, list[_Evaluation]] = {key: [] for key in test_site}
    valid_by_site = {}
    for site_name, site in sites.items():
      labels = site.reference.labels[:, k]
      task = FindingBootstrap(labels, site.weights)
      valid_by_site[site_name] = task.valid
      for comparison, run, predictions in site.evaluations:
        if comparison is None:
          continue
        scores = predictions.probabilities[:, k]
        if not np.all(np.isfinite(scores[task.known])):
          excluded.append(
            {
              "run": _describe(run),
              "site": site_name,
              "finding": finding,
              "reason": "non-finite probabilities",
            }
          )
          continue
        point, reps = task.auroc(scores)
        evaluations[comparison].append(_Evaluation(run, point, reps))
    per_finding[finding] = {}
    for key, site_name in test_site.items():
      if site_name not in sites:
        per_finding[finding][key] = None
        continue
      with warnings.catch_warnings():
        # E.g. a mean over an empty selection raises instead of returning NaN.
        warnings.simplefilter("error", RuntimeWarning)
        per_finding[finding][key] = _setting(
          evaluations[key],
          sites[site_name].reference.labels[:, k],
          valid_by_site[site_name],
          by_count=key != "zero_shot",
          confidence=confidence,
          chance_margin=chance_margin,
          min_valid_fraction=min_valid_fraction,
        )
  return {
    "bootstrap": {
      "unit": "patient",
      "replicates": int(num_replicates),
      "seed": int(seed),
      "confidence": confidence,
      "chance_margin": chance_margin,
      "min_valid_fraction": min_valid_fraction,
      "interval": "percentile (numpy.quantile, linear)",
      "p_value": "one-sided for delta <= 0: (1 + #{delta* <= 0}) / (1 + valid replicates)",
      "factor_quantiles": "numpy.quantile(method='inverted_cdf'); not reached = factor 0",
    },
    "test_sets": {
      name: {
        "images": int(site.reference.labels.shape[0]),
        "patients": int(np.unique(site.reference.patient_ids).size),
        "runs": len(site.evaluations),
      }
      for name, site in sites.items()
    },
    "excluded_runs": excluded,
    "findings": per_finding,
  }
