r"""Inference throughput: exported SavedModel and ONNX vs the in-memory Keras encoder.

  .venv/bin/python benchmarks/export_benchmark.py --encoder=bit-tiny \
      --image_size=224 --batch_size=8 --steps=10

All run the same batch, alternating, in the same process; the TensorFlow ones
are compiled tf.functions (Keras: `model(x, training=False)`; export:
`hub.load(path)(x)` and the `serving_default` signature), the ONNX one an
onnxruntime CPU session on the file hub_export.onnx_export converts from the
SavedModel (its outputs, like serving_default's, are the feature map and the
embedding). Prints images/s, the ratio exported / Keras (target >= 0.95) and
onnxruntime / SavedModel serving_default. --noonnx skips onnxruntime (no
`onnx` extra needed).
"""

from __future__ import annotations

import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import app, flags  # noqa: E402

from hub_export import export, onnx_export  # noqa: E402
from remedis_tf.models import build_encoder_by_name  # noqa: E402

_ENCODER = flags.DEFINE_string("encoder", "bit-tiny", "Encoder name (bit-tiny, bit-r50x1, ...).")
_IMAGE_SIZE = flags.DEFINE_integer("image_size", 224, "Image side.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 8, "Images per call.")
_STEPS = flags.DEFINE_integer("steps", 10, "Timed calls per contender per round.")
_ROUNDS = flags.DEFINE_integer("rounds", 3, "Alternating rounds; the best round counts.")
_ONNX = flags.DEFINE_bool("onnx", True, "Also time onnxruntime (CPU) on the ONNX conversion.")
SAVED_MODEL_SIGNATURE = "export serving_default"
ONNX_RUNTIME = "onnxruntime CPU"


def _time(fn, images: tf.Tensor, steps: int) -> float:
  """Images/s of `steps` calls (result fetched to host at the end)."""
  start = time.perf_counter()
  for _ in range(steps):
    out = fn(images)
  np.asarray(out)
  return steps * int(images.shape[0]) / (time.perf_counter() - start)


def main(argv: list[str]) -> None:
  del argv
  model = build_encoder_by_name(_ENCODER.value)
  images = tf.constant(
    np.random.default_rng(0).random((_BATCH_SIZE.value, _IMAGE_SIZE.value, _IMAGE_SIZE.value, 3)),
    tf.float32,
  )
  with tempfile.TemporaryDirectory() as tmp:
    path = export.export_encoder(model, os.path.join(tmp, "encoder"))
    loaded = tf.saved_model.load(path)
    serving = loaded.signatures["serving_default"]
    contenders = {
      "keras (in memory)": tf.function(lambda x: model(x, training=False)["feature_map"]),
      "export __call__": lambda x: loaded(x),
      SAVED_MODEL_SIGNATURE: lambda x: serving(images=x)["feature_map"],
    }
    if _ONNX.value:
      import onnxruntime

      onnx_path = onnx_export.export_onnx(path, os.path.join(tmp, "encoder.onnx"))
      session = onnxruntime.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
      host_images = images.numpy()
      # Same batch, handed over as NumPy once; the same work as serving_default:
      # every output (feature map and embedding).
      contenders[ONNX_RUNTIME] = lambda x: session.run(None, {"images": host_images})[0]
    for fn in contenders.values():  # Warm up (trace, allocate).
      np.asarray(fn(images))
    best = dict.fromkeys(contenders, 0.0)
    for _ in range(_ROUNDS.value):
      for name, fn in contenders.items():
        best[name] = max(best[name], _time(fn, images, _STEPS.value))
  device = "GPU" if tf.config.list_physical_devices("GPU") else "CPU"
  print(
    f"{_ENCODER.value} {_IMAGE_SIZE.value}px batch {_BATCH_SIZE.value} on {device} "
    f"(best of {_ROUNDS.value} x {_STEPS.value} calls)"
  )
  reference = best["keras (in memory)"]
  for name, rate in best.items():
    print(f"  {name:24s} {rate:9.1f} images/s   {rate / reference:5.3f}x keras")
  if ONNX_RUNTIME in best:
    ratio = best[ONNX_RUNTIME] / best[SAVED_MODEL_SIGNATURE]
    print(f"  onnxruntime / SavedModel serving_default: {ratio:5.3f}x")


if __name__ == "__main__":
  app.run(main)
