"""Optimizers and learning-rate schedules: LARS and warmup + cosine decay."""

from remedis_tf.optim.lars import LARS
from remedis_tf.optim.schedules import SCALINGS, WarmupCosine, scaled_learning_rate

__all__ = [
  "LARS",
  "SCALINGS",
  "WarmupCosine",
  "scaled_learning_rate",
]
