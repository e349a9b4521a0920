"""A PNG grid of N images x K augmented views, to see what a preset does."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import tensorflow as tf
from PIL import Image

from remedis_tf.data import augment, seeds
from remedis_tf.data.input_pipeline import read_records
from remedis_tf.data.presets import AugmentConfig, get_preset
from tfrecords_tools import schema


def make_view_grid(
  files: str | Sequence[str],
  *,
  preset: str | AugmentConfig = "cxr",
  num_images: int = 4,
  num_views: int = 6,
  image_size: int = 224,
  seed: int = 0,
  padding: int = 4,
) -> np.ndarray:
  """Renders a grid: one row per image, the evaluation crop then K views.

  Args:
    files: glob pattern(s) or paths of TFRecord shards (first records are used).
    preset: preset name or AugmentConfig.
    num_images: rows N.
    num_views: augmented views K per image.
    image_size: side S of each tile.
    seed: augmentation seed.
    padding: white pixels between tiles.

  Returns:
    (N * (S + p) + p, (K + 1) * (S + p) + p, 3) uint8 array.
  """
  config = get_preset(preset)
  base = seeds.make_seed(seed)
  step = image_size + padding
  grid = np.full((num_images * step + padding, (num_views + 1) * step + padding, 3), 255, np.uint8)

  @tf.function
  def views(encoded, key):
    image = schema.decode_image(encoded, channels=config.channels)
    image.set_shape([None, None, config.channels])
    tiles = [augment.preprocess_eval(image, config, image_size)]
    for v in range(num_views):
      tiles.append(
        augment.augment_view(image, config, seeds.fold_in(base, key, 0, v + 1), image_size)
      )
    return tf.stack(tiles)

  records = read_records(files).take(num_images)
  rows = 0
  for row, serialized in enumerate(records):
    ex = schema.parse_example(serialized)
    key = seeds.example_key(ex[schema.IMAGE_SOURCE_ID], ex[schema.IMAGE_ENCODED])
    tiles = views(ex[schema.IMAGE_ENCODED], key).numpy()
    tiles = np.round(np.clip(tiles, 0.0, 1.0) * 255.0).astype(np.uint8)
    for col, tile in enumerate(tiles):
      y, x = padding + row * step, padding + col * step
      grid[y : y + image_size, x : x + image_size] = tile
    rows += 1
  if rows == 0:
    raise ValueError(f"no records in {files!r}")
  return grid[: rows * step + padding]


def write_view_grid(path: str, files: str | Sequence[str], **kwargs) -> tuple[int, int]:
  """Writes `make_view_grid(files, **kwargs)` as a PNG; returns its (height, width)."""
  grid = make_view_grid(files, **kwargs)
  Image.fromarray(grid).save(path, format="PNG")
  return grid.shape[0], grid.shape[1]
