"""Tiny TFRecords made by the real converter, and subprocess helpers (not a test module).

Imported inside the slow tests only, so the fast tests of the same files run
where this helper is not shipped (Bazel py_tests get just the test file).
"""

import csv
import json
import os
import socket
import subprocess
import sys

import numpy as np

from remedis_tf.data import synthetic

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(os.path.dirname(sys.executable))


def _convert_dicoms(folder: str, images: list[dict], label_columns: list[str], mode: str) -> str:
  """Writes `images` as DICOM files and converts them with the real converter.

  Args:
    folder: output folder; the DICOMs go to `folder + "_dicom"`.
    images: one dict per image: 'pixels' (H, W) uint16, 'patient', 'labels'
      {column: value as written in the labels CSV}.
    label_columns: the CSV's label columns.
    mode: 'multiclass' or 'multilabel'.

  Returns:
    The glob of the shards. Every record is in the train split; the
    converter writes manifest.json (label_names, label_mode) itself.
  """
  import convert_testdata as ct  # helper module next to the tests
  from pydicom.uid import generate_uid

  from tfrecords_tools import convert

  dicom_dir = folder.rstrip("/") + "_dicom"
  rows = []
  for i, image in enumerate(images):
    uid = generate_uid(entropy_srcs=[folder, str(i)])
    ds = ct.make_dataset(image["pixels"], patient_id=image["patient"], sop_uid=uid)
    ct.write(os.path.join(dicom_dir, f"img{i:03d}.dcm"), ct.encode(ds))
    rows.append({"SOPInstanceUID": uid, **image["labels"]})
  labels_csv = dicom_dir + "_labels.csv"
  with open(labels_csv, "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=["SOPInstanceUID", *label_columns])
    writer.writeheader()
    writer.writerows(rows)
  convert.convert(
    convert.ConvertConfig(
      input_path=dicom_dir,
      output_dir=folder,
      labels_csv=labels_csv,
      label_columns=tuple(label_columns),
      label_mode=mode,
      salt="remedis-tf-tests",
      split_fractions=(1.0, 0.0, 0.0),
      # Small shards, so a multi-file input (file-sharded input pipelines).
      shard_size_mb=4 * images[0]["pixels"].nbytes / (1 << 20),
    )
  )
  return os.path.join(folder, "*.tfrecord")


def _pixels(size: int, seed: int) -> np.ndarray:
  """A 12-bit radiograph-like image."""
  return (synthetic.radiograph_like(size, seed, bit_depth=16) >> 4).astype(np.uint16)


def write_multiclass(folder: str, num_shards: int = 2, per_shard: int = 4, size: int = 40) -> str:
  """Synthetic 12-bit radiographs as DICOM, 2 classes, 6 patients, through the converter.

  Image n has class "abnormal" when n is odd, else "normal", and patient n % 6.
  Returns the glob of the converter's shards (about `num_shards` of them).
  """
  n = num_shards * per_shard
  images = [
    {
      "pixels": _pixels(size, i),
      "patient": f"PAT-{i % 6:02d}",
      "labels": {"finding": "abnormal" if i % 2 else "normal"},
    }
    for i in range(n)
  ]
  return _convert_dicoms(folder, images, ["finding"], "multiclass")


def write_multilabel(folder: str, n: int = 12, k: int = 3, size: int = 40) -> str:
  """Synthetic multi-label DICOMs (some entries unknown) through the converter.

  Image i belongs to patient i // 2; label c0 is i % 2, the others random,
  with about 20% left empty in the CSV (unknown, -1 in the records).
  """
  rng = np.random.default_rng(0)
  images = []
  for i in range(n):
    values = rng.integers(0, 2, k).astype(int).tolist()
    unknown = rng.uniform(size=k) < 0.2
    values[0] = i % 2
    unknown[0] = False
    labels = {f"c{j}": "" if unknown[j] else str(values[j]) for j in range(k)}
    images.append(
      {"pixels": _pixels(size, 100 + i), "patient": f"PAT-{i // 2:02d}", "labels": labels}
    )
  return _convert_dicoms(folder, images, [f"c{j}" for j in range(k)], "multilabel")


def free_ports(n: int) -> list[int]:
  """n free localhost ports (bound to port 0, then released)."""
  socks = [socket.socket() for _ in range(n)]
  for s in socks:
    s.bind(("localhost", 0))
  ports = [s.getsockname()[1] for s in socks]
  for s in socks:
    s.close()
  return ports


def env(tf_config: dict | None = None) -> dict:
  """Environment for a CLI subprocess (one CPU device, quiet TF)."""
  e = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="", PYTHONPATH=ROOT)
  e.pop("TF_CONFIG", None)
  if tf_config is not None:
    e["TF_CONFIG"] = json.dumps(tf_config)
  return e


def cli(name: str, args: list[str], tf_config: dict | None = None, **kwargs) -> subprocess.Popen:
  """Starts a console script (remedis-pretrain ...) from the venv."""
  return subprocess.Popen(
    [os.path.join(BIN, name), *args],
    env=env(tf_config),
    stdout=subprocess.PIPE,
    stderr=subprocess.STDOUT,
    text=True,
    **kwargs,
  )
