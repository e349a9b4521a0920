"""Pretraining options that had no test: the linear evaluation head and steps_per_loop > 1.

Both run on records made by the real converter (whose manifest says
'multiclass'; `--linear_eval_head` without `--num_classes` used to fail on
every real converter output because the reader compared 'multi_class').
"""

import numpy as np
import pytest

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


def _encoder_arrays(model_dir):
  return [v.numpy() for v in run_dir.restore_model(model_dir).encoder.weights]


def test_linear_eval_head_reads_the_manifest_and_never_moves_the_encoder(data, tmp_path):
  with_head = pretrain(
    PretrainConfig(
      train_data=data,
      model_dir=str(tmp_path / "head"),
      train_steps=2,
      linear_eval_head=True,
      **COMMON,
    )
  )
  plain = pretrain(
    PretrainConfig(train_data=data, model_dir=str(tmp_path / "plain"), train_steps=2, **COMMON)
  )
  assert {"sup_loss", "sup_accuracy"} <= set(with_head["metrics"])
  assert 0.0 <= with_head["metrics"]["sup_accuracy"] <= 1.0
  # Two classes from the converter's manifest: the head is (C, 2).
  config = run_dir.read_run_config(str(tmp_path / "head"))
  assert config.settings["linear_eval_head"] is True
  import tensorflow as tf

  reader = tf.train.load_checkpoint(str(tmp_path / "head"))
  shapes = reader.get_variable_to_shape_map()
  head_kernels = [k for k in shapes if k.startswith("linear_head/") and shapes[k][-1:] == [2]]
  assert head_kernels, sorted(shapes)[:20]
  # The head trains on stop-gradient features: the encoder is the one a run
  # without the head reaches, to float32 precision (the same graph of encoder
  # ops; 1e-6 absolute covers a reordered float32 reduction of O(1) values).
  for a, b in zip(
    _encoder_arrays(str(tmp_path / "head")), _encoder_arrays(str(tmp_path / "plain")), strict=True
  ):
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)
  assert with_head["loss_history"][-1][1] != plain["loss_history"][-1][1]  # includes sup_loss


def test_steps_per_loop_runs_the_same_steps(data, tmp_path):
  one = pretrain(
    PretrainConfig(train_data=data, model_dir=str(tmp_path / "one"), train_steps=4, **COMMON)
  )
  two = pretrain(
    PretrainConfig(
      train_data=data, model_dir=str(tmp_path / "two"), train_steps=4, steps_per_loop=2, **COMMON
    )
  )
  assert [s for s, _ in one["loss_history"]] == [1, 2, 3, 4]
  assert [s for s, _ in two["loss_history"]] == [2, 4]
  losses = dict(one["loss_history"])
  for step, loss in two["loss_history"]:
    # Same batches, views and updates; only the tf.function boundaries move.
    np.testing.assert_allclose(loss, losses[step], rtol=1e-5)
  for a, b in zip(
    _encoder_arrays(str(tmp_path / "one")), _encoder_arrays(str(tmp_path / "two")), strict=True
  ):
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)
