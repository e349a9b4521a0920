"""Roles of model variables for optimizers: 'norm', 'bias' or 'kernel'.

Optimizers such as LARS exclude normalization parameters and biases from weight
decay and trust-ratio scaling. The role is decided by the type of the layer
that owns the variable, never by a name substring:

* 'norm'   - any variable of a normalization layer (GroupNorm, Keras
             GroupNormalization / BatchNormalization / LayerNormalization);
* 'bias'   - the `bias` variable of any other layer (e.g. Dense, Conv);
* 'kernel' - everything else (conv / dense kernels).

Layers are found by walking `Model.layers` and the Layer-valued attributes of
each layer (including lists and dicts of layers), so custom container layers
are covered without private Keras APIs.
"""

from __future__ import annotations

from collections.abc import Iterator

import keras

from remedis_tf.models.group_norm import GroupNorm

NORM_LAYER_TYPES: tuple[type, ...] = (
  GroupNorm,
  keras.layers.GroupNormalization,
  keras.layers.BatchNormalization,
  keras.layers.LayerNormalization,
)


def _children(layer: keras.layers.Layer) -> Iterator[keras.layers.Layer]:
  if isinstance(layer, keras.Model | keras.Sequential):
    yield from layer.layers
  for value in vars(layer).values():
    if isinstance(value, keras.layers.Layer):
      yield value
    elif isinstance(value, list | tuple):
      yield from (v for v in value if isinstance(v, keras.layers.Layer))
    elif isinstance(value, dict):
      yield from (v for v in value.values() if isinstance(v, keras.layers.Layer))


def _walk(layer: keras.layers.Layer, seen: set[int]) -> Iterator[keras.layers.Layer]:
  if id(layer) in seen:
    return
  seen.add(id(layer))
  yield layer
  for child in _children(layer):
    yield from _walk(child, seen)


def variable_roles(model: keras.layers.Layer) -> dict[str, str]:
  """Classifies every variable of `model` by the type of the layer owning it.

  Args:
    model: any Keras model or layer (built).

  Returns:
    Dict from `variable.path` to 'norm', 'bias' or 'kernel'. Covers all of
    `model.weights` (trainable and not).
  """
  roles: dict[str, str] = {}
  layers = list(_walk(model, set()))
  for layer in layers:
    if isinstance(layer, NORM_LAYER_TYPES):
      roles.update((variable.path, "norm") for variable in layer.weights)
  for layer in layers:
    bias = getattr(layer, "bias", None)
    if isinstance(bias, keras.Variable):
      roles.setdefault(bias.path, "bias")
  for variable in model.weights:
    roles.setdefault(variable.path, "kernel")
  return roles


def is_norm_or_bias(variable: keras.Variable, model: keras.layers.Layer) -> bool:
  """True if `variable` belongs to a normalization layer or is a layer's bias.

  Walks the model on every call; for many variables call `variable_roles`
  once and look paths up instead.

  Args:
    variable: a variable of `model`.
    model: the model (or layer) owning it.

  Returns:
    Whether the variable should be excluded from weight decay.
  """
  return variable_roles(model).get(variable.path) in ("norm", "bias")
