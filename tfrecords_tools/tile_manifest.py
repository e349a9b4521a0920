"""manifest.json and errors.json of a `remedis-tile` run, built from its markers alone.

The manifest has the fields the readers use from `remedis-convert`'s
(`label_mode`, `label_names`, `counts.records_by_split`, `shards`) plus the
patch policy and one summary per slide, named only by its hashed id. Counts
add up: slides == slides_tiled + slides_without_patches + slides_failed +
slides_dropped, and records == sum of records per split == patches in shards.
"""

from __future__ import annotations

import collections
from collections.abc import Sequence

from tfrecords_tools import shards
from tfrecords_tools.slide_inputs import Listing
from tfrecords_tools.slide_labels import SlideLabelTable
from tfrecords_tools.splits import SPLIT_NAMES
from tfrecords_tools.version import CONVERTER_VERSION

TOOL = "remedis-tile"

# errors.json reasons for which a slide gave no patch ...
FAILURE_REASONS = ("unsupported_format", "unreadable", "no_mpp", "resolution_too_low")
# ... and reasons that are warnings (patches may still have been written).
WARNING_REASONS = (
  "unlabeled_slide",
  "no_tissue",
  "patch_read_error",
  "label_without_slide",
  "label_error",
  "duplicate_label_key",
)


def build(
  slide_markers: Sequence[dict],
  chunk_markers: Sequence[dict],
  *,
  listing: Listing,
  labels: SlideLabelTable | None,
  configuration: dict,
  label_mode: str,
) -> tuple[dict, list[dict]]:
  """Aggregates the markers into the manifest and the error list.

  Args:
    slide_markers: every slide's survey marker, in slide order.
    chunk_markers: every chunk's marker.
    listing: the input listing (counts of ignored files).
    labels: the labels table, to report rows that matched no slide.
    configuration: the run configuration (no secrets, no names).
    label_mode: "multiclass" or "multilabel".

  Returns:
    (manifest dict, list of error entries).
  """
  label_names = list(labels.label_names) if labels else []
  errors: list[dict] = []
  used_rows: set[int] = set()
  slides = []
  tiled = empty = failed = dropped = 0
  timings: collections.Counter = collections.Counter()
  for m in slide_markers:
    errors.extend(m["errors"])
    if m.get("label_row") is not None:
      used_rows.add(m["label_row"])
    timings.update(m.get("timings", {}))
    if m.get("dropped"):
      dropped += 1
      continue
    if not m["ok"]:
      failed += 1
      continue
    n = len(m["coords"])
    tiled += n > 0
    empty += n == 0
    slides.append(
      {
        "slide_id_hash": m["slide_id_hash"],
        "patient_id_hash": m["fields"]["patient_hash"],
        "split": m["fields"]["split"],
        "patches": n,
        "grid_patches": m["grid_patches"],
        "tissue_patches": m["tissue_patches"],
        "mpp": m["mpp"],
        "mpp_source": m["mpp_source"],
        "level": m["plan"]["level"],
        "read_size": m["plan"]["read_size"],
        "patch_mpp": m["plan"]["patch_mpp"],
        "mask": m["mask"],
        "thumbnail": m["thumbnail"],
      }
    )

  records = collections.Counter()
  by_label = {s: collections.Counter() for s in SPLIT_NAMES}
  by_site = {s: collections.Counter() for s in SPLIT_NAMES}
  shard_list = []
  for c in sorted(chunk_markers, key=lambda c: c["chunk"]):
    split, n = c["split"], c["records"]
    records[split] += n
    for name in shards.label_counts(
      c["label"], c["multi_label"], c["has_label"], label_names, label_mode
    ):
      by_label[split][name] += n
    by_site[split][c["site"]] += n
    shard_list.append(c["shard"])
    errors.extend(c["errors"])
    timings.update(c.get("timings", {}))
  patients = {s: set() for s in SPLIT_NAMES}
  for s in slides:
    patients[s["split"]].add(s["patient_id_hash"])

  if labels is not None:
    errors.extend(
      {"slide_index": None, "row": e["row"], "reason": e["reason"], "detail": e["detail"]}
      for e in labels.table.row_errors
    )
    for row in sorted(labels.table.rows.values(), key=lambda r: r.row_number):
      if row.row_number not in used_rows:
        errors.append(
          {
            "slide_index": None,
            "row": row.row_number,
            "reason": "label_without_slide",
            "detail": "no slide matched this label row (it may be among the failed slides)",
          }
        )
  by_reason = collections.Counter(e["reason"] for e in errors)

  result = {
    "tool": TOOL,
    "converter_version": CONVERTER_VERSION,
    "configuration": configuration,
    "label_mode": label_mode,
    "label_names": label_names,
    "counts": {
      "slides": len(slide_markers),
      "slides_tiled": tiled,
      "slides_without_patches": empty,
      "slides_failed": failed,
      "slides_dropped": dropped,
      "files_ignored": listing.ignored_files,
      "dicom_instances_set_aside": listing.non_volume_instances,
      "records": sum(records.values()),
      "records_by_split": {s: records.get(s, 0) for s in SPLIT_NAMES},
      "records_by_split_and_label": {s: dict(sorted(c.items())) for s, c in by_label.items()},
      "records_by_split_and_site": {s: dict(sorted(c.items())) for s, c in by_site.items()},
      "patients_by_split": {s: len(p) for s, p in patients.items()},
    },
    "errors": {
      "report": "errors.json",
      "total": len(errors),
      "by_reason": dict(sorted(by_reason.items())),
      "failures": sum(n for r, n in by_reason.items() if r not in WARNING_REASONS),
    },
    "slides": slides,
    "timings_s": {k: round(v, 3) for k, v in sorted(timings.items())},
    "shards": {
      s: sorted((x for x in shard_list if x["split"] == s), key=lambda x: x["file"])
      for s in SPLIT_NAMES
    },
  }
  return result, errors
