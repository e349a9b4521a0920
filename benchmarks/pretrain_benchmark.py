"""Pretraining throughput (images/s) of BiT-R50x1 at 128 px, oneDNN on and off, vs Keras.

Runs `remedis-pretrain` (SimCLR) on generated 16-bit radiograph-like TFRecords
in up to four set-ups, for each oneDNN setting (TF_ENABLE_ONEDNN_OPTS=1 and
=0, set in each child's environment since TensorFlow reads it on import):

  * single process (default strategy), without / with --jit_compile;
  * two workers under MultiWorkerMirroredStrategy on localhost (TF_CONFIG,
    free ports), without / with --jit_compile (which then compiles the
    encoder only: see remedis_tf.train.distribute.jit_scope).

Baseline, measured in the same run and setting: the bare SimCLR training step
(same global batch and view size, projection head, NT-Xent, LARS; no input
pipeline) of keras.applications.ResNet50V2 (weights=None) and of our
BiT-R50x1, from `bit_benchmark.py`'s worker (alternating timed rounds in one
process). Each set-up's "vs Keras" column is its images/s over the Keras
step's; the pretraining run also reads, augments and logs, so it is a lower
bound for the encoder's own speed (compare the bare BiT step).

Images/s counts source images (each yields two views) per second over all
workers, measured by the training loop after its first (tracing) interval.
Every set-up runs in fresh processes. Usage:

  .venv/bin/python benchmarks/pretrain_benchmark.py [--steps=6] [--global_batch_size=8]
      [--onednn=1,0] [--setups=single,single_jit,mwms,mwms_jit]
"""

from __future__ import annotations

from remedis_tf import cpu_setup  # noqa: F401  (oneDNN default, before TensorFlow)

# isort: split
import json
import os
import socket
import statistics
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
_ONEDNN = flags.DEFINE_list("onednn", ["1", "0"], "TF_ENABLE_ONEDNN_OPTS values to measure.")
_SETUPS = flags.DEFINE_list(
  "setups", ["single", "single_jit", "mwms", "mwms_jit"], "Set-ups to run (see the docstring)."
)
_BASELINE_ROUNDS = flags.DEFINE_integer(
  "baseline_rounds", 5, "Alternating timed rounds (one step each) of the bare-step baseline."
)

# name -> (label, workers, jit)
_SETUP_TABLE = {
  "single": ("single", 1, False),
  "single_jit": ("single+jit", 1, True),
  "mwms": ("2-worker MWMS", 2, False),
  "mwms_jit": ("2-worker MWMS+jit", 2, True),
}
_BIT_BENCHMARK = os.path.join(os.path.dirname(os.path.abspath(__file__)), "bit_benchmark.py")

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


def _env(onednn: str) -> dict[str, str]:
  return dict(
    os.environ,
    TF_CPP_MIN_LOG_LEVEL="2",
    CUDA_VISIBLE_DEVICES="",
    **{cpu_setup.ONEDNN_ENV: onednn},
  )


def _baseline(onednn: str) -> dict[str, float]:
  """Bare SimCLR-step images/s of Keras ResNet50V2 and BiT-R50x1 (bit_benchmark worker)."""
  cmd = [sys.executable, _BIT_BENCHMARK, "--worker", "bit_r50x1", "keras_resnet50v2",
         "--step", "simclr", "--size", str(_IMAGE_SIZE.value), "--batch", str(_BATCH.value),
         "--rounds", str(_BASELINE_ROUNDS.value), "--steps", "1"]  # fmt: skip
  proc = subprocess.run(
    cmd, capture_output=True, text=True, env=_env(onednn), timeout=_TIMEOUT.value, check=False
  )
  lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
  if proc.returncode or not lines:
    raise RuntimeError(f"bare-step baseline with oneDNN={onednn} failed:\n{proc.stderr[-3000:]}")
  result = json.loads(lines[-1][len("RESULT ") :])
  return {
    name: _BATCH.value / statistics.median(m["step_s"]) for name, m in result["models"].items()
  }


def _run(data: str, workdir: str, name: str, workers: int, jit: bool, onednn: str) -> dict:
  """Runs one set-up; returns the chief's results dict plus wall time."""
  env = _env(onednn)
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
  unknown = set(_SETUPS.value) - set(_SETUP_TABLE)
  if unknown or set(_ONEDNN.value) - {"0", "1"}:
    raise app.UsageError(
      f"--setups must be among {sorted(_SETUP_TABLE)} and --onednn among 0, 1; got "
      f"{_SETUPS.value}, {_ONEDNN.value}."
    )
  info = cpu_setup.cpu_info()
  with tempfile.TemporaryDirectory() as workdir:
    data = _write_data(os.path.join(workdir, "data"), _IMAGE_SIZE.value)
    print(
      f"{_ENCODER.value} SimCLR pretraining, {_IMAGE_SIZE.value} px, global batch "
      f"{_BATCH.value}, {_STEPS.value} steps; CPU {info['model']}, {info['cores']} cores, "
      f"class {cpu_setup.cpu_class(info)} (both oneDNN settings on this CPU); load average "
      f"{os.getloadavg()[0]:.1f} (shared machine: compare ratios)"
    )
    for onednn in _ONEDNN.value:
      base = _baseline(onednn)
      keras_speed = base["keras_resnet50v2"]
      print(
        f"\noneDNN={onednn}: bare SimCLR step (no input pipeline), median of "
        f"{_BASELINE_ROUNDS.value} alternating rounds: keras ResNet50V2 {keras_speed:.2f} "
        f"images/s, BiT-R50x1 {base['bit_r50x1']:.2f} ({base['bit_r50x1'] / keras_speed:.2f}x)"
      )
      print(
        f"{'set-up':<20} {'images/s':>10} {'vs single':>10} {'vs Keras':>9} {'replicas':>9} "
        f"{'wall s':>8}  loss"
      )
      single_speed = None
      for key in _SETUPS.value:
        label, workers, jit = _SETUP_TABLE[key]
        r = _run(data, workdir, f"{key}_onednn{onednn}", workers, jit, onednn)
        if "error" in r:
          print(
            f"{label:<20} {'failed':>10} {'':>10} {'':>9} {'':>9} {r['wall_s']:8.1f}  {r['error']}"
          )
          continue
        loss = r["metrics"].get("loss", float("nan"))
        speed = r["images_per_second"]
        single_speed = single_speed or speed
        print(
          f"{label:<20} {speed:10.2f} {speed / single_speed:9.2f}x {speed / keras_speed:8.2f}x "
          f"{r['num_replicas']:9d} {r['wall_s']:8.1f}  {loss:.4f}",
          flush=True,
        )
    print(
      "\njit under 2-worker MWMS compiles the encoder's forward and backward pass only; the "
      "cross-worker collectives (sync BatchNorm, gathered negatives) run outside XLA."
    )
    print(f"load average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
  app.run(main)
