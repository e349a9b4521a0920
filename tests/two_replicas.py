"""One process-wide 2-replica MirroredStrategy for tests.

Several MirroredStrategy objects in one process reuse collective instance keys
and can abort each other's collectives, so all tests share this one.
"""

import functools

import tensorflow as tf


@functools.cache
def strategy() -> tf.distribute.MirroredStrategy:
  """MirroredStrategy over the two logical CPUs that tests/conftest.py creates."""
  return tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
