"""Evaluation of a fine-tuned model_dir on any split: metrics JSON (+ predictions).

Rebuilds the encoder and head from `<model_dir>/config.json` (see
`finetune`), restores the newest (or a given) checkpoint, predicts every
labelled example once (centre crop, no augmentation) and computes per-label
and macro AUROC and accuracy with patient-level bootstrap 95% intervals
(`evaluation_metrics.compute_metrics`). Runs in one process.
"""

from __future__ import annotations

import dataclasses
import io
import os
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import tensorflow as tf
from absl import logging

from remedis_tf import data as data_lib
from remedis_tf.data.patients import patient_key
from remedis_tf.errors import InputDataError
from remedis_tf.models.outputs import EMBEDDING
from remedis_tf.train import evaluation_metrics, run_dir
from remedis_tf.train.checkpointing import CheckpointError
from tfrecords_tools import json_io
from tfrecords_tools.schema import LabelMode

if TYPE_CHECKING:
  from remedis_tf.train import trainer

# The arrays of a predictions .npz, in record order.
PREDICTION_ARRAYS = ("labels", "probabilities", "patient_ids", "source_ids")


@dataclasses.dataclass(frozen=True)
class EvaluateConfig:
  """What to evaluate and where to write.

  Attributes:
    data: glob of TFRecord shards.
    model_dir: a fine-tuning model_dir (config.json + checkpoints).
    output_json: metrics JSON path (None: not written).
    checkpoint: checkpoint prefix; None = newest in model_dir.
    split: keep only this split (None = all records).
    site: keep only this site (None = all).
    batch_size: evaluation batch size.
    image_size: None = the fine-tuning image size.
    num_bootstrap: bootstrap replicates (0: no intervals).
    confidence: interval coverage.
    seed: bootstrap seed.
    predictions_npz: also save labels, probabilities, patient ids here.
  """

  data: str
  model_dir: str
  output_json: str | None = None
  checkpoint: str | None = None
  split: str | None = None
  site: str | None = None
  batch_size: int = 64
  image_size: int | None = None
  num_bootstrap: int = 1000
  confidence: float = 0.95
  seed: int = 0
  predictions_npz: str | None = None


def predict(config: EvaluateConfig) -> dict[str, Any]:
  """Predictions of the model in `config.model_dir` on `config.data`.

  Returns:
    {'labels': (N,) or (N, K), 'probabilities': (N, K) float32, 'patient_ids':
     (N,) str, 'source_ids': (N,) str, 'label_mode', 'label_names',
     'checkpoint', 'image_size'}, in record order (files sorted by name).

  Raises:
    CheckpointError: not a fine-tuning model_dir, or no checkpoint.
    InputDataError: no labelled example in the data.
  """
  return predict_each([config])[0]


def _probabilities_function(
  encoder: Any, head: Any, image_size: int, multi_label: bool
) -> Callable[[tf.Tensor], tf.Tensor]:
  """Images -> class probabilities, one trace for every batch size."""

  @tf.function(
    input_signature=[tf.TensorSpec([None, image_size, image_size, 3], tf.float32)],
    autograph=False,
  )
  def probabilities(images: tf.Tensor) -> tf.Tensor:
    logits = head(encoder(images, training=False)[EMBEDDING], training=False)
    return tf.sigmoid(logits) if multi_label else tf.nn.softmax(logits)

  return probabilities


def predict_each(
  configs: Sequence[EvaluateConfig], warm: trainer.WarmStart | None = None
) -> list[dict[str, Any]]:
  """`predict` for several data sets of one model: restored once, traced once.

  Every config must name the same model (model_dir, checkpoint and image
  size); data, split, site and batch size may differ. With `warm`, a model
  that a run of this process has just trained and saved as exactly this
  checkpoint is used as it is in memory (its variables equal the file's),
  with a prediction function traced once per WarmStart slot.

  Returns:
    `predict`'s dict for each config, in order.

  Raises:
    ValueError: the configs name different models.
    CheckpointError, InputDataError: as `predict`.
  """
  if not configs:
    return []
  first = configs[0]
  if any(
    (c.model_dir, c.checkpoint, c.image_size)
    != (first.model_dir, first.checkpoint, first.image_size)
    for c in configs
  ):
    raise ValueError("predict_each: every config must name the same model and image size.")
  prefix, model_dir = run_dir.resolve_checkpoint(first.checkpoint or first.model_dir)
  run = run_dir.read_run_config(model_dir)
  if run is None or not run.has_head:
    raise CheckpointError(
      f"{first.model_dir!r} has no fine-tuning config.json; evaluate a remedis-finetune model_dir."
    )
  image_size = first.image_size or run.image_size
  label_mode = run.label_mode
  multi_label = label_mode == LabelMode.MULTI_LABEL
  slot = warm.holding(prefix) if warm is not None else None
  float32 = run.settings.get("mixed_precision") in (None, "float32")
  if slot is not None and float32:
    key = ("probabilities", image_size, multi_label)
    if key not in slot.extras:
      head = slot.built.checkpoint_items["head"]
      slot.extras[key] = _probabilities_function(slot.built.encoder, head, image_size, multi_label)
    probabilities = slot.extras[key]
  else:
    model = run_dir.restore_model(prefix, image_size=image_size, trainable=False)
    # One trace for every batch of every data set (batch size and last batch vary).
    probabilities = _probabilities_function(model.encoder, model.head, image_size, multi_label)

  results = []
  for config in configs:
    ds = data_lib.make_supervised_dataset(
      data_lib.list_files(config.data),
      batch_size=config.batch_size,
      image_size=image_size,
      training=False,
      preset=run.settings.get("augment_preset", "natural"),
      label_mode=label_mode.value,
      num_labels=run.num_classes if multi_label else None,
      split=config.split,
      site=config.site,
      with_metadata=True,
      repeat=False,
    )
    labels, probs, patients, sources = [], [], [], []
    for batch in ds:
      probs.append(probabilities(tf.cast(batch["image"], tf.float32)).numpy())
      labels.append(batch["label"].numpy())
      patients.append(patient_key(batch["patient_id_hash"], batch["source_id"]).numpy())
      sources.append(batch["source_id"].numpy())
    if not labels:
      raise InputDataError(f"No labelled examples in {config.data!r} (split={config.split!r}).")
    results.append(
      {
        "labels": np.concatenate(labels),
        "probabilities": np.concatenate(probs).astype(np.float32),
        "patient_ids": np.concatenate(patients).astype(str),
        "source_ids": np.concatenate(sources).astype(str),
        "label_mode": label_mode,
        "label_names": list(run.label_names or range(run.num_classes)),
        "checkpoint": prefix,
        "image_size": image_size,
      }
    )
  return results


def evaluate(config: EvaluateConfig) -> dict[str, Any]:
  """Metrics of a fine-tuned model on `config.data`.

  Returns:
    `evaluation_metrics.compute_metrics`'s dict plus 'checkpoint', 'data',
    'split', 'image_size'. Also written to `output_json` (and predictions to
    `predictions_npz`) when set.
  """
  p = predict(config)
  metrics = evaluation_metrics.compute_metrics(
    p["labels"],
    p["probabilities"],
    p["label_mode"],
    patient_ids=p["patient_ids"],
    label_names=[str(n) for n in p["label_names"]],
    num_bootstrap=config.num_bootstrap,
    confidence=config.confidence,
    seed=config.seed,
  )
  metrics.update(
    checkpoint=p["checkpoint"], data=config.data, split=config.split, image_size=p["image_size"]
  )
  if config.output_json:
    json_io.write_json(config.output_json, metrics)
  if config.predictions_npz:
    write_predictions(config.predictions_npz, p)
  logging.info(
    "Macro AUROC %.4f [%.4f, %.4f] on %d examples.",
    metrics["auroc"]["macro"]["value"],
    metrics["auroc"]["macro"]["ci_low"],
    metrics["auroc"]["macro"]["ci_high"],
    metrics["n_examples"],
  )
  return metrics


def write_predictions(path: str, predictions: dict[str, Any]) -> None:
  """Saves labels, probabilities, patient and source ids of `predict` as an .npz."""
  buffer = io.BytesIO()  # zipfile needs a seekable, readable file; GFile is not.
  np.savez(buffer, **{k: predictions[k] for k in PREDICTION_ARRAYS})
  tf.io.gfile.makedirs(os.path.dirname(path) or ".")
  with tf.io.gfile.GFile(path, "wb") as f:
    f.write(buffer.getvalue())
