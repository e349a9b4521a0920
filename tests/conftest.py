"""Shared pytest set-up: quiet TensorFlow and two logical CPU devices.

Two logical CPUs let MirroredStrategy tests run a real 2-replica all-reduce
on this CPU-only machine. The split must happen before TensorFlow creates its
devices, so it is done here, once, before any test module runs.
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("PYTHONHASHSEED", "0")

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
  sys.path.insert(0, _ROOT)

import tensorflow as tf  # noqa: E402

_cpus = tf.config.list_physical_devices("CPU")
try:
  tf.config.set_logical_device_configuration(_cpus[0], [tf.config.LogicalDeviceConfiguration()] * 2)
except RuntimeError:  # devices already initialised by an earlier import
  pass
