"""The patient key of a record: its hashed patient id, else its source id.

Records converted without a patient id (a PNG folder, say) count as one
patient per image. Label fractions, patient-level bootstraps and splits of
the demo all group images by this key, so it is defined once, here.
"""

from __future__ import annotations

import tensorflow as tf


def patient_key(patient_id_hash: tf.Tensor, source_id: tf.Tensor) -> tf.Tensor:
  """`patient_id_hash` where it is set, else `source_id` (string tensors, any shape)."""
  patient_id_hash = tf.convert_to_tensor(patient_id_hash, tf.string)
  return tf.where(tf.strings.length(patient_id_hash) > 0, patient_id_hash, source_id)
