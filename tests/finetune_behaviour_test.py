"""Fine-tuning does what its options say, checked against the weights and float64 NumPy.

* the encoder really starts from the given start point (our checkpoint, a BiT
  .npz, a SavedModel), not from a fresh initialisation;
* `freeze_up_to` freezes exactly the named blocks, at every level;
* class weights (multi-class and multi-label) and weight decay change the
  loss by what a float64 reference says.
"""

import loss_bounds
import numpy as np
import pytest
import tensorflow as tf
from float32_bounds import (
  SAFETY,
  U32,
  assert_network_close,
  assert_within,
  bit_tiny_bound,
  random_walk_positive_sum_error,
)

from remedis_tf import models
from remedis_tf.train import run_dir
from remedis_tf.train.finetune import (
  FREEZE_POINTS,
  FinetuneConfig,
  finetune,
  freeze,
  supervised_loss,
)
from remedis_tf.train.pretrain import PretrainConfig, pretrain

BLOCKS = ("root_block", "block1", "block2", "block3", "block4")
TINY = dict(encoder="bit-tiny", image_size=32, global_batch_size=4)


@pytest.mark.parametrize("level", FREEZE_POINTS)
def test_freeze_up_to_freezes_exactly_the_named_blocks(level):
  encoder = models.build_encoder_by_name("bit-tiny")
  freeze(encoder, level)
  frozen = BLOCKS if level == "all" else BLOCKS[: BLOCKS.index(level) + 1]
  for name in BLOCKS:
    layer = encoder.get_layer(name)
    assert layer.weights, name
    if name in frozen:
      assert not layer.trainable_variables, f"{name} should be frozen at {level}"
    else:
      assert len(layer.trainable_variables) == len(layer.weights), f"{name} should train"
  # The final GroupNorm trains unless everything is frozen.
  assert bool(encoder.get_layer("group_norm").trainable_variables) == (level != "all")


def _log_softmax(z):
  z = z - z.max(axis=1, keepdims=True)
  return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def test_multiclass_class_weights_match_numpy():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(6, 3)).astype(np.float32)
  labels = np.array([0, 2, 1, 1, 0, 2])
  weights = np.array([1.0, 3.0, 0.5])
  batch = 8  # the global batch: this replica holds 6 of its examples
  loss, correct = supervised_loss(
    tf.constant(logits), tf.constant(labels), "multiclass", batch, tf.constant(weights, tf.float32)
  )
  ce = -_log_softmax(logits.astype(np.float64))[np.arange(6), labels]
  want = float(np.sum(weights[labels] * ce) / batch)
  # Tolerances: the float32 loss replayed by loss_bounds.supervised, times SAFETY.
  bound = SAFETY * loss_bounds.supervised(logits, labels, False, batch, weights).e
  assert_within(float(loss), want, bound, "weighted")
  unweighted, _ = supervised_loss(tf.constant(logits), tf.constant(labels), "multiclass", batch)
  unweighted_bound = SAFETY * loss_bounds.supervised(logits, labels, False, batch).e
  assert_within(float(unweighted), float(ce.sum() / batch), unweighted_bound, "unweighted")
  assert abs(float(loss) - float(unweighted)) > 100 * (bound + unweighted_bound)
  assert int(correct) == int(np.sum(logits.argmax(1) == labels))


def test_multilabel_class_weights_match_numpy():
  rng = np.random.default_rng(1)
  logits = rng.normal(size=(5, 3)).astype(np.float32)
  labels = np.array([[1, 0, -1], [0, 1, 1], [1, -1, 0], [-1, -1, 1], [0, 0, 0]], dtype=np.float32)
  weights = np.array([2.0, 1.0, 4.0])
  batch = 5
  loss, correct = supervised_loss(
    tf.constant(logits), tf.constant(labels), "multilabel", batch, tf.constant(weights, tf.float32)
  )
  z = logits.astype(np.float64)
  known = labels >= 0
  target = np.clip(labels, 0, 1)
  bce = np.maximum(z, 0) - z * target + np.log1p(np.exp(-np.abs(z)))
  weight = np.where(target > 0, weights[None, :], 1.0)
  want = float(np.sum(bce * known * weight) / (batch * 3))
  bound = SAFETY * loss_bounds.supervised(logits, labels, True, batch, weights).e
  assert_within(float(loss), want, bound, "weighted")
  unweighted, _ = supervised_loss(tf.constant(logits), tf.constant(labels), "multilabel", batch)
  assert abs(float(loss) - float(unweighted)) > 100 * bound
  assert int(correct) == int(np.sum(((z > 0) == (target > 0)) & known))


def _encoder_arrays(model_dir):
  return [v.numpy() for v in run_dir.restore_model(model_dir).encoder.weights]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
  from train_testdata import write_multiclass  # helper module next to the tests

  return write_multiclass(str(tmp_path_factory.mktemp("mc")), num_shards=1, per_shard=8)


@pytest.mark.slow
@pytest.mark.integration
def test_each_start_point_is_really_loaded(data, tmp_path):
  """With learning rate 0 the fine-tuned encoder equals its start point, weight for weight."""
  pre = str(tmp_path / "pre")
  pretrain(
    PretrainConfig(train_data=data, model_dir=pre, train_steps=1, image_summaries=False, **TINY)
  )
  frozen_lr = dict(train_steps=1, learning_rate=0.0, **TINY)
  finetune(
    FinetuneConfig(train_data=data, model_dir=str(tmp_path / "a"), init_from=pre, **frozen_lr)
  )
  start = _encoder_arrays(pre)
  got = _encoder_arrays(str(tmp_path / "a"))
  assert all(np.array_equal(a, b) for a, b in zip(got, start, strict=True))
  fresh = models.build_encoder_by_name("bit-tiny")
  assert not all(np.array_equal(a, b.numpy()) for a, b in zip(got, fresh.weights, strict=True))

  # A BiT .npz with recognisable weights.
  encoder = models.build_encoder_by_name("bit-tiny")
  rng = np.random.default_rng(7)
  for v in encoder.weights:
    v.assign(v.numpy() + rng.normal(0, 0.05, v.shape).astype(np.float32))
  npz = str(tmp_path / "bit.npz")
  models.save_bit_checkpoint(encoder, npz)
  finetune(
    FinetuneConfig(train_data=data, model_dir=str(tmp_path / "b"), init_from=npz, **frozen_lr)
  )
  got = _encoder_arrays(str(tmp_path / "b"))
  assert all(np.array_equal(a, b.numpy()) for a, b in zip(got, encoder.weights, strict=True))

  # A SavedModel: the fine-tuned encoder computes what the exported one does.
  from hub_export.export import export_encoder

  export_encoder(encoder, str(tmp_path / "hub"))
  hub_dir = str(tmp_path / "c")
  result = finetune(
    FinetuneConfig(train_data=data, model_dir=hub_dir, init_from=str(tmp_path / "hub"), **frozen_lr)
  )
  assert result["initialized_from"] == f"saved_model:{tmp_path / 'hub'}"
  images = tf.constant(np.random.default_rng(3).random((2, 32, 32, 3)), tf.float32)
  restored = run_dir.restore_model(hub_dir, image_size=32).encoder
  # Two float32 evaluations of bit-tiny (the SavedModel's graph, Keras): twice its
  # statistical bound (float32_bounds.bit_tiny_bound).
  assert_network_close(
    restored(images)["feature_map"].numpy(),
    encoder(images)["feature_map"].numpy(),
    bit_tiny_bound(32, 32),
    err_msg="feature_map",
  )


@pytest.mark.slow
@pytest.mark.integration
def test_freeze_and_weight_decay_during_training(data, tmp_path):
  encoder = models.build_encoder_by_name("bit-tiny")
  npz = str(tmp_path / "bit.npz")
  models.save_bit_checkpoint(encoder, npz)
  start = {v.path: v.numpy() for v in encoder.weights}

  # freeze_up_to=block1: root_block and block1 keep their weights, the rest moves.
  finetune(
    FinetuneConfig(
      train_data=data,
      model_dir=str(tmp_path / "frozen"),
      init_from=npz,
      train_steps=2,
      learning_rate=0.5,
      freeze_up_to="block1",
      **TINY,
    )
  )
  trained = run_dir.restore_model(str(tmp_path / "frozen")).encoder
  for block in BLOCKS:
    layer = trained.get_layer(block)
    same = [np.array_equal(v.numpy(), start[v.path]) for v in layer.weights]
    if block in ("root_block", "block1"):
      assert all(same), block
    else:
      assert not all(same), f"{block} did not train"

  # Weight decay adds 0.5 * wd * sum of squared trainable kernels to the first loss.
  wd = 1e-2
  losses = {}
  for name, decay in (("nodecay", 0.0), ("decay", wd)):
    result = finetune(
      FinetuneConfig(
        train_data=data,
        model_dir=str(tmp_path / name),
        init_from=npz,
        train_steps=1,
        learning_rate=0.1,
        weight_decay=decay,
        **TINY,
      )
    )
    losses[name] = result["loss_history"][0][1]
  kernels = models.kernel_variables(encoder)
  penalty = 0.5 * wd * sum(float(np.sum(start[v.path].astype(np.float64) ** 2)) for v in kernels)
  assert penalty > 0.01
  # Both runs compute the same first-step cross-entropy (same weights, batch and ops), so the
  # losses differ by the float32 penalty and the one addition. The penalty is a sum of squares
  # per kernel (n up to ~1e6 non-negative terms: the statistical bound of such a sum, as the
  # worst case n u is far too pessimistic), add_n over the kernels and the product with
  # fl(0.5 wd): 2 + len(kernels) more roundings; plus u |loss| for the addition.
  sizes = [start[v.path].size for v in kernels]
  rounding = random_walk_positive_sum_error(penalty, max(sizes)) + (2 + len(sizes)) * U32 * penalty
  bound = SAFETY * (rounding + U32 * abs(losses["decay"]))
  assert_within(losses["decay"] - losses["nodecay"], penalty, bound, "weight decay")
