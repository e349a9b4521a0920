"""Tests for remedis_tf.models.bit_checkpoint (official BiT `.npz` I/O)."""

from __future__ import annotations

import numpy as np
import pytest

from remedis_tf import models
from remedis_tf.models import bit_checkpoint

TINY = [1, 1, 1, 1]


def _official_keys(block_units, head: bool) -> set[str]:
  """The official BiT key set, spelled out from the published layout."""
  keys = {"resnet/root_block/standardized_conv2d/kernel"}
  for b, units in enumerate(block_units, start=1):
    for u in range(1, units + 1):
      p = f"resnet/block{b}/unit{u:02d}/"
      for part in "abc":
        keys |= {p + f"{part}/group_norm/gamma", p + f"{part}/group_norm/beta"}
        keys.add(p + f"{part}/standardized_conv2d/kernel")
      if u == 1:
        keys.add(p + "a/proj/standardized_conv2d/kernel")
  keys |= {"resnet/group_norm/gamma", "resnet/group_norm/beta"}
  if head:
    keys |= {"resnet/head/conv2d/kernel", "resnet/head/conv2d/bias"}
  return keys


def _random_npz(path, block_units=TINY, width=1, num_classes=None, seed=0):
  """Writes a checkpoint with random values in the official layout; returns the arrays."""
  model = models.build_bit_encoder(block_units=block_units, width=width, num_classes=num_classes)
  rng = np.random.default_rng(seed)
  weights = {}
  for key, slot in bit_checkpoint.checkpoint_slots(model).items():
    weights[key] = rng.normal(size=slot.file_shape).astype(np.float32)
  with open(path, "wb") as f:
    np.savez(f, **weights)
  return weights


def _read(path):
  with np.load(path) as data:
    return {k: data[k] for k in data.files}


def _images(n=1, size=32, seed=0):
  return np.random.default_rng(seed).uniform(size=(n, size, size, 3)).astype(np.float32)


def test_r50x1_key_layout_matches_official():
  model = models.build_bit_encoder(50, 1, num_classes=1000)
  slots = bit_checkpoint.checkpoint_slots(model)
  assert set(slots) == _official_keys((3, 4, 6, 3), head=True)
  assert len(slots) == 153
  assert slots["resnet/root_block/standardized_conv2d/kernel"].file_shape == (7, 7, 3, 64)
  assert slots["resnet/block2/unit01/a/proj/standardized_conv2d/kernel"].file_shape == (
      1, 1, 256, 512)  # fmt: skip
  assert slots["resnet/block4/unit03/b/standardized_conv2d/kernel"].file_shape == (3, 3, 512, 512)
  assert slots["resnet/head/conv2d/kernel"].file_shape == (1, 1, 2048, 1000)


def test_load_assigns_by_structure(tmp_path):
  weights = _random_npz(tmp_path / "w.npz", num_classes=5)
  model = models.build_bit_encoder(block_units=TINY, num_classes=5)
  report = models.load_bit_checkpoint(model, tmp_path / "w.npz")
  assert set(report.loaded) == set(weights) and not report.skipped
  unit = model.get_layer("block3").unit_layers[0]
  np.testing.assert_array_equal(
    unit.a_group_norm.gamma.numpy(), weights["resnet/block3/unit01/a/group_norm/gamma"]
  )
  np.testing.assert_array_equal(
    unit.a_proj_standardized_conv2d.kernel.numpy(),
    weights["resnet/block3/unit01/a/proj/standardized_conv2d/kernel"],
  )
  np.testing.assert_array_equal(
    unit.b_standardized_conv2d.kernel.numpy(),
    weights["resnet/block3/unit01/b/standardized_conv2d/kernel"],
  )
  np.testing.assert_array_equal(
    model.get_layer("head").kernel.numpy(), weights["resnet/head/conv2d/kernel"][0, 0]
  )
  np.testing.assert_array_equal(
    model.get_layer("group_norm").beta.numpy(), weights["resnet/group_norm/beta"]
  )


def test_round_trip_is_identical(tmp_path):
  weights = _random_npz(tmp_path / "a.npz", num_classes=3)
  model = models.build_bit_encoder(block_units=TINY, num_classes=3)
  models.load_bit_checkpoint(model, tmp_path / "a.npz")
  models.save_bit_checkpoint(model, tmp_path / "b.npz")
  saved = _read(tmp_path / "b.npz")
  assert set(saved) == set(weights) == _official_keys(TINY, head=True)
  for key in weights:
    assert saved[key].dtype == np.float32
    np.testing.assert_array_equal(saved[key], weights[key], err_msg=key)
  other = models.build_bit_encoder(block_units=TINY, num_classes=3)
  models.load_bit_checkpoint(other, tmp_path / "b.npz")
  for a, b in zip(model.weights, other.weights, strict=True):
    np.testing.assert_array_equal(a.numpy(), b.numpy())
  x = _images()
  np.testing.assert_array_equal(model(x)["logits"], other(x)["logits"])


def test_missing_unexpected_and_misshaped_keys_are_named(tmp_path):
  weights = _random_npz(tmp_path / "w.npz")
  del weights["resnet/block2/unit01/b/group_norm/gamma"]
  weights["resnet/block2/unit01/b/extra/kernel"] = np.zeros(3, np.float32)
  weights["resnet/block4/unit01/c/standardized_conv2d/kernel"] = np.zeros(
    (1, 1, 512, 1024), np.float32
  )
  with open(tmp_path / "bad.npz", "wb") as f:
    np.savez(f, **weights)
  model = models.build_bit_encoder(block_units=TINY)
  before = [v.numpy().copy() for v in model.weights]
  with pytest.raises(models.BitCheckpointError) as err:
    models.load_bit_checkpoint(model, tmp_path / "bad.npz")
  message = str(err.value)
  assert "missing from the file (1)" in message
  assert "resnet/block2/unit01/b/group_norm/gamma" in message
  assert "unexpected in the file (1)" in message
  assert "resnet/block2/unit01/b/extra/kernel" in message
  assert "wrong shape (1)" in message
  assert "resnet/block4/unit01/c/standardized_conv2d/kernel" in message
  # Nothing was assigned.
  for v, b in zip(model.weights, before, strict=True):
    np.testing.assert_array_equal(v.numpy(), b)


@pytest.mark.parametrize(
  "file_units, file_width, model_units, model_width",
  [(TINY, 1, [1, 2, 1, 1], 1), (TINY, 2, TINY, 1), ([1, 1, 1], 1, TINY, 1)],
)
def test_mismatched_architecture_is_refused(
  tmp_path, file_units, file_width, model_units, model_width
):
  _random_npz(tmp_path / "w.npz", block_units=file_units, width=file_width)
  model = models.build_bit_encoder(block_units=model_units, width=model_width)
  with pytest.raises(models.BitCheckpointError) as err:
    models.load_bit_checkpoint(model, tmp_path / "w.npz")
  message = str(err.value)
  assert f"file: units {tuple(file_units)}, width {file_width}" in message
  assert f"model: units {tuple(model_units)}, width {model_width}" in message


def test_head_is_optional(tmp_path):
  _random_npz(tmp_path / "head.npz", num_classes=5)
  _random_npz(tmp_path / "nohead.npz")
  # File head, model without head: skipped.
  model = models.build_bit_encoder(block_units=TINY)
  report = models.load_bit_checkpoint(model, tmp_path / "head.npz")
  assert set(report.skipped) == {"resnet/head/conv2d/kernel", "resnet/head/conv2d/bias"}
  # Model head, file without head: head stays zero.
  model = models.build_bit_encoder(block_units=TINY, num_classes=5)
  report = models.load_bit_checkpoint(model, tmp_path / "nohead.npz")
  assert set(report.not_in_checkpoint) == {"resnet/head/conv2d/kernel", "resnet/head/conv2d/bias"}
  np.testing.assert_array_equal(model(_images())["logits"], np.zeros((1, 5)))


def test_head_of_other_size_needs_skip_head(tmp_path):
  weights = _random_npz(tmp_path / "w.npz", num_classes=7)
  model = models.build_bit_encoder(block_units=TINY, num_classes=5)
  with pytest.raises(models.BitCheckpointError, match="skip_head=True") as err:
    models.load_bit_checkpoint(model, tmp_path / "w.npz")
  assert "resnet/head/conv2d/kernel: file (1, 1, 2048, 7), model (1, 1, 2048, 5)" in str(err.value)
  report = models.load_bit_checkpoint(model, tmp_path / "w.npz", skip_head=True)
  assert "resnet/head/conv2d/kernel" in report.skipped
  np.testing.assert_array_equal(model.get_layer("head").kernel.numpy(), np.zeros((2048, 5)))
  np.testing.assert_array_equal(
    model.get_layer("root_block").standardized_conv2d.kernel.numpy(),
    weights["resnet/root_block/standardized_conv2d/kernel"],
  )
