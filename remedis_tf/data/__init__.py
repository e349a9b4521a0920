"""Augmentations, presets and the tf.data input pipeline of remedis-tf."""

from remedis_tf.data.augment import augment_view, preprocess_eval
from remedis_tf.data.input_pipeline import (
  POSITIVE_PAIRS,
  list_files,
  make_pretrain_dataset,
  make_supervised_dataset,
  patient_scores,
  read_records,
  record_key,
  select_label_fraction,
)
from remedis_tf.data.manifest import read_manifest
from remedis_tf.data.micle import DEFAULT_MEMORY_LIMIT_BYTES as MICLE_MEMORY_LIMIT_BYTES
from remedis_tf.data.micle import GROUPS as MICLE_GROUPS
from remedis_tf.data.micle import STORES as MICLE_STORES
from remedis_tf.data.micle import MicleIndex, MicleStats
from remedis_tf.data.micle import build_index as build_micle_index
from remedis_tf.data.presets import PRESETS, AugmentConfig, get_preset

__all__ = [
  "MICLE_GROUPS",
  "MICLE_MEMORY_LIMIT_BYTES",
  "MICLE_STORES",
  "POSITIVE_PAIRS",
  "PRESETS",
  "AugmentConfig",
  "MicleIndex",
  "MicleStats",
  "augment_view",
  "build_micle_index",
  "get_preset",
  "list_files",
  "make_pretrain_dataset",
  "make_supervised_dataset",
  "patient_scores",
  "preprocess_eval",
  "read_manifest",
  "read_records",
  "record_key",
  "select_label_fraction",
]
