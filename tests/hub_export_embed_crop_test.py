"""remedis-embed --central_crop_fraction: the crop against NumPy slices, the
embeddings against the model's pooled output on NumPy-cropped images.

The encoder is a hand-made SavedModel (patchify conv, 32x32 stride 32), so
the test needs no trained weights and runs in seconds.
"""

import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from float32_bounds import SAFETY, SIGMAS, U32, assert_within, random_walk_sum_error

from hub_export import embed
from remedis_tf.data import synthetic

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZE = 64
FRACTION = 0.75
# Non-square and odd sides, so rounding and offsets matter; one grayscale.
SHAPES = [(80, 64, 3), (50, 96, 3), (64, 64, 3), (75, 61), (33, 47, 3)]


class PatchEncoder(tf.Module):
  """(N, H, W, 3) in [0, 1] -> (N, H/32, W/32, 4): one 32x32 stride-32 conv."""

  def __init__(self):
    super().__init__()
    rng = np.random.default_rng(0)
    self.kernel = tf.Variable(rng.normal(0, 0.03, (32, 32, 3, 4)).astype("float32"))

  @tf.function
  def __call__(self, images, training=False):
    return tf.nn.conv2d(images * 2.0 - 1.0, self.kernel, 32, "VALID")


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
  module = PatchEncoder()
  for training in (False, True):
    module.__call__.get_concrete_function(
      tf.TensorSpec([None, None, None, 3], tf.float32), training=training
    )
  path = str(tmp_path_factory.mktemp("model") / "patch")
  tf.saved_model.save(module, path)
  return path


@pytest.fixture(scope="module")
def records(tmp_path_factory):
  """Generated uint8 images of SHAPES in one TFRecord; returns (glob, images)."""
  rng = np.random.default_rng(1)
  images = [rng.integers(0, 256, shape, dtype=np.uint8) for shape in SHAPES]
  path = tmp_path_factory.mktemp("records") / "data-00000.tfrecord"
  with tf.io.TFRecordWriter(str(path)) as writer:
    for i, image in enumerate(images):
      example = synthetic.make_example(image, source_id=f"img{i}", label=i % 2)
      writer.write(example.SerializeToString())
  return str(path), images


def numpy_crop(image: np.ndarray, fraction: float) -> np.ndarray:
  """Central box of `fraction` of each side, by NumPy slicing.

  Side: nearest integer to fraction * n (at least 1); the leftover n - side is
  split with the extra pixel before the box.
  """
  h, w = image.shape[:2]
  ch, cw = max(1, int(np.rint(fraction * h))), max(1, int(np.rint(fraction * w)))
  top, left = h - ch - (h - ch) // 2, w - cw - (w - cw) // 2
  return image[top : top + ch, left : left + cw]


def reference_images(images: list[np.ndarray], fraction: float) -> np.ndarray:
  """NumPy crop of the [0, 1] RGB image, then tf.image.resize (bilinear) to SIZE."""
  out = []
  for image in images:
    rgb = np.stack([image] * 3, axis=-1) if image.ndim == 2 else image
    rgb = rgb.astype(np.float32) / 255.0
    crop = numpy_crop(rgb, fraction)
    out.append(tf.image.resize(crop, [SIZE, SIZE], method="bilinear").numpy())
  return np.stack(out)


# The pipeline's pixels and reference_images' agree to PIXEL_ERROR: uint8 / 255 and
# uint8 * (1 / 255) may differ by one rounding (u), and a bilinear sample is a convex
# combination of 4 pixels (4 products and 3 sums: 7 u relative to values <= 1).
PIXEL_ERROR = SAFETY * 8 * U32


def embedding_tolerance(images: np.ndarray) -> np.ndarray:
  """Bound on |embedding - reference| per (image, channel) for PatchEncoder's pooled output.

  Two float32 evaluations of each 3072-term patch product (the pipeline's and
  the reference's call): twice float32_bounds.random_walk_sum_error; and the
  inputs' PIXEL_ERROR, independent per pixel, through the kernel (times 2 for
  images * 2 - 1): SIGMAS * 2 * PIXEL_ERROR * ||kernel column||. Pooling
  averages positions, so the largest position bound covers the mean.
  """
  kernel = PatchEncoder().kernel.numpy().astype(np.float64).reshape(-1, 4)
  x = images.astype(np.float64) * 2.0 - 1.0
  n, h, w, _ = x.shape
  patches = x.reshape(n, h // 32, 32, w // 32, 32, 3).transpose(0, 1, 3, 2, 4, 5)
  patches = patches.reshape(n, h // 32, w // 32, -1)
  rounding = 2 * random_walk_sum_error(np.square(patches) @ np.square(kernel), kernel.shape[0])
  inputs = SIGMAS * 2 * PIXEL_ERROR * np.sqrt(np.sum(np.square(kernel), axis=0))
  return rounding.max(axis=(1, 2)) + inputs


@pytest.mark.parametrize(
  "shape, fraction, box",
  [
    ((64, 64), 0.875, (4, 60, 4, 60)),
    ((50, 40), 0.7, (8, 43, 6, 34)),
    ((46, 96), 0.5, (12, 35, 24, 72)),
    ((3, 5), 0.1, (1, 2, 2, 3)),  # at least one pixel
    ((7, 9), 1.0, (0, 7, 0, 9)),
  ],
)
def test_central_crop_box(shape, fraction, box):
  """Boxes (top, bottom, left, right) worked out by hand."""
  image = np.arange(np.prod(shape) * 2, dtype=np.float32).reshape(*shape, 2)
  top, bottom, left, right = box
  got = embed.central_crop(tf.constant(image), fraction).numpy()
  np.testing.assert_array_equal(got, image[top:bottom, left:right])
  np.testing.assert_array_equal(numpy_crop(image, fraction), image[top:bottom, left:right])


@pytest.mark.parametrize("fraction", [0.875, 0.5, 1.0])
def test_dataset_crop_and_resize_equals_numpy_slice_then_resize(records, fraction):
  pattern, images = records
  (batch,) = embed.make_dataset([pattern], SIZE, len(images), central_crop_fraction=fraction)
  assert_within(batch["image"].numpy(), reference_images(images, fraction), PIXEL_ERROR, "pixels")


def test_embeddings_equal_pooled_output_on_numpy_crops(model_path, records, tmp_path):
  pattern, images = records
  out = str(tmp_path / "crop.npz")
  n = embed.embed_dataset(
    model_path, pattern, out, image_size=SIZE, batch_size=2, central_crop_fraction=FRACTION
  )
  assert n == len(images)
  got = np.load(out)
  obj = tf.saved_model.load(model_path)
  cropped = reference_images(images, FRACTION)
  want = obj(cropped).numpy().mean(axis=(1, 2))
  assert_within(got["embedding"], want, embedding_tolerance(cropped), "cropped")
  assert float(got["central_crop_fraction"]) == FRACTION
  # The default (whole image) gives other embeddings: the flag is wired through.
  whole = str(tmp_path / "whole.npz")
  embed.embed_dataset(model_path, pattern, whole, image_size=SIZE)
  full = reference_images(images, 1.0)
  want_whole = obj(full).numpy().mean(axis=(1, 2))
  assert_within(np.load(whole)["embedding"], want_whole, embedding_tolerance(full), "whole")
  # Far outside the tolerance: the flag changes the embeddings.
  difference = np.abs(np.load(whole)["embedding"] - got["embedding"]).max()
  assert difference > 100 * embedding_tolerance(cropped).max()


@pytest.mark.parametrize("fraction", [0.0, -0.5, 1.5, float("nan")])
def test_rejects_fraction_outside_unit_interval(records, tmp_path, fraction):
  pattern, _ = records
  with pytest.raises(ValueError, match=r"central_crop_fraction must be in \(0, 1\]"):
    embed.embed_dataset(
      "unused", pattern, str(tmp_path / "e.npz"), 64, central_crop_fraction=fraction
    )
  with pytest.raises(ValueError, match="central_crop_fraction"):
    embed.make_dataset([pattern], SIZE, 2, central_crop_fraction=fraction)


@pytest.mark.slow
@pytest.mark.integration
def test_remedis_embed_cli_flag(model_path, records, tmp_path):
  pattern, images = records
  env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
  base = [sys.executable, "-m", "hub_export.embed_main", f"--model={model_path}",
          f"--data={pattern}", f"--image_size={SIZE}"]  # fmt: skip
  out = str(tmp_path / "cli.npz")
  subprocess.run([*base, f"--output={out}", f"--central_crop_fraction={FRACTION}"],
                 cwd=_ROOT, check=True, env=env)  # fmt: skip
  cropped = reference_images(images, FRACTION)
  want = tf.saved_model.load(model_path)(cropped).numpy().mean(axis=(1, 2))
  assert_within(np.load(out)["embedding"], want, embedding_tolerance(cropped), "CLI")
  bad = subprocess.run([*base, f"--output={out}", "--central_crop_fraction=1.5"],
                       cwd=_ROOT, env=env, capture_output=True, text=True)  # fmt: skip
  assert bad.returncode != 0
  assert "--central_crop_fraction must be in (0, 1]" in bad.stderr
