"""Learning-rate schedule: linear warmup, then cosine decay to zero (SimCLR)."""

from __future__ import annotations

import math
from typing import Any

import keras
from keras import ops

SCALINGS = ("linear", "sqrt", "none")


def scaled_learning_rate(base_learning_rate: float, batch_size: int, scaling: str) -> float:
  """Peak learning rate for a global batch size.

  Args:
    base_learning_rate: lr from the config.
    batch_size: global batch size B.
    scaling: 'linear' -> lr * B / 256; 'sqrt' -> lr * sqrt(B); 'none' -> lr.

  Returns:
    The peak learning rate.
  """
  if scaling == "linear":
    return base_learning_rate * batch_size / 256.0
  if scaling == "sqrt":
    return base_learning_rate * math.sqrt(batch_size)
  if scaling == "none":
    return float(base_learning_rate)
  raise ValueError(f"scaling must be one of {SCALINGS}, got {scaling!r}.")


@keras.saving.register_keras_serializable(package="remedis_tf")
class WarmupCosine(keras.optimizers.schedules.LearningRateSchedule):
  """lr(step) = peak * step / warmup for step < warmup, then
  peak * 0.5 * (1 + cos(pi * (step - warmup) / (total - warmup))), 0 after total.

  `peak = scaled_learning_rate(base_learning_rate, batch_size, scaling)`.
  """

  def __init__(
    self,
    base_learning_rate: float,
    batch_size: int,
    warmup_steps: int,
    total_steps: int,
    scaling: str = "linear",
  ) -> None:
    """Creates the schedule.

    Args:
      base_learning_rate: unscaled learning rate.
      batch_size: global batch size used for scaling.
      warmup_steps: steps of linear warmup from 0 (may be 0).
      total_steps: step at which the rate reaches 0; > warmup_steps.
      scaling: 'linear', 'sqrt' or 'none'.
    """
    if total_steps <= warmup_steps or warmup_steps < 0:
      raise ValueError(f"Need 0 <= warmup_steps < total_steps, got {warmup_steps}, {total_steps}.")
    self.base_learning_rate = float(base_learning_rate)
    self.batch_size = int(batch_size)
    self.warmup_steps = int(warmup_steps)
    self.total_steps = int(total_steps)
    self.scaling = scaling
    self.peak_learning_rate = scaled_learning_rate(base_learning_rate, batch_size, scaling)

  def __call__(self, step: Any) -> Any:
    step = ops.cast(step, "float32")
    peak = self.peak_learning_rate
    warmup = float(self.warmup_steps)
    if self.warmup_steps > 0:
      warm = peak * step / warmup
    else:
      warm = ops.zeros_like(step) + peak
    progress = ops.clip((step - warmup) / float(self.total_steps - self.warmup_steps), 0.0, 1.0)
    cosine = peak * 0.5 * (1.0 + ops.cos(math.pi * progress))
    return ops.where(step < warmup, warm, cosine)

  def get_config(self) -> dict[str, Any]:
    return {
      "base_learning_rate": self.base_learning_rate,
      "batch_size": self.batch_size,
      "warmup_steps": self.warmup_steps,
      "total_steps": self.total_steps,
      "scaling": self.scaling,
    }
