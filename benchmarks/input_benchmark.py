r"""Throughput of the two-view pretraining input pipeline vs a plain baseline
and vs what a BiT-R50x1 training step consumes.

Generates 512x512 16-bit grayscale radiograph-like PNG TFRecords (synthetic),
then for each image size prints:
  * pipeline: make_pretrain_dataset (parallel interleave/map, one decode for
    both views, autotuned prefetch), examples/s and views/s;
  * baseline: the same ops mapped per example, sequentially, decoding each view
    separately, no prefetch;
  * train step: forward + backward (+ SGD update) of BiT-R50x1 with a simple
    loss at batch 16 views, views/s;
and the ratio pipeline views/s : training views/s (target >= 2).

  .venv/bin/python benchmarks/input_benchmark.py --sizes=224,448
"""

from __future__ import annotations

from remedis_tf import cpu_setup  # noqa: F401  (oneDNN default, before TensorFlow)

# isort: split
import os
import tempfile
import time

import tensorflow as tf
from absl import app, flags

from remedis_tf.data import augment, get_preset, make_pretrain_dataset, seeds, synthetic
from tfrecords_tools import schema

_SIZES = flags.DEFINE_list("sizes", ["224", "448"], "Output image sizes.")
_NUM_IMAGES = flags.DEFINE_integer("num_images", 64, "Generated 512x512 images.")
_BATCH = flags.DEFINE_integer(
  "batch_size", 16, "Batch size (examples for input, views for the step)."
)
_BATCHES = flags.DEFINE_integer("batches", 8, "Timed input batches.")
_STEPS = flags.DEFINE_integer("steps", 3, "Timed training steps.")
_PRESET = flags.DEFINE_string("preset", "cxr", "Augmentation preset.")


def _baseline_dataset(files, batch_size, image_size, preset):
  """Same ops, mapped per example, sequentially, one decode per view."""
  config = get_preset(preset)

  def views(serialized):
    ex = schema.parse_example(serialized)
    key = seeds.example_key(ex[schema.IMAGE_SOURCE_ID], ex[schema.IMAGE_ENCODED])
    out = {}
    for v in (1, 2):
      image = schema.decode_image(ex[schema.IMAGE_ENCODED], channels=config.channels)
      image.set_shape([None, None, config.channels])
      out[f"view{v}"] = augment.augment_view(
        image, config, seeds.fold_in(seeds.make_seed(0), key, 0, v), image_size
      )
    return out

  ds = tf.data.TFRecordDataset(files).repeat().map(views).batch(batch_size)
  options = tf.data.Options()
  options.autotune.enabled = False
  options.experimental_optimization.apply_default_optimizations = False
  return ds.with_options(options)


def _examples_per_second(ds, batch_size, batches):
  it = iter(ds)
  for _ in range(2):  # warm-up: tracing, file open, autotune start
    next(it)
  start = time.perf_counter()
  for _ in range(batches):
    next(it)
  return batches * batch_size / (time.perf_counter() - start)


def _train_views_per_second(image_size, batch_size, steps):
  import keras

  from remedis_tf.models import build_bit_encoder

  model = build_bit_encoder(50, 1)
  optimizer = keras.optimizers.SGD(0.01)
  images = tf.random.uniform([batch_size, image_size, image_size, 3])

  @tf.function
  def step(x):
    with tf.GradientTape() as tape:
      loss = tf.reduce_mean(tf.square(model(x, training=True)["embedding"]))
    grads = tape.gradient(loss, model.trainable_variables)
    optimizer.apply_gradients(zip(grads, model.trainable_variables, strict=True))
    return loss

  step(images).numpy()  # trace + first step
  start = time.perf_counter()
  for _ in range(steps):
    step(images).numpy()
  return steps * batch_size / (time.perf_counter() - start)


def main(argv):
  del argv
  print(
    f"devices: {[d.name for d in tf.config.list_logical_devices()]}, "
    f"cpu cores visible: {os.cpu_count()}"
  )
  with tempfile.TemporaryDirectory() as folder:
    start = time.perf_counter()
    per_shard = max(1, _NUM_IMAGES.value // 4)
    files = synthetic.write_radiograph_shards(
      folder, num_shards=4, per_shard=per_shard, size=512, bit_depth=16
    )
    print(
      f"wrote {4 * per_shard} 512x512 16-bit PNG records in "
      f"{time.perf_counter() - start:.1f}s; preset={_PRESET.value}"
    )
    b = _BATCH.value
    for size in [int(s) for s in _SIZES.value]:
      ours = _examples_per_second(
        make_pretrain_dataset(
          files, batch_size=b, image_size=size, preset=_PRESET.value, seed=0, shuffle_buffer=64
        ),
        b,
        _BATCHES.value,
      )
      base = _examples_per_second(
        _baseline_dataset(files, b, size, _PRESET.value), b, _BATCHES.value
      )
      train = _train_views_per_second(size, b, _STEPS.value)
      print(
        f"{size}px  pipeline {ours:7.1f} examples/s ({2 * ours:7.1f} views/s) | "
        f"baseline {base:7.1f} examples/s ({2 * base:7.1f} views/s) | "
        f"BiT-R50x1 step @ batch {b}: {train:6.2f} views/s | "
        f"pipeline/step = {2 * ours / train:5.1f}x, pipeline/baseline = {ours / base:4.2f}x",
        flush=True,
      )


if __name__ == "__main__":
  app.run(main)
