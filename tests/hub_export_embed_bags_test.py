"""remedis-embed --output=bags.h5: one bag of patch embeddings per slide, for MIL.

Slides are generated (tests/slide_testdata.py), tiled by the real remedis-tile
job and embedded by a real exported SavedModel; each bag is checked against
the records read back independently and against the model applied directly.
"""

import os
import subprocess
import sys

import h5py
import numpy as np
import pytest
import slide_testdata as td
import tensorflow as tf

from hub_export import embed
from hub_export.export import export_encoder
from remedis_tf.models import build_encoder_by_name
from tfrecords_tools import schema, tile, tiling

pytestmark = [pytest.mark.slow, pytest.mark.integration]
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZE = 64


@pytest.fixture(scope="module")
def tiled(tmp_path_factory):
  root = tmp_path_factory.mktemp("bags")
  (root / "slides").mkdir()
  rows = ["slide_id,patient_id,diagnosis"]
  for i in range(2):
    slide = td.make_slide(width=1024, height=768, num_levels=3, seed=30 + i)
    td.write_generic_tiff(str(root / "slides" / f"slide_{i}.tif"), slide)
    rows.append(f"slide_{i},P{i},{'tumor' if i % 2 else 'normal'}")
  (root / "labels.csv").write_text("\n".join(rows) + "\n")
  tile.tile(
    tile.TileConfig(
      input_path=str(root / "slides"),
      output_dir=str(root / "records"),
      policy=tiling.PatchPolicy(patch_size=SIZE, target_mpp=1.0, min_tissue_fraction=0.3),
      labels_csv=str(root / "labels.csv"),
      salt="bags",
      split_fractions=(1.0, 0.0, 0.0),
    )
  )
  encoder = build_encoder_by_name("bit-tiny")
  export_encoder(encoder, str(root / "model"))
  return root, encoder


def _records(pattern):
  """Every record, parsed independently of the embedding code."""
  files = sorted(tf.io.gfile.glob(pattern))
  return [schema.parse_example(s) for s in tf.data.TFRecordDataset(files)]


def test_one_bag_per_slide_with_every_patch_once(tiled, tmp_path):
  root, encoder = tiled
  out = str(tmp_path / "bags.h5")
  n = embed.embed_dataset(
    str(root / "model"), str(root / "records" / "*.tfrecord"), out, image_size=SIZE, batch_size=5
  )
  records = _records(str(root / "records" / "*.tfrecord"))
  slides = {r[schema.SLIDE_ID_HASH].numpy().decode() for r in records}
  assert n == len(slides) == 2
  with h5py.File(out, "r") as f:
    assert set(f) == slides and f.attrs["num_bags"] == 2 and f.attrs["image_size"] == SIZE
    total = 0
    for slide in slides:
      mine = [r for r in records if r[schema.SLIDE_ID_HASH].numpy().decode() == slide]
      group = f[slide]
      emb, coords = group["embedding"][:], group["coords"][:]
      assert emb.shape == (len(mine), 2048) and coords.shape == (len(mine), 2)
      want_xy = np.array([[int(r[schema.PATCH_X]), int(r[schema.PATCH_Y])] for r in mine])
      np.testing.assert_array_equal(coords, want_xy)  # record order within the slide
      images = tf.stack([schema.decode_image(r[schema.IMAGE_ENCODED], 3) for r in mine])
      want = encoder(images, training=False)["embedding"].numpy()
      # The same float32 graph (SavedModel vs Keras); 1e-4 of the largest value
      # covers reordered reductions over 2x2x2048 activations.
      np.testing.assert_allclose(emb, want, rtol=0, atol=1e-4 * float(np.abs(want).max()))
      assert group.attrs["split"] == "train"
      assert int(group.attrs["label"]) == int(mine[0][schema.LABEL])
      np.testing.assert_allclose(
        group["tissue_fraction"][:], [float(r[schema.PATCH_TISSUE_FRACTION]) for r in mine]
      )
      total += len(mine)
    assert total == len(records)


def test_non_patch_records_are_refused_and_the_cli_writes_bags(tiled, tmp_path):
  root, _ = tiled
  from remedis_tf.data import synthetic

  synthetic.write_radiograph_shards(str(tmp_path), num_shards=1, per_shard=2, size=SIZE)
  with pytest.raises(embed.InputDataError, match="remedis-tile"):
    embed.embed_dataset(str(root / "model"), str(tmp_path / "*.tfrecord"), str(tmp_path / "x.h5"))
  out = str(tmp_path / "cli.h5")
  proc = subprocess.run(
    [
      sys.executable,
      "-m",
      "hub_export.embed_main",
      f"--model={root / 'model'}",
      f"--data={root / 'records' / '*.tfrecord'}",
      f"--output={out}",
      f"--image_size={SIZE}",
    ],
    cwd=ROOT,
    capture_output=True,
    text=True,
    env={**os.environ, "CUDA_VISIBLE_DEVICES": ""},
    timeout=300,
  )
  assert proc.returncode == 0, proc.stderr[-2000:]
  with h5py.File(out, "r") as f:
    assert f.attrs["num_bags"] == 2
