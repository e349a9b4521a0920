"""Small-map convolutions in training: patches (or a strided slice) times kernel vs Conv2D.

`StandardizedConv2D` runs, in training, a 3x3 convolution whose output has at most
`PATCHES_MAX_POSITIONS` positions as `tf.image.extract_patches` times the kernel,
and a strided 1x1 one with at most `SLICE_MAX_POSITIONS` as a strided slice times
the kernel (remedis_tf/models/weight_standardization.py). This script measures
that choice against the plain convolution, in one process, alternating timed
rounds of the two so that both see the same machine load:

  layers  one BiT layer, forward and both gradients (input and kernel), at
          the small maps of bit-tiny at 64 px and BiT-R50x1 at 128 px, for
          each --threads value; the two variants are two traced functions in
          one process, timed in alternating rounds.
  steps   whole training steps as the demo runs them: its SimCLR step
          (bit-tiny, 64 px, 64 images, two views, LARS; 2 threads, as
          pretraining runs) and its fine-tuning step (bit-tiny, 64 px, 16
          images, SGD; 1 thread, as each fine-tuning worker runs), and with
          --r50 BiT-R50x1's SimCLR step at 128 px, batch 16 (2 threads). Each
          variant runs in its own process (one traced step per process, as in
          training), alternating conv, patches, conv, ... for --rounds rounds.

Each row gives the median of each variant (ms per call or per step) and the
median and range of the per-round ratio (conv / patches: above 1 means the
patches are faster). The thresholds are module constants read when a step is
traced.

  .venv/bin/python benchmarks/conv_benchmark.py [--threads=1,2] [--rounds=5] [--r50]
      [--parts=layers,steps]

TF_ENABLE_ONEDNN_OPTS is read when TensorFlow is imported: run once with =0 for
oneDNN off (remedis-tf's default is on).
"""

from __future__ import annotations

from remedis_tf import cpu_setup  # noqa: F401  (oneDNN default, before TensorFlow)

# isort: split
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

from absl import app, flags

_THREADS = flags.DEFINE_list("threads", ["1", "2"], "TensorFlow thread counts to measure.")
_ROUNDS = flags.DEFINE_integer("rounds", 5, "Timed rounds per variant (after one untimed).")
_PARTS = flags.DEFINE_list("parts", ["layers", "steps"], "What to measure: layers, steps.")
_R50 = flags.DEFINE_bool("r50", False, "Also BiT-R50x1's SimCLR step at 128 px (slow).")
_ONLY = flags.DEFINE_list("setups", [], "Step set-ups to run (default: all but r50 unless --r50).")
_CHILD = flags.DEFINE_integer("child_threads", 0, "(internal) run in this process.")
_CHILD_STEP = flags.DEFINE_string("child_step", "", "(internal) setup,variant of one step child.")
_STEPS = flags.DEFINE_integer("steps", 6, "Timed training steps per step process (after 2).")

# name: (encoder, kind, image size, batch, threads)
_SETUPS = {
  "pretrain": ("bit-tiny", "simclr", 64, 64, 2),
  "finetune": ("bit-tiny", "supervised", 64, 16, 1),
  "r50": ("bit-r50x1", "simclr", 128, 16, 2),
}

# name: (input side, input channels, kernel, output channels, stride, batch)
_LAYERS = {
  "tiny64 block4 3x3/2, 2x2 out": (4, 512, 3, 512, 2, 16),
  "tiny64 block4 1x1/2 proj, 2x2 out": (4, 1024, 1, 2048, 2, 16),
  "tiny64 block3 3x3/2, 4x4 out": (8, 256, 3, 256, 2, 16),
  "tiny64 block4 3x3/2 (SimCLR batch)": (4, 512, 3, 512, 2, 128),
  "tiny64 block3 3x3/2 (SimCLR batch)": (8, 256, 3, 256, 2, 128),
  "r50 128px block4 3x3/1, 4x4 out": (4, 512, 3, 512, 1, 32),
  "r50 128px block4 3x3/2, 4x4 out": (8, 512, 3, 512, 2, 32),
}


def _thresholds(on: bool) -> None:
  from remedis_tf.models import weight_standardization as ws

  ws.PATCHES_MAX_POSITIONS = 16 if on else 0
  ws.SLICE_MAX_POSITIONS = 4 if on else 0


def _alternate(
  fns: dict[str, Callable[[], Any]], rounds: int, calls: int
) -> dict[str, list[float]]:
  """Seconds per call of each function, `rounds` alternating timed rounds of `calls` calls."""
  times: dict[str, list[float]] = {name: [] for name in fns}
  for r in range(rounds + 1):
    for name, fn in fns.items():
      start = time.perf_counter()
      for _ in range(calls):
        out = fn()
      _ = [t.numpy() for t in (out if isinstance(out, (list, tuple)) else [out])]
      if r:  # the first round is a warm-up
        times[name].append((time.perf_counter() - start) / calls)
  return times


def _row(label: str, times: dict[str, list[float]]) -> str:
  conv, patches = times["conv"], times["patches"]
  ratios = [c / p for c, p in zip(conv, patches, strict=True)]
  return (
    f"{label:<40} {statistics.median(conv) * 1e3:9.1f} {statistics.median(patches) * 1e3:9.1f}"
    f" {statistics.median(ratios):7.2f}x  {min(ratios):.2f}-{max(ratios):.2f}"
  )


def _layer_rows(rounds: int) -> list[str]:
  import numpy as np
  import tensorflow as tf

  from remedis_tf.models.weight_standardization import StandardizedConv2D

  rows = []
  rng = np.random.default_rng(0)
  for label, (side, cin, k, cout, stride, batch) in _LAYERS.items():
    layer = StandardizedConv2D(cout, k, strides=stride, pad=k > 1)
    x = tf.Variable(rng.standard_normal((batch, side, side, cin)).astype(np.float32))
    layer.build(x.shape)
    fns = {}
    for name, on in (("conv", False), ("patches", True)):
      _thresholds(on)

      @tf.function(autograph=False)
      def step(layer=layer, x=x) -> list[tf.Tensor]:
        with tf.GradientTape() as tape:
          loss = tf.reduce_sum(tf.square(layer(x, training=True)))
        return tape.gradient(loss, [x, layer.kernel])

      step.get_concrete_function()  # traced now, with this variant's thresholds
      fns[name] = step
    _thresholds(True)
    rows.append(_row(label, _alternate(fns, rounds, calls=5)))
  return rows


def _step_child(setup: str, variant: str) -> None:
  """Times one training step set-up with one variant; prints the median seconds per step.

  The step is `bit_benchmark.py`'s (SimCLR with LARS, or supervised with SGD), here
  with the demo's 2-class head.
  """
  import bit_benchmark
  import tensorflow as tf

  encoder_name, kind, size, batch, threads = _SETUPS[setup]
  tf.config.threading.set_intra_op_parallelism_threads(threads)
  tf.config.threading.set_inter_op_parallelism_threads(threads)
  _thresholds(variant == "patches")
  train_step, inputs, _ = bit_benchmark._make_step(encoder_name, kind, size, batch, num_classes=2)
  for _ in range(2):
    train_step(*inputs).numpy()
  times = []
  for _ in range(_STEPS.value):
    start = time.perf_counter()
    train_step(*inputs).numpy()
    times.append(time.perf_counter() - start)
  print(f"RESULT {statistics.median(times)}", flush=True)


def _step_rows(rounds: int, r50: bool) -> None:
  chosen = _ONLY.value or [s for s in _SETUPS if r50 or s != "r50"]
  for setup in chosen:
    encoder_name, kind, size, batch, threads = _SETUPS[setup]
    times: dict[str, list[float]] = {"conv": [], "patches": []}
    for _ in range(rounds):
      for variant in times:
        out = subprocess.run(
          [sys.executable, __file__, f"--child_step={setup},{variant}", f"--steps={_STEPS.value}"],
          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
          check=True,
          capture_output=True,
          text=True,
        ).stdout
        times[variant].append(float(out.split("RESULT ")[-1]))
    label = f"{setup}: {encoder_name} {kind} {size} px, b{batch}, {threads} thr"
    print(_row(label, times), flush=True)


def _child(threads: int) -> None:
  import tensorflow as tf

  tf.config.threading.set_intra_op_parallelism_threads(threads)
  tf.config.threading.set_inter_op_parallelism_threads(threads)
  for row in _layer_rows(_ROUNDS.value):
    print(row, flush=True)


def main(argv: list[str]) -> None:
  del argv
  if _CHILD_STEP.value:
    _step_child(*_CHILD_STEP.value.split(","))
    return
  if _CHILD.value:
    _child(_CHILD.value)
    return
  import platform

  avx512 = "avx512f" in open("/proc/cpuinfo").read() if os.path.exists("/proc/cpuinfo") else None
  print(
    f"CPU: {platform.processor() or platform.machine()}, AVX-512: {avx512}; "
    f"TF_ENABLE_ONEDNN_OPTS={os.environ.get('TF_ENABLE_ONEDNN_OPTS')}"
  )
  header = f"{'':<40} {'conv':>9} {'patches':>9} {'ratio':>8}  range"
  if "layers" in _PARTS.value:
    for threads in _THREADS.value:
      print(f"\nOne layer, {threads} TensorFlow thread(s); ms per call, median of {_ROUNDS.value}")
      print(header, flush=True)
      # A fresh process per thread count: TensorFlow fixes its thread pools once.
      subprocess.run(
        [sys.executable, __file__, f"--child_threads={threads}", f"--rounds={_ROUNDS.value}"],
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
        check=True,
      )
  if "steps" in _PARTS.value:
    print(
      f"\nTraining steps, one process per variant and round; ms per step, {_ROUNDS.value} rounds"
    )
    print(header, flush=True)
    _step_rows(_ROUNDS.value, _R50.value)


if __name__ == "__main__":
  app.run(main)
