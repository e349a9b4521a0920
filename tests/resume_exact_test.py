"""A resumed run continues exactly where it stopped: same batches, same weights.

A pretraining run of 3 steps that saved at step 2 is "interrupted" by rolling
a copy of its model_dir back to that checkpoint; running the same config on
the copy resumes from step 2. Because the input pipeline skips what was
consumed (rather than starting over with a new seed), the resumed run must end
with the uninterrupted run's weights. Step 3 is the first of the second epoch
(8 examples, batch 4), so the per-epoch reshuffle is exercised too.

"Exactly" is bit-for-bit: both runs execute the same float32 operations on the
same batches in one process, so there is no rounding difference to allow for.
"""

import glob
import os
import shutil

import numpy as np
import pytest
import tensorflow as tf


def _rolled_back_copy(model_dir, dest, step):
  shutil.copytree(model_dir, dest)
  for path in glob.glob(os.path.join(dest, "ckpt-*")):
    if not os.path.basename(path).startswith(f"ckpt-{step}."):
      os.remove(path)
  with open(os.path.join(dest, "checkpoint"), "w") as f:
    f.write(f'model_checkpoint_path: "ckpt-{step}"\nall_model_checkpoint_paths: "ckpt-{step}"\n')
  return dest


def _variables(model_dir):
  reader = tf.train.load_checkpoint(model_dir)
  # Every saved value: weights, optimizer state, step, projection-head statistics.
  names = [n for n in reader.get_variable_to_shape_map() if n != "_CHECKPOINTABLE_OBJECT_GRAPH"]
  return {n: reader.get_tensor(n) for n in names}


def _assert_same_weights(a, b):
  """Every saved value of the two model_dirs' newest checkpoints is bit-identical."""
  va, vb = _variables(a), _variables(b)
  assert va.keys() == vb.keys() and len(va) > 10
  for name in va:
    np.testing.assert_array_equal(va[name], vb[name], err_msg=name)


@pytest.mark.slow
@pytest.mark.integration
def test_pretrain_resume_equals_uninterrupted_run(tmp_path):
  from train_testdata import write_multiclass  # helper module next to the tests

  from remedis_tf.train.pretrain import PretrainConfig, pretrain

  data = write_multiclass(str(tmp_path / "data"), num_shards=2, per_shard=4)
  common = dict(
    train_data=data,
    encoder="bit-tiny",
    objective="simclr",
    train_steps=3,
    global_batch_size=4,
    image_size=32,
    checkpoint_steps=2,
    image_summaries=False,
    seed=7,
  )
  full = pretrain(PretrainConfig(model_dir=str(tmp_path / "full"), **common))
  assert full["final_step"] == 3
  resumed_dir = _rolled_back_copy(str(tmp_path / "full"), str(tmp_path / "resumed"), 2)
  resumed = pretrain(PretrainConfig(model_dir=resumed_dir, **common))
  assert resumed["start_step"] == 2 and resumed["final_step"] == 3
  assert resumed["loss_history"] == full["loss_history"][2:]
  _assert_same_weights(str(tmp_path / "full"), resumed_dir)


@pytest.mark.slow
@pytest.mark.integration
def test_finetune_resume_keeps_label_subset_and_position(tmp_path):
  from train_testdata import write_multiclass  # helper module next to the tests

  from remedis_tf.train.finetune import FinetuneConfig, finetune

  data = write_multiclass(str(tmp_path / "data"), num_shards=2, per_shard=6)
  common = dict(
    train_data=data,
    init_from=None,
    encoder="bit-tiny",
    label_fraction=0.6,
    train_steps=4,
    global_batch_size=2,
    image_size=32,
    checkpoint_steps=2,
    learning_rate=0.05,
    seed=5,
  )
  full = finetune(FinetuneConfig(model_dir=str(tmp_path / "full"), **common))
  resumed_dir = _rolled_back_copy(str(tmp_path / "full"), str(tmp_path / "resumed"), 2)
  resumed = finetune(FinetuneConfig(model_dir=resumed_dir, **common))
  assert resumed["start_step"] == 2 and resumed["final_step"] == 4
  assert resumed["train_examples"] == full["train_examples"]
  assert resumed["loss_history"] == full["loss_history"][2:]
  _assert_same_weights(str(tmp_path / "full"), resumed_dir)
