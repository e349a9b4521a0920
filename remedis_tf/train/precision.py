"""Mixed-precision policy from a config value, set for a block and then restored."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import keras

POLICIES = {None: None, "": None, "float32": None, "bfloat16": "mixed_bfloat16"}


def check_policy_name(name: str | None) -> None:
  """Raises ValueError unless `name` is None, 'float32' or 'bfloat16'."""
  if name not in POLICIES:
    raise ValueError(f"mixed_precision must be 'bfloat16', 'float32' or empty, got {name!r}.")


@contextlib.contextmanager
def policy(name: str | None) -> Iterator[None]:
  """Sets the Keras global dtype policy for the block ('bfloat16' -> mixed_bfloat16).

  Models built inside compute in bfloat16 with float32 variables; outputs
  declared float32 (BiT's embedding, losses) stay float32. The previous
  global policy is restored on exit.
  """
  check_policy_name(name)
  previous = keras.mixed_precision.global_policy()
  if POLICIES[name]:
    keras.mixed_precision.set_global_policy(POLICIES[name])
  try:
    yield
  finally:
    keras.mixed_precision.set_global_policy(previous)
