"""Turns the demo study's stage results into report.json, report.md and PNG plots.

Every number comes from the runs' saved test-set predictions through
`remedis_tf.demo.study_stats`: the AUROC of each finding in distribution (ID,
site-A test split, after site-A labels), out of distribution (OOD, site-B
test split, after site-A and a few site-B labels) and zero-shot OOD (the
all-site-A model on the site-B test split), each method's AUROC with a
patient-level bootstrap 95% interval, the paired difference ΔAUROC = REMEDIS -
baseline with its interval and one-sided p-value, and the data-efficiency
factor with its interval. The verdict sentences follow the intervals.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Mapping, Sequence
from typing import Any

from remedis_tf.demo import report as report_lib
from remedis_tf.demo import study_stats
from remedis_tf.demo.study_config import FINDINGS, METHODS, StudyConfig

DISCLAIMER = (
  "SYNTHETIC DATA. This study runs on computer-drawn chest-radiograph phantoms from two "
  "fictional sites. It shows that the REMEDIS pipeline works end to end on this machine; "
  "it says nothing about clinical performance."
)
NAMES = {"remedis": "REMEDIS (init + SimCLR + fine-tune)", "baseline": "Supervised baseline"}
SHORT = {"remedis": "REMEDIS", "baseline": "baseline"}
PLOTS = {"id": "auroc_id_siteA.png", "ood": "auroc_ood_siteB.png", "delta": "delta_auroc.png"}
WHERE = {"id": "ID (site A)", "ood": "OOD (site B)"}


# ---------------------------------------------------------------- verdicts


def factor_verdict(setting: Mapping[str, Any], where: str) -> str:
  """The data-efficiency sentence of one setting; it follows the factor's interval.

  "REMEDIS needs k× fewer labels (95% CI a–b)" only when the interval's lower
  bound is above 1×; "more labels" only when its upper bound is below 1×;
  otherwise the data do not establish a difference. Near-chance curves give
  no factor and are named as no evidence.

  Args:
    setting: a label sweep's statistics (`study_stats` 'id' or 'ood').
    where: e.g. "OOD (site B)".

  Returns:
    One or two sentences.
  """
  f = setting["factor"]
  if not f["computed"]:
    reason = f["reason"]
    if reason == "both methods stay near chance":
      return (
        f"{where}: neither method's AUROC is clearly above chance at any label count (none has "
        f"a 95% CI above 0.5 and an AUROC of at least "
        f"{study_stats.CHANCE + study_stats.CHANCE_MARGIN:.2f}): these curves are no evidence "
        "either way, and no data-efficiency factor is computed from them."
      )
    if reason == "the baseline stays near chance":
      return (
        f"{where}: the baseline's AUROC is not clearly above chance at any label count, so there "
        "is no baseline level to match and no data-efficiency factor is computed; the ΔAUROC "
        "table compares the methods."
      )
    return f"{where}: no data-efficiency factor could be estimated ({reason})."
  target = f"the baseline's best AUROC ({f['target_auroc']:.3f}, at {f['baseline_labels']} labels)"
  ci = f"95% CI {report_lib.fmt_factor(f['ci_low'])} to {report_lib.fmt_factor(f['ci_high'])}"
  reached = f"REMEDIS reaches it in {f['fraction_reached']:.0%} of bootstrap replicates"
  lower = ""
  if f["fraction_lower_bound"] > 0:
    lower = (
      f"; in {f['fraction_lower_bound']:.0%} of them already at its smallest measured label "
      "count, where the factor is a lower bound"
    )
  if f["ci_low_above_1"]:
    return (
      f"{where}: REMEDIS needs {report_lib.fmt_factor(f['median'])} fewer labels ({ci}) to reach "
      f"{target}; {reached}{lower}."
    )
  if f["ci_high_below_1"]:
    return (
      f"{where}: REMEDIS needs more labels than the baseline to reach {target}: factor "
      f"{report_lib.fmt_factor(f['median'])} ({ci}, below 1×); {reached}{lower}."
    )
  return (
    f"{where}: the data do not establish a difference in label efficiency: factor "
    f"{report_lib.fmt_factor(f['median'])} ({ci}, which includes 1×) to reach {target}; "
    f"{reached}{lower}."
  )


def bar_verdict(setting: Mapping[str, Any]) -> str:
  """The OOD factor against REMEDIS's bar: ≥ 3× with a 95% CI lower bound above 1×."""
  bar = (
    f"REMEDIS's bar (an OOD factor of at least {study_stats.REMEDIS_BAR:.0f}× whose 95% CI lower "
    "bound is above 1×)"
  )
  f = setting["factor"]
  if not f["computed"]:
    return f"{bar}: not met; no factor could be estimated here."
  met = "met" if f["meets_remedis_bar"] else "not met"
  return (
    f"{bar}: {met} (median {report_lib.fmt_factor(f['median'])}, CI lower bound "
    f"{report_lib.fmt_factor(f['ci_low'])})."
  )


def delta_verdict(setting: Mapping[str, Any], where: str) -> str:
  """How many label counts have a ΔAUROC interval above, below or around 0."""
  points = [p for p in setting["points"] if p["delta"] is not None]
  if not setting["intervals_estimated"]:
    return (
      f"{where}: intervals not estimated (only {setting['valid_replicates']} of "
      f"{setting['replicates']} replicates hold both classes)."
    )
  above = [
    _label(p) for p in points if p["delta"]["ci_low"] is not None and p["delta"]["ci_low"] > 0
  ]
  below = [
    _label(p) for p in points if p["delta"]["ci_high"] is not None and p["delta"]["ci_high"] < 0
  ]
  around = len(points) - len(above) - len(below)
  parts = [f"above 0 at {len(above)} of {len(points)} label counts" + _listed(above)]
  if below:
    parts.append(f"below 0 at {len(below)}" + _listed(below))
  parts.append(f"includes 0 at {around}")
  return f"{where}: the 95% CI of ΔAUROC (REMEDIS − baseline) is " + ", ".join(parts) + "."


def zero_shot_verdict(setting: Mapping[str, Any] | None) -> str:
  """Zero-shot OOD: both AUROCs and the paired difference."""
  if not setting or not setting["points"]:
    return "Zero-shot OOD: not measured."
  p = setting["points"][0]
  cells = []
  for m in METHODS:
    s = p[m]
    cells.append(
      f"{SHORT[m]} " + ("n/a" if s is None else _interval(s["auroc"], s["ci_low"], s["ci_high"]))
    )
  text = "Zero-shot OOD (all-site-A model on the site-B test split, no site-B labels): "
  text += ", ".join(cells)
  d = p["delta"]
  if d is not None:
    text += (
      f"; ΔAUROC {_interval(d['value'], d['ci_low'], d['ci_high'], sign=True)}, "
      f"one-sided p = {report_lib.fmt_p(d['p_value'])}"
    )
  return text + "."


def _label(point: Mapping[str, Any]) -> str:
  return f"{point['n_labels']} (all)" if point["all_labels"] else str(point["n_labels"])


def _listed(labels: Sequence[str]) -> str:
  return f" ({', '.join(labels)})" if labels else ""


def _interval(value, low, high, sign: bool = False) -> str:
  return report_lib.fmt_interval(value, low, high, sign=sign)


def caveats(stats: Mapping[str, Any], finding: str) -> list[str]:
  """Warnings computed from the statistics (single seeds, dropped replicates, exclusions)."""
  out = [
    "The intervals resample test patients with the trained models fixed (seeds averaged "
    "inside each replicate); they do not include training randomness beyond the seeds run. "
    "p-values are per label count, not adjusted for multiple comparisons."
  ]
  f = stats["findings"][finding]
  single = [
    "zero-shot OOD" if key == "zero_shot" else f"{WHERE[key]} at {_label(p)}"
    for key in ("id", "ood", "zero_shot")
    if f.get(key)
    for p in f[key]["points"]
    if any(p[m] is not None and len(p[m]["seeds"]) == 1 for m in METHODS)
  ]
  if single:
    out.append(f"One seed only at: {', '.join(single)}.")
  for key in ("id", "ood", "zero_shot"):
    s = f.get(key)
    if s and s["valid_replicates"] < s["replicates"]:
      out.append(
        f"{WHERE.get(key, 'Zero-shot OOD')}: {s['replicates'] - s['valid_replicates']} of "
        f"{s['replicates']} bootstrap replicates drew test patients of one class only for "
        f"{finding} and were dropped for that test set."
      )
  for e in stats["excluded_runs"]:
    out.append(f"Left out ({e['reason']}): {e['run']}, {e['finding']} on {e['site']}.")
  return out


# ---------------------------------------------------------------- report dict


def build_curve(
  runs: Sequence[Mapping[str, Any]], method: str, eval_site: str, metric: str
) -> dict[int, list[float]]:
  """{n_labels: [value per seed]} from the runs' recorded metrics (undefined values left out).

  Args:
    runs: fine-tuning run records of one label sweep.
    method: 'remedis' or 'baseline'.
    eval_site: test site whose metrics are read.
    metric: a finding name (its AUROC) or 'macro' (macro AUROC).

  Returns:
    The curve.
  """
  curve: dict[int, list[float]] = {}
  for run in runs:
    if run["method"] != method or eval_site not in run.get("metrics", {}):
      continue
    m = run["metrics"][eval_site]
    value = m.get("macro_auroc") if metric == "macro" else m.get("auroc", {}).get(metric)
    if isinstance(value, int | float) and math.isfinite(value):
      curve.setdefault(int(run["n_labels"]), []).append(float(value))
  return curve


def _curves(setting: Mapping[str, Any]) -> dict[str, dict[str, list[float]]]:
  """{method: {n: per-seed AUROC}} of the headline finding (from the predictions)."""
  return {
    m: {str(p["n_labels"]): list(p[m]["per_seed"]) for p in setting["points"] if p[m]}
    for m in METHODS
  }


def _summaries(setting: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
  out = {}
  for m in METHODS:
    pts = [p for p in setting["points"] if p[m] is not None]
    out[m] = {
      "n_labels": [p["n_labels"] for p in pts],
      "mean": [p[m]["auroc"] for p in pts],
      "low": [p[m]["ci_low"] for p in pts],
      "high": [p[m]["ci_high"] for p in pts],
      "seeds": min((len(p[m]["seeds"]) for p in pts), default=0),
    }
  return out


def _check_runs(config: StudyConfig, runs: Sequence[Mapping[str, Any]]) -> None:
  """Refuses runs that did not train their full step count (their curves would mix budgets)."""
  for run in runs:
    steps = run.get("steps_trained")
    if steps is None:
      raise ValueError(f"{run.get('model_dir')}: run record has no 'steps_trained'.")
    if int(steps) < config.finetune_steps:
      raise ValueError(
        f"{run.get('model_dir')}: trained {steps} of {config.finetune_steps} steps; an "
        "unfinished run must be resumed, not reported."
      )


def build_report(
  config: StudyConfig,
  results: Mapping[str, Mapping[str, Any]],
  stage_seconds: Mapping[str, float],
  *,
  num_replicates: int = study_stats.DEFAULT_REPLICATES,
  bootstrap_seed: int | None = None,
  environment: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
  """The report dict from the stage results.

  Args:
    config: the study's configuration.
    results: stage name -> stage result; the fine-tuning stages hold 'runs'
      (records with 'steps_trained' and 'predictions': {site: .npz}).
    stage_seconds: stage name -> seconds.
    num_replicates: bootstrap replicates.
    bootstrap_seed: bootstrap seed (default: config.seed).
    environment: CPU, oneDNN, TensorFlow and per-stage throughput, or None.

  Returns:
    A JSON-serialisable dict (no NaN).
  """
  runs_a = results["finetune_site_a"]["runs"]
  runs_b = results["finetune_site_b"]["runs"]
  _check_runs(config, [*runs_a, *runs_b])
  finding = config.headline_finding
  start = time.perf_counter()
  stats = study_stats.study_statistics(
    runs_a,
    runs_b,
    FINDINGS,
    root=config.output_dir,
    num_replicates=num_replicates,
    seed=config.seed if bootstrap_seed is None else bootstrap_seed,
  )
  stats_seconds = time.perf_counter() - start
  head = stats["findings"][finding]
  pre = dict(results["pretrain"])
  pre.pop("loss_history", None)
  zero_shot = head["zero_shot"]
  report = {
    "synthetic": True,
    "disclaimer": DISCLAIMER,
    "config": {**config.fingerprint()},
    "initialization": results["init"]["initialization"],
    "dataset": {
      "archive": _archive_summary(results["generate"]["summary"]),
      "records": results["convert"]["sites"],
    },
    "pretraining": pre,
    "headline_finding": finding,
    "statistics": stats,
    "curves": {key: _curves(head[key]) for key in ("id", "ood")},
    "summaries": {key: _summaries(head[key]) for key in ("id", "ood")},
    "zero_shot_ood": {
      m: (zero_shot["points"][0][m] if zero_shot and zero_shot["points"] else None) for m in METHODS
    },
    "data_efficiency": {key: head[key]["factor"] for key in ("id", "ood")},
    "verdict": {
      "ood": factor_verdict(head["ood"], WHERE["ood"]),
      "id": factor_verdict(head["id"], WHERE["id"]),
      "bar": bar_verdict(head["ood"]),
      "delta_ood": delta_verdict(head["ood"], WHERE["ood"]),
      "delta_id": delta_verdict(head["id"], WHERE["id"]),
      "zero_shot": zero_shot_verdict(zero_shot),
    },
    "caveats": caveats(stats, finding),
    "macro_curves": {
      "id": {m: build_curve(runs_a, m, "siteA", "macro") for m in METHODS},
      "ood": {m: build_curve(runs_b, m, "siteB", "macro") for m in METHODS},
    },
    "runs": [_run_row(r) for r in [*runs_a, *runs_b]],
    "export": dict(results["export"]),
    "plots": dict(PLOTS),
    "environment": environment,
    "timings": {
      "stage_seconds": {k: round(float(v), 2) for k, v in stage_seconds.items()},
      "total_stage_seconds": round(sum(float(v) for v in stage_seconds.values()), 2),
      "statistics_seconds": round(stats_seconds, 2),
    },
  }
  return report_lib.json_safe(report)


def _archive_summary(summary: Mapping[str, Any]) -> dict[str, Any]:
  return {
    "num_images": summary["num_images"],
    "scale": summary["scale"],
    "seed": summary["seed"],
    "sites": {
      name: {k: site[k] for k in ("images", "patients", "positives", "matrix", "photometric")}
      for name, site in summary["sites"].items()
    },
  }


def _run_row(run: Mapping[str, Any]) -> dict[str, Any]:
  keep = (
    "run",
    "method",
    "train_site",
    "n_labels",
    "all_labels",
    "n_images",
    "n_patients",
    "positives",
    "seed",
    "steps_trained",
    "final_loss",
    "metrics",
    "predictions",
  )
  return {k: run.get(k) for k in keep}


# ---------------------------------------------------------------- plots


def _series(setting: Mapping[str, Any], method: str) -> report_lib.Series | None:
  pts = [p for p in setting["points"] if p[method] is not None and p[method]["auroc"] is not None]
  if not pts:
    return None
  return report_lib.Series(
    label=f"{NAMES[method]} (seeds={min(len(p[method]['seeds']) for p in pts)})",
    n_labels=[p["n_labels"] for p in pts],
    values=[p[method]["auroc"] for p in pts],
    low=[p[method]["ci_low"] for p in pts],
    high=[p[method]["ci_high"] for p in pts],
  )


def _delta_series(setting: Mapping[str, Any], label: str) -> list[report_lib.Series]:
  pts = [p for p in setting["points"] if p["delta"] is not None and p["delta"]["value"] is not None]
  if not pts:
    return []
  return [
    report_lib.Series(
      label=label,
      n_labels=[p["n_labels"] for p in pts],
      values=[p["delta"]["value"] for p in pts],
      low=[p["delta"]["ci_low"] for p in pts],
      high=[p["delta"]["ci_high"] for p in pts],
    )
  ]


def write_plots(report: Mapping[str, Any], output_dir: str) -> dict[str, list[dict[str, Any]]]:
  """PNG plots: each method's AUROC (ID, OOD) and ΔAUROC, with 95% bootstrap bands.

  Returns:
    Plot key -> the x ticks drawn on each of its panels.
  """
  finding = report["headline_finding"]
  head = report["statistics"]["findings"][finding]
  drawn = {}
  for key, site in (("id", "site A"), ("ood", "site B")):
    series = [s for m in METHODS if (s := _series(head[key], m)) is not None]
    references = {}
    if key == "ood":
      for m in METHODS:
        zs = report["zero_shot_ood"][m]
        if zs is not None and zs["auroc"] is not None:
          references[
            f"{SHORT[m]} zero-shot {_interval(zs['auroc'], zs['ci_low'], zs['ci_high'])}"
          ] = zs["auroc"]
    panel = report_lib.Panel(
      title=f"{WHERE[key]}: {finding} AUROC on {site} test (SYNTHETIC)",
      series=series,
      ylabel=f"{finding} AUROC (95% patient-bootstrap CI)",
      xlabel=f"labelled {site} training images",
      references=references,
    )
    drawn[key] = report_lib.plot_panels(os.path.join(output_dir, PLOTS[key]), [panel])
  panels = [
    report_lib.Panel(
      title=f"{WHERE[key]}: ΔAUROC, REMEDIS − baseline",
      series=_delta_series(head[key], f"Δ {finding} AUROC (95% CI)"),
      ylabel="ΔAUROC",
      xlabel=f"labelled {site} training images",
      hline=(0.0, "no difference"),
    )
    for key, site in (("id", "site A"), ("ood", "site B"))
  ]
  drawn["delta"] = report_lib.plot_panels(os.path.join(output_dir, PLOTS["delta"]), panels)
  return drawn


# ---------------------------------------------------------------- Markdown


def _point_table(setting: Mapping[str, Any], zero_shot: Mapping[str, Any] | None = None) -> str:
  lines = [
    "| labels | seeds | REMEDIS AUROC [95% CI] | baseline AUROC [95% CI] | ΔAUROC [95% CI] "
    "| p (Δ ≤ 0) |",
    "|---:|---:|---:|---:|---:|---:|",
  ]
  rows = [("zero-shot", p) for p in (zero_shot or {}).get("points", [])]
  rows += [(_label(p), p) for p in setting["points"]]
  for label, p in rows:
    seeds = "/".join(str(len(p[m]["seeds"])) if p[m] else "0" for m in METHODS)
    cells = [
      "-" if p[m] is None else _interval(p[m]["auroc"], p[m]["ci_low"], p[m]["ci_high"])
      for m in METHODS
    ]
    d = p["delta"]
    delta = "-" if d is None else _interval(d["value"], d["ci_low"], d["ci_high"], sign=True)
    pval = "-" if d is None else report_lib.fmt_p(d["p_value"])
    lines.append(f"| {label} | {seeds} | {cells[0]} | {cells[1]} | {delta} | {pval} |")
  return "\n".join(lines)


def _factor_table(stats: Mapping[str, Any], findings: Sequence[str]) -> str:
  lines = [
    "| finding | test set | baseline's best AUROC (labels) | factor: median [95% CI] "
    "| on the full test set | REMEDIS reaches it | lower bound |",
    "|---|---|---:|---:|---:|---:|---:|",
  ]
  for finding in findings:
    for key in ("id", "ood"):
      f = stats["findings"][finding][key]["factor"]
      if not f["computed"]:
        lines.append(f"| {finding} | {WHERE[key]} | - | not computed: {f['reason']} | - | - | - |")
        continue
      lines.append(
        f"| {finding} | {WHERE[key]} | {f['target_auroc']:.3f} ({f['baseline_labels']}) | "
        f"{report_lib.fmt_factor(f['median'])} [{report_lib.fmt_factor(f['ci_low'])}, "
        f"{report_lib.fmt_factor(f['ci_high'])}] | {report_lib.fmt_factor(f['point'])} | "
        f"{f['fraction_reached']:.0%} | {f['fraction_lower_bound']:.0%} |"
      )
  return "\n".join(lines)


def _environment_lines(report: Mapping[str, Any]) -> list[str]:
  env = report.get("environment")
  timings = report["timings"]
  lines = ["## Run environment and timing", ""]
  if env:
    cpu = env.get("cpu") or {}
    yes = {True: "yes", False: "no", None: "n/a"}
    onednn = {"1": "on", "0": "off"}.get(str(env.get("onednn")), "n/a")
    lines += [
      f"- CPU: {cpu.get('model', 'n/a')}, {cpu.get('cores', 'n/a')} cores, class "
      f"{cpu.get('class', 'n/a')} (AVX-512: {yes[cpu.get('avx512f')]}; "
      f"AVX2: {yes[cpu.get('avx2')]}).",
      f"- Fine-tuning: {env.get('finetune_workers', 'n/a')} worker process(es), "
      f"{env.get('threads_per_finetune_run', 'n/a')} TensorFlow thread(s) per run.",
      f"- oneDNN: {onednn} (TF_ENABLE_ONEDNN_OPTS={env.get('onednn', 'n/a')}); TensorFlow "
      f"{env.get('tensorflow', 'n/a')}.",
      "",
    ]
  else:
    lines += ["- Environment not recorded.", ""]
  stages = dict((env or {}).get("stages") or {})
  names = list(timings["stage_seconds"]) + [s for s in stages if s not in timings["stage_seconds"]]
  lines += [
    "| stage | seconds | CPU seconds | examples | examples/s |",
    "|---|---:|---:|---:|---:|",
  ]
  total = total_cpu = 0.0
  for name in names:
    s = stages.get(name) or {}
    seconds = s.get("seconds", timings["stage_seconds"].get(name))
    total += seconds or 0.0
    cpu = s.get("cpu_seconds")
    total_cpu += cpu or 0.0
    examples = s.get("examples")
    rate = s.get("examples_per_second")
    lines.append(
      f"| {name} | {report_lib.fmt_value(seconds, 1)} | "
      f"{'-' if cpu is None else report_lib.fmt_value(cpu, 1)} | "
      f"{'-' if examples is None else examples} | "
      f"{'-' if rate is None else report_lib.fmt_value(rate, 1)} |"
    )
  lines += [
    f"| report statistics (bootstrap) | {timings['statistics_seconds']:.1f} | - | - | - |",
    f"| **total (stages above)** | {total:.1f} | {total_cpu:.1f} | | |",
    "",
    "Examples: images generated, records converted, pretraining images (two views each), "
    "fine-tuning images trained plus test images predicted. CPU seconds count every process "
    "of the stage; on a shared machine they move less than wall time.",
    "",
  ]
  return lines


def render_markdown(report: Mapping[str, Any]) -> str:
  """report.md: headline, statistics, tables, plots, setup, environment."""
  c = report["config"]
  finding = report["headline_finding"]
  stats = report["statistics"]
  head = stats["findings"][finding]
  boot = stats["bootstrap"]
  pre = report["pretraining"]
  ds = report["dataset"]
  v = report["verdict"]
  others = [f for f in FINDINGS if f != finding]
  lines = [
    "# REMEDIS data-efficient generalization study (synthetic demo)",
    "",
    f"> **{report['disclaimer']}**",
    "",
    f"## Headline ({finding} AUROC)",
    "",
    f"- {v['ood']}",
    f"- {v['bar']}",
    f"- {v['delta_ood']}",
    f"- {v['zero_shot']}",
    f"- {v['id']}",
    f"- {v['delta_id']}",
    "",
    "**Caveats (computed from the measurements):**",
    "",
    *[f"- {x}" for x in report["caveats"]],
    "",
    "## Statistics",
    "",
    f"Every run's predictions on the same test images are compared. Bootstrap: "
    f"{boot['replicates']} replicates (seed {boot['seed']}) that draw test *patients* with "
    "replacement; each replicate is applied to both methods, every seed and every label count of "
    "that test set, and each method's AUROC is averaged over its seeds inside the replicate. "
    "Intervals are 95% percentile intervals of the replicates. p is one-sided for ΔAUROC ≤ 0: "
    "p = (1 + #{Δ* ≤ 0}) / (1 + R) over the R replicates that hold both classes (so p is never "
    f"below 1 / (1 + R), {1 / (1 + boot['replicates']):.2g} here). Unknown labels "
    "(-1) are left out per finding; a replicate whose test patients hold one class only is "
    "dropped for that test set (counted in the caveats), and no interval is given where fewer "
    f"than {boot['min_valid_fraction']:.0%} of the replicates remain.",
    "",
    "The data-efficiency factor, per replicate: the baseline's best AUROC over its measured label "
    "counts is the target; the labels REMEDIS needs to reach it are interpolated linearly in "
    "log(labels) between its measured counts (first crossing); factor = the baseline's labels "
    "at its best / REMEDIS's labels. A replicate in which REMEDIS does not reach the target "
    'counts as factor 0 (reported as "not reached"), and one in which REMEDIS reaches it at its '
    "smallest measured count gives a lower bound; both count against REMEDIS. Median and 95% CI "
    "are order statistics of all replicates. A curve is near chance unless at some label count "
    f"its 95% CI is above 0.5 and its AUROC is at least "
    f"{study_stats.CHANCE + study_stats.CHANCE_MARGIN:.2f}; no factor is computed against a "
    "near-chance baseline.",
    "",
    f"## In-distribution: {finding} AUROC on site-A test",
    "",
    "`labels` = site-A labelled training images (the largest is all of them); `seeds` = "
    "REMEDIS/baseline runs averaged.",
    "",
    _point_table(head["id"]),
    "",
    f"![ID]({PLOTS['id']})",
    "",
    f"## Out-of-distribution: {finding} AUROC on site-B test",
    "",
    "`labels` = site-B labelled images used after site-A fine-tuning; zero-shot uses none.",
    "",
    _point_table(head["ood"], head["zero_shot"]),
    "",
    f"![OOD]({PLOTS['ood']})",
    "",
    f"![ΔAUROC]({PLOTS['delta']})",
    "",
    "## Data-efficiency factors",
    "",
    "`REMEDIS reaches it` = share of replicates in which REMEDIS reaches the baseline's best "
    "AUROC within its measured label counts; `lower bound` = share in which it does so already at "
    "its smallest count.",
    "",
    _factor_table(stats, [finding, *others]),
    "",
  ]
  for other in others:
    lines += [
      f"## Other finding: {other}",
      "",
      "ID (site-A test):",
      "",
      _point_table(stats["findings"][other]["id"]),
      "",
      "OOD (site-B test):",
      "",
      _point_table(stats["findings"][other]["ood"], stats["findings"][other]["zero_shot"]),
      "",
    ]
  lines += [
    "## Setup",
    "",
    f"- Archive: scale `{c['scale']}`, seed {c['seed']}, {ds['archive']['num_images']} images; "
    + "; ".join(
      f"{s}: {v['images']} images / {v['patients']} patients, positives {v['positives']}"
      for s, v in ds["archive"]["sites"].items()
    )
    + ".",
    "- Patient-level splits by the converter (train, validation, test = "
    f"{', '.join(str(f) for f in c['split_fractions'])}): "
    + "; ".join(f"{s}: {v['records_by_split']}" for s, v in ds["records"].items())
    + ". Test sets: "
    + "; ".join(
      f"{s}: {t['images']} images / {t['patients']} patients" for s, t in stats["test_sets"].items()
    )
    + ".",
    f"- Encoder `{c['encoder']}` at {c['image_size']} px. Initialisation: "
    f"{report['initialization']}. Both methods start from this same encoder.",
    f"- Self-supervised pretraining (REMEDIS only): SimCLR, {_positive_pairs(c, pre)}, "
    f"{pre['steps']} steps x "
    f"{c['pretrain_batch_size']} images (two `{c['augment_preset']}` views each, with "
    f"{_overrides(c.get('augment_overrides'))}), {_optimizer(c)}, temperature "
    f"{c['temperature']}, on the train splits of both sites with labels unused; NT-Xent loss "
    f"{report_lib.fmt_value(pre.get('first_loss'))} -> "
    f"{report_lib.fmt_value(pre.get('final_loss'))}, "
    f"{report_lib.fmt_value(pre.get('images_per_second'), 1)} images/s.",
    f"- Fine-tuning (both methods, same budget): {c['finetune_steps']} SGD steps x "
    f"{c['finetune_batch_size']} images, peak lr {c['finetune_learning_rate']}, multi-label "
    f"head for {', '.join(FINDINGS)}; labelled subsets are whole patients of the train split, "
    f"{c['num_seeds']} seed(s) per label count (seed changes the subset, head init and order).",
    "- OOD fine-tuning starts from each method's model fine-tuned on all site-A train labels "
    "(encoder restored, new zero-initialised head).",
    "",
    "## Exported encoder",
    "",
    f"The REMEDIS (SimCLR-pretrained) encoder is a TF-Hub SavedModel at "
    f"`{report['export']['saved_model']}`: `hub.load(path)(images)` with images "
    f"(N, H, W, 3) float32 in [0, 1] returns the feature map; for "
    f"{c['image_size']} px inputs its shape is {report['export']['feature_map_shape']} "
    "(for 2 images).",
    "",
    *_environment_lines(report),
  ]
  return "\n".join(lines)


def text_summary(report: Mapping[str, Any]) -> str:
  """Plain-text headline table and verdicts (for stdout)."""
  finding = report["headline_finding"]
  head = report["statistics"]["findings"][finding]
  out = [f"{finding} AUROC, mean over seeds [95% patient-bootstrap CI] (SYNTHETIC data)"]
  header = f"{'':<16}{'labels':>10}  {'REMEDIS':<22}{'baseline':<22}{'ΔAUROC':<25}{'p':>6}"
  for key, title in (("id", "ID  site-A test"), ("ood", "OOD site-B test")):
    out.append(title + header[len(title) :])
    rows = (
      [("zero-shot", p) for p in (head["zero_shot"] or {}).get("points", [])]
      if key == "ood"
      else []
    )
    rows += [(_label(p), p) for p in head[key]["points"]]
    for label, p in rows:
      cells = [
        "-" if p[m] is None else _interval(p[m]["auroc"], p[m]["ci_low"], p[m]["ci_high"])
        for m in METHODS
      ]
      d = p["delta"]
      delta = "-" if d is None else _interval(d["value"], d["ci_low"], d["ci_high"], sign=True)
      pval = "-" if d is None else report_lib.fmt_p(d["p_value"])
      out.append(f"{'':<16}{label:>10}  {cells[0]:<22}{cells[1]:<22}{delta:<25}{pval:>6}")
  v = report["verdict"]
  out += [v["ood"], v["bar"], v["id"]]
  return "\n".join(out)


def write_report(
  config: StudyConfig,
  output_dir: str,
  results: Mapping[str, Mapping[str, Any]],
  stage_seconds: Mapping[str, float],
  elapsed: float,
  environment: Mapping[str, Any] | None = None,
  *,
  num_replicates: int = study_stats.DEFAULT_REPLICATES,
  bootstrap_seed: int | None = None,
) -> dict[str, Any]:
  """Writes report.json, report.md and the plots; returns a short stage result.

  Args:
    config: the study's configuration.
    output_dir: where the report goes (prediction paths relative to
      config.output_dir are resolved there).
    results: stage name -> stage result.
    stage_seconds: stage name -> seconds.
    elapsed: seconds of this invocation so far.
    environment: {'cpu': `cpu_setup.cpu_info()` plus 'class', 'onednn',
      'tensorflow', 'finetune_workers', 'threads_per_finetune_run', 'stages':
      {stage: {'seconds', 'examples', 'examples_per_second'}}} or None.
    num_replicates: bootstrap replicates.
    bootstrap_seed: bootstrap seed (default: config.seed).

  Returns:
    {'report_json', 'report_md', 'plots': [paths]}.
  """
  report = build_report(
    config,
    results,
    stage_seconds,
    num_replicates=num_replicates,
    bootstrap_seed=bootstrap_seed,
    environment=environment,
  )
  report["timings"]["elapsed_seconds_this_invocation"] = round(elapsed, 2)
  report["plot_x_ticks"] = write_plots(report, output_dir)
  report_lib.write_json(os.path.join(output_dir, "report.json"), report)
  with open(os.path.join(output_dir, "report.md"), "w", encoding="utf-8") as f:
    f.write(render_markdown(report))
  return {
    "report_json": os.path.join(output_dir, "report.json"),
    "report_md": os.path.join(output_dir, "report.md"),
    "plots": [os.path.join(output_dir, p) for p in PLOTS.values()],
  }


def _overrides(pairs: object) -> str:
  """'field=value, ...' for the augmentation overrides in a config dict."""
  if not pairs:
    return "no overrides"
  return "overrides " + ", ".join(f"{k}={v}" for k, v in pairs)


def _positive_pairs(c: Mapping[str, Any], pre: Mapping[str, Any]) -> str:
  """Which positive pairs pretraining used, as the report states them."""
  if c.get("positive_pairs", "augment") != "micle":
    return "positive pairs: two augmented views of one image"
  text = "positive pairs: MICLe (two different images of one patient, each augmented)"
  stats = pre.get("micle") or {}
  if stats.get("fallback_fraction") is not None:
    text += (
      f"; {100 * stats['fallback_fraction']:.1f}% of anchors had a single image and "
      "used two views of it"
    )
  return text


def _optimizer(c: Mapping[str, Any]) -> str:
  """The pretraining optimizer and learning rate as the report states them."""
  name = c.get("pretrain_optimizer", "lars")
  if name == "lars":
    return f"LARS base lr {c['pretrain_learning_rate']} (sqrt batch scaling)"
  return f"AdamW lr {c['pretrain_learning_rate']} (warmup + cosine decay)"
