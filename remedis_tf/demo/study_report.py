"""Turns the demo study's stage results into report.json, report.md and PNG plots.

Curves use the AUROC of the headline finding: in-distribution (ID) on the
site-A test split against site-A labels, out-of-distribution (OOD) on the
site-B test split against site-B labels. Curves of the macro AUROC over both
findings are reported too. Everything is measured; nothing is assumed.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

from remedis_tf.demo import report as report_lib
from remedis_tf.demo.study_config import FINDINGS, METHODS, StudyConfig

DISCLAIMER = (
  "SYNTHETIC DATA. This study runs on computer-drawn chest-radiograph phantoms from two "
  "fictional sites. It shows that the REMEDIS pipeline works end to end on this machine; "
  "it says nothing about clinical performance."
)
NAMES = {"remedis": "REMEDIS (init + SimCLR + fine-tune)", "baseline": "Supervised baseline"}
PLOTS = {"id": "auroc_id_siteA.png", "ood": "auroc_ood_siteB.png"}


def _finite(value: Any) -> bool:
  return isinstance(value, int | float) and math.isfinite(value)


def build_curve(
  runs: Sequence[Mapping[str, Any]], method: str, eval_site: str, metric: str
) -> dict[int, list[float]]:
  """{n_labels: [value per seed]} of one method on one test site.

  Args:
    runs: fine-tuning run records of one label sweep.
    method: 'remedis' or 'baseline'.
    eval_site: test site whose metrics are read.
    metric: a finding name (its AUROC) or 'macro' (macro AUROC).

  Returns:
    The curve; undefined (NaN) values are left out, and so are empty points.
  """
  curve: dict[int, list[float]] = {}
  for run in runs:
    if run["method"] != method or eval_site not in run["metrics"]:
      continue
    m = run["metrics"][eval_site]
    value = m["macro_auroc"] if metric == "macro" else m["auroc"].get(metric)
    if _finite(value):
      curve.setdefault(int(run["n_labels"]), []).append(float(value))
  return curve


def _summary_dict(curve: Mapping[int, Sequence[float]]) -> dict[str, Any]:
  if not curve:
    return {"n_labels": [], "mean": [], "low": [], "high": [], "seeds": 0}
  s = report_lib.summarize_curve(curve)
  return {"n_labels": s.n_labels, "mean": s.mean, "low": s.low, "high": s.high, "seeds": s.seeds}


def _efficiency(curves: Mapping[str, Mapping[int, Sequence[float]]]) -> dict[str, Any]:
  if not curves["remedis"] or not curves["baseline"]:
    return {"factor": "not measured", "reason": "a curve has no defined AUROC"}
  return report_lib.data_efficiency(curves["remedis"], curves["baseline"])


def _comparison(curves: Mapping[str, Mapping[int, Sequence[float]]]) -> dict[str, Any]:
  """Label counts where REMEDIS's mean AUROC is above / not above the baseline's."""
  better, not_better = [], []
  for n in sorted(set(curves["remedis"]) & set(curves["baseline"])):
    r = sum(curves["remedis"][n]) / len(curves["remedis"][n])
    b = sum(curves["baseline"][n]) / len(curves["baseline"][n])
    (better if r > b else not_better).append(n)
  return {"remedis_better_at": better, "remedis_not_better_at": not_better}


def _zero_shot(runs: Sequence[Mapping[str, Any]], metric: str) -> dict[str, Any]:
  """OOD AUROC of each method's all-site-A model on site B (no site-B labels)."""
  out = {}
  for method in METHODS:
    values = [
      v
      for v in build_curve(
        [r for r in runs if r.get("all_labels")], method, "siteB", metric
      ).values()
      for v in v
    ]
    out[method] = {"values": values, "mean": sum(values) / len(values) if values else None}
  return out


def caveats(summaries: Mapping[str, Mapping[str, Any]], chance_margin: float = 0.1) -> list[str]:
  """Warnings that keep the headline honest: near-chance curves, overlapping intervals.

  Args:
    summaries: {'id'|'ood': {method: summary dict}}.
    chance_margin: a curve whose best mean AUROC is below 0.5 + this is near chance.

  Returns:
    Sentences for the report (empty when none applies).
  """
  out = []
  for key, where in (("id", "ID (site A)"), ("ood", "OOD (site B)")):
    best = max((m for s in summaries[key].values() for m in s["mean"]), default=float("nan"))
    if not best >= 0.5 + chance_margin:
      out.append(
        f"{where}: the best mean AUROC of either method is {best:.3f}, close to chance (0.5); "
        "the models learned little with this budget, so differences between the methods "
        "and the data-efficiency factor are noise, not evidence."
      )
    r, b = summaries[key]["remedis"], summaries[key]["baseline"]
    overlap = [
      n
      for n in r["n_labels"]
      if n in b["n_labels"]
      and r["low"][r["n_labels"].index(n)] <= b["high"][b["n_labels"].index(n)]
      and b["low"][b["n_labels"].index(n)] <= r["high"][r["n_labels"].index(n)]
    ]
    if overlap:
      out.append(f"{where}: the 95% intervals of the two methods overlap at labels {overlap}.")
  return out


def _verdict(factor: Mapping[str, Any], comparison: Mapping[str, Any], where: str) -> str:
  better, worse = comparison["remedis_better_at"], comparison["remedis_not_better_at"]
  f = factor.get("factor")
  if isinstance(f, float):
    reach = (
      f"REMEDIS reaches the baseline's best {where} AUROC "
      f"({factor['target_auroc']:.3f}, at {factor['baseline_labels']} labels) with "
      f"{factor['remedis_labels']:.0f} labels: {f:.1f}x fewer labels."
    )
  else:
    reach = f"REMEDIS does not reach the baseline's best {where} AUROC (factor: {f})."
  return (
    f"{reach} Mean AUROC of REMEDIS is above the baseline's at {len(better)} of "
    f"{len(better) + len(worse)} label counts."
  )


def build_report(
  config: StudyConfig,
  results: Mapping[str, Mapping[str, Any]],
  stage_seconds: Mapping[str, float],
) -> dict[str, Any]:
  """The report dict (see the module docstring) from the stage results."""
  runs_a = results["finetune_site_a"]["runs"]
  runs_b = results["finetune_site_b"]["runs"]
  finding = config.headline_finding
  curves = {
    "id": {m: build_curve(runs_a, m, "siteA", finding) for m in METHODS},
    "ood": {m: build_curve(runs_b, m, "siteB", finding) for m in METHODS},
  }
  macro = {
    "id": {m: build_curve(runs_a, m, "siteA", "macro") for m in METHODS},
    "ood": {m: build_curve(runs_b, m, "siteB", "macro") for m in METHODS},
  }
  per_finding = {
    f: {
      "id": {m: build_curve(runs_a, m, "siteA", f) for m in METHODS},
      "ood": {m: build_curve(runs_b, m, "siteB", f) for m in METHODS},
    }
    for f in FINDINGS
  }
  efficiency = {k: _efficiency(curves[k]) for k in curves}
  comparison = {k: _comparison(curves[k]) for k in curves}
  pre = dict(results["pretrain"])
  pre.pop("loss_history", None)
  return {
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
    "curves": _str_keys(curves),
    "macro_curves": _str_keys(macro),
    "per_finding_curves": _str_keys(per_finding),
    "summaries": {k: {m: _summary_dict(c[m]) for m in METHODS} for k, c in curves.items()},
    "zero_shot_ood": _zero_shot(runs_a, finding),
    "zero_shot_ood_macro": _zero_shot(runs_a, "macro"),
    "data_efficiency": efficiency,
    "comparison": comparison,
    "caveats": caveats({k: {m: _summary_dict(c[m]) for m in METHODS} for k, c in curves.items()}),
    "verdict": {
      "ood": _verdict(efficiency["ood"], comparison["ood"], "OOD (site B)"),
      "id": _verdict(efficiency["id"], comparison["id"], "ID (site A)"),
    },
    "runs": [_run_row(r) for r in [*runs_a, *runs_b]],
    "export": dict(results["export"]),
    "plots": dict(PLOTS),
    "timings": {
      "stage_seconds": {k: round(float(v), 2) for k, v in stage_seconds.items()},
      "total_stage_seconds": round(sum(float(v) for v in stage_seconds.values()), 2),
    },
  }


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
    "method",
    "train_site",
    "n_labels",
    "all_labels",
    "n_images",
    "n_patients",
    "positives",
    "seed",
    "final_loss",
    "metrics",
  )
  return {k: _nan_to_none(run[k]) for k in keep}


def _nan_to_none(value: Any) -> Any:
  if isinstance(value, dict):
    return {k: _nan_to_none(v) for k, v in value.items()}
  if isinstance(value, list | tuple):
    return [_nan_to_none(v) for v in value]
  if isinstance(value, float) and not math.isfinite(value):
    return None
  return value


def _str_keys(value: Any) -> Any:
  if isinstance(value, dict):
    return {str(k): _str_keys(v) for k, v in value.items()}
  return value


def _int_curve(curve: Mapping[str, Sequence[float]]) -> dict[int, list[float]]:
  return {int(k): list(v) for k, v in curve.items()}


def write_plots(report: Mapping[str, Any], output_dir: str) -> None:
  """PNG plots of the headline AUROC against label count, ID and OOD."""
  finding = report["headline_finding"]
  for key, site, labels_of in (("id", "site A", "site A"), ("ood", "site B", "site B")):
    curves = {
      NAMES[m]: _int_curve(report["curves"][key][m]) for m in METHODS if report["curves"][key][m]
    }
    references = None
    if key == "ood":
      references = {
        f"{NAMES[m]}, zero-shot": report["zero_shot_ood"][m]["mean"]
        for m in METHODS
        if report["zero_shot_ood"][m]["mean"] is not None
      }
    report_lib.plot_curves(
      os.path.join(output_dir, PLOTS[key]),
      f"{key.upper()}: {finding} AUROC on {site} test (SYNTHETIC)",
      curves,
      ylabel=f"{finding} AUROC",
      references=references,
      xlabel=f"labeled {labels_of} training images",
    )


def _table(curves: Mapping[str, Mapping[str, Sequence[float]]]) -> str:
  named = {NAMES[m]: _int_curve(curves[m]) for m in METHODS if curves[m]}
  return report_lib.curve_table(named) if named else "(no defined AUROC)"


def _fmt_factor(efficiency: Mapping[str, Any]) -> str:
  f = efficiency.get("factor")
  return f"{f:.2f}x" if isinstance(f, float) else str(f)


def render_markdown(report: Mapping[str, Any]) -> str:
  """report.md: setup, headline, tables, plots, timings, export."""
  c = report["config"]
  finding = report["headline_finding"]
  pre = report["pretraining"]
  ds = report["dataset"]
  zs = report["zero_shot_ood"]
  eff = report["data_efficiency"]
  lines = [
    "# REMEDIS data-efficient generalization study (synthetic demo)",
    "",
    f"> **{report['disclaimer']}**",
    "",
    "## Headline",
    "",
    f"- OOD (site B) data-efficiency factor, {finding} AUROC: **{_fmt_factor(eff['ood'])}** "
    "(how many times fewer site-B labels REMEDIS needs to match the supervised baseline's "
    "best site-B AUROC).",
    f"- {report['verdict']['ood']}",
    f"- ID (site A) factor: {_fmt_factor(eff['id'])}. {report['verdict']['id']}",
    "- Zero-shot OOD (all-site-A model on site-B test, no site-B labels): "
    + ", ".join(
      f"{NAMES[m]} {zs[m]['mean']:.3f}" if zs[m]["mean"] is not None else f"{NAMES[m]} n/a"
      for m in METHODS
    )
    + ".",
    "",
    *(["", "**Caveats (computed from the measurements):**", ""] if report["caveats"] else []),
    *[f"- {c}" for c in report["caveats"]],
    "",
    "## Setup",
    "",
    f"- Archive: scale `{c['scale']}`, seed {c['seed']}, {ds['archive']['num_images']} images "
    + "; ".join(
      f"{s}: {v['images']} images / {v['patients']} patients, positives {v['positives']}"
      for s, v in ds["archive"]["sites"].items()
    )
    + ".",
    "- Patient-level splits by the converter (train, validation, test = "
    f"{', '.join(str(f) for f in c['split_fractions'])}): "
    + "; ".join(f"{s}: {v['records_by_split']}" for s, v in ds["records"].items())
    + ".",
    f"- Encoder `{c['encoder']}` at {c['image_size']} px. Initialisation: "
    f"{report['initialization']}. Both methods start from this same encoder.",
    f"- Self-supervised pretraining (REMEDIS only): SimCLR, {pre['steps']} steps x "
    f"{c['pretrain_batch_size']} images (two `{c['augment_preset']}` views each, with "
    f"{_overrides(c.get('augment_overrides'))}), {_optimizer(c)}, temperature "
    f"{c['temperature']}, on the "
    "train splits of both sites with labels unused; NT-Xent loss "
    f"{_num(pre.get('first_loss'))} -> {_num(pre.get('final_loss'))}, "
    f"{_num(pre.get('images_per_second'), 1)} images/s.",
    f"- Fine-tuning (both methods, same budget): {c['finetune_steps']} SGD steps x "
    f"{c['finetune_batch_size']} images, peak lr {c['finetune_learning_rate']}, multi-label "
    f"head for {', '.join(FINDINGS)}; labelled subsets are whole patients of the train split, "
    f"{c['num_seeds']} seed(s) per label count (seed changes the subset, head init and order).",
    "- OOD fine-tuning starts from each method's model fine-tuned on all site-A train labels "
    "(encoder restored, new zero-initialised head).",
    "",
    f"## In-distribution: {finding} AUROC on site-A test",
    "",
    "Mean over seeds [95% t-interval]; `labels` = site-A labelled images "
    "(the largest is all site-A train images, one seed).",
    "",
    _table(report["curves"]["id"]),
    "",
    f"![ID]({PLOTS['id']})",
    "",
    f"## Out-of-distribution: {finding} AUROC on site-B test",
    "",
    "`labels` = site-B labelled images used after site-A fine-tuning; the zero-shot values "
    "above use none.",
    "",
    _table(report["curves"]["ood"]),
    "",
    f"![OOD]({PLOTS['ood']})",
    "",
    "## Macro AUROC over both findings",
    "",
    "ID (site A):",
    "",
    _table(report["macro_curves"]["id"]),
    "",
    "OOD (site B):",
    "",
    _table(report["macro_curves"]["ood"]),
    "",
    "## Exported encoder",
    "",
    f"The REMEDIS (SimCLR-pretrained) encoder is a TF-Hub SavedModel at "
    f"`{report['export']['saved_model']}`: `hub.load(path)(images)` with images "
    f"(N, H, W, 3) float32 in [0, 1] returns the feature map; for "
    f"{c['image_size']} px inputs its shape is {report['export']['feature_map_shape']} "
    "(for 2 images).",
    "",
    "## Timings (seconds, this machine)",
    "",
    "| stage | seconds |",
    "|---|---:|",
    *[f"| {k} | {v:.1f} |" for k, v in report["timings"]["stage_seconds"].items()],
    f"| **total** | {report['timings']['total_stage_seconds']:.1f} |",
    "",
  ]
  return "\n".join(lines)


def _num(value: Any, digits: int = 3) -> str:
  return f"{value:.{digits}f}" if _finite(value) else "n/a"


def text_summary(report: Mapping[str, Any]) -> str:
  """Plain-text table of mean headline AUROCs per label count (for stdout)."""
  finding = report["headline_finding"]
  out = [f"{finding} AUROC, mean over seeds (SYNTHETIC data)"]
  for key, title in (("id", "ID  site-A test"), ("ood", "OOD site-B test")):
    out.append(f"{title:<18}{'labels':>8}{'REMEDIS':>10}{'baseline':>10}")
    summaries = report["summaries"][key]
    ns = sorted(set(summaries["remedis"]["n_labels"]) | set(summaries["baseline"]["n_labels"]))
    for n in ns:
      cells = []
      for m in METHODS:
        s = summaries[m]
        cells.append(f"{s['mean'][s['n_labels'].index(n)]:.3f}" if n in s["n_labels"] else "-")
      out.append(f"{'':<18}{n:>8}{cells[0]:>10}{cells[1]:>10}")
    if key == "ood":
      zs = report["zero_shot_ood"]
      cells = [f"{zs[m]['mean']:.3f}" if zs[m]["mean"] is not None else "-" for m in METHODS]
      out.append(f"{'':<18}{'zero-shot':>8}{cells[0]:>10}{cells[1]:>10}")
  eff = report["data_efficiency"]
  out.append(f"data-efficiency factor: OOD {_fmt_factor(eff['ood'])}, ID {_fmt_factor(eff['id'])}")
  return "\n".join(out)


def write_report(
  config: StudyConfig,
  output_dir: str,
  results: Mapping[str, Mapping[str, Any]],
  stage_seconds: Mapping[str, float],
  elapsed: float,
) -> dict[str, Any]:
  """Writes report.json, report.md and the plots; returns a short stage result."""
  report = build_report(config, results, stage_seconds)
  report["timings"]["elapsed_seconds_this_invocation"] = round(elapsed, 2)
  write_plots(report, output_dir)
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


def _optimizer(c: dict) -> str:
  """The pretraining optimizer and learning rate as the report states them."""
  name = c.get("pretrain_optimizer", "lars")
  if name == "lars":
    return f"LARS base lr {c['pretrain_learning_rate']} (sqrt batch scaling)"
  return f"AdamW lr {c['pretrain_learning_rate']} (warmup + cosine decay)"
