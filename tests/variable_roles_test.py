"""Tests for remedis_tf.models.variable_roles (weight-decay exclusion by layer type)."""

from __future__ import annotations

import collections

import keras

from remedis_tf import models


def test_bit_roles_by_layer_type():
  model = models.build_bit_encoder(block_units=[1, 2, 1, 1], num_classes=3)
  roles = models.variable_roles(model)
  assert set(roles) == {v.path for v in model.weights}
  units = 5
  norm_layers = 3 * units + 1  # a/b/c per unit + final norm
  convs = 1 + 3 * units + 4  # root + a/b/c per unit + one projection per block
  assert collections.Counter(roles.values()) == {
    "norm": 2 * norm_layers,
    "kernel": convs + 1,  # + head kernel
    "bias": 1,
  }
  head = model.get_layer("head")
  assert roles[head.bias.path] == "bias" and roles[head.kernel.path] == "kernel"
  gn = model.get_layer("block2").unit_layers[1].b_group_norm
  assert roles[gn.gamma.path] == roles[gn.beta.path] == "norm"
  selected = {id(v) for v in models.norm_and_bias_variables(model)}
  assert id(gn.beta) in selected
  assert id(model.get_layer("root_block").standardized_conv2d.kernel) not in selected
  # The two selections partition the weights.
  kernels = {id(v) for v in models.kernel_variables(model)}
  assert not selected & kernels and len(selected) + len(kernels) == len(model.weights)


def test_roles_in_generic_keras_model_with_nested_encoder():
  encoder = models.build_bit_encoder(block_units=[1, 1, 1, 1])
  inputs = keras.Input((32, 32, 3))
  x = encoder(inputs)["embedding"]
  x = keras.layers.Dense(8, name="proj")(x)
  x = keras.layers.BatchNormalization(name="bn")(x)
  x = keras.layers.LayerNormalization(name="ln")(x)
  model = keras.Model(inputs, x)
  roles = models.variable_roles(model)
  assert set(roles) == {v.path for v in model.weights}
  assert roles[model.get_layer("proj").bias.path] == "bias"
  assert roles[model.get_layer("proj").kernel.path] == "kernel"
  for name in ("bn", "ln"):
    assert all(roles[v.path] == "norm" for v in model.get_layer(name).weights)
  gn = encoder.get_layer("group_norm")
  assert roles[gn.gamma.path] == "norm"
