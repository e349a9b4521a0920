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
from typing import Any

import numpy as np
import tensorflow as tf
from absl import logging

from remedis_tf import data as data_lib
from remedis_tf.train import checkpointing, evaluation_metrics, finetune


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
     (N,) str, 'label_mode', 'label_names', 'checkpoint', 'image_size'}.
  """
  run = checkpointing.read_config_json(config.model_dir)
  if run is None or run.get("task") != "finetune":
    raise checkpointing.CheckpointError(
      f"{config.model_dir!r} has no fine-tuning config.json; evaluate a remedis-finetune model_dir."
    )
  prefix = checkpointing.resolve_checkpoint_path(config.checkpoint or config.model_dir)
  image_size = config.image_size or int(run["image_size"])
  label_mode, num_classes = run["label_mode"], int(run["num_classes"])
  kind = "saved_model" if run.get("encoder_source") == "saved_model" else "bit"
  encoder = finetune.build_encoder(
    kind, run["encoder"], run.get("saved_model_path"), image_size, trainable=False
  )
  head = finetune.build_head(int(encoder.output["embedding"].shape[-1]), num_classes)
  checkpointing.restore(tf.train.Checkpoint(encoder=encoder, head=head), prefix, partial=True)
  files = data_lib.list_files(config.data)
  ds = data_lib.make_supervised_dataset(
    files,
    batch_size=config.batch_size,
    image_size=image_size,
    training=False,
    preset=run.get("augment_preset", "natural"),
    label_mode=label_mode,
    num_labels=num_classes if label_mode == "multi_label" else None,
    split=config.split,
    site=config.site,
    with_metadata=True,
    repeat=False,
  )

  @tf.function
  def probabilities(images: tf.Tensor) -> tf.Tensor:
    logits = head(encoder(images, training=False)["embedding"], training=False)
    return tf.nn.softmax(logits) if label_mode == "multi_class" else tf.sigmoid(logits)

  labels, probs, patients = [], [], []
  for batch in ds:
    probs.append(probabilities(batch["image"]).numpy())
    labels.append(batch["label"].numpy())
    pid = np.where(
      batch["patient_id_hash"].numpy() == b"",
      batch["source_id"].numpy(),
      batch["patient_id_hash"].numpy(),
    )
    patients.append(pid.astype(str))
  if not labels:
    raise ValueError(f"No labelled examples in {config.data!r} (split={config.split!r}).")
  return {
    "labels": np.concatenate(labels),
    "probabilities": np.concatenate(probs).astype(np.float32),
    "patient_ids": np.concatenate(patients),
    "label_mode": label_mode,
    "label_names": list(run.get("label_names") or range(num_classes)),
    "checkpoint": prefix,
    "image_size": image_size,
  }


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
    from remedis_tf.train.cli_util import write_json

    write_json(config.output_json, _json_safe(metrics))
  if config.predictions_npz:
    buffer = io.BytesIO()  # zipfile needs a seekable, readable file; GFile is not.
    np.savez(
      buffer, labels=p["labels"], probabilities=p["probabilities"], patient_ids=p["patient_ids"]
    )
    with tf.io.gfile.GFile(config.predictions_npz, "wb") as f:
      f.write(buffer.getvalue())
  logging.info(
    "Macro AUROC %.4f [%.4f, %.4f] on %d examples.",
    metrics["auroc"]["macro"]["value"],
    metrics["auroc"]["macro"]["ci_low"],
    metrics["auroc"]["macro"]["ci_high"],
    metrics["n_examples"],
  )
  return metrics


def _json_safe(value: Any) -> Any:
  """NaN -> None recursively (strict JSON has no NaN)."""
  if isinstance(value, dict):
    return {k: _json_safe(v) for k, v in value.items()}
  if isinstance(value, list | tuple):
    return [_json_safe(v) for v in value]
  if isinstance(value, float) and not np.isfinite(value):
    return None
  return value
