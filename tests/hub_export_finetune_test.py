"""Fine-tuning an exported bit-tiny through hub.KerasLayer (tf_keras), Keras 3
TFSMLayer, and hub_export.load_for_finetuning (Keras 3, optimizers with slots).

Each fit runs a few steps on tiny data; the loss must drop and every backbone
trainable variable must change (or none, when frozen).
"""

import float32_bounds
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
def source():
  keras.utils.set_random_seed(3)
  return build_encoder_by_name("bit-tiny")


@pytest.fixture(scope="module")
def exported(source, tmp_path_factory):
  """The default export (forward ops only, TensorFlow differentiates them)."""
  path = str(tmp_path_factory.mktemp("export") / "tiny")
  export.export_encoder(source, path)
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


def _custom_gradient_ops(saved_model_dir):
  """Nodes of the SavedModel's graphs that carry a hand-written gradient (tf.custom_gradient)."""
  from tensorflow.core.protobuf import saved_model_pb2

  proto = saved_model_pb2.SavedModel()
  with open(f"{saved_model_dir}/saved_model.pb", "rb") as f:
    proto.ParseFromString(f.read())
  graph = proto.meta_graphs[0].graph_def
  nodes = list(graph.node) + [n for fn in graph.library.function for n in fn.node_def]
  return [n.name for n in nodes if "_gradient_op_type" in n.attr]


def test_default_export_differentiates_the_forward_ops_with_the_same_gradients(
  source, exported, tmp_path
):
  """The default export holds no custom gradients; its gradients through
  hub.KerasLayer equal those of the export that keeps them and of the Keras
  model (which uses them)."""
  encoder, plain = source, exported
  custom = export.export_encoder(encoder, str(tmp_path / "custom"), custom_gradients=True)
  assert _custom_gradient_ops(plain) == []
  assert _custom_gradient_ops(custom)  # the switch is what removes them

  rng = np.random.default_rng(4)
  images = tf.constant(rng.random((2, SIZE, SIZE, 3)), tf.float32)
  weights = tf.constant(rng.normal(size=(2, SIZE // 32, SIZE // 32, 2048)), tf.float32)

  def gradients(call, variables):
    with tf.GradientTape() as tape:
      loss = tf.reduce_sum(call(images) * weights)
    return [g.numpy() for g in tape.gradient(loss, variables)]

  want = gradients(lambda x: encoder(x, training=True)["feature_map"], encoder.trainable_variables)
  # A gradient is the forward chain, the backward chain (the same reductions,
  # transposed) and the weight gradient's sum over batch x positions (at most
  # 2 x 16 x 16 after the root's stride 2): twice bit-tiny's reductions plus
  # that sum, in the statistical model of float32_bounds, per variable's rms.
  bound = float32_bounds.statistical_relative_bound(
    2 * float32_bounds.bit_reduction_sizes(height=SIZE, width_px=SIZE) + [2 * 16 * 16]
  )
  for path in (plain, custom):
    layer = hub.KerasLayer(path, trainable=True, arguments={"training": True})
    got = gradients(layer, layer.trainable_variables)
    assert len(got) == len(want) == NUM_BACKBONE_VARIABLES
    for i, (g, w) in enumerate(zip(got, want, strict=True)):
      assert_network_close(g, w, bound, err_msg=f"{path} variable {i}")
