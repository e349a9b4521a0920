"""A SavedModel in the PhysioNet calling convention as a Keras 3 encoder.

The convention: `obj = tf.saved_model.load(path)`; `obj(images)` or
`obj(images, training=...)` maps float32 images (N, H, W, 3) in [0, 1] to a
feature map (N, H/32, W/32, C). Our exports (hub_export.export) follow it, and
so do the released "Medical AI Research Foundations" models; a SavedModel with
only a `serving_default` signature returning 'feature_map' is accepted too.
`load_encoder` returns a model with the same output dict as the BiT encoders
(`remedis_tf.models.outputs`), so every trainer can start from one.

Why not `keras.layers.TFSMLayer`: Keras 3.15 names its weights after the
restored variables ("conv/kernel:0"); optimizers with slot variables
(momentum, Adam, LARS) then fail with "... is not a valid scope name".
`SavedModelEncoder` wraps each restored tf.Variable in a keras.Variable with a
clean, unique name (sharing the same storage, so updates reach the restored
functions) and calls the restored functions itself.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import keras
import tensorflow as tf

from remedis_tf.models.outputs import EMBEDDING, FEATURE_MAP

SERVING_SIGNATURE = "serving_default"


def _clean_name(name: str, taken: set[str]) -> str:
  """'block1/unit01/a/kernel:0' -> 'block1_unit01_a_kernel', unique in `taken`."""
  base = re.sub(r"[^A-Za-z0-9_.-]", "_", name.split(":")[0]) or "variable"
  candidate, i = base, 1
  while candidate in taken:
    candidate, i = f"{base}_{i}", i + 1
  taken.add(candidate)
  return candidate


def _traced_training_values(fn: Any) -> set[bool]:
  """Python-bool values of `training` among a restored function's traces.

  `training` is found as keyword argument or as the second positional one.
  """
  values = set()
  for concrete in getattr(fn, "concrete_functions", []):
    args, kwargs = concrete.structured_input_signature
    value = kwargs.get("training", args[1] if len(args) > 1 else None)
    if isinstance(value, bool):
      values.add(value)
  return values


def _pick_feature_map(outputs: Any) -> tf.Tensor:
  """Returns the feature map from a restored call's outputs (tensor or dict)."""
  if isinstance(outputs, dict):
    if FEATURE_MAP in outputs:
      return outputs[FEATURE_MAP]
    rank4 = [v for v in outputs.values() if v.shape.rank == 4]
    if len(rank4) != 1:
      raise ValueError(f"Cannot tell the feature map among outputs {sorted(outputs)}.")
    return rank4[0]
  return outputs


@dataclasses.dataclass
class _Restored:
  """Holds the restored object outside Keras/TF tracking.

  Tracking it would checkpoint every variable twice: once through it and once
  through the keras.Variables that wrap the same storage.
  """

  obj: Any
  call_fn: Any
  training_values: set[bool]


class SavedModelEncoder(keras.layers.Layer):
  """Keras 3 layer running a SavedModel encoder; fine-tunable with any optimizer.

  Call: images float32 (N, H, W, 3) in [0, 1] -> feature map
  (N, H/32, W/32, C). With `training=True` and a trainable layer, the restored
  training-mode trace is used when the SavedModel has one.
  """

  def __init__(self, path: str, trainable: bool = True, **kwargs: Any):
    """Loads the SavedModel.

    Args:
      path: SavedModel directory.
      trainable: whether the restored trainable variables are trained.
      **kwargs: keras.layers.Layer arguments (name, dtype).

    Raises:
      ValueError: the SavedModel is neither callable nor has a
        'serving_default' signature.
    """
    super().__init__(trainable=trainable, **kwargs)
    self.saved_model_path = path
    obj = tf.saved_model.load(path)
    call_fn = obj.__call__ if callable(obj) else None
    if getattr(call_fn, "concrete_functions", None):
      fns = list(call_fn.concrete_functions)
      self._restored = _Restored(obj, call_fn, _traced_training_values(call_fn))
    elif SERVING_SIGNATURE in getattr(obj, "signatures", {}):
      call_fn = obj.signatures[SERVING_SIGNATURE]
      fns = [call_fn]
      self._restored = _Restored(obj, call_fn, set())
    else:
      raise ValueError(f"{path}: not callable and no '{SERVING_SIGNATURE}' signature.")

    # Variables: the reusable SavedModel attributes when present, else those
    # captured by the call functions.
    if hasattr(obj, "trainable_variables"):
      restored_trainable = list(obj.trainable_variables)
      everything = list(getattr(obj, "variables", restored_trainable))
    else:
      restored_trainable, everything = [], []
      for fn in fns:
        restored_trainable += [v for v in fn.trainable_variables if v.trainable]
        everything += list(fn.variables)
    trainable_ids = {id(v) for v in restored_trainable}
    unique, seen = [], set()
    for v in restored_trainable + everything:
      if id(v) not in seen:
        seen.add(id(v))
        unique.append(v)
    taken: set[str] = set()
    # Assigning lists of keras.Variables makes Keras track them as weights.
    wrapped = [
      keras.Variable(
        initializer=v,
        trainable=id(v) in trainable_ids,
        dtype=v.dtype,
        name=_clean_name(v.name, taken),
      )
      for v in unique
    ]
    self.encoder_trainable_weights = [w for w in wrapped if w.trainable]
    self.encoder_non_trainable_weights = [w for w in wrapped if not w.trainable]
    # Keras lists are not TF-checkpoint dependencies; this container makes
    # tf.train.Checkpoint(model=...) save and restore the weights by name.
    self.encoder_checkpoint = tf.train.Checkpoint(**{f"v_{w.name}": w for w in wrapped})
    # Tracked as trainable above (so `layer.trainable = True` can unfreeze them
    # later); now apply the requested state. Set directly: the Layer setter
    # does not reach the weights while __init__ runs.
    for w in self.encoder_trainable_weights:
      w.trainable = trainable
    self.trainable = trainable
    self.built = True

  def call(self, images: tf.Tensor, training: bool | None = None) -> tf.Tensor:
    training = bool(training) and self.trainable
    restored = self._restored
    if not restored.training_values:
      return _pick_feature_map(restored.call_fn(images))
    if training not in restored.training_values:
      training = next(iter(restored.training_values))
    return _pick_feature_map(restored.call_fn(images, training=training))

  def get_config(self) -> dict[str, Any]:
    return {**super().get_config(), "path": self.saved_model_path}


def load_encoder(
  path: str,
  trainable: bool = True,
  image_size: int | None = None,
  name: str = "saved_model_encoder",
) -> keras.Model:
  """Builds a Keras 3 encoder with the `build_bit_encoder` output contract.

  Args:
    path: SavedModel directory in the PhysioNet calling convention.
    trainable: fine-tune the restored variables.
    image_size: fixed square input side; None accepts any H and W.
    name: model name.

  Returns:
    keras.Model: images (N, H, W, 3) float32 in [0, 1] ->
    {'feature_map': (N, H/32, W/32, C), 'embedding': (N, C)} (embedding is the
    global average of the feature map).
  """
  images = keras.Input(shape=(image_size, image_size, 3), dtype="float32", name="images")
  feature_map = SavedModelEncoder(path, trainable=trainable, name="encoder")(images)
  embedding = keras.layers.GlobalAveragePooling2D(name=EMBEDDING)(feature_map)
  return keras.Model(images, {FEATURE_MAP: feature_map, EMBEDDING: embedding}, name=name)
