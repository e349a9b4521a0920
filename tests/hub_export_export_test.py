"""export_encoder on bit-tiny: fidelity at 224/448 px, signatures, classifier, assets."""

import json
import os

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_hub as hub
from float32_bounds import (
  SAFETY,
  Bounded,
  assert_network_close,
  assert_within,
  bit_reduction_sizes,
  bit_tiny_bound,
  probability_tolerance,
  statistical_relative_bound,
)

from hub_export import export, metadata
from remedis_tf.models import build_encoder_by_name

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
  keras_model = build_encoder_by_name("bit-tiny")
  path = str(tmp_path_factory.mktemp("export") / "cxr-50x1-remedis-m")
  meta = metadata.metadata_for("cxr-50x1-remedis-m", 2048, depth=14, training_data="synthetic")
  export.export_encoder(keras_model, path, meta)
  return keras_model, path


@pytest.mark.parametrize("size", [224, 448])
def test_hub_load_matches_keras_feature_map(exported, size):
  keras_model, path = exported
  images = np.random.default_rng(size).random((2, size, size, 3)).astype("float32")
  want = keras_model(images, training=False)["feature_map"].numpy()
  obj = hub.load(path)
  got = obj(images).numpy()
  assert got.shape == (2, size // 32, size // 32, 2048)
  # Tolerance: two float32 evaluations of bit-tiny (SavedModel graph, Keras): twice the
  # statistical bound of its reductions at this size (float32_bounds.bit_tiny_bound).
  bound = bit_tiny_bound(size, size)
  assert_network_close(got, want, bound, err_msg="inference trace")
  # Both traces of the reusable API; GroupNorm makes them equal.
  assert_network_close(obj(images, training=True).numpy(), want, bound, err_msg="training trace")


def test_reusable_api_and_signatures(exported):
  keras_model, path = exported
  obj = tf.saved_model.load(path)
  assert len(obj.variables) == len(keras_model.variables) == 43
  assert len(obj.trainable_variables) == len(keras_model.trainable_variables)
  assert list(obj.regularization_losses) == []
  assert set(obj.signatures) == {"serving_default", "serving_training"}
  images = np.random.default_rng(0).random((3, 96, 64, 3)).astype("float32")
  want = keras_model(images, training=False)
  for name in ("serving_default", "serving_training"):
    out = obj.signatures[name](images=tf.constant(images))
    assert out["feature_map"].shape == (3, 3, 2, 2048) and out["embedding"].shape == (3, 2048)
    bound = bit_tiny_bound(96, 64)  # two float32 evaluations, as above
    assert_network_close(out["embedding"], want["embedding"], bound, err_msg=name)
    # The signature's own pooling of its own feature map: a float32 mean of 3 * 2 values,
    # replayed (float32_bounds.Bounded: 5 additions and a division).
    pooled = Bounded.exact(out["feature_map"].numpy()).mean(axis=1).mean(axis=1)
    assert_within(out["embedding"], pooled.v, SAFETY * pooled.e, name)


def test_assets(exported):
  _, path = exported
  with open(os.path.join(path, "assets", metadata.METADATA_FILENAME)) as f:
    meta = metadata.ExportMetadata.from_json(f.read())
  assert meta.name == "cxr-50x1-remedis-m"
  assert (meta.pretrain_image_size, meta.depth, meta.feature_dim) == (448, 14, 2048)
  assert json.loads(meta.to_json())["training_data"] == "synthetic"
  with open(os.path.join(path, "assets", "MODEL_CARD.md")) as f:
    assert "cxr-50x1-remedis-m" in f.read()


def test_classifier_export(tmp_path):
  keras_model = build_encoder_by_name("bit-tiny", num_classes=3)
  head = keras_model.get_layer("head")
  rng = np.random.default_rng(5)
  head.kernel.assign(rng.normal(0, 0.1, head.kernel.shape).astype("float32"))
  meta = metadata.metadata_for("clf", 2048, label_names=("a", "b", "c"), label_mode="multiclass")
  path = export.export_encoder(keras_model, str(tmp_path / "clf"), meta)
  obj = tf.saved_model.load(path)
  # `obj(...)` and its reusable-API variables leave the head out; it is saved for `classify`.
  assert len(obj.variables) == len(obj.trainable_variables) == 43
  assert len(obj.classifier_variables) == 2
  images = rng.random((2, 64, 64, 3)).astype("float32")
  out = obj.signatures["classify"](images=tf.constant(images))
  logits = keras_model(images)["logits"].numpy().astype(np.float64)
  # Two float32 evaluations of bit-tiny and its 2048-input head.
  head_bound = statistical_relative_bound(bit_reduction_sizes(height=64, width_px=64) + [2048])
  assert_network_close(out["logits"], logits, head_bound, err_msg="logits")
  logit_error = 2 * head_bound * np.sqrt(np.mean(np.square(logits)))
  softmax = np.exp(logits - logits.max(-1, keepdims=True))
  softmax /= softmax.sum(-1, keepdims=True)
  tolerance = probability_tolerance(logits, logit_error, multilabel=False)
  assert_within(out["probabilities"], softmax, tolerance, "softmax")
  with open(os.path.join(path, "assets", export.LABELS_FILENAME)) as f:
    assert f.read().split() == ["a", "b", "c"]
  # Multi-label probabilities are sigmoids (checked on the unsaved object).
  root, signatures = export.build_export_object(
    keras_model, meta.replace(label_mode="multilabel"), str(tmp_path)
  )
  assert "classify" in signatures
  out2 = root.classify(tf.constant(images))
  tolerance = probability_tolerance(logits, logit_error, multilabel=True)
  assert_within(out2["probabilities"], 1 / (1 + np.exp(-logits)), tolerance, "sigmoid")


def test_classifier_needs_logits(tmp_path):
  meta = metadata.metadata_for("x", 2048, label_names=("a", "b"), label_mode="multiclass")
  with pytest.raises(ValueError, match="logits"):
    export.export_encoder(build_encoder_by_name("bit-tiny"), str(tmp_path / "x"), meta)


def test_rejects_model_without_feature_map(tmp_path):
  import keras

  inputs = keras.Input((None, None, 3))
  model = keras.Model(inputs, keras.layers.Conv2D(4, 3)(inputs))
  with pytest.raises(ValueError, match="feature_map"):
    export.export_encoder(model, str(tmp_path / "bad"))


def test_output_shapes_traces_each_model_once():
  """An export asks for the output shapes up to three times; the model is traced once."""
  import keras

  traces = []

  class Counting(keras.layers.Layer):
    def call(self, x):
      traces.append(1)  # Python runs once per trace.
      return {"feature_map": x[:, ::32, ::32, :], "embedding": tf.reduce_mean(x, axis=[1, 2])}

  inputs = keras.Input((None, None, 3))
  model = keras.Model(inputs, Counting()(inputs))
  traces.clear()
  first = export.output_shapes(model)
  assert first == export.output_shapes(model) and len(traces) == 1
  assert first["feature_map"].as_list() == [1, 2, 2, 3]  # the 64 px probe
  first["feature_map"] = None  # The caller's copy; the cached shapes are unchanged.
  assert export.output_shapes(model)["feature_map"].as_list() == [1, 2, 2, 3]
  other = keras.Model(inputs, Counting()(inputs))
  traces.clear()
  export.output_shapes(other)
  assert len(traces) == 1  # Another model object is traced anew.
