"""Tests of the augmentation presets and the composed view."""

import dataclasses

import numpy as np
import pytest
import tensorflow as tf

from remedis_tf.data import augment, get_preset, presets, seeds


def test_presets_are_frozen_and_overridable():
  cxr = get_preset("cxr")
  assert cxr.channels == 1 and cxr.saturation == 0 and cxr.hue == 0
  assert cxr.rotation_prob > 0 and cxr.equalize_prob > 0 and cxr.elastic_prob > 0
  natural = get_preset("natural")
  assert (natural.color_prob, natural.grayscale_prob, natural.crop_area_range) == (
    0.8,
    0.2,
    (0.08, 1.0),
  )
  path = get_preset("pathology")
  assert path.vflip_prob == 0.5 and path.rot90_prob > 0 and path.hue > 0
  with pytest.raises(dataclasses.FrozenInstanceError):
    cxr.channels = 3
  changed = get_preset("cxr", rotation_prob=1.0, equalize_prob=0.0)
  assert changed.rotation_prob == 1.0 and changed.equalize_prob == 0.0
  assert get_preset("cxr").rotation_prob == presets.PRESETS["cxr"].rotation_prob


@pytest.mark.parametrize(
  "kwargs",
  [
    {"hflip_prob": 1.5},
    {"channels": 2},
    {"crop_area_range": (0.5, 0.2)},
    {"rotation_fill_mode": "mirror"},
    {"not_a_field": 1},
    {"gamma_range": (0.0, 1.0)},
  ],
)
def test_invalid_overrides_raise(kwargs):
  with pytest.raises(ValueError):
    get_preset("natural", **kwargs)


def test_unknown_preset_raises():
  with pytest.raises(ValueError):
    get_preset("mri")


@pytest.mark.parametrize("name,channels", [("natural", 3), ("cxr", 1), ("pathology", 3)])
def test_augment_view_shapes_ranges_and_seeding(name, channels):
  config = get_preset(name, elastic_prob=1.0 if name == "cxr" else 0.0)
  image = np.random.default_rng(0).uniform(0, 1, (40, 36, channels)).astype(np.float32)
  view = tf.function(lambda s: augment.augment_view(tf.constant(image), config, s, 24))
  a, b = view(seeds.make_seed(7)).numpy(), view(seeds.make_seed(7)).numpy()
  c = view(seeds.make_seed(8)).numpy()
  assert a.shape == (24, 24, 3) and a.dtype == np.float32
  assert a.min() >= 0.0 and a.max() <= 1.0
  np.testing.assert_array_equal(a, b)
  assert np.abs(a - c).max() > 0.1  # another view, not rounding
  if channels == 1:  # gray in, gray out
    np.testing.assert_array_equal(a[..., 0], a[..., 2])


def test_preprocess_eval_is_deterministic_centre_crop():
  image = np.random.default_rng(1).uniform(0, 1, (20, 30, 1)).astype(np.float32)
  config = get_preset("cxr", eval_crop_fraction=0.8)
  out = augment.preprocess_eval(tf.constant(image), config, 16).numpy()
  assert out.shape == (16, 16, 3)
  # A 16 -> 16 resize samples pixel centres (weights 0 and 1) and gray -> RGB copies: exact.
  np.testing.assert_array_equal(out[..., 1], image[2:18, 7:23, 0])
