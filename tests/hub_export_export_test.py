"""export_encoder on bit-tiny: fidelity at 224/448 px, signatures, classifier, assets."""

import json
import os

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_hub as hub

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
  np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
  # Both traces of the reusable API; GroupNorm makes them equal.
  np.testing.assert_allclose(obj(images, training=True).numpy(), want, atol=1e-5, rtol=0)


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
    np.testing.assert_allclose(out["embedding"], want["embedding"], atol=1e-5, rtol=0)
    np.testing.assert_allclose(
      out["embedding"], out["feature_map"].numpy().mean(axis=(1, 2)), atol=1e-5, rtol=0
    )


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
  np.testing.assert_allclose(out["logits"], logits, atol=1e-5)
  softmax = np.exp(logits - logits.max(-1, keepdims=True))
  softmax /= softmax.sum(-1, keepdims=True)
  np.testing.assert_allclose(out["probabilities"], softmax, atol=1e-6)
  with open(os.path.join(path, "assets", export.LABELS_FILENAME)) as f:
    assert f.read().split() == ["a", "b", "c"]
  # Multi-label probabilities are sigmoids (checked on the unsaved object).
  root, signatures = export.build_export_object(
    keras_model, meta.replace(label_mode="multilabel"), str(tmp_path)
  )
  assert "classify" in signatures
  out2 = root.classify(tf.constant(images))
  np.testing.assert_allclose(out2["probabilities"], 1 / (1 + np.exp(-logits)), atol=1e-6)


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
