"""Seeds for stateless random ops, derived by folding in identifiers.

Every random decision in the augmentation code is taken by a
`tf.random.stateless_*` op whose seed is a shape (2,) int64 tensor derived
from (user seed, example key, epoch, view id, op id). The same tuple always
gives the same decision, whatever the order or the parallelism of the
tf.data pipeline.
"""

from __future__ import annotations

import tensorflow as tf

# Identifiers of the random decisions, folded into a view's seed.
OP_CROP = 1
OP_HFLIP = 2
OP_VFLIP = 3
OP_ROT90 = 4
OP_ROTATE = 5
OP_ELASTIC = 6
OP_EQUALIZE = 7
OP_COLOR = 8
OP_GRAYSCALE = 9
OP_GAMMA = 10
OP_BLUR = 11


def make_seed(seed: int | tf.Tensor) -> tf.Tensor:
  """Turns an integer seed (or a shape (2,) seed) into a shape (2,) int64 seed."""
  seed = tf.convert_to_tensor(seed)
  seed = tf.cast(seed, tf.int64)
  if seed.shape.rank == 0:
    seed = tf.stack([seed, tf.constant(0x5EED, tf.int64)])
  return seed


def fold_in(seed: tf.Tensor, *data: int | tf.Tensor) -> tf.Tensor:
  """Folds integers into a seed, one after the other.

  Args:
    seed: shape (2,) integer seed (or a scalar, see `make_seed`).
    *data: integer scalars (Python ints or int32/int64 tensors).

  Returns:
    Shape (2,) int64 seed.
  """
  seed = make_seed(seed)
  for value in data:
    seed = tf.random.experimental.stateless_fold_in(seed, tf.cast(value, tf.int64))
  return seed


def example_key(source_id: tf.Tensor, fallback: tf.Tensor) -> tf.Tensor:
  """Returns an int64 key for an example (a 62-bit hash of its id).

  Args:
    source_id: scalar string, e.g. `image/source_id` + frame index; may be empty.
    fallback: scalar string hashed when `source_id` is empty (e.g. the encoded
      image bytes).
  """
  text = tf.where(tf.strings.length(source_id) > 0, source_id, fallback)
  return tf.strings.to_hash_bucket_fast(text, 2**62)


def uniform(seed: tf.Tensor, minval: float = 0.0, maxval: float = 1.0) -> tf.Tensor:
  """A float32 scalar drawn uniformly from [minval, maxval) with a stateless seed."""
  return tf.random.stateless_uniform([], seed=seed, minval=minval, maxval=maxval)


def apply_with_prob(fn, image: tf.Tensor, prob: float, seed: tf.Tensor) -> tf.Tensor:
  """Applies `fn(image, seed)` with probability `prob`.

  The coin and the op draw from different seeds derived from `seed`.
  Probabilities 0 and 1 are resolved at trace time (no tf.cond).

  Args:
    fn: callable (image, seed) -> image of the same shape and dtype.
    image: the input tensor.
    prob: probability in [0, 1].
    seed: shape (2,) seed.

  Returns:
    `fn(image, op_seed)` or `image`.
  """
  image = tf.convert_to_tensor(image)
  if prob <= 0.0:
    return image
  coin_seed, op_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
  if prob >= 1.0:
    return fn(image, op_seed)
  return tf.cond(uniform(coin_seed) < prob, lambda: fn(image, op_seed), lambda: image)
