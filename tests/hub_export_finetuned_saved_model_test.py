"""remedis-export of a model fine-tuned from a SavedModel.

A bit-tiny export is fine-tuned for 2 steps with remedis_tf.train.finetune
(init_from=<SavedModel>, so its encoder is hub_export.load.load_encoder), then
re-exported with remedis-export. The re-export must reproduce the fine-tuned
Keras model (rebuilt and restored from the checkpoint), not the source, and
stay a reusable SavedModel.
"""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from float32_bounds import (
  assert_network_close,
  assert_within,
  bit_reduction_sizes,
  bit_tiny_bound,
  probability_tolerance,
  statistical_relative_bound,
)

from hub_export import export, export_main, load, metadata
from remedis_tf.models import build_encoder_by_name
from remedis_tf.train import finetune as finetune_lib
from remedis_tf.train import run_dir

pytestmark = [pytest.mark.slow, pytest.mark.integration]

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZE = 32
NUM_BACKBONE_VARIABLES = 43  # bit-tiny
BOUND = bit_tiny_bound(SIZE, SIZE)
HEAD_BOUND = statistical_relative_bound(bit_reduction_sizes(height=SIZE, width_px=SIZE) + [2048])
LABEL_NAMES = ("normal", "abnormal")  # train_testdata.write_multiclass


@pytest.fixture(scope="module")
def finetuned(tmp_path_factory):
  """(source SavedModel, fine-tuning model_dir)."""
  from train_testdata import write_multiclass  # helper module next to the tests

  root = tmp_path_factory.mktemp("from_saved_model")
  source = str(root / "source")
  source_meta = metadata.metadata_for(
    "source",
    2048,
    depth=14,
    width=1,
    modality="chest X-ray (synthetic)",
    objective="SimCLR (test)",
    pretrain_image_size=64,
  )
  export.export_encoder(build_encoder_by_name("bit-tiny"), source, source_meta)
  data = write_multiclass(str(root / "data"), num_shards=1, per_shard=8)
  model_dir = str(root / "finetune")
  result = finetune_lib.finetune(
    finetune_lib.FinetuneConfig(
      train_data=data,
      model_dir=model_dir,
      # A relative path: config.json must store it absolute, since the export
      # below runs from another directory.
      init_from=os.path.relpath(source),
      train_steps=2,
      encoder="bit-tiny",
      image_size=SIZE,
      global_batch_size=4,
      learning_rate=1.0,  # Large enough that 2 steps move every weight visibly.
    )
  )
  assert result["initialized_from"].startswith("saved_model:") and result["final_step"] == 2
  with open(os.path.join(model_dir, "config.json")) as f:
    assert json.load(f)["saved_model_path"] == source
  return source, model_dir


@pytest.fixture(scope="module")
def reexport(finetuned, tmp_path_factory):
  _, model_dir = finetuned
  output_dir = tmp_path_factory.mktemp("exports")
  subprocess.run(
      [sys.executable, "-m", "hub_export.export_main", f"--model_dir={model_dir}",
       f"--output_dir={output_dir}", "--name=finetuned"],
      cwd=str(output_dir), check=True,
      env={**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": _ROOT},
  )  # fmt: skip
  return str(output_dir / "finetuned")


@pytest.fixture(scope="module")
def keras_model(finetuned):
  """The fine-tuned encoder and head, rebuilt as remedis_tf.train.evaluate does."""
  source, model_dir = finetuned
  encoder = load.load_encoder(source, trainable=False, image_size=SIZE)
  head = run_dir.build_head(2048, len(LABEL_NAMES))
  status = tf.train.Checkpoint(encoder=encoder, head=head).read(
    tf.train.latest_checkpoint(model_dir)
  )
  status.expect_partial().assert_existing_objects_matched()
  return encoder, head


@pytest.fixture(scope="module")
def images():
  return np.random.default_rng(0).random((3, SIZE, SIZE, 3)).astype("float32")


def test_reexport_equals_finetuned_model_not_source(finetuned, reexport, keras_model, images):
  import tensorflow_hub as hub

  source, _ = finetuned
  encoder, _ = keras_model
  obj = hub.load(reexport)
  want = encoder(images)["feature_map"].numpy()
  # Tolerances: two float32 evaluations of bit-tiny (the re-export's graph, Keras) differ by
  # at most twice its statistical bound (float32_bounds.bit_tiny_bound), scaled by the rms.
  assert_network_close(obj(images).numpy(), want, BOUND, err_msg="call")
  serving = obj.signatures[export.SERVING_SIGNATURE](images=tf.constant(images))
  assert_network_close(serving["feature_map"].numpy(), want, BOUND, err_msg="serving")
  pooled = want.astype(np.float64).mean(axis=(1, 2))
  assert_network_close(serving["embedding"].numpy(), pooled, BOUND, err_msg="embedding")
  # The re-export holds the fine-tuned weights; each differs from the source's.
  original = tf.saved_model.load(source)
  assert len(obj.variables) == len(original.variables) == NUM_BACKBONE_VARIABLES
  assert len(obj.classifier_variables) == 2  # the head, used by `classify` only
  for mine, keras_weight, theirs in zip(
    obj.trainable_variables, encoder.weights, original.trainable_variables, strict=True
  ):
    np.testing.assert_array_equal(mine.numpy(), keras_weight.numpy())
    assert not np.array_equal(mine.numpy(), theirs.numpy()), mine.name
  tolerance = 2 * BOUND * np.sqrt(np.mean(np.square(want)))
  assert np.abs(original(images).numpy() - want).max() > 100 * tolerance


def test_classifier_signature_is_head_of_embedding(reexport, keras_model, images):
  encoder, head = keras_model
  obj = tf.saved_model.load(reexport)
  out = obj.signatures[export.CLASSIFY_SIGNATURE](images=tf.constant(images))
  embedding = obj.signatures[export.SERVING_SIGNATURE](images=tf.constant(images))["embedding"]
  logits = out["logits"].numpy()
  # classify recomputes the embedding: two float32 evaluations of bit-tiny and the head.
  assert_network_close(logits, head(embedding).numpy(), HEAD_BOUND, err_msg="logits")
  want = head(encoder(images)["embedding"]).numpy()
  assert_network_close(logits, want, HEAD_BOUND, err_msg="logits vs Keras")
  assert np.abs(logits).max() > 0  # the head was trained (it starts at zero)
  # Softmax of the very same logits: only its own float32 rounding.
  tolerance = probability_tolerance(logits, 0.0, multilabel=False)
  assert_within(out["probabilities"].numpy(), tf.nn.softmax(logits).numpy(), tolerance, "softmax")
  with open(os.path.join(reexport, "assets", export.LABELS_FILENAME)) as f:
    assert tuple(f.read().split()) == LABEL_NAMES


def test_metadata_from_source_and_config(reexport):
  with open(os.path.join(reexport, "assets", metadata.METADATA_FILENAME)) as f:
    meta = metadata.ExportMetadata.from_json(f.read())
  assert meta.name == "finetuned" and meta.feature_dim == 2048
  assert (meta.depth, meta.width, meta.architecture) == (14, 1, "BiT ResNetV2-14x1")
  assert meta.modality == "chest X-ray (synthetic)" and meta.objective == "SimCLR (test)"
  assert meta.pretrain_image_size == 64
  assert meta.label_names == LABEL_NAMES and meta.label_mode == "multiclass"


def test_hub_keras_layer_fine_tunes_reexport(reexport, images):
  import tensorflow_hub as hub
  import tf_keras

  layer = hub.KerasLayer(reexport, trainable=True)
  model = tf_keras.Sequential([tf_keras.Input((SIZE, SIZE, 3)), layer])
  assert len(layer.trainable_variables) == NUM_BACKBONE_VARIABLES
  with tf.GradientTape() as tape:
    loss = tf.reduce_sum(tf.square(model(images, training=True)))
  grads = tape.gradient(loss, layer.trainable_variables)
  assert all(g is not None and np.abs(g.numpy()).max() > 0 for g in grads)


def test_restore_needs_the_source_saved_model(finetuned, keras_model, images, tmp_path):
  source, model_dir = finetuned
  moved = str(tmp_path / "moved")
  shutil.copytree(model_dir, moved)
  config_path = os.path.join(moved, "config.json")
  with open(config_path) as f:
    config = json.load(f)
  gone = str(tmp_path / "gone")
  with open(config_path, "w") as f:
    json.dump({**config, "saved_model_path": gone}, f)
  with pytest.raises(FileNotFoundError, match=gone):
    export_main.restore_encoder_from_checkpoint(moved)
  # --saved_model_path points to where the SavedModel is now.
  model = export_main.restore_encoder_from_checkpoint(moved, saved_model_path=source)
  encoder, head = keras_model
  want = encoder(images)
  out = model(images)
  assert_network_close(out["feature_map"], want["feature_map"], BOUND, err_msg="feature_map")
  logits = head(want["embedding"]).numpy()
  assert_network_close(out["logits"], logits, HEAD_BOUND, err_msg="logits")
  with pytest.raises(ValueError, match="fine-tuned from the SavedModel"):
    export_main.restore_encoder_from_checkpoint(moved, encoder_name="bit-tiny")
