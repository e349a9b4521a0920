"""Load a SavedModel in the PhysioNet calling convention for fine-tuning in Keras 3.

The encoder wrapper itself (`SavedModelEncoder`, `load_encoder`) lives with
the other encoders in `remedis_tf.models.saved_model_encoder`; it is
re-exported here for callers of `hub_export.load`.
"""

from __future__ import annotations

import keras

from remedis_tf.models.outputs import EMBEDDING, FEATURE_MAP, LOGITS
from remedis_tf.models.saved_model_encoder import (
  SERVING_SIGNATURE,
  SavedModelEncoder,
  load_encoder,
)

__all__ = [
  "EMBEDDING",
  "FEATURE_MAP",
  "LOGITS",
  "SERVING_SIGNATURE",
  "SavedModelEncoder",
  "load_encoder",
  "load_for_finetuning",
]


def load_for_finetuning(
  path: str,
  num_classes: int | None = None,
  trainable: bool = True,
  image_size: int | None = None,
  head_initializer: str = "zeros",
  name: str = "finetune_model",
) -> keras.Model:
  """Builds a Keras 3 fine-tuning model around a SavedModel encoder.

  Works with our exports and with any SavedModel in the PhysioNet calling
  convention; optimizers with slot variables (momentum, Adam, LARS) work.

  Args:
    path: SavedModel directory.
    num_classes: adds a dense head returning 'logits' (N, num_classes).
    trainable: fine-tune the encoder; False trains the head only (linear
      evaluation) and runs the encoder in inference mode.
    image_size: fixed square input side; None accepts any H and W.
    head_initializer: kernel initializer of the head (BiT: zeros).
    name: model name.

  Returns:
    keras.Model: images (N, H, W, 3) float32 in [0, 1] ->
    {'feature_map': (N, H/32, W/32, C), 'embedding': (N, C)
    [, 'logits': (N, num_classes)]}.
  """
  encoder = load_encoder(path, trainable=trainable, image_size=image_size, name="encoder_model")
  images = keras.Input(shape=(image_size, image_size, 3), dtype="float32", name="images")
  outputs = dict(encoder(images))
  if num_classes:
    outputs[LOGITS] = keras.layers.Dense(
      num_classes, kernel_initializer=head_initializer, name="head"
    )(outputs[EMBEDDING])
  return keras.Model(images, outputs, name=name)
