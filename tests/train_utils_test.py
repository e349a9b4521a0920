"""Unit tests of strategies, checkpoint helpers, SIGTERM watcher, progress, losses, schedules."""

import json
import os
import signal

import loss_bounds
import numpy as np
import pytest
import tensorflow as tf
import two_replicas
from float32_bounds import SAFETY, U32, assert_within

from remedis_tf.train import checkpointing, distribute, finetune, precision, progress, run_dir
from remedis_tf.train.preemption import PreemptionWatcher


def test_strategy_names_and_tf_config_errors(monkeypatch):
  assert distribute.create_strategy("default").num_replicas_in_sync == 1
  with pytest.raises(distribute.StrategyError, match="Unknown strategy"):
    distribute.create_strategy("horovod")
  monkeypatch.delenv("TF_CONFIG", raising=False)
  with pytest.raises(distribute.StrategyError, match="needs the TF_CONFIG"):
    distribute.create_strategy("multi_worker")
  monkeypatch.setenv("TF_CONFIG", "{not json")
  with pytest.raises(distribute.StrategyError, match="not valid JSON"):
    distribute.parse_tf_config()
  monkeypatch.setenv(
    "TF_CONFIG",
    json.dumps({"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": 3}}),
  )
  with pytest.raises(distribute.StrategyError, match="out of range"):
    distribute.parse_tf_config()


def test_per_replica_batch_and_chief_dirs():
  strategy = two_replicas.strategy()  # one MirroredStrategy per process (see two_replicas)
  assert distribute.per_replica_batch_size(8, strategy) == 4
  with pytest.raises(distribute.StrategyError, match="multiple of the 2 replicas"):
    distribute.per_replica_batch_size(7, strategy)
  assert distribute.is_chief(strategy)
  assert distribute.write_dir("/m", strategy) == "/m"


def test_config_json_compatibility_and_checkpoint_errors(tmp_path):
  d = str(tmp_path)
  run = run_dir.RunConfig(task="pretrain", encoder="bit-tiny", image_size=32)
  run_dir.write_run_config(d, run)
  assert run_dir.read_run_config(d) == run
  run_dir.check_compatible(d, run, ["encoder"])
  with pytest.raises(checkpointing.CheckpointError, match="bit-r50x1"):
    run_dir.check_compatible(d, run_dir.RunConfig("pretrain", "bit-r50x1", 32), ["encoder"])
  with pytest.raises(checkpointing.CheckpointError, match="No checkpoint"):
    run_dir.resolve_checkpoint(d)
  v = tf.Variable(np.ones((2, 3), np.float32))
  manager = checkpointing.Checkpointer(tf.train.Checkpoint(v=v), d, d)
  path = manager.save(7)
  assert run_dir.resolve_checkpoint(d) == (path, d)
  w = tf.Variable(np.zeros((2, 3), np.float32))
  checkpointing.restore(tf.train.Checkpoint(v=w), path)
  np.testing.assert_array_equal(w.numpy(), v.numpy())
  with pytest.raises(checkpointing.CheckpointError, match="incompatible"):
    checkpointing.restore(tf.train.Checkpoint(v=tf.Variable(np.zeros((4,), np.float32))), path)
  with pytest.raises(checkpointing.CheckpointError, match="incompatible"):
    checkpointing.restore(tf.train.Checkpoint(other=tf.Variable(1.0)), path, partial=True)


def test_sigterm_sets_flag_and_restores_handler():
  before = signal.getsignal(signal.SIGTERM)
  with PreemptionWatcher() as watcher:
    assert not watcher.requested
    os.kill(os.getpid(), signal.SIGTERM)
    assert watcher.requested and watcher.signal_received == signal.SIGTERM
  assert signal.getsignal(signal.SIGTERM) == before


def test_progress_line_and_duration():
  assert progress.format_duration(3725) == "1:02:05"
  assert progress.format_duration(float("nan")) == "?"
  p = progress.Progress(total_steps=100, global_batch_size=8)
  line = p.update(10, {"loss": 1.5}, log=False)
  assert line.startswith("step 10/100 (10.0%) loss=1.5") and "img/s" in line and "ETA" in line


def test_summaries_are_written_without_tensorboard(tmp_path):
  writer = progress.summary_writer(str(tmp_path))
  progress.write_scalars(writer, 3, {"loss": 2.5}, prefix="train/")
  progress.write_images(writer, 3, "views", np.random.rand(2, 8, 8, 3).astype(np.float32))
  writer.flush()
  files = os.listdir(tmp_path)
  assert files and files[0].startswith("events.out.tfevents")
  from tensorflow.core.util import event_pb2

  tags = {}
  for record in tf.data.TFRecordDataset(str(tmp_path / files[0])):
    event = event_pb2.Event.FromString(record.numpy())
    for value in event.summary.value:
      tags[value.tag] = value
  assert tags["train/loss"].metadata.plugin_data.plugin_name == "scalars"
  assert tf.make_ndarray(tags["train/loss"].tensor) == 2.5  # a float32, written exactly
  assert tags["views"].metadata.plugin_data.plugin_name == "images"


def test_supervised_losses_match_numpy_and_sum_over_replicas():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(4, 3)).astype(np.float32)
  y = np.array([0, 2, 1, 2])
  w = np.array([1.0, 2.0, 0.5], np.float32)
  loss, correct = finetune.supervised_loss(
    tf.constant(logits), tf.constant(y), "multi_class", 4, tf.constant(w)
  )
  z = logits.astype(np.float64)
  logp = z - np.log(np.exp(z).sum(1, keepdims=True))
  ref = np.mean(-logp[np.arange(4), y] * w[y])
  # Tolerances: the float32 loss replayed by loss_bounds.supervised, times SAFETY.
  bound = loss_bounds.supervised(logits, y, False, 4, w).e
  assert_within(float(loss), ref, SAFETY * bound, "weighted cross-entropy")
  assert float(correct) == np.sum(z.argmax(1) == y)
  ml = np.array([[1, 0, -1], [0, -1, 1], [1, 1, 0], [-1, 0, 0]], np.float32)
  loss, correct = finetune.supervised_loss(tf.constant(logits), tf.constant(ml), "multi_label", 4)
  p = 1 / (1 + np.exp(-z))
  t = np.clip(ml, 0, 1)
  bce = -(t * np.log(p) + (1 - t) * np.log(1 - p)) * (ml >= 0)
  bound = SAFETY * loss_bounds.supervised(logits, ml, True, 4).e
  assert_within(float(loss), bce.sum() / 12, bound, "masked BCE")
  assert float(correct) == np.sum(((z > 0) == (t > 0)) & (ml >= 0))
  # Two replicas of two examples each: per-replica losses sum to the global one.
  strategy = two_replicas.strategy()  # one MirroredStrategy per process (see two_replicas)
  ds = tf.data.Dataset.from_tensor_slices((logits, ml)).batch(4)
  batch = next(iter(strategy.experimental_distribute_dataset(ds)))
  per_replica = strategy.run(
    lambda a, b: finetune.supervised_loss(a, b, "multi_label", 4)[0], args=batch
  )
  total = strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)
  assert_within(float(total), bce.sum() / 12, bound, "BCE over two replicas")  # any split


def test_warmup_step_decay_schedule():
  s = finetune.WarmupStepDecay(0.1, 10, (20, 30))
  steps = np.array([0, 5, 10, 19, 20, 29, 30, 50])
  ref = np.where(
    steps < 10,
    0.1 * steps / 10,
    0.1 * 0.1 ** ((steps >= 20).astype(int) + (steps >= 30).astype(int)),
  )
  # float32: the rate and the decay factors rounded once each, and at most 3 products or
  # quotients on the way: 5 roundings.
  assert_within([float(s(i)) for i in steps], ref, SAFETY * 5 * U32 * ref, "schedule")


def test_precision_policy_is_restored():
  import keras

  before = keras.mixed_precision.global_policy().name
  with precision.policy("bfloat16"):
    assert keras.mixed_precision.global_policy().name == "mixed_bfloat16"
  assert keras.mixed_precision.global_policy().name == before
  with pytest.raises(ValueError, match="mixed_precision"):
    precision.check_policy_name("float16")
