"""The run's manifest (manifest.json) and error report (errors.json).

Both are built from the chunk markers alone, so they are the same whichever
pipeline (in-process, local processes, Beam) wrote the chunks, and however
often the run was interrupted.

Counts add up: inputs == files_converted + files_failed + files_dropped +
files_skipped, and records == sum of records per split.
"""

from __future__ import annotations

import collections
import json
import os
from collections.abc import Sequence

from tfrecords_tools import shards
from tfrecords_tools.labels import LabelTable
from tfrecords_tools.splits import SPLIT_NAMES
from tfrecords_tools.version import CONVERTER_VERSION

MANIFEST = "manifest.json"
ERRORS = "errors.json"

# Reasons for which the input file produced no record.
FAILURE_REASONS = (
  "not_dicom",
  "no_pixel_data",
  "corrupt",
  "unsupported_transfer_syntax",
  "unsupported_image",
  "empty_image",
)
# Reasons that are reported but did not stop a record from being written, or
# concern the labels CSV rather than an image.
WARNING_REASONS = (
  "unlabeled_image",
  "label_without_image",
  "label_error",
  "duplicate_label_key",
  "dicomdir",
)


def build(
  markers: Sequence[dict],
  *,
  num_inputs: int,
  skipped: Sequence[dict],
  labels: LabelTable | None,
  configuration: dict,
  label_mode: str,
  label_names: Sequence[str],
) -> tuple[dict, list[dict]]:
  """Aggregates chunk markers into the manifest and the error list.

  Args:
    markers: every chunk's marker.
    num_inputs: number of input files listed (including skipped ones).
    skipped: error entries for inputs that were not converted on purpose
      (DICOMDIR).
    labels: the labels table, to report rows that matched no image.
    configuration: the run configuration (no secrets).
    label_mode: "multiclass" or "multilabel".
    label_names: label names.

  Returns:
    (manifest dict, list of error entries).
  """
  records = collections.Counter()
  by_label = {s: collections.Counter() for s in SPLIT_NAMES}
  by_site = {s: collections.Counter() for s in SPLIT_NAMES}
  errors: list[dict] = list(skipped)
  used_rows: set[int] = set()
  shard_list = []
  converted = failed = dropped = 0
  timings = collections.Counter()
  for m in sorted(markers, key=lambda m: m["chunk"]):
    records.update(m["records"])
    for split, counts in m["by_label"].items():
      by_label[split].update(counts)
    for split, counts in m["by_site"].items():
      by_site[split].update(counts)
    errors.extend(m["errors"])
    used_rows.update(m["label_rows"])
    shard_list.extend(m["shards"])
    converted += m["files_converted"]
    failed += m["files_failed"]
    dropped += m.get("files_dropped", 0)
    timings.update(m.get("timings", {}))
  if labels is not None:
    errors.extend(
      {"path": "", "row": e["row"], "reason": e["reason"], "detail": e["detail"]}
      for e in labels.row_errors
    )
    for row in sorted(labels.rows.values(), key=lambda r: r.row_number):
      if row.row_number not in used_rows:
        errors.append(
          {
            "path": "",
            "row": row.row_number,
            "reason": "label_without_image",
            "detail": "no input image matched this label row (it may be among the failed files)",
          }
        )
  by_reason = collections.Counter(e["reason"] for e in errors)
  manifest = {
    "converter_version": CONVERTER_VERSION,
    "configuration": configuration,
    "label_mode": label_mode,
    "label_names": list(label_names),
    "counts": {
      "inputs": num_inputs,
      "files_converted": converted,
      "files_failed": failed,
      "files_dropped": dropped,
      "files_skipped": len(skipped),
      "records": sum(records.values()),
      "records_by_split": {s: records.get(s, 0) for s in SPLIT_NAMES},
      "records_by_split_and_label": {s: dict(sorted(c.items())) for s, c in by_label.items()},
      "records_by_split_and_site": {s: dict(sorted(c.items())) for s, c in by_site.items()},
    },
    "errors": {
      "report": ERRORS,
      "total": len(errors),
      "by_reason": dict(sorted(by_reason.items())),
      "failures": sum(n for r, n in by_reason.items() if r not in WARNING_REASONS),
    },
    "timings_s": {k: round(v, 3) for k, v in sorted(timings.items())},
    "shards": {
      s: sorted((x for x in shard_list if x["split"] == s), key=lambda x: x["file"])
      for s in SPLIT_NAMES
    },
  }
  return manifest, errors


def read_manifest(output_dir: str) -> dict | None:
  """Returns the manifest of a finished run in `output_dir`, or None."""
  path = os.path.join(output_dir, MANIFEST)
  if not os.path.exists(path):
    return None
  with open(path, encoding="utf-8") as f:
    return json.load(f)


def write(output_dir: str, manifest: dict, errors: list[dict]) -> None:
  """Writes errors.json, then manifest.json (last: its presence means done)."""
  shards.write_json_atomic(os.path.join(output_dir, ERRORS), errors)
  shards.write_json_atomic(os.path.join(output_dir, MANIFEST), manifest)
