"""Augmentations, presets and the tf.data input pipeline of remedis-tf."""

from remedis_tf.data.augment import augment_view, preprocess_eval
from remedis_tf.data.input_pipeline import (
  list_files,
  make_pretrain_dataset,
  make_supervised_dataset,
  patient_scores,
  read_records,
  select_label_fraction,
)
from remedis_tf.data.manifest import read_manifest
from remedis_tf.data.presets import PRESETS, AugmentConfig, get_preset

__all__ = [
  "PRESETS",
  "AugmentConfig",
  "augment_view",
  "get_preset",
  "list_files",
  "make_pretrain_dataset",
  "make_supervised_dataset",
  "patient_scores",
  "preprocess_eval",
  "read_manifest",
  "read_records",
  "select_label_fraction",
]
