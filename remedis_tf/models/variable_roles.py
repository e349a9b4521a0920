"""Roles of model variables for optimizers: 'norm', 'bias' or 'kernel'.

Optimizers such as LARS, and weight decay in general, leave normalization
parameters and biases alone. This module is the one place that decides which
variables those are, by the type of the layer that owns them, never by a name
substring:

* 'norm'   - any variable of a normalization layer (an instance of
             NORM_LAYER_TYPES: our GroupNorm, Keras GroupNormalization /
             BatchNormalization / LayerNormalization / UnitNormalization, or
             of `extra_norm_types` given by the caller);
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
  keras.layers.UnitNormalization,
)
NORM, BIAS, KERNEL = "norm", "bias", "kernel"


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


def _roles_by_id(
  models: tuple[keras.layers.Layer, ...], extra_norm_types: tuple[type, ...]
) -> dict[int, tuple[keras.Variable, str]]:
  """id(variable) -> (variable, role) over all `models`, in traversal order."""
  norm_types = NORM_LAYER_TYPES + tuple(extra_norm_types)
  seen: set[int] = set()
  layers = [layer for model in models for layer in _walk(model, seen)]
  roles: dict[int, tuple[keras.Variable, str]] = {}
  for layer in layers:
    if isinstance(layer, norm_types):
      roles.update((id(v), (v, NORM)) for v in layer.weights)
  for layer in layers:
    bias = getattr(layer, "bias", None)
    if isinstance(bias, keras.Variable):
      roles.setdefault(id(bias), (bias, BIAS))
  for model in models:
    for v in model.weights:
      roles.setdefault(id(v), (v, KERNEL))
  return roles


def variable_roles(
  model: keras.layers.Layer, extra_norm_types: tuple[type, ...] = ()
) -> dict[str, str]:
  """Classifies every variable of `model` by the type of the layer owning it.

  Args:
    model: any Keras model or layer (built).
    extra_norm_types: more layer classes to treat as normalization layers.

  Returns:
    Dict from `variable.path` to 'norm', 'bias' or 'kernel'. Covers all of
    `model.weights` (trainable and not).
  """
  return {v.path: role for v, role in _roles_by_id((model,), extra_norm_types).values()}


def norm_and_bias_variables(
  *models: keras.layers.Layer, extra_norm_types: tuple[type, ...] = ()
) -> list[keras.Variable]:
  """The variables of role 'norm' or 'bias' in `models`, each once, in traversal order.

  What LARS excludes from weight decay and trust-ratio scaling, and what
  weight decay leaves alone in fine-tuning.

  Args:
    *models: Keras models or layers (built); nested layers are visited.
    extra_norm_types: more layer classes to treat as normalization layers.
  """
  return [v for v, role in _roles_by_id(models, extra_norm_types).values() if role != KERNEL]


def kernel_variables(
  *models: keras.layers.Layer, extra_norm_types: tuple[type, ...] = ()
) -> list[keras.Variable]:
  """The variables of role 'kernel' in `models` (conv and dense kernels), each once."""
  return [v for v, role in _roles_by_id(models, extra_norm_types).values() if role == KERNEL]
