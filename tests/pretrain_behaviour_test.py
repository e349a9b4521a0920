"""Pretraining options that had no test: the linear evaluation head and steps_per_loop > 1.

Both run on records made by the real converter (whose manifest says
'multiclass'; `--linear_eval_head` without `--num_classes` used to fail on
every real converter output because the reader compared 'multi_class').
"""

import numpy as np
import pytest
from train_testdata import encoder_arrays

from remedis_tf.train import run_dir
from remedis_tf.train.pretrain import PretrainConfig, pretrain

pytestmark = [pytest.mark.slow, pytest.mark.integration]

COMMON = dict(
  encoder="bit-tiny",
  image_size=32,
  global_batch_size=4,
  image_summaries=False,
  optimizer="adamw",
  base_learning_rate=1e-3,
  learning_rate_scaling="none",
)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
  from train_testdata import write_multiclass  # helper module next to the tests

  return write_multiclass(str(tmp_path_factory.mktemp("mc")), num_shards=1, per_shard=8)


@pytest.fixture(scope="module")
def plain_run(data, tmp_path_factory):
  """4 steps without head and with steps_per_loop 1: the reference of both tests below."""
  model_dir = str(tmp_path_factory.mktemp("plain"))
  return model_dir, pretrain(
    PretrainConfig(train_data=data, model_dir=model_dir, train_steps=4, **COMMON)
  )


def test_linear_eval_head_reads_the_manifest_and_never_moves_the_encoder(data, plain_run, tmp_path):
  plain_dir, plain = plain_run
  with_head = pretrain(
    PretrainConfig(
      train_data=data,
      model_dir=str(tmp_path / "head"),
      train_steps=4,
      linear_eval_head=True,
      **COMMON,
    )
  )
  assert {"sup_loss", "sup_accuracy"} <= set(with_head["metrics"])
  assert 0.0 <= with_head["metrics"]["sup_accuracy"] <= 1.0
  # Two classes from the converter's manifest: the head is (C, 2), checkpointed
  # and trained (it starts at zero).
  config = run_dir.read_run_config(str(tmp_path / "head"))
  assert config.settings["linear_eval_head"] is True
  import keras
  import tensorflow as tf

  head = keras.Sequential([keras.Input((2048,)), keras.layers.Dense(2, name="logits")])
  status = tf.train.Checkpoint(linear_head=head).read(
    tf.train.latest_checkpoint(str(tmp_path / "head"))
  )
  status.expect_partial().assert_existing_objects_matched()
  assert head.layers[-1].kernel.shape == (2048, 2)
  assert np.abs(head.layers[-1].kernel.numpy()).max() > 0
  # The head trains on stop-gradient features: the encoder runs the same float32 ops on the
  # same batches as in a run without the head, so it ends bit-identical (as the losses below).
  for a, b in zip(encoder_arrays(str(tmp_path / "head")), encoder_arrays(plain_dir), strict=True):
    np.testing.assert_array_equal(a, b)
  # The objective's own loss is the same; the head's cross-entropy is reported apart.
  assert with_head["loss_history"] == plain["loss_history"]
  assert with_head["metrics"]["sup_loss"] > 0 and "sup_loss" not in plain["metrics"]


def test_steps_per_loop_runs_the_same_steps(data, plain_run, tmp_path):
  one_dir, one = plain_run
  two = pretrain(
    PretrainConfig(
      train_data=data, model_dir=str(tmp_path / "two"), train_steps=4, steps_per_loop=2, **COMMON
    )
  )
  assert [s for s, _ in one["loss_history"]] == [1, 2, 3, 4]
  assert [s for s, _ in two["loss_history"]] == [2, 4]
  losses = dict(one["loss_history"])
  for step, loss in two["loss_history"]:
    # Same batches, views and float32 ops; only the tf.function boundaries move: bit-identical.
    assert loss == losses[step], step
  for a, b in zip(encoder_arrays(one_dir), encoder_arrays(str(tmp_path / "two")), strict=True):
    np.testing.assert_array_equal(a, b)


def test_micle_pairs_record_their_groups_and_resume_exactly(data, tmp_path):
  """MICLe pretraining (issue 18): the index is built, recorded, and a resumed run is exact."""
  from resume_exact_test import _assert_same_weights, _rolled_back_copy  # next to the tests

  micle = dict(COMMON, positive_pairs="micle", micle_group="patient", checkpoint_steps=2, seed=5)
  full = pretrain(
    PretrainConfig(train_data=data, model_dir=str(tmp_path / "full"), train_steps=4, **micle)
  )
  # write_multiclass: 8 images of patients i % 6, so patients 0 and 1 have two
  # images and the four others one each: 4 of 8 anchors fall back.
  stats = full["micle"]
  assert stats["num_records"] == 8 and stats["num_groups"] == 6
  assert stats["num_fallback"] == 4 and stats["fallback_fraction"] == 0.5
  config = run_dir.read_run_config(str(tmp_path / "full"))
  assert config.settings["positive_pairs"] == "micle"
  assert config.settings["micle"]["num_groups"] == 6
  resumed_dir = _rolled_back_copy(str(tmp_path / "full"), str(tmp_path / "resumed"), 2)
  resumed = pretrain(PretrainConfig(train_data=data, model_dir=resumed_dir, train_steps=4, **micle))
  assert resumed["start_step"] == 2 and resumed["final_step"] == 4
  _assert_same_weights(str(tmp_path / "full"), resumed_dir)
