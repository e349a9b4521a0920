"""Pretraining throughput (images/s) of BiT-R50x1 at 128 px on this machine.

Runs `remedis-pretrain` (SimCLR) on generated 16-bit radiograph-like TFRecords
in four set-ups and prints one table:

  * single process (default strategy), without / with --jit_compile;
  * two workers under MultiWorkerMirroredStrategy on localhost (TF_CONFIG,
    free ports), without / with --jit_compile (which then compiles the
    encoder only: see remedis_tf.train.distribute.jit_scope).

Images/s counts source images (each yields two views) per second over all
workers, measured by the training loop after its first (tracing) interval.
Every set-up runs in fresh processes. Usage:

  .venv/bin/python benchmarks/pretrain_benchmark.py [--steps=6] [--global_batch_size=8]
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time

from absl import app, flags

_STEPS = flags.DEFINE_integer("steps", 6, "Training steps per set-up (first one is warm-up).")
_BATCH = flags.DEFINE_integer("global_batch_size", 8, "Global batch size.")
_IMAGE_SIZE = flags.DEFINE_integer("image_size", 128, "View size.")
_ENCODER = flags.DEFINE_string("encoder", "bit-r50x1", "Encoder.")
_TIMEOUT = flags.DEFINE_integer("timeout", 900, "Seconds per set-up.")

_BIN = os.path.join(os.path.dirname(sys.executable), "remedis-pretrain")


def _free_ports(n: int) -> list[int]:
  socks = [socket.socket() for _ in range(n)]
  for s in socks:
    s.bind(("localhost", 0))
  ports = [s.getsockname()[1] for s in socks]
  for s in socks:
    s.close()
  return ports


def _write_data(folder: str, size: int) -> str:
  from remedis_tf.data import synthetic

  os.makedirs(folder, exist_ok=True)
  synthetic.write_radiograph_shards(folder, num_shards=2, per_shard=32, size=size + 32)
  return os.path.join(folder, "*.tfrecord")


def _run(data: str, workdir: str, name: str, workers: int, jit: bool) -> dict:
  """Runs one set-up; returns the chief's results dict plus wall time."""
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
  args = [
    f"--train_data={data}",
    f"--model_dir={os.path.join(workdir, name)}",
    f"--encoder={_ENCODER.value}",
    "--objective=simclr",
    f"--train_steps={_STEPS.value}",
    f"--global_batch_size={_BATCH.value}",
    f"--image_size={_IMAGE_SIZE.value}",
    "--checkpoint_steps=0",
    "--log_every_steps=1",
    f"--jit_compile={jit}",
    "--strategy=" + ("multi_worker" if workers > 1 else "default"),
  ]
  cluster = {"worker": [f"localhost:{p}" for p in _free_ports(workers)]}
  procs, outs = [], []
  start = time.perf_counter()
  for i in range(workers):
    out = os.path.join(workdir, f"{name}-{i}.json")
    outs.append(out)
    e = dict(env)
    if workers > 1:
      e["TF_CONFIG"] = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}})
    procs.append(
      subprocess.Popen(
        [_BIN, *args, f"--results_json={out}"],
        env=e,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
      )
    )
  logs = [p.communicate(timeout=_TIMEOUT.value)[0] for p in procs]
  wall = time.perf_counter() - start
  if any(p.returncode for p in procs):
    tail = logs[0].strip().splitlines()[-5:]
    return {"error": " | ".join(tail)[-400:], "wall_s": wall}
  with open(outs[0]) as f:
    result = json.load(f)
  result["wall_s"] = wall
  return result


def main(argv: list[str]) -> None:
  del argv
  setups = [
    ("single", 1, False),
    ("single+jit", 1, True),
    ("2-worker MWMS", 2, False),
    ("2-worker MWMS+jit", 2, True),
  ]
  with tempfile.TemporaryDirectory() as workdir:
    data = _write_data(os.path.join(workdir, "data"), _IMAGE_SIZE.value)
    print(
      f"{_ENCODER.value} SimCLR pretraining, {_IMAGE_SIZE.value} px, global batch "
      f"{_BATCH.value}, {_STEPS.value} steps, {os.cpu_count()} CPU cores (shared machine)"
    )
    print(f"{'set-up':<20} {'images/s':>10} {'vs single':>10} {'replicas':>9} {'wall s':>8}  loss")
    baseline = None
    for name, workers, jit in setups:
      r = _run(data, workdir, name.replace(" ", "_").replace("+", "_"), workers, jit)
      if "error" in r:
        print(f"{name:<20} {'failed':>10} {'':>10} {'':>9} {r['wall_s']:8.1f}  {r['error']}")
        continue
      loss = r["metrics"].get("loss", float("nan"))
      speed = r["images_per_second"]
      baseline = baseline or speed
      print(
        f"{name:<20} {speed:10.2f} {speed / baseline:9.2f}x {r['num_replicas']:9d} "
        f"{r['wall_s']:8.1f}  {loss:.4f}",
        flush=True,
      )
    print(
      "jit under 2-worker MWMS compiles the encoder's forward and backward pass only; the "
      "cross-worker collectives (sync BatchNorm, gathered negatives) run outside XLA."
    )


if __name__ == "__main__":
  app.run(main)
