"""The Beam pipeline (DirectRunner) writes exactly the records of the local run."""

import glob
import os

import convert_testdata as td
import numpy as np
import pytest

from tfrecords_tools import convert

beam = pytest.importorskip(
  "apache_beam",
  reason="apache-beam is not installed (optional extra; apache-beam 2.77 requires "
  "protobuf < 7 while this environment has protobuf 7 for TensorFlow 2.21)",
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _shards(output_dir):
  out = {}
  for path in sorted(glob.glob(os.path.join(str(output_dir), "*.tfrecord"))):
    with open(path, "rb") as f:
      out[os.path.basename(path)] = f.read()
  return out


def test_direct_runner_equals_local(tmp_path):
  src = tmp_path / "src"
  rows = ["SOPInstanceUID,y,site"]
  for i in range(8):
    ds = td.make_dataset(
      td.ramp(24, 24, 0, 4095, seed=i), patient_id=f"P{i % 3}", WindowCenter=2048, WindowWidth=4096
    )
    td.write(str(src / f"d{i}"), td.encode(ds, ["explicit", "rle"][i % 2]))
    rows.append(f"{ds.SOPInstanceUID},{i % 2},s{i % 2}")
  td.write(str(src / "bad.txt"), b"not dicom")
  labels = tmp_path / "labels.csv"
  labels.write_text("\n".join(rows) + "\n")
  common = dict(input_path=str(src), labels_csv=str(labels), salt="beam-salt", shard_size_mb=0.004)
  local = convert.convert(convert.ConvertConfig(output_dir=str(tmp_path / "local"), **common))
  beamed = convert.convert(
    convert.ConvertConfig(
      output_dir=str(tmp_path / "beam"),
      runner="beam",
      beam_options=("--runner=DirectRunner", "--direct_num_workers=1"),
      **common,
    )
  )
  assert len(_shards(tmp_path / "local")) > 2
  assert _shards(tmp_path / "beam") == _shards(tmp_path / "local")
  assert beamed["counts"] == local["counts"]
  assert beamed["shards"] == local["shards"]
  assert np.sum(list(local["counts"]["records_by_split"].values())) == 8
