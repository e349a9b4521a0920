"""Tiny generated TFRecords and subprocess helpers for the training tests (not a test module).

Imported inside the slow tests only, so the fast tests of the same files run
where this helper is not shipped (Bazel py_tests get just the test file).
"""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import tensorflow as tf

from remedis_tf.data import synthetic

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(os.path.dirname(sys.executable))


def write_multiclass(folder: str, num_shards: int = 2, per_shard: int = 4, size: int = 40) -> str:
  """Synthetic 16-bit radiographs, 2 classes, with a manifest; returns the glob."""
  os.makedirs(folder, exist_ok=True)
  synthetic.write_radiograph_shards(
    folder, num_shards=num_shards, per_shard=per_shard, size=size, num_classes=2, patients=6
  )
  with open(os.path.join(folder, "manifest.json"), "w") as f:
    json.dump({"label_names": ["normal", "abnormal"], "label_mode": "multi_class"}, f)
  return os.path.join(folder, "*.tfrecord")


def write_multilabel(folder: str, n: int = 12, k: int = 3, size: int = 40) -> str:
  """Synthetic multi-label records (some entries unknown, -1) with a manifest."""
  os.makedirs(folder, exist_ok=True)
  rng = np.random.default_rng(0)
  with tf.io.TFRecordWriter(os.path.join(folder, "ml-00000-of-00001.tfrecord")) as writer:
    for i in range(n):
      labels = rng.integers(0, 2, k).astype(float)
      labels[rng.uniform(size=k) < 0.2] = -1
      labels[0] = i % 2
      ex = synthetic.make_example(
        synthetic.radiograph_like(size, i),
        source_id=f"ml-{i}",
        multi_label=list(labels),
        patient_id=f"p{i // 2}",
      )
      writer.write(ex.SerializeToString())
  with open(os.path.join(folder, "manifest.json"), "w") as f:
    json.dump({"label_names": [f"c{j}" for j in range(k)], "label_mode": "multi_label"}, f)
  return os.path.join(folder, "*.tfrecord")


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
