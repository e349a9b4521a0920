"""Progress line (images/s, ETA) and TensorBoard summaries for training loops.

Summaries are written with the core `tf.summary.write` op and TensorBoard's
plugin metadata ('scalars', 'images'), so they work without the `tensorboard`
package installed (it is not a dependency) and TensorBoard reads them as usual.
"""

from __future__ import annotations

import time
from collections.abc import Mapping

import numpy as np
import tensorflow as tf
from absl import logging
from tensorflow.core.framework import summary_pb2


def format_duration(seconds: float) -> str:
  """Formats seconds as H:MM:SS ('?' for non-finite values)."""
  if not np.isfinite(seconds):
    return "?"
  seconds = int(round(max(seconds, 0.0)))
  return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


class Progress:
  """Measures throughput since the last report and logs a one-line status.

  The first interval after start (which includes tracing / compilation) is
  reported but excluded from `images_per_second_steady`.

  Args:
    total_steps: the step the run ends at.
    global_batch_size: images per step (all replicas).
    start_step: step the run (re)started from.
  """

  def __init__(self, total_steps: int, global_batch_size: int, start_step: int = 0) -> None:
    self.total_steps = total_steps
    self.global_batch_size = global_batch_size
    self._last_step = start_step
    self._last_time = time.perf_counter()
    self._first = True
    self._steady_steps = 0
    self._steady_seconds = 0.0
    self.last_images_per_second = float("nan")

  @property
  def images_per_second_steady(self) -> float:
    """Mean images/s over every interval but the first (NaN before that)."""
    if self._steady_seconds <= 0:
      return float("nan")
    return self._steady_steps * self.global_batch_size / self._steady_seconds

  def update(self, step: int, metrics: Mapping[str, float] | None = None, log: bool = True) -> str:
    """Records that `step` was reached; returns (and logs) the progress line.

    Args:
      step: the current global step.
      metrics: scalar values shown in the line.
      log: whether to log the line with absl.

    Returns:
      e.g. "step 120/1000 (12.0%) loss=4.1023 lr=0.3 | 85.3 img/s | ETA 0:02:51".
    """
    now = time.perf_counter()
    steps, seconds = step - self._last_step, now - self._last_time
    if steps > 0 and seconds > 0:
      self.last_images_per_second = steps * self.global_batch_size / seconds
      if not self._first:
        self._steady_steps += steps
        self._steady_seconds += seconds
      self._first = False
    self._last_step, self._last_time = step, now
    rate = self.images_per_second_steady
    if not np.isfinite(rate):
      rate = self.last_images_per_second
    eta = (self.total_steps - step) * self.global_batch_size / rate if rate > 0 else float("nan")
    values = " ".join(f"{k}={v:.5g}" for k, v in (metrics or {}).items())
    pct = 100.0 * step / max(self.total_steps, 1)
    line = (
      f"step {step}/{self.total_steps} ({pct:.1f}%) {values} | "
      f"{self.last_images_per_second:.1f} img/s | ETA {format_duration(eta)}"
    )
    if log:
      logging.info("%s", line)
    return line


def _metadata(plugin_name: str) -> summary_pb2.SummaryMetadata:
  """TensorBoard plugin metadata, so summaries need no `tensorboard` package."""
  return summary_pb2.SummaryMetadata(
    plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name=plugin_name)
  )


def summary_writer(directory: str | None) -> tf.summary.SummaryWriter:
  """A file writer for `directory`, or a no-op writer when it is None."""
  if directory is None:
    return tf.summary.create_noop_writer()
  return tf.summary.create_file_writer(directory)


def write_scalars(
  writer: tf.summary.SummaryWriter, step: int, scalars: Mapping[str, float], prefix: str = ""
) -> None:
  """Writes scalar summaries at `step` (eagerly)."""
  with writer.as_default(step=step):
    for name, value in scalars.items():
      tf.summary.write(
        prefix + name, tf.constant(float(value), tf.float32), metadata=_metadata("scalars")
      )


def write_images(
  writer: tf.summary.SummaryWriter,
  step: int,
  name: str,
  images: np.ndarray | tf.Tensor,
  max_outputs: int = 4,
) -> None:
  """Writes float images (N, H, W, C) in [0, 1] as an image summary."""
  images = tf.convert_to_tensor(images, tf.float32)[:max_outputs]
  pixels = tf.image.convert_image_dtype(tf.clip_by_value(images, 0.0, 1.0), tf.uint8)
  encoded = tf.map_fn(tf.io.encode_png, pixels, fn_output_signature=tf.string)
  shape = tf.shape(images)
  tensor = tf.concat([tf.strings.as_string([shape[2], shape[1]]), encoded], axis=0)
  with writer.as_default(step=step):
    tf.summary.write(name, tensor, metadata=_metadata("images"))
