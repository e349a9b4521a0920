"""Hand-written gradients of BiT's layers, and a switch that traces without them.

`group_norm` and `standardize_kernel` have closed-form gradients (see their
modules): the training step runs them, and they are faster than automatic
differentiation of the same forward ops. A SavedModel pays for them, though:
`tf.saved_model.save` traces every call site's gradient function as a
separate concrete function (one per layer for each traced value of
`training`), and loading rebuilds them all. Measured on BiT-R50x1 (2-core AVX2 CPU, one run):
export 25.2 s against 10.8 s without them, `hub.KerasLayer` load 5.7 s against
2.4 s, while a fine-tuning step through the loaded layer (224 px, batch 8)
took 1.78 s against 1.86 s. The gradients agree to float32 rounding.

So exports trace inside `autodiff_gradients()` unless asked otherwise
(`hub_export.export.export_encoder(..., custom_gradients=True)`).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from typing import Any

import tensorflow as tf

_state = threading.local()


@contextlib.contextmanager
def autodiff_gradients() -> Iterator[None]:
  """Functions traced (or run eagerly) in this thread inside the block use
  automatic differentiation instead of the layers' hand-written gradients."""
  previous = getattr(_state, "autodiff", False)
  _state.autodiff = True
  try:
    yield
  finally:
    _state.autodiff = previous


def uses_autodiff() -> bool:
  """Whether this thread is inside `autodiff_gradients()`."""
  return getattr(_state, "autodiff", False)


def custom_gradient(forward: Callable[..., tuple[Any, Callable[..., Any]]]) -> Callable[..., Any]:
  """`tf.custom_gradient(forward)`, or inside `autodiff_gradients()` its value alone.

  Decides when the decorated function is created, so a layer must apply it in
  its call (at trace time), as `group_norm` and `standardize_kernel` do.
  """
  if uses_autodiff():
    return lambda *args: forward(*args)[0]
  return tf.custom_gradient(forward)
