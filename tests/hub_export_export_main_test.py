"""remedis-export from a training checkpoint (the CheckpointManager contract)."""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
from float32_bounds import (
  assert_network_close,
  bit_reduction_sizes,
  bit_tiny_bound,
  statistical_relative_bound,
)

from hub_export import export_main, metadata
from remedis_tf.models import build_encoder_by_name
from remedis_tf.train import run_dir
from remedis_tf.train.checkpointing import CheckpointError

pytestmark = pytest.mark.slow

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write_training_dir(model_dir: str, config=None, num_classes=None):
  """Mimics the training loop: Checkpoint(encoder=, [head=,] optimizer=, step=)."""
  model = build_encoder_by_name("bit-tiny")
  items = {"encoder": model}
  if num_classes:
    items["head"] = run_dir.build_head(2048, num_classes)
  rng = np.random.default_rng(0)
  variables = [v for item in items.values() for v in item.trainable_variables]
  for v in variables:  # Distinguish from a fresh initialisation.
    v.assign(v.numpy() + rng.normal(0, 0.01, v.shape).astype("float32"))
  optimizer = keras.optimizers.SGD(0.1, momentum=0.9)
  optimizer.build(variables)
  ckpt = tf.train.Checkpoint(optimizer=optimizer, step=tf.Variable(7), **items)
  tf.train.CheckpointManager(ckpt, model_dir, max_to_keep=2).save()
  if config is not None:
    with open(os.path.join(model_dir, "config.json"), "w") as f:
      json.dump(config, f)
  return items


@pytest.mark.parametrize("name", ["bit-tiny", "bit-r50x1"])
def test_every_bit_variable_is_reachable_by_tf_checkpoint(name):
  """A regression here would export half-initialised weights: it must fail, not skip."""
  model = build_encoder_by_name(name)
  assert run_dir.unreachable_variables(tf.train.Checkpoint(encoder=model), model) == []


class _ListBlock(keras.layers.Layer):
  """Keeps its sublayers in a Python list: Keras tracks them, tf.train.Checkpoint does not."""

  def __init__(self, **kwargs):
    super().__init__(**kwargs)
    self.parts = [keras.layers.Dense(2, name="d0"), keras.layers.Dense(2, name="d1")]

  def build(self, shape):
    for part in self.parts:
      part.build(shape)
      shape = (None, 2)

  def call(self, x):
    for part in self.parts:
      x = part(x)
    return x


def test_unreachable_variables_are_found():
  """Variables a checkpoint cannot hold are named (restore_model then refuses the model)."""
  inputs = keras.Input((3,))
  model = keras.Model(inputs, _ListBlock(name="block")(inputs))
  found = run_dir.unreachable_variables(tf.train.Checkpoint(encoder=model), model)
  assert sorted(found) == sorted(v.path for v in model.variables) and len(found) == 4


@pytest.fixture(scope="module")
def training_dir(tmp_path_factory):
  model_dir = str(tmp_path_factory.mktemp("run"))
  items = write_training_dir(
    model_dir, config={"encoder": "bit-tiny", "modality": "chest X-ray (synthetic)"}
  )
  return model_dir, items["encoder"]


def test_restore_encoder_from_checkpoint(training_dir):
  model_dir, model = training_dir
  restored = export_main.restore_encoder_from_checkpoint(model_dir)  # encoder from config.json
  assert len(restored.variables) == len(model.variables)
  for a, b in zip(restored.variables, model.variables, strict=True):
    np.testing.assert_array_equal(a.numpy(), b.numpy())
  prefix = tf.train.latest_checkpoint(model_dir)
  by_prefix = export_main.restore_encoder_from_checkpoint(prefix)
  np.testing.assert_array_equal(by_prefix.variables[0].numpy(), model.variables[0].numpy())


def test_restore_fails_when_encoder_variables_are_missing(training_dir):
  model_dir, _ = training_dir
  with pytest.raises(FileNotFoundError):
    export_main.restore_encoder_from_checkpoint(os.path.join(model_dir, "ckpt-99"))
  with pytest.raises(CheckpointError):  # asks for a head the checkpoint lacks
    export_main.restore_encoder_from_checkpoint(model_dir, num_classes=3)


@pytest.mark.integration
def test_remedis_export_cli(training_dir, tmp_path):
  model_dir, model = training_dir
  subprocess.run(
      [sys.executable, "-m", "hub_export.export_main", f"--model_dir={model_dir}",
       f"--output_dir={tmp_path}", "--name=cxr-50x1-remedis-m", "--training_data=synthetic"],
      cwd=_ROOT, check=True, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""},
  )  # fmt: skip
  path = str(tmp_path / "cxr-50x1-remedis-m")
  obj = tf.saved_model.load(path)
  images = np.random.default_rng(1).random((1, 64, 64, 3)).astype("float32")
  # Two float32 evaluations of bit-tiny (exported graph, Keras): float32_bounds.bit_tiny_bound.
  want = model(images)["feature_map"].numpy()
  assert_network_close(obj(images).numpy(), want, bit_tiny_bound(64, 64), err_msg="feature_map")
  with open(os.path.join(path, "assets", metadata.METADATA_FILENAME)) as f:
    meta = metadata.ExportMetadata.from_json(f.read())
  assert meta.name == "cxr-50x1-remedis-m" and meta.depth == 14  # the real model wins
  assert meta.pretrain_image_size == 448 and meta.modality == "chest X-ray (synthetic)"
  assert meta.training_data == "synthetic"


def test_restore_fine_tuned_head(tmp_path):
  items = write_training_dir(
    str(tmp_path),
    config={"encoder": "bit-tiny", "num_classes": 2, "label_names": ["a", "b"]},
    num_classes=2,
  )
  model = export_main.restore_encoder_from_checkpoint(str(tmp_path))
  images = np.random.default_rng(2).random((2, 64, 64, 3)).astype("float32")
  want = items["head"](items["encoder"](images)["embedding"]).numpy()
  # Two float32 evaluations of bit-tiny and its 2048-input head.
  bound = statistical_relative_bound(bit_reduction_sizes(height=64, width_px=64) + [2048])
  assert_network_close(model(images)["logits"].numpy(), want, bound, err_msg="logits")
