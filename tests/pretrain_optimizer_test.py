"""The pretraining optimizer choice: LARS or AdamW, norm/bias excluded from decay."""

import numpy as np
import pytest
import tensorflow as tf

from remedis_tf import models
from remedis_tf.train.pretrain import PretrainConfig, build_optimizer


def _config(**kw):
  return PretrainConfig(train_data="unused", model_dir="unused", encoder="bit-tiny", **kw)


@pytest.mark.parametrize("name", ["lars", "adamw"])
def test_weight_decay_spares_norm_and_bias(name):
  encoder = models.build_bit_encoder(block_units=[1, 1, 1, 1])
  config = _config(optimizer=name, weight_decay=0.1)
  opt = build_optimizer(config, 0.1, [encoder])
  assert type(opt).__name__ == {"lars": "LARS", "adamw": "AdamW"}[name]
  variables = encoder.trainable_variables
  opt.build(variables)
  before = [v.numpy().copy() for v in variables]
  # Zero gradients: only weight decay can move a variable.
  opt.apply_gradients([(tf.zeros_like(v), v) for v in variables])
  excluded = {id(v) for v in models.norm_and_bias_variables(encoder)}
  assert excluded, "the encoder has norm parameters"
  for v, b in zip(variables, before, strict=True):
    moved = not np.allclose(v.numpy(), b)
    if id(v) in excluded:
      assert not moved, f"{v.path} is a norm/bias variable but was decayed"
    elif name == "adamw":
      # AdamW decays every other variable: w <- w - lr * wd * w.
      np.testing.assert_allclose(v.numpy(), b * (1 - 0.1 * 0.1), rtol=1e-5, atol=1e-7)


def test_unknown_optimizer_is_a_clear_error():
  with pytest.raises(ValueError, match="optimizer must be one of"):
    _config(optimizer="sgd").validate()


def test_bad_augment_override_is_a_clear_error():
  with pytest.raises(ValueError):
    _config(augment_overrides=(("no_such_field", 1),)).validate()
