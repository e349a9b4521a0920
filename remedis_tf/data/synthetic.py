"""Synthetic radiograph-like images and TFRecords in the converter's schema.

For tests, benchmarks and demos only: the images are generated (a bright
torso, dark lungs, a spine, ribs and noise), not medical data.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Sequence

import numpy as np
import tensorflow as tf
from PIL import Image

from tfrecords_tools import schema


def radiograph_like(size: int, seed: int, bit_depth: int = 16) -> np.ndarray:
  """A synthetic chest-radiograph-like grayscale image.

  Args:
    size: side in pixels.
    seed: numpy seed.
    bit_depth: 8 (uint8) or 16 (uint16).

  Returns:
    (size, size) uint8 or uint16 array.
  """
  rng = np.random.default_rng(seed)
  y, x = np.mgrid[0:size, 0:size] / (size - 1.0)
  cx = 0.5 + rng.uniform(-0.04, 0.04)
  torso = ((x - cx) / 0.42) ** 2 + ((y - 0.58) / 0.52) ** 2 < 1.0
  img = 0.08 + 0.55 * torso
  for side in (-1, 1):
    lx = cx + side * rng.uniform(0.17, 0.21)
    lung = ((x - lx) / rng.uniform(0.12, 0.15)) ** 2 + ((y - 0.5) / rng.uniform(0.27, 0.31)) ** 2
    img = np.where(lung < 1.0, img - 0.35 * (1.0 - 0.5 * lung), img)
  img += 0.25 * np.exp(-(((x - cx) / 0.025) ** 2)) * (y > 0.15)
  for k in range(8):
    rib_y = 0.28 + 0.065 * k + 0.25 * (x - cx) ** 2
    img += 0.08 * np.exp(-(((y - rib_y) / 0.008) ** 2)) * torso
  heart = ((x - cx - 0.05) / 0.13) ** 2 + ((y - 0.66) / 0.12) ** 2 < 1.0
  img = np.where(heart, img + 0.2, img)
  img += rng.normal(0.0, 0.015, img.shape)
  img = np.clip(img, 0.0, 1.0)
  top = 65535 if bit_depth == 16 else 255
  return np.round(img * top).astype(np.uint16 if bit_depth == 16 else np.uint8)


def encode_png(image: np.ndarray) -> bytes:
  """PNG bytes of a (H, W) uint8/uint16 or (H, W, 3) uint8 array."""
  if image.dtype == np.uint16:
    return tf.io.encode_png(image[..., None] if image.ndim == 2 else image).numpy()
  pil = Image.fromarray(image)
  buf = io.BytesIO()
  pil.save(buf, format="PNG")
  return buf.getvalue()


def make_example(
  image: np.ndarray,
  *,
  source_id: str,
  label: int = -1,
  multi_label: Sequence[float] | None = None,
  patient_id: str = "",
  site: str = "",
  split: str = "train",
) -> tf.train.Example:
  """A tf.Example with the schema keys (patient id hashed with SHA-256 here)."""
  channels = 1 if image.ndim == 2 else image.shape[-1]
  bit_depth = 16 if image.dtype == np.uint16 else 8
  b = lambda v: tf.train.Feature(bytes_list=tf.train.BytesList(value=[v]))
  i = lambda v: tf.train.Feature(int64_list=tf.train.Int64List(value=[v]))
  patient_hash = hashlib.sha256(patient_id.encode()).hexdigest() if patient_id else ""
  multi = list(multi_label) if multi_label is not None else []
  feature = {
    schema.IMAGE_ENCODED: b(encode_png(image)),
    schema.IMAGE_FORMAT: b(b"png"),
    schema.IMAGE_HEIGHT: i(image.shape[0]),
    schema.IMAGE_WIDTH: i(image.shape[1]),
    schema.IMAGE_CHANNELS: i(channels),
    schema.IMAGE_BIT_DEPTH: i(bit_depth),
    schema.IMAGE_SOURCE_ID: b(source_id.encode()),
    schema.LABEL: i(label),
    schema.HAS_LABEL: i(int(label >= 0 or any(m >= 0 for m in multi))),
    schema.MULTI_LABEL: tf.train.Feature(float_list=tf.train.FloatList(value=multi)),
    schema.PATIENT_ID_HASH: b(patient_hash.encode()),
    schema.SITE: b(site.encode()),
    schema.SPLIT: b(split.encode()),
  }
  return tf.train.Example(features=tf.train.Features(feature=feature))


def write_radiograph_shards(
  folder: str,
  *,
  num_shards: int,
  per_shard: int,
  size: int,
  bit_depth: int = 16,
  num_classes: int = 2,
  patients: int | None = None,
  seed: int = 0,
) -> list[str]:
  """Writes shards of synthetic radiographs; returns their sorted paths.

  Example n (0-based, over all shards) has source_id "img-n", label
  n % num_classes, patient "patient-{n % patients}" (default: one per
  example), site "site-{n % 2}" and split "train" unless n % 5 == 4
  ("test").
  """
  patients = patients or num_shards * per_shard
  paths = []
  n = 0
  for s in range(num_shards):
    path = f"{folder}/shard-{s:05d}-of-{num_shards:05d}.tfrecord"
    with tf.io.TFRecordWriter(path) as writer:
      for _ in range(per_shard):
        example = make_example(
          radiograph_like(size, seed + n, bit_depth),
          source_id=f"img-{n}",
          label=n % num_classes,
          patient_id=f"patient-{n % patients}",
          site=f"site-{n % 2}",
          split="test" if n % 5 == 4 else "train",
        )
        writer.write(example.SerializeToString())
        n += 1
    paths.append(path)
  return paths
