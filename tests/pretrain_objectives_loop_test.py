"""Objectives with state (MoCo-v2, BYOL) through the real loop, checkpoint and resume.

The loop checkpoints each objective's own state (MoCo's queue, BYOL's target
network and step counter) under `objective/` beside the encoder; a rerun
with more steps must resume from the checkpoint and end at the new step.
"""

import glob
import os

import numpy as np
import pytest
import tensorflow as tf
import train_testdata

from remedis_tf.train.pretrain import PretrainConfig, pretrain


@pytest.fixture(scope="module")
def records(tmp_path_factory):
  folder = tmp_path_factory.mktemp("records")
  return train_testdata.write_multiclass(str(folder), num_shards=2, per_shard=8, size=40)


def _config(records, model_dir, objective, steps, image_summaries):
  return PretrainConfig(
    train_data=records,
    model_dir=model_dir,
    objective=objective,
    encoder="bit-tiny",
    train_steps=steps,
    global_batch_size=8,
    image_size=32,
    checkpoint_steps=1,
    base_learning_rate=0.05,
    image_summaries=image_summaries,
  )


def _summary_tags(model_dir):
  from tensorflow.core.util import event_pb2

  tags = set()
  for path in glob.glob(os.path.join(model_dir, "train", "events.out.tfevents*")):
    for record in tf.data.TFRecordDataset(path):
      tags.update(v.tag for v in event_pb2.Event.FromString(record.numpy()).summary.value)
  return tags


@pytest.mark.slow
@pytest.mark.integration
@pytest.mark.parametrize("objective", ["moco_v2", "byol"])
def test_objective_trains_checkpoints_and_resumes(records, tmp_path, objective):
  model_dir = str(tmp_path / objective)
  # The augmented views go to TensorBoard once per run; one run checks them (each costs a
  # second trace of the augmentation pipeline).
  summaries = objective == "byol"
  first = pretrain(_config(records, model_dir, objective, 1, summaries))
  assert first["final_step"] == 1
  losses = [loss for _, loss in first["loss_history"]]
  assert all(np.isfinite(losses))
  assert ({"views/view1", "views/view2"} <= _summary_tags(model_dir)) == summaries

  latest = tf.train.latest_checkpoint(model_dir)
  saved = dict(tf.train.list_variables(latest))
  objective_keys = [k for k in saved if k.startswith("objective/")]
  assert objective_keys, "objective state missing from the checkpoint"

  second = pretrain(_config(records, model_dir, objective, 2, False))
  assert second["start_step"] == 1
  assert second["final_step"] == 2
  assert second["resumed_from"]
  assert np.isfinite(second["loss_history"][-1][1])
