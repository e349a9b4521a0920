"""Phase 1 of `remedis-tile`: survey one slide (mpp, ids, label, read level, tissue, patches).

`survey_slide` opens a slide, takes its microns per pixel (or the configured
`assume_mpp`, or rejects it), resolves and hashes its ids, looks up its label,
chooses the read level, detects tissue on a low-resolution image, lays the
patch grid, keeps patches with enough tissue, samples at most
`max_patches_per_slide`, and writes the slide's thumbnail. Its result, the
slide's marker (`_work/slides/NNNNN.json`), holds hashed ids, the read plan and
level-0 patch coordinates: no name, path or metadata text. Errors that belong to
the slide come back in the marker with a reason; their texts are scrubbed of
the slide's paths and names.
"""

from __future__ import annotations

import dataclasses
import os
import posixpath
import time
from typing import TYPE_CHECKING

import numpy as np

from tfrecords_tools import (
  hashing,
  patch_example,
  shards,
  slide_ids,
  slide_labels,
  splits,
  thumbnails,
  tiling,
  tissue,
)
from tfrecords_tools.slide_reader import SlideError, SlideSource, open_slide

if TYPE_CHECKING:
  from tfrecords_tools.tile import Job

THUMBNAIL_DIR = "thumbnails"


@dataclasses.dataclass(frozen=True)
class SlideWork:
  """One surveyed slide, as phase 2 needs it."""

  index: int
  fields: patch_example.SlideFields
  plan: tiling.LevelPlan
  coords: np.ndarray  # (N, 2) int64 level-0 (x, y)
  fractions: np.ndarray  # (N,) float64


def slide_marker_path(output_dir: str, index: int) -> str:
  """The completion marker of a slide's survey."""
  return os.path.join(output_dir, shards.WORK_DIR, "slides", f"{index:05d}.json")


def thumbnail_name(slide_hash: str) -> str:
  """The thumbnail's path relative to the output folder."""
  return posixpath.join(THUMBNAIL_DIR, f"{slide_hash}.png")


def scrub(text: str, source: SlideSource) -> str:
  """Replaces the slide's paths and names in a message by "<slide>"; keeps 500 characters."""
  names = {*source.paths, source.name}
  for path in list(names):
    base = os.path.basename(path)
    names.update({base, os.path.splitext(base)[0], os.path.dirname(path)})
  for name in sorted((n for n in names if len(n) > 2), key=len, reverse=True):
    text = text.replace(name, "<slide>")
  return text[:500]


def error_entry(index: int, slide_hash: str, reason: str, detail: str, **extra) -> dict:
  """An errors.json entry: the slide by index and hashed id, never by name."""
  return {
    "slide_index": index,
    "slide_id_hash": slide_hash,
    "reason": reason,
    "detail": detail,
    **extra,
  }


def _write_atomic(path: str, data: bytes) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  tmp = f"{path}{shards.TMP_TAG}{os.getpid()}"
  with open(tmp, "wb") as f:
    f.write(data)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)


def survey_slide(job: Job, index: int) -> dict:
  """Surveys one slide and returns its marker (also writes the thumbnail).

  Args:
    job: the job.
    index: the slide's index in `job.slides`.

  Returns:
    The marker dict: "ok" with the slide's fields, read plan, kept patch
    coordinates and tissue fractions, or not "ok" with errors.
  """
  config, source = job.config, job.slides[index]
  t0 = time.perf_counter()
  slide_hash = hashing.keyed_hash(job.salt, source.name)
  marker: dict = {"slide": index, "slide_id_hash": slide_hash, "ok": False, "errors": []}

  def fail(reason: str, detail: str) -> dict:
    marker["errors"].append(error_entry(index, slide_hash, reason, scrub(detail, source)))
    marker["timings"] = {"survey": time.perf_counter() - t0}
    return marker

  try:
    slide = open_slide(source)
  except SlideError as e:
    return fail(e.reason, str(e))
  with slide:
    mpp, mpp_source = slide.mpp, "metadata"
    if mpp is None:
      if config.assume_mpp is None:
        return fail(
          "no_mpp",
          "the slide has no microns-per-pixel metadata; pass --assume_mpp if you know it",
        )
      mpp, mpp_source = (config.assume_mpp, config.assume_mpp), "assumed"
    try:
      plan = tiling.level_plan(slide.level_downsamples, mpp, config.policy)
    except tiling.ResolutionError as e:
      return fail("resolution_too_low", str(e))

    ids = slide_ids.resolve(source.name, slide.identifiers, job.labels, job.salt)
    row = None
    if job.labels is not None:
      row = slide_labels.lookup(
        job.labels, job.labels.slide_key(source.name), ids.case, ids.patient
      )
      marker["label_row"] = row.row_number if row else None
      if row is None:
        action = "skipped" if config.drop_unlabeled else "tiled with label -1"
        marker["errors"].append(
          error_entry(
            index, slide_hash, "unlabeled_slide", f"no label row matches this slide; {action}"
          )
        )
        if config.drop_unlabeled:
          marker["dropped"] = True
          marker["timings"] = {"survey": time.perf_counter() - t0}
          return marker
    num_labels = len(job.labels.label_names) if job.labels else 0
    split = splits.assign_split(ids.patient_hash, config.split_fractions)
    fields = patch_example.SlideFields(
      slide_hash=slide_hash,
      case_hash=ids.case_hash,
      patient_hash=ids.patient_hash,
      split=split,
      site=(row.site if row and row.site else "") or config.default_site,
      label=row.label if row else -1,
      multi_label=tuple(row.multi_label) if row else (-1.0,) * num_labels,
      has_label=row is not None,
      vendor=slide.vendor,
      level=plan.level,
      level_mpp=plan.level_mpp[0],
      patch_mpp=plan.patch_mpp[0],
      resize=tiling.RESIZE_FILTER if plan.resized else "none",
    )

    try:
      image, mask_level, factor = tiling.mask_image(
        slide, mpp, config.tissue.mask_mpp, config.policy.mpp_tolerance
      )
      t1 = time.perf_counter()
      grid = tiling.patch_grid(slide.level_dimensions[plan.level], plan)
    except SlideError as e:
      return fail(e.reason, str(e))
  mask_ds = slide.level_downsamples[mask_level] * factor
  mask, info = tissue.detect_tissue(image, mpp[0] * mask_ds, config.tissue)
  coords = tiling.to_level0(grid, plan.downsample)
  footprint = (plan.read_size[0] * plan.downsample, plan.read_size[1] * plan.downsample)
  boxes = np.column_stack(
    [coords.astype(np.float64), np.full((len(coords), 2), footprint, np.float64)]
  )
  fractions = tiling.tissue_fractions(mask, (mask_ds, mask_ds), boxes)
  keep = np.flatnonzero(fractions >= config.policy.min_tissue_fraction)
  keep = keep[
    tiling.sample(len(keep), config.policy.max_patches_per_slide, config.policy.seed, source.name)
  ]
  png = thumbnails.render(image, mask, boxes[keep], (mask_ds, mask_ds), config.thumbnail_max_side)
  _write_atomic(os.path.join(job.output_dir, thumbnail_name(slide_hash)), png)
  if len(keep) == 0:
    marker["errors"].append(
      error_entry(index, slide_hash, "no_tissue", "no patch reaches the minimum tissue fraction")
    )
  marker.update(
    ok=True,
    fields=dataclasses.asdict(fields),
    plan=dataclasses.asdict(plan),
    mpp=list(mpp),
    mpp_source=mpp_source,
    mask={
      "level": mask_level,
      "factor": factor,
      "mpp": mpp[0] * mask_ds,
      "shape": list(mask.shape),
      **info,
    },
    grid_patches=len(coords),
    tissue_patches=int((fractions >= config.policy.min_tissue_fraction).sum()),
    coords=coords[keep].tolist(),
    fractions=[round(float(f), 6) for f in fractions[keep]],
    thumbnail=thumbnail_name(slide_hash),
    timings={"survey_read": t1 - t0, "survey_detect": time.perf_counter() - t1},
  )
  return marker


def survey_and_mark(job: Job, index: int) -> int:
  """Surveys a slide and writes its marker atomically (local workers and Beam).

  Returns:
    The slide index.
  """
  shards.write_json_atomic(slide_marker_path(job.output_dir, index), survey_slide(job, index))
  return index


def slide_work(marker: dict) -> SlideWork | None:
  """The phase-2 view of a surveyed slide's marker (None if it has no patches)."""
  if not marker.get("ok") or not marker["coords"]:
    return None
  fields = dict(marker["fields"])
  fields["multi_label"] = tuple(fields["multi_label"])
  plan = {k: tuple(v) if isinstance(v, list) else v for k, v in marker["plan"].items()}
  return SlideWork(
    marker["slide"],
    patch_example.SlideFields(**fields),
    tiling.LevelPlan(**plan),
    np.asarray(marker["coords"], np.int64).reshape(-1, 2),
    np.asarray(marker["fractions"], np.float64),
  )
