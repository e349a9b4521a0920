"""remedis-tile with the Beam runner (DirectRunner) writes exactly the local run's bytes.

Runs in the Beam environment (.venv-beam, protobuf < 7); skipped where Apache
Beam is not installed.
"""

import glob
import os

import pytest
import slide_testdata as td

from tfrecords_tools import tile, tiling

beam = pytest.importorskip(
  "apache_beam",
  reason="apache-beam is not installed (optional extra; it requires protobuf < 7, "
  "TensorFlow 2.21 here has protobuf 7; run this test in .venv-beam)",
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _outputs(folder):
  paths = sorted(glob.glob(os.path.join(str(folder), "*.tfrecord")))
  paths += sorted(glob.glob(os.path.join(str(folder), "thumbnails", "*.png")))
  return {os.path.relpath(p, str(folder)): open(p, "rb").read() for p in paths}


def test_direct_runner_equals_local(tmp_path):
  src = tmp_path / "slides"
  src.mkdir()
  for i in range(2):
    slide = td.make_slide(width=1024, height=768, num_levels=3, seed=20 + i)
    td.write_generic_tiff(str(src / f"s{i}.tif"), slide)
  (src / "bad.svs").write_bytes(b"no slide" * 10)
  common = dict(
    input_path=str(src),
    policy=tiling.PatchPolicy(patch_size=32, target_mpp=1.0),
    salt="beam-salt",
    patches_per_shard=10,
  )
  local = tile.tile(tile.TileConfig(output_dir=str(tmp_path / "local"), **common))
  beamed = tile.tile(
    tile.TileConfig(
      output_dir=str(tmp_path / "beam"),
      runner="beam",
      beam_options=("--runner=DirectRunner", "--direct_num_workers=1"),
      **common,
    )
  )
  assert sum(len(s) for s in local["shards"].values()) > 2
  assert _outputs(tmp_path / "beam") == _outputs(tmp_path / "local")
  assert beamed["counts"] == local["counts"] and beamed["shards"] == local["shards"]
  assert local["counts"]["slides_failed"] == 1
