"""Training-step throughput: BiT-R50x1 vs keras ResNet50V2 (CPU, float32), oneDNN on and off.

Usage:
  .venv/bin/python benchmarks/bit_benchmark.py [--step simclr supervised] [--size 128]
      [--batch 16] [--onednn 1 0] [--rounds 5] [--steps 2] [--memory]

Both models get the same training step inside one `tf.function` (XLA off):

  * simclr: the SimCLR step of `remedis-pretrain`: two views of `batch` images
    go through the encoder as one batch of 2 x batch, then the SimCLRv2
    projection head (3 layers, BatchNorm) and NT-Xent (temperature 0.1);
    gradients and a LARS update (momentum 0.9, weight decay 1e-6, norms and
    biases excluded), as `remedis_tf.train.pretrain` builds it. Images/s
    counts source images (each gives two views).
  * supervised: `batch` images, a 1000-class dense head, softmax
    cross-entropy, SGD with momentum.

Keras' ResNet50V2 (weights=None, include_top=False) gets the same input
rescaling to [-1, 1] and global average pooling as ours. TensorFlow reads
TF_ENABLE_ONEDNN_OPTS when it is imported, so each oneDNN setting runs in its
own child process. That process builds both models, warms each up, then
alternates timed rounds (ours, keras, ours, keras, ...) so that both models see
the same machine load (after one untimed alternating round); the table gives
the median round (and the best) and the median of the per-round ratios. FLOPs are counted from the traced step graph
(Conv2D, its two backprop ops and MatMul); GFLOP/s is compared with the
float32 matmul rate measured in the same process. `--memory` adds one child per
(model, setting) that reports that model's peak resident memory alone.
"""

from __future__ import annotations

from remedis_tf import cpu_setup  # noqa: F401  (oneDNN default, before TensorFlow)

# isort: split
import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

OURS = "bit_r50x1"
KERAS = "keras_resnet50v2"
_MODELS = (OURS, KERAS)
_STEPS = ("simclr", "supervised")


def _max_rss_mib() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB.


def _graph_flops(graph: Any) -> float:
  """FLOPs of the convolutions and matmuls in a traced graph."""
  import numpy as np

  def prod(shape: Any) -> float:
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


def _encoder(name: str, size: int) -> Any:
  """(N, size, size, 3) in [0, 1] -> {'feature_map', 'embedding'}; both rescale to [-1, 1]."""
  import keras

  if name != KERAS:  # OURS, or any encoder name of remedis_tf.models (e.g. "bit-tiny")
    from remedis_tf.models import build_encoder_by_name

    return build_encoder_by_name("bit-r50x1" if name == OURS else name)
  images = keras.Input((size, size, 3), name="images")
  x = keras.layers.Rescaling(scale=2.0, offset=-1.0, name="rescale")(images)
  feature_map = keras.applications.ResNet50V2(
    weights=None, include_top=False, input_shape=(size, size, 3)
  )(x)
  embedding = keras.layers.GlobalAveragePooling2D(name="embedding")(feature_map)
  return keras.Model(images, {"feature_map": feature_map, "embedding": embedding}, name=name)


def _make_step(
  name: str, step: str, size: int, batch: int, num_classes: int = 1000
) -> tuple[Any, tuple[Any, ...], int]:
  """Returns (step function, its inputs, parameter count) for one model.

  `num_classes` is the supervised head's size (benchmarks/conv_benchmark.py uses the
  demo's 2).
  """
  import keras
  import numpy as np
  import tensorflow as tf

  from remedis_tf import models, objectives, optim

  keras.utils.set_random_seed(0)
  encoder = _encoder(name, size)
  rng = np.random.default_rng(0)
  if step == "simclr":
    objective = objectives.get("simclr")
    objective.build(encoder, embedding_dim=encoder.output["embedding"].shape[-1])
    networks = [encoder, *objective.trainable_networks]
    optimizer = optim.LARS(
      0.1,
      momentum=0.9,
      weight_decay=1e-6,
      exclude_from_weight_decay=models.norm_and_bias_variables(*networks),
    )
    views = [rng.uniform(size=(batch, size, size, 3)).astype(np.float32) for _ in range(2)]
    inputs = tuple(tf.constant(v) for v in views)

    def loss_fn(view1: tf.Tensor, view2: tf.Tensor) -> tf.Tensor:
      return objective.compute_loss(encoder, view1, view2, training=True).loss

  else:
    head = keras.Sequential([keras.Input((2048,)), keras.layers.Dense(num_classes, name="head")])
    networks = [encoder, head]
    optimizer = keras.optimizers.SGD(learning_rate=1e-3, momentum=0.9)
    images = rng.uniform(size=(batch, size, size, 3)).astype(np.float32)
    inputs = (tf.constant(images), tf.constant(rng.integers(0, num_classes, size=(batch,))))

    def loss_fn(x: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
      logits = head(encoder(x, training=True)["embedding"], training=True)
      return tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(y, logits))

  variables = [v for net in networks for v in net.trainable_variables]
  optimizer.build(variables)

  @tf.function
  def train_step(a: tf.Tensor, b: tf.Tensor) -> tf.Tensor:
    with tf.GradientTape() as tape:
      loss = loss_fn(a, b)
    grads = tape.gradient(loss, variables)
    optimizer.apply_gradients(zip(grads, variables, strict=True))
    return loss

  params = sum(net.count_params() for net in networks)
  return train_step, inputs, params


def _matmul_peak_gflops(n: int = 2048, reps: int = 10) -> float:
  import tensorflow as tf

  a = tf.random.normal((n, n))
  b = tf.random.normal((n, n))

  @tf.function
  def mm(a: tf.Tensor, b: tf.Tensor) -> tf.Tensor:
    return tf.matmul(a, b)

  mm(a, b).numpy()
  best = float("inf")
  for _ in range(reps):
    start = time.perf_counter()
    mm(a, b).numpy()
    best = min(best, time.perf_counter() - start)
  return 2.0 * n**3 / best / 1e9


def _worker(names: list[str], step: str, size: int, batch: int, rounds: int, steps: int) -> dict:
  """Runs in a child process: builds every model, then alternates timed rounds."""
  import tensorflow as tf  # noqa: F401  (the memory baseline includes TensorFlow and Keras)

  rss_base = _max_rss_mib()
  built = {}
  for name in names:
    fn, inputs, params = _make_step(name, step, size, batch)
    flops = _graph_flops(fn.get_concrete_function(*inputs).graph)
    for _ in range(2):  # Warm-up: tracing, oneDNN primitive caches, optimizer slots.
      fn(*inputs).numpy()
    built[name] = (fn, inputs, params, flops)
  for name in names:  # One untimed alternating round: the first after a switch runs slow.
    built[name][0](*built[name][1]).numpy()
  times: dict[str, list[float]] = {name: [] for name in names}
  for _ in range(rounds):
    for name in names:
      fn, inputs = built[name][:2]
      start = time.perf_counter()
      for _ in range(steps):
        fn(*inputs).numpy()
      times[name].append((time.perf_counter() - start) / steps)
  return {
    "onednn": os.environ.get(cpu_setup.ONEDNN_ENV, ""),
    "matmul_gflops": _matmul_peak_gflops(),
    "peak_rss_mib": _max_rss_mib(),
    "peak_rss_over_import_mib": _max_rss_mib() - rss_base,  # Over TensorFlow's import.
    "models": {
      name: {
        "params": built[name][2],
        "gflop_per_step": built[name][3] / 1e9,
        "step_s": times[name],
      }
      for name in names
    },
  }


def _spawn(names: list[str], onednn: str, args: argparse.Namespace) -> dict:
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env = {
    **os.environ,
    cpu_setup.ONEDNN_ENV: onednn,
    "PYTHONPATH": root + os.pathsep + os.environ.get("PYTHONPATH", ""),
  }
  cmd = [sys.executable, os.path.abspath(__file__), "--worker", *names, "--step", args.step[0],
         "--size", str(args.size), "--batch", str(args.batch), "--rounds", str(args.rounds),
         "--steps", str(args.steps)]  # fmt: skip
  proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
  lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
  if proc.returncode or not lines:
    raise RuntimeError(f"{names} with oneDNN={onednn} failed:\n{proc.stderr[-3000:]}")
  return json.loads(lines[-1][len("RESULT ") :])


def _report(step: str, args: argparse.Namespace) -> None:
  """Runs one step kind on every oneDNN setting and prints the table and ratios."""
  unit = "images/s (source images; 2 views each)" if step == "simclr" else "images/s"
  print(f"\n{step} step, {args.size} px, batch {args.batch}, float32, XLA off; {unit}")
  print(f"{'oneDNN':<7}{'model':<18}{'params':>12}{'img/s med':>10}{'(best)':>8}{'s/step':>8}"
        f"{'GFLOP/step':>11}{'GFLOP/s':>9}{'% matmul':>9}")  # fmt: skip
  ratios = {}
  for onednn in args.onednn:
    sub = argparse.Namespace(**{**vars(args), "step": [step]})
    r = _spawn(list(_MODELS), onednn, sub)
    for name, m in r["models"].items():
      med = statistics.median(m["step_s"])
      gflops = m["gflop_per_step"] / med
      print(f"{onednn:<7}{name:<18}{m['params']:>12,}{args.batch / med:>10.2f}"
            f"{args.batch / min(m['step_s']):>8.2f}{med:>8.2f}{m['gflop_per_step']:>11.1f}"
            f"{gflops:>9.1f}{100 * gflops / r['matmul_gflops']:>8.0f}%")  # fmt: skip
    per_round = [
      k / o for o, k in zip(r["models"][OURS]["step_s"], r["models"][KERAS]["step_s"], strict=True)
    ]
    ratios[onednn] = (statistics.median(per_round), min(per_round), max(per_round))
  for onednn, (med, lo, hi) in ratios.items():
    verdict = "meets" if med >= 1.0 else "BELOW"
    print(
      f"oneDNN={onednn}: BiT-R50x1 / ResNet50V2 images/s {med:.2f}x (median of {args.rounds} "
      f"alternating rounds; range {lo:.2f}-{hi:.2f}; {verdict} the 1.0x target)"
    )
  if args.memory:
    for onednn in args.onednn:
      for name in _MODELS:
        sub = argparse.Namespace(**{**vars(args), "step": [step], "rounds": 1, "steps": 1})
        r = _spawn([name], onednn, sub)
        print(
          f"oneDNN={onednn} {name}: peak RSS {r['peak_rss_mib']:.0f} MiB "
          f"({r['peak_rss_over_import_mib']:.0f} over TensorFlow's import)"
        )


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--step", nargs="+", default=["simclr"], choices=_STEPS)
  parser.add_argument("--size", type=int, default=128)
  parser.add_argument("--batch", type=int, default=16)
  parser.add_argument("--onednn", nargs="+", default=["1", "0"], choices=["1", "0"])
  parser.add_argument("--rounds", type=int, default=5, help="Alternating timed rounds.")
  parser.add_argument("--steps", type=int, default=2, help="Steps per timed round.")
  parser.add_argument("--memory", action="store_true", help="Also peak memory, one model alone.")
  parser.add_argument("--worker", nargs="+", choices=_MODELS, help=argparse.SUPPRESS)
  args = parser.parse_args()

  if args.worker:
    result = _worker(args.worker, args.step[0], args.size, args.batch, args.rounds, args.steps)
    print("RESULT " + json.dumps(result), flush=True)
    return

  info = cpu_setup.cpu_info()
  load = os.getloadavg()
  print(
    f"CPU: {info['model']}, {info['cores']} cores, class {cpu_setup.cpu_class(info)} (both "
    f"oneDNN settings measured on this CPU); load average {load[0]:.1f} {load[1]:.1f} "
    f"{load[2]:.1f} at start (a shared machine lowers both models alike: compare the ratios); "
    f"{args.rounds} rounds of {args.steps} steps per model after 2 warm-up steps"
  )
  for step in args.step:
    _report(step, args)
  load = os.getloadavg()
  print(f"load average at the end {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}")


if __name__ == "__main__":
  main()
