r"""remedis-tile: whole-slide images -> tissue-patch TFRecords.

Usage:
  remedis-tile --input SLIDES_DIR --output_dir DIR [--labels_csv CSV] \
      [--patch_size 224] [--target_mpp 0.5] [--max_patches_per_slide N] \
      [--salt SECRET] [--num_workers N]
  remedis-tile --input SLIDES_DIR --list_slides   # index -> path, printed here only

Exit status: 0 on success; 1 when no patch was written; 2 on a user error
(missing input, bad labels CSV, bad flag values, an output directory holding a
different run).
"""

from __future__ import annotations

import json

from absl import app, flags, logging

from tfrecords_tools import run_flags
from tfrecords_tools import tile as tile_lib
from tfrecords_tools.patch_example import PATCH_FORMATS
from tfrecords_tools.tiling import PatchPolicy
from tfrecords_tools.tissue import TissueConfig

_RUN = run_flags.define(
  input_help="A folder of slides, searched recursively (svs, tif/tiff, ndpi, mrxs, scn, vms, "
  "vmu, bif, svslide through OpenSlide; DICOM WSI: the files of one slide in one folder), or "
  "one slide.",
  output_help="Output folder for {split}-NNNNN-of-NNNNN.tfrecord shards, thumbnails/, "
  "manifest.json and errors.json. Rerunning the same command resumes an interrupted run.",
  labels_help="Labels CSV keyed by slide_id, case_id or patient_id (the first such column). A "
  "slide-keyed CSV may add case_id / patient_id columns to say whose slide it is.",
  item="slides",
  salt_ids="slide, case and patient ids",
)
_LIST_SLIDES = flags.DEFINE_bool(
  "list_slides",
  False,
  "Print the slides found in --input with the index errors.json uses (and their hashed id "
  "when a salt is set), then exit. The list goes to this terminal only, never to an output.",
)
_PATCH_SIZE = flags.DEFINE_integer("patch_size", 224, "Patch side in pixels.")
_TARGET_MPP = flags.DEFINE_float(
  "target_mpp", 0.5, "Microns per pixel of the patches (0.5 is about 20x, 0.25 about 40x)."
)
_STRIDE = flags.DEFINE_integer(
  "stride", 0, "Grid step in patch pixels at --target_mpp (0: --patch_size, no overlap)."
)
_MPP_TOLERANCE = flags.DEFINE_float(
  "mpp_tolerance",
  0.05,
  "Relative slack when picking the pyramid level: the coarsest level with mpp <= "
  "target * (1 + tolerance) is read and resized (Lanczos) to the patch size.",
)
_ASSUME_MPP = flags.DEFINE_float(
  "assume_mpp",
  None,
  "Microns per pixel of level 0 for slides whose file has none. Without it such slides are "
  "rejected (reason no_mpp); slides with metadata always use their own.",
)
_MIN_TISSUE_FRACTION = flags.DEFINE_float(
  "min_tissue_fraction", 0.5, "Keep patches whose tissue share (from the tissue mask) is >= this."
)
_MAX_PATCHES = flags.DEFINE_integer(
  "max_patches_per_slide",
  0,
  "Keep at most this many patches per slide, drawn without replacement from --seed (0: all).",
)
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the per-slide patch sampling.")
_MASK_MPP = flags.DEFINE_float(
  "mask_mpp", 8.0, "Microns per pixel of the image the tissue mask is computed on."
)
_MIN_TISSUE_AREA = flags.DEFINE_float(
  "min_tissue_area_um2",
  10_000.0,
  "Tissue pieces smaller than this (square microns) are dropped as dust or debris.",
)
_PATCH_FORMAT = flags.DEFINE_enum(
  "patch_format", "png", list(PATCH_FORMATS), "png (lossless) or jpeg (--jpeg_quality)."
)
_JPEG_QUALITY = flags.DEFINE_integer("jpeg_quality", 90, "JPEG quality 1..95 (4:4:4 chroma).")
_PATCHES_PER_SHARD = flags.DEFINE_integer(
  "patches_per_shard", 2048, "Patches per shard; a big slide spans several shards."
)
_THUMBNAIL_MAX_SIDE = flags.DEFINE_integer(
  "thumbnail_max_side", 2048, "Longest side of the per-slide check thumbnails."
)

flags.mark_flag_as_required("input")


def _summary(result: dict) -> str:
  counts, errors = result["counts"], result["errors"]
  return "\n".join(
    [
      f"slides {counts['slides']}: tiled {counts['slides_tiled']}, without patches "
      f"{counts['slides_without_patches']}, failed {counts['slides_failed']}, dropped "
      f"{counts['slides_dropped']}",
      f"patches {counts['records']}: "
      + ", ".join(f"{s} {n}" for s, n in counts["records_by_split"].items()),
      f"errors/warnings {errors['total']}: {json.dumps(errors['by_reason'])} "
      f"(see {errors['report']})",
    ]
  )


def _list_slides() -> int:
  import os

  from tfrecords_tools import hashing

  listing = tile_lib.list_inputs(_RUN.input.value)
  salt = _RUN.salt.value or os.environ.get(tile_lib.SALT_ENV)
  for i, source in enumerate(listing.slides):
    digest = hashing.keyed_hash(salt.encode("utf-8"), source.name) if salt else "-"
    print(f"{i}\t{digest}\t{source.kind}\t{source.name}")
  return 0


def main(argv: list[str]) -> int:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  try:
    if _LIST_SLIDES.value:
      return _list_slides()
    if not _RUN.output_dir.value:
      raise tile_lib.UserError("--output_dir is required")
    try:
      shared = run_flags.config_fields(_RUN)
    except ValueError as e:
      raise tile_lib.UserError(str(e)) from e
    config = tile_lib.TileConfig(
      **shared,
      policy=PatchPolicy(
        patch_size=_PATCH_SIZE.value,
        target_mpp=_TARGET_MPP.value,
        stride=_STRIDE.value or None,
        mpp_tolerance=_MPP_TOLERANCE.value,
        min_tissue_fraction=_MIN_TISSUE_FRACTION.value,
        max_patches_per_slide=_MAX_PATCHES.value,
        seed=_SEED.value,
      ),
      tissue=TissueConfig(mask_mpp=_MASK_MPP.value, min_tissue_area_um2=_MIN_TISSUE_AREA.value),
      assume_mpp=_ASSUME_MPP.value,
      patch_format=_PATCH_FORMAT.value,
      jpeg_quality=_JPEG_QUALITY.value,
      patches_per_shard=_PATCHES_PER_SHARD.value,
      thumbnail_max_side=_THUMBNAIL_MAX_SIDE.value,
    )
    result = tile_lib.tile(config)
  except tile_lib.UserError as e:
    logging.error("%s", e)
    return 2
  print(_summary(result))
  if result["counts"]["records"] == 0:
    logging.error("no patch was written")
    return 1
  return 0


def run() -> None:
  """Console-script entry point (`remedis-tile`, `python -m tfrecords_tools.tile`)."""
  run_flags.run_cli(main, __name__, __doc__)


if __name__ == "__main__":
  run()
