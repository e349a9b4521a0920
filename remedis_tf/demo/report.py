"""The demo study's report: data-efficiency factor, plots, Markdown and JSON.

A *curve* maps a number of labeled training examples to the AUROCs measured
with that many labels, one AUROC per seed: `{n_labels: [auroc_seed0, ...]}`.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

Curve = Mapping[int, Sequence[float]]


@dataclass(frozen=True)
class CurveSummary:
  """Mean and 95% interval over seeds of one curve, sorted by label count."""

  n_labels: list[int]
  mean: list[float]
  low: list[float]
  high: list[float]
  seeds: int


def summarize_curve(curve: Curve) -> CurveSummary:
  """Mean and a 95% t-interval over seeds at every label count.

  With one seed the interval collapses to the point.
  """
  ns = sorted(curve)
  means, lows, highs = [], [], []
  seeds = min((len(curve[n]) for n in ns), default=0)
  for n in ns:
    values = np.asarray(curve[n], dtype=np.float64)
    mean = float(values.mean())
    if values.size > 1:
      half = _t_quantile_975(values.size - 1) * float(values.std(ddof=1)) / math.sqrt(values.size)
    else:
      half = 0.0
    means.append(mean)
    lows.append(max(0.0, mean - half))
    highs.append(min(1.0, mean + half))
  return CurveSummary(ns, means, lows, highs, seeds)


def _t_quantile_975(dof: int) -> float:
  """Two-sided 95% Student-t quantile for small degrees of freedom."""
  table = {
    1: 12.706,
    2: 4.303,
    3: 3.182,
    4: 2.776,
    5: 2.571,
    6: 2.447,
    7: 2.365,
    8: 2.306,
    9: 2.262,
    10: 2.228,
  }
  return table.get(dof, 1.96 if dof > 30 else 2.1)


def labels_to_reach(curve: Curve, target: float) -> float | None:
  """Fewest labels at which the curve's mean AUROC reaches `target`.

  Between two measured label counts the mean is interpolated linearly in
  log(n), the axis on which label-efficiency curves are drawn. Returns None
  when no measured point reaches the target.
  """
  summary = summarize_curve(curve)
  ns, means = summary.n_labels, summary.mean
  for i, (n, m) in enumerate(zip(ns, means, strict=True)):
    if m >= target:
      if i == 0:
        return float(n)
      n0, m0 = ns[i - 1], means[i - 1]
      if m == m0:
        return float(n)
      frac = (target - m0) / (m - m0)
      return float(math.exp(math.log(n0) + frac * (math.log(n) - math.log(n0))))
  return None


def data_efficiency(remedis: Curve, baseline: Curve) -> dict[str, object]:
  """How many times fewer labels REMEDIS needs to match the baseline's best.

  The target is the baseline's best mean AUROC over all label counts, reached
  by the baseline at `baseline_labels` (the fewest labels where it is
  reached). The factor is baseline_labels / remedis_labels, where
  remedis_labels comes from `labels_to_reach`. When REMEDIS never reaches the
  target the factor is the string "not reached".
  """
  base = summarize_curve(baseline)
  best = max(base.mean)
  baseline_labels = base.n_labels[base.mean.index(best)]
  remedis_labels = labels_to_reach(remedis, best)
  factor: float | str
  factor = "not reached" if remedis_labels is None else baseline_labels / remedis_labels
  return {
    "target_auroc": best,
    "baseline_labels": baseline_labels,
    "remedis_labels": remedis_labels,
    "factor": factor,
  }


def plot_curves(
  path: str,
  title: str,
  curves: Mapping[str, Curve],
  ylabel: str = "AUROC",
  references: Mapping[str, float] | None = None,
  xlabel: str = "labeled training images",
) -> None:
  """Writes a PNG of mean AUROC (with 95% interval bands) against label count.

  Args:
    path: PNG file to write.
    title: plot title.
    curves: name -> curve.
    ylabel: y-axis label.
    references: name -> value drawn as a dashed horizontal line (e.g. a
      zero-shot AUROC, which has no label count); non-finite values skipped.
    xlabel: x-axis label.
  """
  import matplotlib  # noqa: PLC0415 - keep matplotlib out of import time

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # noqa: PLC0415

  fig, ax = plt.subplots(figsize=(5.5, 4.0), dpi=100)
  for name, curve in curves.items():
    s = summarize_curve(curve)
    ax.plot(s.n_labels, s.mean, marker="o", label=f"{name} (seeds={s.seeds})")
    ax.fill_between(s.n_labels, s.low, s.high, alpha=0.2)
  for i, (name, value) in enumerate((references or {}).items()):
    if math.isfinite(value):
      ax.axhline(value, linestyle="--", linewidth=1.0, color=f"C{i}", label=name)
  ax.set_xscale("log")
  ax.set_xlabel(xlabel)
  ax.set_ylabel(ylabel)
  ax.set_title(title)
  ax.grid(True, which="both", alpha=0.3)
  ax.legend(loc="lower right", fontsize="small")
  fig.tight_layout()
  fig.savefig(path, format="png")
  plt.close(fig)


def write_json(path: str, payload: Mapping[str, object]) -> None:
  """Writes JSON atomically (temporary name, then rename)."""
  tmp = f"{path}.tmp"
  with open(tmp, "w") as f:
    json.dump(payload, f, indent=2, sort_keys=True, default=_json_default)
  os.replace(tmp, path)


def _json_default(value: object) -> object:
  if isinstance(value, np.generic):
    return value.item()
  if isinstance(value, np.ndarray):
    return value.tolist()
  raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def curve_table(curves: Mapping[str, Curve]) -> str:
  """A Markdown table: one row per label count, one column per curve (mean [95% CI])."""
  names = list(curves)
  ns = sorted({n for c in curves.values() for n in c})
  lines = ["| labels | " + " | ".join(names) + " |", "|---:|" + "---:|" * len(names)]
  summaries = {name: summarize_curve(c) for name, c in curves.items()}
  for n in ns:
    cells = []
    for name in names:
      s = summaries[name]
      if n in s.n_labels:
        i = s.n_labels.index(n)
        cells.append(f"{s.mean[i]:.3f} [{s.low[i]:.3f}, {s.high[i]:.3f}]")
      else:
        cells.append("-")
    lines.append(f"| {n} | " + " | ".join(cells) + " |")
  return "\n".join(lines)
