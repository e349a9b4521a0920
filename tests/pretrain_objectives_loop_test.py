"""Objectives with state (MoCo-v2, BYOL) through the real loop, checkpoint and resume.

The loop checkpoints each objective's own state (MoCo's queue, BYOL's target
network and step counter) under `objective/` beside the encoder; a rerun
with more steps must resume from the checkpoint and end at the new step.
"""

import numpy as np
import pytest
import tensorflow as tf
import train_testdata

from remedis_tf.train.pretrain import PretrainConfig, pretrain


@pytest.fixture(scope="module")
def records(tmp_path_factory):
  folder = tmp_path_factory.mktemp("records")
  return train_testdata.write_multiclass(str(folder), num_shards=2, per_shard=8, size=40)


def _config(records, model_dir, objective, steps):
  return PretrainConfig(
    train_data=records,
    model_dir=model_dir,
    objective=objective,
    encoder="bit-tiny",
    train_steps=steps,
    global_batch_size=8,
    image_size=32,
    checkpoint_steps=2,
    base_learning_rate=0.05,
  )


@pytest.mark.slow
@pytest.mark.integration
@pytest.mark.parametrize("objective", ["moco_v2", "byol"])
def test_objective_trains_checkpoints_and_resumes(records, tmp_path, objective):
  model_dir = str(tmp_path / objective)
  first = pretrain(_config(records, model_dir, objective, steps=2))
  assert first["final_step"] == 2
  losses = [loss for _, loss in first["loss_history"]]
  assert all(np.isfinite(losses))

  latest = tf.train.latest_checkpoint(model_dir)
  saved = dict(tf.train.list_variables(latest))
  objective_keys = [k for k in saved if k.startswith("objective/")]
  assert objective_keys, "objective state missing from the checkpoint"

  second = pretrain(_config(records, model_dir, objective, steps=4))
  assert second["start_step"] == 2
  assert second["final_step"] == 4
  assert second["resumed_from"]
