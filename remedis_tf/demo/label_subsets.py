"""Patient-level labelled subsets of a given size, as the input pipeline selects them.

Fine-tuning keeps the patients whose keyed hash score is below
`label_fraction` (`remedis_tf.data.input_pipeline.patient_scores`). To use
about `n` labelled images, `fraction_for_count` sorts the patients by that
score and returns the fraction that keeps the fewest lowest-scoring patients
holding at least `n` images. The subsets are therefore whole patients,
deterministic given the seed, and nested across label counts.
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Sequence

import numpy as np
import tensorflow as tf

from remedis_tf.data import input_pipeline
from remedis_tf.data.patients import patient_key
from tfrecords_tools import schema


@dataclasses.dataclass(frozen=True)
class ImageIndex:
  """Patient and labels of every image of some records.

  Attributes:
    patients: (N,) patient key per image (hashed id, else source id, as the
      input pipeline uses).
    labels: (N, K) multi-label vectors (-1 = unknown).
  """

  patients: np.ndarray
  labels: np.ndarray


@dataclasses.dataclass(frozen=True)
class Subset:
  """A labelled subset chosen for a target size.

  Attributes:
    fraction: the label_fraction that selects it.
    num_images: images in the subset (>= the target unless the data is smaller).
    num_patients: patients in the subset.
    positives: positive images per label index.
  """

  fraction: float
  num_images: int
  num_patients: int
  positives: tuple[int, ...]


def read_index(files: str | Sequence[str], num_labels: int) -> ImageIndex:
  """Reads the patient key and the labels of every record of `files`."""
  spec = schema.feature_spec(num_labels)
  keys = (schema.PATIENT_ID_HASH, schema.IMAGE_SOURCE_ID, schema.MULTI_LABEL)
  spec = {k: spec[k] for k in keys}
  patients, labels = [], []
  dataset = tf.data.TFRecordDataset(input_pipeline.list_files(files))
  for batch in dataset.map(lambda s: tf.io.parse_example(s, spec)).batch(512):
    pid = patient_key(batch[schema.PATIENT_ID_HASH], batch[schema.IMAGE_SOURCE_ID])
    patients.append(pid.numpy().astype(str))
    labels.append(batch[schema.MULTI_LABEL].numpy())
  return ImageIndex(np.concatenate(patients), np.concatenate(labels).astype(np.float32))


def fraction_for_count(index: ImageIndex, num_images: int, seed: int) -> Subset:
  """The label fraction whose patient subset first holds `num_images` images.

  Args:
    index: the training images.
    num_images: target number of labelled images.
    seed: the fine-tuning seed (it keys the patient scores).

  Returns:
    The Subset; fraction 1.0 (all images) when the target is not below the
    number of images.
  """
  counts = collections.Counter(index.patients.tolist())
  ids = sorted(counts)
  scores = input_pipeline.patient_scores(tf.constant(ids), seed).numpy()
  order = np.argsort(scores, kind="stable")
  fraction, kept, total = 1.0, [], 0
  for rank, i in enumerate(order):
    kept.append(ids[i])
    total += counts[ids[i]]
    if total >= num_images:
      if rank + 1 < len(order):
        fraction = float((scores[i] + scores[order[rank + 1]]) / 2.0)
      break
  if fraction >= 1.0:
    kept = ids
  mask = np.isin(index.patients, np.asarray(kept))
  positives = tuple(int(v) for v in (index.labels[mask] > 0.5).sum(axis=0))
  return Subset(fraction, int(mask.sum()), len(kept), positives)
