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

  Image n has class "abnormal" (index 1) when n is odd, else "normal" (index 0),
  and patient n % 6.
  Returns the glob of the converter's shards (about `num_shards` of them).
  """
  n = num_shards * per_shard
  images = [
    {
      "pixels": _pixels(size, i),
      "patient": f"PAT-{i % 6:02d}",
      # One-hot columns: the class order (label_names) is the column order.
      "labels": {"normal": str(1 - i % 2), "abnormal": str(i % 2)},
    }
    for i in range(n)
  ]
  return _convert_dicoms(folder, images, ["normal", "abnormal"], "multiclass")


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
  """n localhost ports that were free a moment ago (bound to port 0, then released)."""
  socks = [socket.socket() for _ in range(n)]
  for s in socks:
    s.bind(("localhost", 0))
  ports = [s.getsockname()[1] for s in socks]
  for s in socks:
    s.close()
  return ports


# What a TensorFlow worker prints when another process took its port between
# `free_ports` and the worker's bind (TF's gRPC server cannot share a reserved
# port, so the race cannot be closed by holding the port).
PORT_TAKEN = ("Could not start gRPC server", "Address already in use")


def run_workers(
  name: str, worker_args: list[list[str]], timeout: float = 240, attempts: int = 3
) -> tuple[list[subprocess.Popen], list[str]]:
  """Runs one CLI process per worker under MultiWorkerMirroredStrategy on localhost.

  Each worker i gets `worker_args[i]` and a TF_CONFIG for a cluster on fresh
  ports. If a worker could not bind its port (another process took it after
  `free_ports`), the whole group is run again on new ports; any other outcome
  is returned as is.

  Returns:
    (processes, their combined stdout/stderr), after all have exited.
  """
  for _ in range(attempts):
    cluster = {"worker": [f"localhost:{p}" for p in free_ports(len(worker_args))]}
    procs = [
      cli(name, args, {"cluster": cluster, "task": {"type": "worker", "index": i}})
      for i, args in enumerate(worker_args)
    ]
    logs = [p.communicate(timeout=timeout)[0] for p in procs]
    if not any(marker in log for log in logs for marker in PORT_TAKEN):
      return procs, logs
  raise RuntimeError(
    f"workers could not bind free ports in {attempts} attempts:\n{logs[0][-2000:]}"
  )


def env(tf_config: dict | None = None, extra: dict | None = None) -> dict:
  """Environment for a CLI subprocess (one CPU device, quiet TF, plus `extra`)."""
  e = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="", PYTHONPATH=ROOT)
  e.pop("TF_CONFIG", None)
  e.pop("REMEDIS_TRAIN_FAULT", None)
  if tf_config is not None:
    e["TF_CONFIG"] = json.dumps(tf_config)
  e.update(extra or {})
  return e


def cli(
  name: str,
  args: list[str],
  tf_config: dict | None = None,
  extra_env: dict | None = None,
  **kwargs,
) -> subprocess.Popen:
  """Starts a console script (remedis-pretrain ...) from the venv."""
  return subprocess.Popen(
    [os.path.join(BIN, name), *args],
    env=env(tf_config, extra_env),
    stdout=subprocess.PIPE,
    stderr=subprocess.STDOUT,
    text=True,
    **kwargs,
  )


def encoder_arrays(model_dir: str) -> list[np.ndarray]:
  """The encoder weights of a training model_dir's latest checkpoint, as arrays."""
  from remedis_tf.train import run_dir

  return [v.numpy() for v in run_dir.restore_model(model_dir).encoder.weights]
