"""Optimizers and learning-rate schedules: LARS and warmup + cosine decay."""

from remedis_tf.optim.lars import LARS, NORMALIZATION_TAG, norm_and_bias_variables
from remedis_tf.optim.schedules import WarmupCosine, scaled_learning_rate

__all__ = [
  "LARS",
  "NORMALIZATION_TAG",
  "WarmupCosine",
  "norm_and_bias_variables",
  "scaled_learning_rate",
]
