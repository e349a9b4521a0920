"""Rendering helpers of the demo study's report: plots with interval bands, number formats, JSON.

The statistics live in `remedis_tf.demo.study_stats`; this module only draws
and formats what they computed. A value without an interval (one that could
not be estimated) is drawn as a bare marker and printed without brackets.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

from tfrecords_tools import json_io


@dataclasses.dataclass(frozen=True)
class Series:
  """One line of a plot: values at measured label counts, with optional intervals.

  Attributes:
    label: legend entry.
    n_labels: measured label counts (x), increasing.
    values: y per count.
    low: interval lower bound per count; None where not estimated.
    high: interval upper bound per count; None where not estimated.
  """

  label: str
  n_labels: Sequence[int]
  values: Sequence[float]
  low: Sequence[float | None]
  high: Sequence[float | None]


@dataclasses.dataclass(frozen=True)
class Panel:
  """One axes of a figure.

  Attributes:
    title: axes title.
    series: the lines.
    ylabel: y-axis label.
    xlabel: x-axis label.
    hline: (y, legend label) of a dotted reference line (chance, or zero
      difference); None for none.
    references: legend label -> y of dashed horizontal lines (values without
      a label count, e.g. zero-shot AUROC).
  """

  title: str
  series: Sequence[Series]
  ylabel: str
  xlabel: str
  hline: tuple[float, str] | None = (0.5, "chance (AUROC 0.5)")
  references: Mapping[str, float] = dataclasses.field(default_factory=dict)


def plot_panels(path: str, panels: Sequence[Panel]) -> list[dict[str, list[Any]]]:
  """Writes a PNG with one axes per panel, side by side, log-scaled label axis.

  The x ticks are exactly the measured label counts, written as plain
  numbers (no minor ticks, no scientific notation). Intervals are drawn as a
  band between neighbouring counts and a vertical bar at each count.

  Args:
    path: PNG file to write.
    panels: the axes, left to right.

  Returns:
    Per panel, the x ticks as drawn: {'x_ticks': [...], 'x_tick_labels':
    [...], 'minor_tick_labels': [...]} (read back from the rendered axes).
  """
  import matplotlib  # noqa: PLC0415 - keep matplotlib out of import time

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # noqa: PLC0415
  from matplotlib import ticker  # noqa: PLC0415

  fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4.2), dpi=100, squeeze=False)
  for ax, panel in zip(axes[0], panels, strict=True):
    ticks = sorted({int(n) for s in panel.series for n in s.n_labels})
    for i, s in enumerate(panel.series):
      color = f"C{i}"
      ax.plot(s.n_labels, s.values, marker="o", color=color, label=s.label)
      low = [math.nan if v is None else v for v in s.low]
      high = [math.nan if v is None else v for v in s.high]
      ax.fill_between(s.n_labels, low, high, color=color, alpha=0.18, linewidth=0)
      bars = [
        (n, lo, hi) for n, lo, hi in zip(s.n_labels, low, high, strict=True) if not math.isnan(lo)
      ]
      if bars:
        ax.vlines(*zip(*bars, strict=True), color=color, linewidth=1.5)
    for j, (name, value) in enumerate(panel.references.items()):
      if math.isfinite(value):
        ax.axhline(value, linestyle="--", linewidth=1.0, color=f"C{j}", label=name)
    if panel.hline is not None:
      ax.axhline(panel.hline[0], linestyle=":", linewidth=1.2, color="0.4", label=panel.hline[1])
    ax.set_xscale("log")
    if ticks:
      ax.set_xlim(ticks[0] / 1.5, ticks[-1] * 1.5)
      ax.xaxis.set_major_locator(ticker.FixedLocator(ticks))
      ax.xaxis.set_major_formatter(ticker.FixedFormatter([str(n) for n in ticks]))
    ax.xaxis.set_minor_locator(ticker.NullLocator())
    ax.set_xlabel(panel.xlabel)
    ax.set_ylabel(panel.ylabel)
    ax.set_title(panel.title, fontsize="medium")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="best", fontsize="x-small")
  fig.tight_layout()
  fig.savefig(path, format="png")
  drawn = [
    {
      "x_ticks": [float(t) for t in ax.get_xticks()],
      "x_tick_labels": [t.get_text() for t in ax.get_xticklabels()],
      "minor_tick_labels": [t.get_text() for t in ax.get_xticklabels(minor=True)],
    }
    for ax in axes[0]
  ]
  plt.close(fig)
  return drawn


def fmt_value(value: float | None, digits: int = 3) -> str:
  """A number, or 'n/a' when missing."""
  return "n/a" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def fmt_interval(
  value: float | None, low: float | None, high: float | None, digits: int = 3, sign: bool = False
) -> str:
  """'v [lo, hi]', or just 'v' when the interval was not estimated."""
  if value is None:
    return "n/a"
  spec = f"+.{digits}f" if sign else f".{digits}f"
  if low is None or high is None:
    return f"{value:{spec}} (no CI)"
  return f"{value:{spec}} [{low:{spec}}, {high:{spec}}]"


def fmt_p(p: float | None) -> str:
  """A p-value with two significant digits ('n/a' when missing)."""
  return "n/a" if p is None else f"{p:.2g}"


def fmt_factor(value: float | str | None) -> str:
  """'2.3×', 'not reached' or 'n/a'."""
  if value is None:
    return "n/a"
  if isinstance(value, str):
    return value
  return f"{value:.2f}×" if value < 10 else f"{value:.1f}×"


def write_json(path: str, payload: Mapping[str, Any]) -> None:
  """Writes strict JSON atomically (`json_io.write_json`); NaN or infinity is an error here.

  `json_io` would write a non-finite number as null; the report must have
  turned every undefined value into None itself (`json_safe`), so one left
  over is a bug and raises ValueError.
  """
  json.dumps(payload, allow_nan=False)
  json_io.write_json(path, payload)


def json_safe(value: Any) -> Any:
  """NumPy scalars to Python numbers and non-finite floats to None, recursively."""
  if isinstance(value, Mapping):
    return {str(k): json_safe(v) for k, v in value.items()}
  if isinstance(value, list | tuple):
    return [json_safe(v) for v in value]
  if hasattr(value, "item") and callable(value.item) and getattr(value, "ndim", None) == 0:
    value = value.item()
  if isinstance(value, float) and not math.isfinite(value):
    return None
  return value
