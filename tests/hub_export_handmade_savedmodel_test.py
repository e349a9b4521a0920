"""A SavedModel built by hand in the PhysioNet calling convention (not by our
exporter) works with load_for_finetuning and remedis-embed.

The hand-made encoder is a patchify conv (32x32, stride 32) + ReLU + 1x1 conv
in a plain tf.Module, so its pooled output has a float64 NumPy reference.
"""

import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
from float32_bounds import U32, assert_within, gamma, random_walk_sum_error

from hub_export import embed, load
from tfrecords_tools import schema

CHANNELS = 8
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class PatchEncoder(tf.Module):
  """(N, H, W, 3) in [0, 1] -> (N, H/32, W/32, CHANNELS)."""

  def __init__(self, seed: int = 0):
    super().__init__()
    rng = np.random.default_rng(seed)
    self.stem_kernel = tf.Variable(
      rng.normal(0, 0.03, (32, 32, 3, CHANNELS)).astype("float32"), name="stem/kernel"
    )
    self.stem_bias = tf.Variable(rng.normal(0, 0.1, CHANNELS).astype("float32"), name="stem/bias")
    self.proj = tf.Variable(
      rng.normal(0, 0.3, (1, 1, CHANNELS, CHANNELS)).astype("float32"), name="proj/kernel"
    )

  def forward(self, images):
    x = tf.nn.conv2d(images * 2.0 - 1.0, self.stem_kernel, 32, "VALID") + self.stem_bias
    return tf.nn.conv2d(tf.nn.relu(x), self.proj, 1, "VALID")


class WithTraining(PatchEncoder):
  @tf.function
  def __call__(self, images, training=False):
    return self.forward(images)


class WithoutTraining(PatchEncoder):
  @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32)])
  def __call__(self, images):
    return self.forward(images)


def numpy_embedding(module: PatchEncoder, images: np.ndarray) -> np.ndarray:
  """Float64 reference of the mean-pooled feature map."""
  k = module.stem_kernel.numpy().astype(np.float64)
  b = module.stem_bias.numpy().astype(np.float64)
  p = module.proj.numpy().astype(np.float64)[0, 0]
  x = images.astype(np.float64) * 2.0 - 1.0
  n, height, width, _ = x.shape
  h, w = height // 32, width // 32
  patches = x.reshape(n, h, 32, w, 32, 3).transpose(0, 1, 3, 2, 4, 5).reshape(n, h, w, -1)
  y = np.maximum(patches @ k.reshape(-1, CHANNELS) + b, 0.0) @ p
  return y.mean(axis=(1, 2))


def embedding_tolerance(module: PatchEncoder, images: np.ndarray) -> np.ndarray:
  """Bound on the float32 embedding's error, per (image, channel).

  The stem's outputs are sums of 32 * 32 * 3 = 3072 random-sign products:
  float32_bounds.random_walk_sum_error of their squares (plus u for the bias
  add); ReLU is exact; the 1x1 projection carries each stem error with its
  weights' absolute values (worst case, 8 terms, plus their own 8-term
  rounding); the mean over positions keeps the largest.
  """
  k = module.stem_kernel.numpy().astype(np.float64).reshape(-1, CHANNELS)
  b = module.stem_bias.numpy().astype(np.float64)
  p = np.abs(module.proj.numpy().astype(np.float64)[0, 0])
  x = images.astype(np.float64) * 2.0 - 1.0
  n, height, width, _ = x.shape
  h, w = height // 32, width // 32
  patches = x.reshape(n, h, 32, w, 32, 3).transpose(0, 1, 3, 2, 4, 5).reshape(n, h, w, -1)
  stem = patches @ k + b
  stem_err = random_walk_sum_error(np.square(patches) @ np.square(k), k.shape[0])
  stem_err = stem_err + U32 * np.abs(stem)
  proj_err = stem_err @ p + gamma(CHANNELS) * (np.maximum(stem, 0.0) @ p)
  return proj_err.max(axis=(1, 2))


def save_handmade(module: PatchEncoder, path: str) -> str:
  spec = tf.TensorSpec([None, None, None, 3], tf.float32)
  if isinstance(module, WithTraining):
    for training in (False, True):
      module.__call__.get_concrete_function(spec, training=training)
  tf.saved_model.save(module, path)
  return path


@pytest.fixture(scope="module", params=[WithTraining, WithoutTraining])
def handmade(request, tmp_path_factory):
  module = request.param()
  path = save_handmade(module, str(tmp_path_factory.mktemp("handmade") / "model"))
  return module, path


def test_load_for_finetuning_matches_numpy(handmade):
  module, path = handmade
  model = load.load_for_finetuning(path, num_classes=2)
  images = np.random.default_rng(1).random((3, 64, 96, 3)).astype("float32")
  out = model(images, training=False)
  assert out["feature_map"].shape == (3, 2, 3, CHANNELS)
  assert_within(
    out["embedding"],
    numpy_embedding(module, images),
    embedding_tolerance(module, images),
    "embedding",
  )
  assert out["logits"].shape == (3, 2)
  # 3 encoder variables (found through the call functions) + head kernel, bias.
  assert len(model.trainable_weights) == 5


@pytest.mark.slow
@pytest.mark.parametrize("optimizer", ["sgd_momentum", "adam"])
def test_finetune_with_slot_optimizers_updates_restored_variables(handmade, optimizer):
  _, path = handmade
  model = load.load_for_finetuning(path, num_classes=2, head_initializer="glorot_uniform")
  opt = (
    keras.optimizers.SGD(0.05, momentum=0.9)
    if optimizer == "sgd_momentum"
    else keras.optimizers.Adam(1e-2)
  )
  model.compile(opt, loss={"logits": keras.losses.SparseCategoricalCrossentropy(from_logits=True)})
  rng = np.random.default_rng(2)
  images = rng.random((8, 32, 32, 3)).astype("float32")
  labels = np.arange(8) % 2
  encoder_layer = model.get_layer("encoder_model").get_layer("encoder")
  before = [w.numpy().copy() for w in encoder_layer.trainable_weights]
  first = model.evaluate(images, {"logits": labels}, verbose=0)
  model.fit(images, {"logits": labels}, epochs=5, batch_size=8, verbose=0)
  last = model.evaluate(images, {"logits": labels}, verbose=0)
  assert last < first
  changed = [
    not np.array_equal(b, w.numpy())
    for b, w in zip(before, encoder_layer.trainable_weights, strict=True)
  ]
  assert len(changed) == 3 and all(changed)
  # The wrapped variables share storage with the restored ones.
  restored = encoder_layer._restored.obj
  np.testing.assert_array_equal(restored.proj.numpy(), encoder_layer.trainable_weights[-1].numpy())


def test_frozen_encoder_is_not_trained(handmade):
  _, path = handmade
  model = load.load_for_finetuning(path, num_classes=2, trainable=False)
  assert len(model.trainable_weights) == 2  # head only
  encoder_layer = model.get_layer("encoder_model").get_layer("encoder")
  before = [w.numpy().copy() for w in encoder_layer.weights]
  model.compile(keras.optimizers.Adam(1e-2), loss={"logits": "sparse_categorical_crossentropy"})
  images = np.random.default_rng(3).random((4, 32, 32, 3)).astype("float32")
  model.fit(images, {"logits": np.array([0, 1, 0, 1])}, epochs=2, verbose=0)
  assert all(
    np.array_equal(b, w.numpy()) for b, w in zip(before, encoder_layer.weights, strict=True)
  )


def _png(image: np.ndarray) -> bytes:
  return tf.io.encode_png(image).numpy()


def write_records(path: str, images: list[np.ndarray]) -> list[dict]:
  """Writes schema records (8-bit PNG, K=2 multi-labels); returns their fields."""
  rows = []
  with tf.io.TFRecordWriter(path) as writer:
    for i, image in enumerate(images):
      row = {
        "source_id": f"sop{i:03d}",
        "patient_id_hash": f"p{i // 2:02d}",
        "split": schema.SPLITS[i % 3],
        "label": i % 3 - 1,
        "multi_label": [float(i % 2), -1.0],
      }
      feature = {
        schema.IMAGE_ENCODED: tf.train.Feature(bytes_list=tf.train.BytesList(value=[_png(image)])),
        schema.IMAGE_CHANNELS: tf.train.Feature(
          int64_list=tf.train.Int64List(value=[image.shape[-1]])
        ),
        schema.IMAGE_SOURCE_ID: tf.train.Feature(
          bytes_list=tf.train.BytesList(value=[row["source_id"].encode()])
        ),
        schema.PATIENT_ID_HASH: tf.train.Feature(
          bytes_list=tf.train.BytesList(value=[row["patient_id_hash"].encode()])
        ),
        schema.SPLIT: tf.train.Feature(
          bytes_list=tf.train.BytesList(value=[row["split"].encode()])
        ),
        schema.LABEL: tf.train.Feature(int64_list=tf.train.Int64List(value=[row["label"]])),
        schema.MULTI_LABEL: tf.train.Feature(
          float_list=tf.train.FloatList(value=row["multi_label"])
        ),
      }
      writer.write(
        tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()
      )
      rows.append(row)
  return rows


@pytest.fixture(scope="module")
def records(tmp_path_factory):
  """5 RGB and 2 grayscale 64x64 images in two shards."""
  rng = np.random.default_rng(4)
  images = [rng.integers(0, 256, (64, 64, 3), dtype=np.uint8) for _ in range(5)]
  images += [rng.integers(0, 256, (64, 64, 1), dtype=np.uint8) for _ in range(2)]
  directory = tmp_path_factory.mktemp("records")
  rows = write_records(str(directory / "data-00000.tfrecord"), images[:4])
  rows += write_records(str(directory / "data-00001.tfrecord"), images[4:])
  as_float = [np.repeat(im, 3 // im.shape[-1], axis=-1) / 255.0 for im in images]
  return str(directory / "data-*.tfrecord"), np.stack(as_float), rows


def test_embed_npz_equals_numpy_pooled_output(handmade, records, tmp_path):
  module, path = handmade
  pattern, images, rows = records
  out = str(tmp_path / "emb.npz")
  assert embed.embed_dataset(path, pattern, out, image_size=64, batch_size=3) == 7
  got = np.load(out)
  want, tolerance = numpy_embedding(module, images), embedding_tolerance(module, images)
  assert_within(got["embedding"], want, tolerance, "npz embedding")
  assert list(got["source_id"]) == [r["source_id"] for r in rows]
  assert list(got["patient_id_hash"]) == [r["patient_id_hash"] for r in rows]
  assert list(got["split"]) == [r["split"] for r in rows]
  np.testing.assert_array_equal(got["label"], [r["label"] for r in rows])
  np.testing.assert_array_equal(got["multi_label"], [r["multi_label"] for r in rows])
  assert int(got["image_size"]) == 64


def test_embed_tfrecord_equals_npz(handmade, records, tmp_path):
  module, path = handmade
  pattern, images, rows = records
  out = str(tmp_path / "emb.tfrecord")
  assert embed.embed_dataset(path, pattern, out, image_size=64, batch_size=4) == 7
  parsed = [embed.parse_embedding_example(s, CHANNELS, 2) for s in tf.data.TFRecordDataset(out)]
  assert_within(
    np.stack([p["embedding"] for p in parsed]),
    numpy_embedding(module, images),
    embedding_tolerance(module, images),
    "tfrecord embedding",
  )
  assert [p["source_id"].numpy().decode() for p in parsed] == [r["source_id"] for r in rows]
  assert [int(p["label"]) for p in parsed] == [r["label"] for r in rows]


def test_embed_rejects_unknown_extension(handmade, records, tmp_path):
  _, path = handmade
  with pytest.raises(ValueError, match="npz"):
    embed.embed_dataset(path, records[0], str(tmp_path / "emb.csv"), image_size=64)


@pytest.mark.slow
@pytest.mark.integration
@pytest.mark.parametrize("handmade", [WithTraining], indirect=True)  # One convention suffices.
def test_remedis_embed_cli(handmade, records, tmp_path):
  module, path = handmade
  assert isinstance(module, WithTraining)
  pattern, images, _ = records
  out = str(tmp_path / "cli.npz")
  subprocess.run(
      [sys.executable, "-m", "hub_export.embed_main", f"--model={path}", f"--data={pattern}",
       f"--output={out}", "--image_size=64", "--batch_size=2", "--log_every=1"],
      cwd=_ROOT, check=True, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""},
  )  # fmt: skip
  want, tolerance = numpy_embedding(module, images), embedding_tolerance(module, images)
  assert_within(np.load(out)["embedding"], want, tolerance, "CLI embedding")
