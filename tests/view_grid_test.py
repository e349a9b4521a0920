"""Tests of the augmentation grid (library and CLI)."""

import numpy as np
import pytest
from PIL import Image

from remedis_tf.data import synthetic, view_grid, view_grid_main


@pytest.mark.slow
@pytest.mark.integration
def test_cxr_grid_is_a_png_of_the_expected_size(tmp_path):
  synthetic.write_radiograph_shards(str(tmp_path), num_shards=1, per_shard=3, size=64)
  out = tmp_path / "grid.png"
  size, pad, n, k = 32, 4, 2, 3
  view_grid.write_view_grid(
    str(out),
    str(tmp_path / "*.tfrecord"),
    preset="cxr",
    num_images=n,
    num_views=k,
    image_size=size,
    seed=0,
    padding=pad,
  )
  with Image.open(out) as png:
    assert png.format == "PNG"
    assert png.size == ((k + 1) * (size + pad) + pad, n * (size + pad) + pad)
    grid = np.asarray(png.convert("RGB"))
  tiles = [
    grid[pad : pad + size, pad + c * (size + pad) : pad + c * (size + pad) + size]
    for c in range(k + 1)
  ]
  for tile in tiles:  # gray views, not blank
    assert np.array_equal(tile[..., 0], tile[..., 1]) and tile.std() > 5
  assert not np.array_equal(tiles[1], tiles[2])


def test_parse_overrides():
  assert view_grid_main.parse_overrides(
    ["rotation_prob=1.0", "rotation_fill_mode=constant", "crop_area_range=(0.5, 1.0)"]
  ) == {"rotation_prob": 1.0, "rotation_fill_mode": "constant", "crop_area_range": (0.5, 1.0)}
  with pytest.raises(ValueError):
    view_grid_main.parse_overrides(["rotation_prob"])
