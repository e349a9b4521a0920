"""Fine-tuning does what its options say, checked against the weights and float64 NumPy.

* (that the encoder really starts from the given start point is checked in
  finetune_evaluate_test, with the runs from each kind of start);
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
  assert_within,
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


@pytest.fixture(scope="module")
def data(tmp_path_factory):
  from train_testdata import write_multiclass  # helper module next to the tests

  return write_multiclass(str(tmp_path_factory.mktemp("mc")), num_shards=1, per_shard=8)


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


def test_small_label_subset_of_one_file_is_cached(data, tmp_path):
  import glob
  import shutil

  from remedis_tf.train.finetune import FinetuneTask

  def cached(train_data, fraction):
    task = FinetuneTask(
      FinetuneConfig(
        train_data=train_data,
        model_dir=str(tmp_path / "m"),
        label_fraction=fraction,
        num_classes=2,
        **TINY,
      )
    )
    task.prepare()
    return task.cache_subset

  one = str(tmp_path / "one.tfrecord")
  shutil.copy(sorted(glob.glob(data))[0], one)
  assert cached(one, 0.5) and not cached(one, 1.0)
  # Two files: the uncached stream reshuffles the file order each epoch, so no cache.
  shutil.copy(one, tmp_path / "two.tfrecord")
  assert not cached(str(tmp_path / "*.tfrecord"), 0.5)
