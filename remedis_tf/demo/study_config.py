"""Configuration of the demo study and its named scales (tiny, default, large).

A scale fixes the synthetic archive size and the CPU budget of every step:
image size, pretraining steps, fine-tuning budget, label counts and seeds.
`make_config(output_dir, scale, **overrides)` returns the frozen
`StudyConfig` for a scale with any field replaced.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from remedis_tf.data import POSITIVE_PAIRS

STAGES = (
  "generate",
  "convert",
  "init",
  "pretrain",
  "finetune_site_a",
  "finetune_site_b",
  "export",
  "report",
)
METHODS = ("remedis", "baseline")
SITES = ("siteA", "siteB")
FINDINGS = ("opacity", "cardiomegaly")
# Fields that do not change any result: they may differ when a study resumes.
RESUMABLE_FIELDS = ("output_dir", "until", "num_workers", "finetune_workers")


# The `cxr` preset made milder for 64-px phantoms: crops keep at least a third
# of the image (an 8% crop can cut the finding out, and two such crops of one
# chest share almost nothing), no elastic warp, gentler intensity changes.
# Measured on the default archive: with these views and AdamW, SimCLR's
# contrastive accuracy rises within 100 steps; with the full preset it stays
# at chance.
DEMO_AUGMENT_OVERRIDES: tuple[tuple[str, Any], ...] = (
  ("crop_area_range", (0.35, 1.0)),
  ("elastic_prob", 0.0),
  ("equalize_prob", 0.2),
  ("rotation_max_degrees", 10.0),
  ("brightness", 0.4),
  ("contrast", 0.4),
  ("blur_prob", 0.3),
  ("gamma_prob", 0.3),
)


@dataclasses.dataclass(frozen=True)
class StudyConfig:
  """Everything the demo study needs.

  Attributes:
    output_dir: where the archive, records, runs, export and report go.
    scale: synthetic archive scale ('tiny', 'default' or 'large').
    seed: seed of the archive, the initial encoder, pretraining and the
      first fine-tuning seed (seed + i for the i-th repeat).
    bit_checkpoint: BiT `.npz` to initialise the encoder from; None = random.
    encoder: encoder name (see remedis_tf.models.parse_encoder_name).
    image_size: side of the training and evaluation images.
    max_size: long side of the images stored by the converter.
    split_fractions: train, validation, test fractions of patients per site.
    pretrain_steps: SimCLR steps.
    pretrain_batch_size: SimCLR images per step (two views each).
    pretrain_learning_rate: peak learning rate of pretraining (AdamW: used
      as given; LARS: the base rate, scaled by sqrt(batch size)).
    pretrain_optimizer: 'adamw' (default; measured to learn within the
      default 250 steps) or 'lars' (REMEDIS's choice for large batches).
    positive_pairs: 'augment' (SimCLR: two views of one image) or 'micle'
      (two different images of one patient, each augmented; a patient with
      one image falls back to two views of it).
    temperature: NT-Xent temperature.
    augment_preset: augmentation preset of pretraining and fine-tuning.
    finetune_steps: SGD steps of every fine-tuning run (same for both methods).
    finetune_batch_size: labelled images per fine-tuning step.
    finetune_learning_rate: peak SGD learning rate of fine-tuning.
    site_a_labels: site-A label counts of the in-distribution curve; the
      model fine-tuned on all site-A train labels is added to the curve.
    site_b_labels: site-B label counts of the out-of-distribution curve.
    num_seeds: repeats (label subset, head init, data order) per label count.
    headline_finding: finding whose AUROC the curves and the factor use.
    num_workers: processes for archive generation and conversion.
    finetune_workers: processes that run fine-tuning runs in parallel, one
      TensorFlow thread each (0: one per usable CPU core, at most 8). Does
      not change results: every run uses one thread however many run.
    until: stop after this stage (None: run every stage).
  """

  output_dir: str
  scale: str = "default"
  seed: int = 0
  bit_checkpoint: str | None = None
  encoder: str = "bit-tiny"
  image_size: int = 64
  max_size: int = 96
  split_fractions: tuple[float, float, float] = (0.6, 0.1, 0.3)
  pretrain_steps: int = 250
  pretrain_batch_size: int = 64
  pretrain_learning_rate: float = 1e-3
  pretrain_optimizer: str = "adamw"
  positive_pairs: str = "augment"
  temperature: float = 0.2
  augment_preset: str = "cxr"
  augment_overrides: tuple[tuple[str, Any], ...] = DEMO_AUGMENT_OVERRIDES
  finetune_steps: int = 50
  finetune_batch_size: int = 16
  finetune_learning_rate: float = 0.015
  site_a_labels: tuple[int, ...] = (16, 64)
  site_b_labels: tuple[int, ...] = (8, 16, 32, 64, 128)
  num_seeds: int = 3
  # Cardiomegaly (heart width, a global shape) is resolved by bit-tiny at
  # 64 px within the CPU budget; the opacity blobs are faint at that size and
  # both methods stay closer to chance on them. Both are reported (macro AUROC).
  headline_finding: str = "cardiomegaly"
  num_workers: int = 2
  finetune_workers: int = 0
  until: str | None = None

  def validate(self) -> None:
    """Raises ValueError for inconsistent settings."""
    if self.scale not in SCALE_PRESETS:
      raise ValueError(f"scale must be one of {sorted(SCALE_PRESETS)}, got {self.scale!r}.")
    if self.until is not None and self.until not in STAGES:
      raise ValueError(f"until must be one of {STAGES}, got {self.until!r}.")
    if self.headline_finding not in FINDINGS:
      raise ValueError(f"headline_finding must be one of {FINDINGS}.")
    if self.num_seeds < 1 or self.pretrain_steps < 1 or self.finetune_steps < 1:
      raise ValueError("num_seeds, pretrain_steps and finetune_steps must be positive.")
    if not self.site_a_labels or not self.site_b_labels:
      raise ValueError("site_a_labels and site_b_labels must not be empty.")
    if min(self.site_a_labels + self.site_b_labels) < 1:
      raise ValueError("label counts must be positive.")
    if self.positive_pairs not in POSITIVE_PAIRS:
      raise ValueError(
        f"positive_pairs must be one of {POSITIVE_PAIRS}, got {self.positive_pairs!r}."
      )
    if self.pretrain_optimizer not in ("adamw", "lars"):
      raise ValueError(
        f"pretrain_optimizer must be adamw or lars, got {self.pretrain_optimizer!r}."
      )
    if self.finetune_workers < 0:
      raise ValueError(f"finetune_workers must be >= 0, got {self.finetune_workers}.")
    if self.image_size % 32:
      raise ValueError(f"image_size must be a multiple of 32, got {self.image_size}.")

  def fingerprint(self) -> dict[str, Any]:
    """The fields that determine the results (compared when a study resumes)."""
    out = dataclasses.asdict(self)
    for name in RESUMABLE_FIELDS:
      out.pop(name)
    # A JSON round trip turns tuples into lists, as they are stored on disk.
    return json.loads(json.dumps(out))


SCALE_PRESETS: dict[str, dict[str, Any]] = {
  # The test suite's end-to-end and interrupt checks: every stage, as little
  # compute as runs it (4 fine-tuning steps leave room to stop one midway;
  # 32 px, the smallest side BiT's stride of 32 allows, stored at 48 px).
  "tiny": {
    "image_size": 32,
    "max_size": 48,
    "pretrain_steps": 3,
    "pretrain_batch_size": 16,
    "finetune_steps": 4,
    "finetune_batch_size": 8,
    "site_a_labels": (8,),
    "site_b_labels": (8,),
    "num_seeds": 1,
    "num_workers": 1,
  },
  # The README's main job: about 2,100 images; 12 min 58 s on a 2-core AVX-512 CPU (README).
  "default": {},
  # A bigger run (about 10,000 images) for a machine with more time.
  "large": {
    "image_size": 96,
    "max_size": 128,
    "pretrain_steps": 2000,
    "pretrain_batch_size": 128,
    "finetune_steps": 200,
    "site_a_labels": (16, 32, 64, 128, 256, 512, 1024),
    "site_b_labels": (8, 16, 32, 64, 128, 256, 512),
    "num_seeds": 3,
  },
}


def make_config(output_dir: str, scale: str = "default", **overrides: Any) -> StudyConfig:
  """The StudyConfig of a named scale with `overrides` applied (None values ignored).

  Args:
    output_dir: study output directory.
    scale: 'tiny', 'default' or 'large'.
    **overrides: StudyConfig fields; a None value keeps the scale's setting
      (except for bit_checkpoint and until, whose default is None anyway).

  Returns:
    A validated StudyConfig.
  """
  if scale not in SCALE_PRESETS:
    raise ValueError(f"scale must be one of {sorted(SCALE_PRESETS)}, got {scale!r}.")
  fields = dict(SCALE_PRESETS[scale])
  fields.update({k: v for k, v in overrides.items() if v is not None})
  config = StudyConfig(output_dir=output_dir, scale=scale, **fields)
  config.validate()
  return config
