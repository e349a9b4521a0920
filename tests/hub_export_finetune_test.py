"""Fine-tuning an exported bit-tiny through hub.KerasLayer (tf_keras), Keras 3
TFSMLayer, and hub_export.load_for_finetuning (Keras 3, optimizers with slots).

Each fit runs a few steps on tiny data; the loss must drop and every backbone
trainable variable must change (or none, when frozen).
"""

import keras
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_hub as hub
import tf_keras
from float32_bounds import assert_network_close, bit_tiny_bound

from hub_export import export, load
from remedis_tf.models import build_encoder_by_name

pytestmark = [pytest.mark.slow, pytest.mark.integration]

SIZE = 32
NUM_BACKBONE_VARIABLES = 43  # bit-tiny


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
  path = str(tmp_path_factory.mktemp("export") / "tiny")
  export.export_encoder(build_encoder_by_name("bit-tiny"), path)
  return path


@pytest.fixture(scope="module")
def data():
  rng = np.random.default_rng(0)
  return rng.random((8, SIZE, SIZE, 3)).astype("float32"), np.arange(8) % 2


def _changed(before, variables):
  return [not np.array_equal(b, v.numpy()) for b, v in zip(before, variables, strict=True)]


@pytest.mark.parametrize("trainable", [True, False])
def test_hub_keras_layer_in_tf_keras(exported, data, trainable):
  images, labels = data
  layer = hub.KerasLayer(exported, trainable=trainable)
  model = tf_keras.Sequential(
    [
      tf_keras.Input((SIZE, SIZE, 3)),
      layer,
      tf_keras.layers.GlobalAveragePooling2D(),
      tf_keras.layers.Dense(2, kernel_initializer="glorot_uniform"),
    ]
  )
  model.compile(
    tf_keras.optimizers.SGD(0.01, momentum=0.9),
    tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True),
  )
  assert len(layer.variables) == NUM_BACKBONE_VARIABLES
  assert len(layer.trainable_variables) == (NUM_BACKBONE_VARIABLES if trainable else 0)
  before = [v.numpy().copy() for v in layer.variables]
  first = model.evaluate(images, labels, verbose=0)
  model.fit(images, labels, epochs=3, batch_size=8, verbose=0)
  assert model.evaluate(images, labels, verbose=0) < first
  changed = _changed(before, layer.variables)
  assert all(changed) if trainable else not any(changed)


def test_tfsm_layer_fine_tunes_and_serves(exported, data):
  images, labels = data
  layer = keras.layers.TFSMLayer(
    exported,
    call_endpoint="serving_default",
    call_training_endpoint="serving_training",
    trainable=True,
  )
  inputs = keras.Input((SIZE, SIZE, 3))
  outputs = layer(inputs)
  assert outputs["embedding"].shape == (None, 2048)
  assert outputs["feature_map"].shape == (None, 1, 1, 2048)
  model = keras.Model(inputs, keras.layers.Dense(2)(outputs["embedding"]))
  # Plain SGD: TFSMLayer's ':0' weight names break optimizers with slots.
  model.compile(
    keras.optimizers.SGD(0.01), keras.losses.SparseCategoricalCrossentropy(from_logits=True)
  )
  assert len(layer.trainable_weights) == NUM_BACKBONE_VARIABLES
  before = [v.numpy().copy() for v in layer.trainable_weights]
  first = model.evaluate(images, labels, verbose=0)
  model.fit(images, labels, epochs=3, batch_size=8, verbose=0)
  assert model.evaluate(images, labels, verbose=0) < first
  assert all(_changed(before, layer.trainable_weights))


@pytest.mark.parametrize("optimizer", ["sgd_momentum", "adam"])
def test_load_for_finetuning_with_slot_optimizers(exported, data, optimizer):
  images, labels = data
  model = load.load_for_finetuning(exported, num_classes=2, head_initializer="glorot_uniform")
  opt = (
    keras.optimizers.SGD(0.01, momentum=0.9)
    if optimizer == "sgd_momentum"
    else keras.optimizers.Adam(1e-3)
  )
  model.compile(opt, loss={"logits": keras.losses.SparseCategoricalCrossentropy(from_logits=True)})
  encoder = model.get_layer("encoder_model").get_layer("encoder")
  assert len(encoder.trainable_weights) == NUM_BACKBONE_VARIABLES
  before = [v.numpy().copy() for v in encoder.trainable_weights]
  first = model.evaluate(images, {"logits": labels}, verbose=0)
  model.fit(images, {"logits": labels}, epochs=3, batch_size=8, verbose=0)
  assert model.evaluate(images, {"logits": labels}, verbose=0) < first
  assert all(_changed(before, encoder.trainable_weights))


def test_loaded_encoder_matches_export_and_checkpoints(exported, tmp_path):
  obj = tf.saved_model.load(exported)
  model = load.load_for_finetuning(exported, num_classes=2)
  images = np.random.default_rng(1).random((2, 64, 64, 3)).astype("float32")
  want = obj(images).numpy()
  out = model(images)
  # Two float32 evaluations of bit-tiny (the wrapper's and the SavedModel's own call): the
  # statistical bound of its reductions at 64 px, twice (float32_bounds.bit_tiny_bound).
  bound = bit_tiny_bound(64, 64)
  assert_network_close(out["feature_map"], want, bound, err_msg="feature_map")
  assert_network_close(out["embedding"], want.mean(axis=(1, 2)), bound, err_msg="embedding")
  # A training loop's tf.train.Checkpoint round-trips the wrapped weights.
  encoder = model.get_layer("encoder_model").get_layer("encoder")
  saved = [w.numpy().copy() for w in encoder.weights]
  prefix = tf.train.Checkpoint(model=model).save(str(tmp_path / "ckpt"))
  for w in encoder.weights:
    w.assign(tf.zeros_like(w))
  tf.train.Checkpoint(model=model).read(prefix).assert_existing_objects_matched()
  for s, w in zip(saved, encoder.weights, strict=True):
    np.testing.assert_array_equal(s, w.numpy())
