"""Training-step throughput and peak memory: BiT R50x1 vs keras ResNet50V2 (CPU, float32).

Usage:
  .venv/bin/python benchmarks/bit_benchmark.py [--sizes 128 224] [--batch 16] [--steps 5]

Each (model, size) pair runs in its own subprocess so that peak resident memory
(`ru_maxrss`) is not polluted by the other model. A training step is: forward
pass, softmax cross-entropy on a 1000-class head, gradients, SGD-momentum
update, inside one `tf.function`. FLOPs are counted from the traced training
graph (Conv2D, its two backprop ops and MatMul); GFLOP/s is compared with the
machine's float32 matmul rate measured in the parent process.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

_MODELS = ("bit_r50x1", "keras_resnet50v2")


def _max_rss_mib() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB.


def _graph_flops(graph) -> float:
  """FLOPs of the convolutions and matmuls in a traced graph."""
  import numpy as np

  def prod(shape) -> float:
    return float(np.prod([d for d in shape.as_list()]))

  total = 0.0
  for op in graph.get_operations():
    if op.type == "Conv2D":  # inputs: x, kernel
      kh, kw, cin, _ = op.inputs[1].shape.as_list()
      total += 2.0 * prod(op.outputs[0].shape) * kh * kw * cin
    elif op.type == "Conv2DBackpropInput":  # inputs: sizes, kernel, dy
      kh, kw, cin, _ = op.inputs[1].shape.as_list()
      total += 2.0 * prod(op.inputs[2].shape) * kh * kw * cin
    elif op.type == "Conv2DBackpropFilter":  # inputs: x, sizes, dy; output: kernel grad
      kh, kw, cin, _ = op.outputs[0].shape.as_list()
      total += 2.0 * prod(op.inputs[2].shape) * kh * kw * cin
    elif op.type in ("MatMul", "BatchMatMulV2"):
      a = op.inputs[0].shape.as_list()
      transpose_a = op.get_attr("transpose_a") if op.type == "MatMul" else op.get_attr("adj_x")
      k = a[-2] if transpose_a else a[-1]
      total += 2.0 * prod(op.outputs[0].shape) * k
  return total


def _build(name: str, size: int):
  import keras

  if name == "bit_r50x1":
    from remedis_tf.models import build_bit_encoder

    model = build_bit_encoder(50, 1, num_classes=1000)
    return model, lambda out: out["logits"]
  backbone = keras.applications.ResNet50V2(
    weights=None, include_top=False, pooling="avg", input_shape=(size, size, 3)
  )
  model = keras.Sequential([backbone, keras.layers.Dense(1000, name="head")])
  return model, lambda out: out


def _worker(name: str, size: int, batch: int, steps: int) -> dict:
  """Runs in a subprocess: times `steps` training steps after warm-up."""
  import keras
  import numpy as np
  import tensorflow as tf

  rss_base = _max_rss_mib()
  model, logits_of = _build(name, size)
  optimizer = keras.optimizers.SGD(learning_rate=1e-3, momentum=0.9)
  rng = np.random.default_rng(0)
  images = tf.constant(rng.uniform(size=(batch, size, size, 3)).astype(np.float32))
  labels = tf.constant(rng.integers(0, 1000, size=(batch,)))
  if name == "keras_resnet50v2":
    images = images * 2.0 - 1.0  # keras ResNetV2 expects preprocess_input's [-1, 1].

  @tf.function
  def train_step(x, y):
    with tf.GradientTape() as tape:
      logits = logits_of(model(x, training=True))
      loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(y, logits))
    grads = tape.gradient(loss, model.trainable_variables)
    optimizer.apply_gradients(zip(grads, model.trainable_variables, strict=True))
    return loss

  flops = _graph_flops(train_step.get_concrete_function(images, labels).graph)
  for _ in range(2):
    train_step(images, labels).numpy()
  start = time.perf_counter()
  for _ in range(steps):
    train_step(images, labels).numpy()
  seconds = (time.perf_counter() - start) / steps
  return {
    "model": name,
    "size": size,
    "params": model.count_params(),
    "images_per_s": batch / seconds,
    "step_s": seconds,
    "gflop_per_step": flops / 1e9,
    "gflop_per_s": flops / seconds / 1e9,
    "peak_rss_mib": _max_rss_mib(),
    "peak_rss_over_import_mib": _max_rss_mib() - rss_base,
  }


def _matmul_peak_gflops(n: int = 2048, reps: int = 10) -> float:
  import tensorflow as tf

  a = tf.random.normal((n, n))
  b = tf.random.normal((n, n))

  @tf.function
  def mm(a, b):
    return tf.matmul(a, b)

  mm(a, b).numpy()
  best = float("inf")
  for _ in range(reps):
    start = time.perf_counter()
    mm(a, b).numpy()
    best = min(best, time.perf_counter() - start)
  return 2.0 * n**3 / best / 1e9


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--sizes", type=int, nargs="+", default=[128, 224])
  parser.add_argument("--batch", type=int, default=16)
  parser.add_argument("--steps", type=int, default=5)
  parser.add_argument("--models", nargs="+", default=list(_MODELS), choices=_MODELS)
  parser.add_argument("--worker", nargs=2, metavar=("MODEL", "SIZE"), help=argparse.SUPPRESS)
  args = parser.parse_args()

  if args.worker:
    result = _worker(args.worker[0], int(args.worker[1]), args.batch, args.steps)
    print("RESULT " + json.dumps(result), flush=True)
    return

  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env = {**os.environ, "PYTHONPATH": root + os.pathsep + os.environ.get("PYTHONPATH", "")}
  peak = _matmul_peak_gflops()
  load = os.getloadavg()
  print(
    f"CPU cores: {os.cpu_count()}, load average {load[0]:.1f} (shared machine: figures are "
    f"under load); float32 matmul peak {peak:.1f} GFLOP/s; batch {args.batch}, "
    f"{args.steps} timed steps after 2 warm-up"
  )
  results = {}
  for size in args.sizes:
    for name in args.models:
      cmd = [sys.executable, os.path.abspath(__file__), "--worker", name, str(size),
             "--batch", str(args.batch), "--steps", str(args.steps)]  # fmt: skip
      proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
      lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
      if proc.returncode or not lines:
        raise RuntimeError(f"{name} @ {size}px failed:\n{proc.stderr[-3000:]}")
      results[(name, size)] = json.loads(lines[-1][len("RESULT ") :])

  header = (f"{'model':<18}{'px':>5}{'params':>12}{'img/s':>9}{'s/step':>8}{'GFLOP/step':>12}"
            f"{'GFLOP/s':>9}{'% peak':>8}{'peak RSS MiB':>14}{'(+over import)':>15}")  # fmt: skip
  print(header)
  for (name, size), r in results.items():
    print(f"{name:<18}{size:>5}{r['params']:>12,}{r['images_per_s']:>9.2f}{r['step_s']:>8.2f}"
          f"{r['gflop_per_step']:>12.1f}{r['gflop_per_s']:>9.1f}"
          f"{100 * r['gflop_per_s'] / peak:>7.0f}%{r['peak_rss_mib']:>14.0f}"
          f"{r['peak_rss_over_import_mib']:>15.0f}")  # fmt: skip
  for size in args.sizes:
    ours, ref = results.get(("bit_r50x1", size)), results.get(("keras_resnet50v2", size))
    if ours and ref:
      ratio = ours["images_per_s"] / ref["images_per_s"]
      mem = ours["peak_rss_mib"] / ref["peak_rss_mib"]
      verdict = "meets" if ratio >= 0.8 else "BELOW"
      print(
        f"{size}px: BiT-R50x1 / ResNet50V2 throughput ratio {ratio:.2f} ({verdict} the 0.8x "
        f"target); peak memory ratio {mem:.2f}"
      )


if __name__ == "__main__":
  main()
