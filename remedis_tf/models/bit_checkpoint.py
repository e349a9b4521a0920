"""Reads and writes the official BiT `.npz` checkpoint format.

The official files (google-research/big_transfer, e.g. `BiT-M-R50x1.npz`) hold
float32 arrays under these keys (kernels HWIO):

    resnet/root_block/standardized_conv2d/kernel          (7, 7, 3, 64w)
    resnet/block{B}/unit{NN}/a/group_norm/{gamma,beta}    pre-activation norm of the unit
    resnet/block{B}/unit{NN}/a/proj/standardized_conv2d/kernel   projection (unit01 only)
    resnet/block{B}/unit{NN}/a/standardized_conv2d/kernel 1x1 conv
    resnet/block{B}/unit{NN}/b/group_norm/{gamma,beta}    norm before the 3x3 conv
    resnet/block{B}/unit{NN}/b/standardized_conv2d/kernel 3x3 conv (strided in unit01)
    resnet/block{B}/unit{NN}/c/group_norm/{gamma,beta}    norm before the last 1x1 conv
    resnet/block{B}/unit{NN}/c/standardized_conv2d/kernel 1x1 conv to 4x width
    resnet/group_norm/{gamma,beta}                        final norm (before pooling)
    resnet/head/conv2d/{kernel,bias}                      (1, 1, 2048w, K), (K,)  optional

In BiT's pre-activation unit a norm is named after the conv it precedes: the
`a/group_norm` normalizes the unit input, and the projection reads the same
normalized activation. The keys map onto the model's layer structure
(`checkpoint_layers()` of root_block, blockB, unitNN), not onto Keras variable
names. The dense head (kernel (2048w, K)) is stored as the 1x1 conv BiT uses.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Iterator

import keras
import numpy as np

from remedis_tf.errors import UserError
from remedis_tf.models.group_norm import GroupNorm
from remedis_tf.models.weight_standardization import StandardizedConv2D

PREFIX = "resnet/"
HEAD_PREFIX = PREFIX + "head/"


class BitCheckpointError(UserError, ValueError):
  """A checkpoint does not match the model; the message names the keys."""


@dataclasses.dataclass(frozen=True)
class _Slot:
  """A model variable and the shape its array has in the checkpoint."""

  variable: keras.Variable
  file_shape: tuple[int, ...]


@dataclasses.dataclass(frozen=True)
class LoadReport:
  """What `load_bit_checkpoint` did.

  Attributes:
    loaded: checkpoint keys assigned to model variables.
    skipped: checkpoint keys deliberately not loaded (head keys when the model
      has no head or `skip_head=True`).
    not_in_checkpoint: model keys absent from the file that were allowed to be
      (the head), left at their initial values.
  """

  loaded: tuple[str, ...]
  skipped: tuple[str, ...]
  not_in_checkpoint: tuple[str, ...]


def _layer_slots(prefix: str, layer: keras.layers.Layer) -> Iterator[tuple[str, _Slot]]:
  if isinstance(layer, StandardizedConv2D):
    yield f"{prefix}/kernel", _Slot(layer.kernel, tuple(layer.kernel.shape))
  elif isinstance(layer, GroupNorm):
    yield f"{prefix}/gamma", _Slot(layer.gamma, tuple(layer.gamma.shape))
    yield f"{prefix}/beta", _Slot(layer.beta, tuple(layer.beta.shape))
  else:
    for name, sub in layer.checkpoint_layers().items():
      yield from _layer_slots(f"{prefix}/{name}", sub)


def _model_layer(model: keras.Model, name: str) -> keras.layers.Layer | None:
  try:
    return model.get_layer(name)
  except ValueError:
    return None


def checkpoint_slots(model: keras.Model) -> dict[str, _Slot]:
  """Maps official checkpoint keys to the variables of a `build_bit_encoder` model.

  Args:
    model: a built BiT encoder.

  Returns:
    Ordered dict from key (e.g. "resnet/block1/unit01/a/group_norm/gamma") to
    the variable and the array shape in the file.
  """
  slots: dict[str, _Slot] = {}
  slots.update(_layer_slots(PREFIX + "root_block", model.get_layer("root_block")))
  block = 1
  while (layer := _model_layer(model, f"block{block}")) is not None:
    slots.update(_layer_slots(f"{PREFIX}block{block}", layer))
    block += 1
  slots.update(_layer_slots(PREFIX + "group_norm", model.get_layer("group_norm")))
  head = _model_layer(model, "head")
  if head is not None:
    in_dim, classes = head.kernel.shape
    slots[HEAD_PREFIX + "conv2d/kernel"] = _Slot(head.kernel, (1, 1, in_dim, classes))
    slots[HEAD_PREFIX + "conv2d/bias"] = _Slot(head.bias, (classes,))
  return slots


def describe_checkpoint(weights: dict[str, np.ndarray]) -> str:
  """Summarises the architecture a checkpoint encodes, e.g. "units (3, 4, 6, 3), width 1"."""
  units: dict[int, int] = {}
  for key in weights:
    match = re.match(rf"^{PREFIX}block(\d+)/unit(\d+)/", key)
    if match:
      b, u = int(match.group(1)), int(match.group(2))
      units[b] = max(units.get(b, 0), u)
  root = weights.get(PREFIX + "root_block/standardized_conv2d/kernel")
  width = f"{root.shape[-1] / 64:g}" if root is not None and root.ndim == 4 else "?"
  return f"units {tuple(units[b] for b in sorted(units))}, width {width}"


def _format_keys(title: str, keys: list[str], limit: int = 20) -> str:
  shown = "\n    ".join(keys[:limit])
  more = f"\n    ... and {len(keys) - limit} more" if len(keys) > limit else ""
  return f"  {title} ({len(keys)}):\n    {shown}{more}"


def load_bit_checkpoint(
  model: keras.Model, npz_path: str | os.PathLike[str], skip_head: bool = False
) -> LoadReport:
  """Loads an official BiT `.npz` checkpoint into a `build_bit_encoder` model.

  Nothing is assigned unless every backbone key matches: a missing, unexpected
  or mis-shaped key raises `BitCheckpointError` naming each offending key and
  the architecture the file encodes. The head is optional on both sides: head
  keys are skipped when the model has no head (or `skip_head`), and a model
  head absent from the file keeps its zero initialisation. A head of the wrong
  shape is an error unless `skip_head=True` (e.g. fine-tuning BiT-M, 21843
  classes, to a new task).

  Args:
    model: a built BiT encoder.
    npz_path: path of the `.npz` file.
    skip_head: ignore the checkpoint's head.

  Returns:
    A LoadReport.

  Raises:
    BitCheckpointError: the file does not match the model's architecture.
  """
  with np.load(npz_path, allow_pickle=False) as data:
    weights = {key: data[key] for key in data.files}
  slots = checkpoint_slots(model)

  skipped = sorted(
    k for k in weights if k.startswith(HEAD_PREFIX) and (skip_head or k not in slots)
  )
  missing = [k for k in slots if k not in weights and not k.startswith(HEAD_PREFIX)]
  unexpected = sorted(k for k in weights if k not in slots and k not in skipped)
  misshaped = [
    f"{k}: file {tuple(weights[k].shape)}, model {slot.file_shape}"
    for k, slot in slots.items()
    if k in weights and k not in skipped and tuple(weights[k].shape) != slot.file_shape
  ]
  if missing or unexpected or misshaped:
    parts = [
      f"Checkpoint {os.fspath(npz_path)!r} does not match model {model.name!r} "
      f"(file: {describe_checkpoint(weights)}; model: "
      f"{describe_checkpoint({k: np.zeros(s.file_shape) for k, s in slots.items()})})."
    ]
    if missing:
      parts.append(_format_keys("missing from the file", missing))
    if unexpected:
      parts.append(_format_keys("unexpected in the file", unexpected))
    if misshaped:
      parts.append(_format_keys("wrong shape", misshaped))
    if any(k.startswith(HEAD_PREFIX) for k in misshaped):
      parts.append("  (pass skip_head=True to load the backbone only)")
    raise BitCheckpointError("\n".join(parts))

  loaded = []
  for key, slot in slots.items():
    if key in weights and key not in skipped:
      value = np.reshape(weights[key], slot.variable.shape).astype(slot.variable.dtype)
      slot.variable.assign(value)
      loaded.append(key)
  not_in_checkpoint = tuple(k for k in slots if k not in weights or k in skipped)
  return LoadReport(tuple(loaded), tuple(skipped), not_in_checkpoint)


def get_bit_weights(model: keras.Model) -> dict[str, np.ndarray]:
  """Returns the model's weights as official checkpoint arrays (float32)."""
  return {
    key: np.reshape(keras.ops.convert_to_numpy(slot.variable), slot.file_shape).astype(np.float32)
    for key, slot in checkpoint_slots(model).items()
  }


def save_bit_checkpoint(model: keras.Model, npz_path: str | os.PathLike[str]) -> None:
  """Writes the model's weights in the official BiT `.npz` layout.

  Args:
    model: a built BiT encoder.
    npz_path: destination file (written as given; no ".npz" is appended).
  """
  with open(npz_path, "wb") as f:
    np.savez(f, **get_bit_weights(model))
