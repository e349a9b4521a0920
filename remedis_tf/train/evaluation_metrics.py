"""AUROC and accuracy with patient-level bootstrap confidence intervals.

AUROC is the Mann-Whitney statistic: the probability that a random positive
scores above a random negative, ties counted as one half,

  AUROC = sum_{i pos} sum_{j neg} w_i w_j ([s_i > s_j] + 0.5 [s_i == s_j])
          / (W_pos * W_neg).

With unit weights this is the rank formula with average ranks for ties
(equal to scikit-learn's `roc_auc_score`). Integer weights are what a
bootstrap replicate is: example i counted as many times as its patient was
drawn. Scores are sorted once; every replicate is then a weighted sum over the
same tie groups, so B replicates cost O(B * N).

Bootstrap: patients (not images) are resampled with replacement, because
images of one patient are correlated; a 95% interval is the 2.5th and 97.5th
percentiles of the replicate statistics (percentile method). Replicates in
which a label has no positive or no negative are undefined for that label and
left out of its percentiles.

Labels (`label_mode`, a LabelMode or any spelling `LabelMode.parse` takes):
  * multi-class: labels (N,) int class index, -1 = unlabeled; scores (N, C)
    class probabilities (or logits). AUROC is one-vs-rest per class, accuracy
    is top-1.
  * multi-label: labels (N, K) in {0, 1}, -1 = unknown entry; scores (N, K)
    per-label probabilities. Accuracy is over the known entries at
    `threshold`.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

from tfrecords_tools.schema import LabelMode


@dataclasses.dataclass(frozen=True)
class _TieGroups:
  """Scores sorted once and cut into runs of equal score."""

  order: np.ndarray  # (N,) argsort of the scores.
  starts: np.ndarray  # (G,) first sorted position of each run of equal scores.


def _tie_groups(scores: np.ndarray) -> _TieGroups:
  order = np.argsort(scores, kind="stable")
  sorted_scores = scores[order]
  starts = np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])
  return _TieGroups(order, starts)


def weighted_auroc(
  labels: np.ndarray, scores: np.ndarray, weights: np.ndarray | None = None
) -> np.ndarray | float:
  """AUROC of binary labels under example weights (Mann-Whitney with ties).

  Args:
    labels: (N,) 0/1 (bool or numbers); entries of other values must be
      removed by the caller.
    scores: (N,) real scores; higher means positive.
    weights: None (unit weights), (N,) or (B, N) non-negative weights, e.g.
      bootstrap counts.

  Returns:
    A float for None or (N,) weights, else (B,) float64; NaN where the
    weighted positives or negatives are zero.
  """
  labels = np.asarray(labels).astype(bool)
  scores = np.asarray(scores, dtype=np.float64)
  if labels.shape != scores.shape or labels.ndim != 1:
    raise ValueError(f"labels and scores must both be (N,), got {labels.shape}, {scores.shape}.")
  squeeze = weights is None or np.ndim(weights) == 1
  w = np.ones((1, labels.size)) if weights is None else np.atleast_2d(np.asarray(weights, float))
  if w.shape[1] != labels.size:
    raise ValueError(f"weights must have N={labels.size} columns, got {w.shape}.")
  if labels.size == 0:
    out = np.full(w.shape[0], np.nan)
    return float(out[0]) if squeeze else out
  groups = _tie_groups(scores)
  pos = labels[groups.order]
  ws = w[:, groups.order]
  pos_w = np.add.reduceat(ws * pos, groups.starts, axis=1)  # (B, G)
  neg_w = np.add.reduceat(ws * ~pos, groups.starts, axis=1)
  neg_below = np.cumsum(neg_w, axis=1) - neg_w
  numerator = np.sum(pos_w * (neg_below + 0.5 * neg_w), axis=1)
  denominator = pos_w.sum(axis=1) * neg_w.sum(axis=1)
  with np.errstate(invalid="ignore", divide="ignore"):
    out = np.where(denominator > 0, numerator / np.where(denominator > 0, denominator, 1), np.nan)
  return float(out[0]) if squeeze else out


def _binary_tasks(
  labels: np.ndarray, scores: np.ndarray, label_mode: LabelMode | str
) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
  """Per label/class (valid mask, 0/1 targets, scores), each (N,)."""
  label_mode = LabelMode.parse(label_mode)
  if label_mode == LabelMode.MULTI_CLASS:
    if labels.ndim != 1 or scores.ndim != 2 or scores.shape[0] != labels.shape[0]:
      raise ValueError(
        f"multi_class needs labels (N,) and scores (N, C); got {labels.shape}, {scores.shape}."
      )
    if labels.size and labels.max() >= scores.shape[1]:
      raise ValueError(f"Label {labels.max()} out of range for {scores.shape[1]} classes.")
    valid = labels >= 0
    return [(valid, labels == c, scores[:, c]) for c in range(scores.shape[1])]
  if label_mode == LabelMode.MULTI_LABEL:
    if labels.shape != scores.shape or labels.ndim != 2:
      raise ValueError(
        f"multi_label needs labels and scores of shape (N, K); got {labels.shape}, {scores.shape}."
      )
    return [(labels[:, k] >= 0, labels[:, k] > 0.5, scores[:, k]) for k in range(labels.shape[1])]
  raise AssertionError(f"unhandled label mode {label_mode!r}")


def _correct(labels: np.ndarray, scores: np.ndarray, label_mode: LabelMode | str, threshold: float):
  """(correct, valid) float arrays of the same shape, for accuracy."""
  if LabelMode.parse(label_mode) == LabelMode.MULTI_CLASS:
    valid = labels >= 0
    return (np.argmax(scores, axis=1) == labels) & valid, valid
  valid = labels >= 0
  return ((scores >= threshold) == (labels > 0.5)) & valid, valid


def _weighted_accuracy(correct: np.ndarray, valid: np.ndarray, w: np.ndarray) -> np.ndarray:
  """Accuracy under weights w (B, N); correct/valid (N,) or (N, K)."""
  if correct.ndim == 2:
    correct, valid = correct.sum(axis=1), valid.sum(axis=1)
  num = w @ correct.astype(np.float64)
  den = w @ valid.astype(np.float64)
  with np.errstate(invalid="ignore", divide="ignore"):
    return np.where(den > 0, num / np.where(den > 0, den, 1), np.nan)


def auroc_per_label(
  labels: np.ndarray, scores: np.ndarray, label_mode: LabelMode | str
) -> np.ndarray:
  """Per-label (multi-label) or one-vs-rest per-class (multi-class) AUROC.

  Args:
    labels: see the module docstring.
    scores: see the module docstring.
    label_mode: a LabelMode (or a spelling of one).

  Returns:
    (K,) float64, NaN for labels without both classes.
  """
  labels, scores = np.asarray(labels), np.asarray(scores, np.float64)
  return np.array(
    [weighted_auroc(y[v], s[v]) for v, y, s in _binary_tasks(labels, scores, label_mode)]
  )


def accuracy(
  labels: np.ndarray, scores: np.ndarray, label_mode: LabelMode | str, threshold: float = 0.5
) -> float:
  """Top-1 accuracy (multi-class) or entry-wise accuracy at `threshold` (multi-label)."""
  labels, scores = np.asarray(labels), np.asarray(scores, np.float64)
  correct, valid = _correct(labels, scores, label_mode, threshold)
  return float(_weighted_accuracy(correct, valid, np.ones((1, labels.shape[0])))[0])


def patient_bootstrap_weights(
  patient_ids: Sequence[Any] | np.ndarray, num_replicates: int, seed: int
) -> np.ndarray:
  """Bootstrap weights that resample patients with replacement.

  Args:
    patient_ids: (N,) any hashable ids; examples of one patient share it.
    num_replicates: B.
    seed: NumPy generator seed.

  Returns:
    (B, N) float64: for replicate b, how many times example i's patient was
    drawn (P draws from the P distinct patients).
  """
  counts, patient_index = patient_bootstrap_counts(patient_ids, num_replicates, seed)
  return counts[:, patient_index]


def patient_bootstrap_counts(
  patient_ids: Sequence[Any] | np.ndarray, num_replicates: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
  """How often each patient is drawn in each replicate (the compact form of the weights).

  Args:
    patient_ids: (N,) any hashable ids.
    num_replicates: B.
    seed: NumPy generator seed.

  Returns:
    (counts (B, P) float64, patient_index (N,) int): the weight of example i
    in replicate b is counts[b, patient_index[i]].
  """
  _, patient_index = np.unique(np.asarray(patient_ids), return_inverse=True)
  patient_index = patient_index.ravel()
  num_patients = int(patient_index.max()) + 1 if patient_index.size else 0
  rng = np.random.default_rng(seed)
  draws = rng.integers(0, max(num_patients, 1), size=(num_replicates, num_patients))
  counts = np.zeros((num_replicates, num_patients))
  np.add.at(counts, (np.arange(num_replicates)[:, None], draws), 1.0)
  return counts, patient_index


def _interval(values: np.ndarray, confidence: float) -> tuple[float, float]:
  values = values[np.isfinite(values)]
  if values.size == 0:
    return float("nan"), float("nan")
  alpha = 100.0 * (1.0 - confidence) / 2.0
  low, high = np.percentile(values, [alpha, 100.0 - alpha])
  return float(low), float(high)


def _summary(point: float, replicates: np.ndarray, confidence: float) -> dict[str, Any]:
  low, high = _interval(replicates, confidence)
  return {
    "value": point,
    "ci_low": low,
    "ci_high": high,
    "valid_replicates": int(np.isfinite(replicates).sum()),
  }


def compute_metrics(
  labels: np.ndarray,
  scores: np.ndarray,
  label_mode: LabelMode | str,
  patient_ids: Sequence[Any] | np.ndarray | None = None,
  label_names: Sequence[str] | None = None,
  num_bootstrap: int = 1000,
  confidence: float = 0.95,
  seed: int = 0,
  threshold: float = 0.5,
  chunk_size: int = 250,
) -> dict[str, Any]:
  """Per-label and macro AUROC and accuracy, each with a patient bootstrap CI.

  Args:
    labels: (N,) ints (multi-class) or (N, K) in {0, 1, -1} (multi-label).
    scores: (N, C) or (N, K) probabilities.
    label_mode: a LabelMode (or a spelling of one).
    patient_ids: (N,) patient of each example; None treats every example as
      its own patient.
    label_names: K names; defaults to "0", "1", ...
    num_bootstrap: replicates B (0 disables intervals).
    confidence: interval coverage, e.g. 0.95.
    seed: bootstrap seed.
    threshold: multi-label decision threshold for accuracy.
    chunk_size: replicates whose (chunk, N) example weights exist at once;
      memory is B * P patient counts plus chunk * N weights.

  Returns:
    A JSON-serialisable dict:
      {'label_mode', 'n_examples', 'n_patients',
       'auroc': {'per_label': {name: {'value', 'ci_low', 'ci_high',
                                      'valid_replicates', 'n_positive',
                                      'n_negative'}},
                 'macro': {'value', 'ci_low', 'ci_high', 'valid_replicates'}},
       'accuracy': {'value', 'ci_low', 'ci_high', 'valid_replicates'},
       'bootstrap': {'replicates', 'unit': 'patient', 'confidence', 'seed'}}
    Macro AUROC is the mean over labels with a defined AUROC, per replicate
    too. Undefined values are NaN.
  """
  labels = np.asarray(labels)
  scores = np.asarray(scores, np.float64)
  tasks = _binary_tasks(labels, scores, label_mode)
  n = labels.shape[0]
  if patient_ids is None:
    patient_ids = np.arange(n)
  patient_ids = np.asarray(patient_ids)
  if patient_ids.shape != (n,):
    raise ValueError(f"patient_ids must have shape ({n},), got {patient_ids.shape}.")
  names = list(label_names) if label_names is not None else [str(k) for k in range(len(tasks))]
  if len(names) != len(tasks):
    raise ValueError(f"{len(names)} label names for {len(tasks)} labels.")
  if not 0 < confidence < 1:
    raise ValueError(f"confidence must be in (0, 1), got {confidence}.")

  point_auc = np.array([weighted_auroc(y[v], s[v]) for v, y, s in tasks])
  correct, valid = _correct(labels, scores, label_mode, threshold)
  point_acc = float(_weighted_accuracy(correct, valid, np.ones((1, n)))[0])

  rep_auc = np.full((num_bootstrap, len(tasks)), np.nan)
  rep_acc = np.full(num_bootstrap, np.nan)
  if num_bootstrap > 0 and n > 0:
    counts, patient_index = patient_bootstrap_counts(patient_ids, num_bootstrap, seed)
    for lo in range(0, num_bootstrap, chunk_size):
      w = counts[lo : lo + chunk_size][:, patient_index]
      for k, (v, y, s) in enumerate(tasks):
        rep_auc[lo : lo + chunk_size, k] = weighted_auroc(y[v], s[v], w[:, v])
      rep_acc[lo : lo + chunk_size] = _weighted_accuracy(correct, valid, w)

  per_label = {}
  for k, (name, (v, y, _)) in enumerate(zip(names, tasks, strict=True)):
    per_label[name] = {
      **_summary(float(point_auc[k]), rep_auc[:, k], confidence),
      "n_positive": int(np.sum(y[v])),
      "n_negative": int(np.sum(~y[v])),
    }
  defined = np.isfinite(point_auc)
  macro_point = float(point_auc[defined].mean()) if defined.any() else float("nan")
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN replicate rows
    rep_macro = np.nanmean(rep_auc[:, defined], axis=1) if defined.any() else rep_acc * np.nan
  return {
    "label_mode": LabelMode.parse(label_mode).value,
    "n_examples": int(n),
    "n_patients": int(np.unique(patient_ids).size),
    "auroc": {
      "per_label": per_label,
      "macro": _summary(macro_point, rep_macro, confidence),
    },
    "accuracy": _summary(point_acc, rep_acc, confidence),
    "bootstrap": {
      "replicates": int(num_bootstrap),
      "unit": "patient",
      "confidence": confidence,
      "seed": seed,
    },
  }
