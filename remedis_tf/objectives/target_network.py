"""Momentum (target) copies of networks and their exponential moving average."""

from __future__ import annotations

from collections.abc import Callable

import keras
import tensorflow as tf

from remedis_tf.objectives.base import assign_in_replica_context


def make_target(
  online: keras.Model, factory: Callable[[], keras.Model] | None = None
) -> keras.Model:
  """A copy of `online` with the same weights, for a momentum/target network.

  Call inside the strategy scope. The copy is left `trainable=True` so that its
  BatchNorm layers (if any) use batch statistics in training mode like the
  online network; it must simply not be handed to the optimizer.

  Args:
    online: a built keras.Model.
    factory: zero-argument callable returning a fresh, built model of the same
      architecture; default `keras.models.clone_model(online)`.

  Returns:
    The target model, weights equal to `online`'s.
  """
  target = factory() if factory is not None else keras.models.clone_model(online)
  if len(target.weights) != len(online.weights):
    raise ValueError("Target network does not have the same variables as the online network.")
  target.set_weights(online.get_weights())
  return target


def ema_pairs(
  target: keras.Model, online: keras.Model
) -> list[tuple[keras.Variable, keras.Variable]]:
  """(target variable, online variable) pairs of the online trainable weights.

  Non-trainable state (e.g. BatchNorm moving statistics) is not averaged: the
  target keeps its own, as in MoCo and BYOL.
  """
  return [(t, o) for t, o in zip(target.weights, online.weights, strict=True) if o.trainable]


def ema_update(
  pairs: list[tuple[keras.Variable, keras.Variable]], momentum: tf.Tensor | float
) -> None:
  """target <- momentum * target + (1 - momentum) * online, from a replica context.

  Args:
    pairs: from `ema_pairs`.
    momentum: scalar in [0, 1].
  """
  updates = []
  for t, o in pairs:
    m = tf.cast(momentum, t.dtype)
    updates.append((t, m * tf.convert_to_tensor(t) + (1.0 - m) * tf.convert_to_tensor(o)))
  assign_in_replica_context(updates)
