"""Export a Keras encoder as a reusable TF-Hub SavedModel (PhysioNet format).

The exported object, `obj = hub.load(path)` (or `tf.saved_model.load`), has:

  * `obj(images, training=False)`: images float32 (N, H, W, 3) in [0, 1], any
    H and W; returns the unpooled feature map (N, H/32, W/32, C), as in the
    "Medical AI Research Foundations" release. Traced for `training` True and
    False (the reusable SavedModel API), so `hub.KerasLayer(path,
    trainable=True)` fine-tunes the whole encoder.
  * `obj.variables`, `obj.trainable_variables`, `obj.regularization_losses`
    (empty: weight decay belongs to the fine-tuning optimizer). They list
    what `obj(...)` uses: a classifier head's variables are in
    `obj.classifier_variables` instead (for a functional model; any other
    model is called whole).
  * signatures `serving_default` (inference) and `serving_training`
    (training-mode forward pass), each images -> {'embedding': (N, C),
    'feature_map': (N, H/32, W/32, C)}. With Keras 3,
    `TFSMLayer(path, call_endpoint="serving_default",
    call_training_endpoint="serving_training", trainable=True)`.
  * with a classifier (metadata with label names and a model with 'logits'):
    signature and function `classify`: images -> {'logits': (N, K),
    'probabilities': (N, K)}; label names in `assets/labels.txt`.
  * `assets/remedis.json` (metadata) and `assets/MODEL_CARD.md`.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import weakref

import keras
import tensorflow as tf

from hub_export import metadata as metadata_lib
from hub_export import model_card
from remedis_tf.models import gradients
from remedis_tf.models.outputs import EMBEDDING, FEATURE_MAP, LOGITS, PROBABILITIES
from tfrecords_tools.schema import LABEL_MODES, LabelMode

SERVING_SIGNATURE = "serving_default"
TRAINING_SIGNATURE = "serving_training"
CLASSIFY_SIGNATURE = "classify"
IMAGES_ARG = "images"
LABELS_FILENAME = "labels.txt"

IMAGE_SPEC = tf.TensorSpec([None, None, None, 3], tf.float32, name=IMAGES_ARG)
PROBE_SIZE = 64  # Input side used to trace output shapes of models that accept any size.
# model -> output_shapes(model); a model's outputs do not change once it is built.
_OUTPUT_SHAPES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _probe_spec(model: keras.Model) -> tf.TensorSpec:
  """A (1, H, W, 3) input spec the model accepts: its fixed input side, else 64.

  A model built with a fixed input shape (e.g. `load.load_encoder(...,
  image_size=S)`) rejects other sizes in eager/shape checks, so it is probed
  at its own size.
  """
  height = width = PROBE_SIZE
  inputs = getattr(model, "inputs", None)
  if inputs and len(inputs) == 1 and len(inputs[0].shape) == 4:
    height = inputs[0].shape[1] or PROBE_SIZE
    width = inputs[0].shape[2] or PROBE_SIZE
  return tf.TensorSpec([1, height, width, 3], tf.float32)


def output_shapes(model: keras.Model) -> dict[str, tf.TensorShape]:
  """Returns the shapes of the model's output dict for a (1, H, W, 3) input.

  H and W are the model's fixed input side, else PROBE_SIZE. Found by
  tracing, so nothing is computed; the trace (a whole forward pass: seconds for
  BiT-R50x1) is done once per model object, as an export asks up to three
  times (remedis-export, `export_encoder`, `build_export_object`).

  Raises:
    ValueError: the model does not return a dict with 'feature_map'.
  """
  try:
    cached = _OUTPUT_SHAPES.get(model)
  except TypeError:  # Not weakly referenceable: trace every time.
    cached = None
  if cached is not None:
    return dict(cached)
  spec = _probe_spec(model)
  traced = tf.function(lambda x: model(x, training=False)).get_concrete_function(spec)
  structured = traced.structured_outputs
  if not isinstance(structured, dict) or FEATURE_MAP not in structured:
    raise ValueError(
      "export_encoder needs a model returning a dict with 'feature_map' "
      f"(and 'embedding'); got {type(structured).__name__}."
    )
  shapes = {k: v.shape for k, v in structured.items()}
  with contextlib.suppress(TypeError):
    _OUTPUT_SHAPES[model] = shapes
  return dict(shapes)


def _embedding(outputs: dict[str, tf.Tensor]) -> tf.Tensor:
  if EMBEDDING in outputs:
    return outputs[EMBEDDING]
  return tf.reduce_mean(outputs[FEATURE_MAP], axis=[1, 2])


def _encoder_part(model: keras.Model) -> keras.Model:
  """The model without its classifier head, when that can be cut off.

  A functional model returning 'logits' next to 'feature_map' is rebuilt with
  its 'feature_map' (and 'embedding') outputs only, so that `obj(images)` and
  the serving signatures neither compute nor capture the head. Other models
  are returned as they are.
  """
  outputs = getattr(model, "output", None) if getattr(model, "inputs", None) else None
  if not isinstance(outputs, dict) or LOGITS not in outputs or FEATURE_MAP not in outputs:
    return model
  kept = {k: v for k, v in outputs.items() if k in (FEATURE_MAP, EMBEDDING)}
  return keras.Model(model.inputs, kept, name=f"{model.name}_encoder")


def _write_assets(
  metadata: metadata_lib.ExportMetadata, directory: str
) -> dict[str, tf.saved_model.Asset]:
  """Writes the asset files to `directory` and returns them as tracked Assets."""
  files = {
    "metadata": (metadata_lib.METADATA_FILENAME, metadata.to_json()),
    "model_card": (model_card.MODEL_CARD_FILENAME, model_card.render_model_card(metadata)),
  }
  if metadata.label_names:
    files["labels"] = (LABELS_FILENAME, "".join(f"{n}\n" for n in metadata.label_names))
  assets = {}
  for key, (filename, text) in files.items():
    path = os.path.join(directory, filename)
    with open(path, "w", encoding="utf-8") as f:
      f.write(text)
    assets[key] = tf.saved_model.Asset(path)
  return assets


def build_export_object(
  model: keras.Model, metadata: metadata_lib.ExportMetadata, asset_dir: str
) -> tuple[tf.train.Checkpoint, dict[str, tf.types.experimental.ConcreteFunction]]:
  """Builds the trackable root object that `export_encoder` saves.

  Args:
    model: Keras model mapping images (N, H, W, 3) float32 in [0, 1] to a dict
      with 'feature_map' (N, H/32, W/32, C), optionally 'embedding' (N, C)
      (mean-pooled feature map when absent) and 'logits' (N, K).
    metadata: export metadata; non-empty `label_names` adds the classifier.
    asset_dir: existing directory where the asset files are written before
      being copied into the SavedModel.

  Returns:
    (root object, signatures), ready for `tf.saved_model.save`.

  Raises:
    ValueError: the model lacks the outputs the metadata asks for.
  """
  keys = set(output_shapes(model))
  with_classifier = bool(metadata.label_names)
  if with_classifier and LOGITS not in keys:
    raise ValueError("metadata.label_names is set but the model returns no 'logits'.")
  if with_classifier and metadata.label_mode not in LABEL_MODES:
    raise ValueError(f"label_mode must be one of {LABEL_MODES}, got {metadata.label_mode!r}")

  encoder = _encoder_part(model)

  # The encoder is traced once per value of `training`; `__call__` and the two
  # serving signatures call those two graphs instead of tracing their own, so
  # the SavedModel holds (and saving traces gradient functions for) two copies
  # of the encoder instead of four.
  @tf.function
  def outputs(images: tf.Tensor, training: bool) -> dict[str, tf.Tensor]:
    result = encoder(images, training=training)
    return {EMBEDDING: _embedding(result), FEATURE_MAP: result[FEATURE_MAP]}

  @tf.function
  def call(images: tf.Tensor, training: bool = False) -> tf.Tensor:
    return outputs(images, training)[FEATURE_MAP]

  serve = tf.function(lambda images: outputs(images, False), input_signature=[IMAGE_SPEC])
  serve_training = tf.function(lambda images: outputs(images, True), input_signature=[IMAGE_SPEC])

  root = tf.train.Checkpoint()
  root.__call__ = call
  # Trace both values of `training` (the reusable SavedModel API).
  for training in (False, True):
    outputs.get_concrete_function(IMAGE_SPEC, training=training)
    call.get_concrete_function(IMAGE_SPEC, training=training)
  # The reusable API lists the variables `__call__` uses: a classifier head
  # (used by `classify` only) is not offered to `hub.KerasLayer` for training.
  root.variables = list(encoder.variables)
  root.trainable_variables = list(encoder.trainable_variables)
  root.non_trainable_variables = list(encoder.non_trainable_variables)
  encoder_ids = {id(v) for v in encoder.variables}
  root.classifier_variables = [v for v in model.variables if id(v) not in encoder_ids]
  root.regularization_losses = []
  root.serve = serve
  root.serve_training = serve_training
  signatures = {
    SERVING_SIGNATURE: serve.get_concrete_function(),
    TRAINING_SIGNATURE: serve_training.get_concrete_function(),
  }
  if with_classifier:
    multi_class = metadata.label_mode == LabelMode.MULTI_CLASS
    activation = tf.nn.softmax if multi_class else tf.math.sigmoid

    @tf.function(input_signature=[IMAGE_SPEC])
    def classify(images: tf.Tensor) -> dict[str, tf.Tensor]:
      logits = model(images, training=False)[LOGITS]
      return {LOGITS: logits, PROBABILITIES: activation(logits)}

    root.classify = classify
    signatures[CLASSIFY_SIGNATURE] = classify.get_concrete_function()
  root.assets = _write_assets(metadata, asset_dir)
  return root, signatures


def export_encoder(
  model: keras.Model,
  export_dir: str,
  metadata: metadata_lib.ExportMetadata | None = None,
  custom_gradients: bool = False,
) -> str:
  """Saves `model` as a reusable TF-Hub SavedModel in the PhysioNet format.

  Args:
    model: Keras model (e.g. `remedis_tf.models.build_bit_encoder(...)`)
      mapping images (N, H, W, 3) float32 in [0, 1] to a dict with
      'feature_map' (N, H/32, W/32, C), 'embedding' (N, C) and, for a
      fine-tuned classifier, 'logits' (N, K).
    export_dir: SavedModel directory to create (overwritten if it exists).
    metadata: written to `assets/remedis.json` and the model card. Defaults
      to metadata named after the directory's basename (a release name such
      as "cxr-50x1-remedis-m" fills modality, depth, width and image size).
      Non-empty `label_names` exports the classifier.
    custom_gradients: keep the hand-written gradients of group norm and
      weight standardization in the SavedModel. False (default): the graph
      holds the same forward ops and TensorFlow differentiates them, which
      gives the same gradients to float32 rounding, exports and loads about
      2.3x faster, and fine-tunes through `hub.KerasLayer` about 4% slower
      per step (see `remedis_tf.models.gradients`).

  Returns:
    `export_dir`.
  """
  if metadata is None:
    name = os.path.basename(os.path.normpath(export_dir))
    feature_dim = int(output_shapes(model)[FEATURE_MAP][-1])
    metadata = metadata_lib.metadata_for(name, feature_dim=feature_dim)
  tracing = contextlib.nullcontext() if custom_gradients else gradients.autodiff_gradients()
  with tempfile.TemporaryDirectory() as asset_dir, tracing:
    root, signatures = build_export_object(model, metadata, asset_dir)
    tf.saved_model.save(root, export_dir, signatures=signatures)
  return export_dir
