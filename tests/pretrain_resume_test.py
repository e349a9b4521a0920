"""kill -9 then resume; SIGTERM checkpoints and exits 0; clear CLI errors."""

import glob
import json
import os
import signal
import time

import pytest
import tensorflow as tf


def _args(data, model_dir, steps, extra=()):
  return [
    f"--train_data={data}",
    f"--model_dir={model_dir}",
    "--encoder=bit-tiny",
    "--objective=simclr",
    f"--train_steps={steps}",
    "--global_batch_size=4",
    "--image_size=32",
    "--checkpoint_steps=1",
    "--log_every_steps=1",
    *extra,
  ]


def _wait_for(predicate, proc, timeout=180):
  end = time.time() + timeout
  while time.time() < end:
    if predicate():
      return True
    if proc.poll() is not None:
      return False
    time.sleep(0.2)
  return False


def _step_of(path):
  return int(os.path.basename(path).split("-")[1].split(".")[0])


@pytest.mark.slow
@pytest.mark.integration
def test_kill9_then_resume_and_sigterm_checkpoints(tmp_path):
  from train_testdata import cli, write_multiclass  # helper module next to the tests

  data = write_multiclass(str(tmp_path / "data"), num_shards=1, per_shard=8)
  model_dir = str(tmp_path / "run")
  ckpts = lambda: glob.glob(os.path.join(model_dir, "ckpt-*.index"))

  # kill -9 once the second checkpoint exists.
  proc = cli("remedis-pretrain", _args(data, model_dir, 1000))
  assert _wait_for(lambda: len(ckpts()) >= 2, proc), proc.communicate()[0][-3000:]
  proc.kill()
  proc.wait()
  # The newest checkpoint the manager recorded: a kill between writing a
  # checkpoint's files and updating the `checkpoint` state file leaves an
  # unrecorded ckpt-N behind, and resuming from the recorded one is right.
  latest = lambda: tf.train.latest_checkpoint(model_dir)
  killed_at = _step_of(latest())
  assert 1 <= killed_at < 1000

  # SIGTERM the resumed run: it saves and exits 0.
  proc = cli(
    "remedis-pretrain",
    _args(data, model_dir, 1000, ["--results_json=" + str(tmp_path / "term.json")]),
  )
  assert _wait_for(lambda: _step_of(latest()) > killed_at, proc)
  proc.send_signal(signal.SIGTERM)
  log = proc.communicate(timeout=120)[0]
  assert proc.returncode == 0, log[-3000:]
  term = json.load(open(tmp_path / "term.json"))
  assert term["preempted"] and term["resumed_from"].endswith(f"ckpt-{killed_at}")
  assert term["start_step"] == killed_at and term["final_step"] > killed_at
  assert tf.train.latest_checkpoint(model_dir).endswith(f"ckpt-{term['final_step']}")

  # The same command with a reachable end resumes and ends at the requested step.
  end_step = term["final_step"] + 2
  proc = cli(
    "remedis-pretrain",
    _args(
      data,
      model_dir,
      end_step,
      ["--results_json=" + str(tmp_path / "end.json"), "--keep_checkpoint_max=2"],
    ),
  )
  log = proc.communicate(timeout=240)[0]
  assert proc.returncode == 0, log[-3000:]
  end = json.load(open(tmp_path / "end.json"))
  assert end["start_step"] == term["final_step"] and end["final_step"] == end_step
  assert tf.train.latest_checkpoint(model_dir).endswith(f"ckpt-{end_step}")
  assert len(ckpts()) == 2  # retention
  config = json.load(open(os.path.join(model_dir, "config.json")))
  assert config["encoder"] == "bit-tiny" and config["objective"] == "simclr"


@pytest.mark.slow
@pytest.mark.integration
def test_cli_reports_bad_flags_missing_data_and_incompatible_checkpoints(tmp_path):
  from train_testdata import cli, write_multiclass  # helper module next to the tests

  proc = cli("remedis-pretrain", _args(str(tmp_path / "none-*.tfrecord"), str(tmp_path / "m"), 2))
  log = proc.communicate(timeout=120)[0]
  assert proc.returncode == 2 and "no TFRecord files match" in log
  data = write_multiclass(str(tmp_path / "data"), num_shards=1, per_shard=4)
  proc = cli("remedis-pretrain", _args(data, str(tmp_path / "m"), 2, ["--encoder=bit-r51x1"]))
  log = proc.communicate(timeout=120)[0]
  assert proc.returncode == 2 and "bit-r51x1" in log
  os.makedirs(tmp_path / "m2")
  with open(tmp_path / "m2" / "config.json", "w") as f:
    json.dump({"task": "pretrain", "encoder": "bit-r50x1", "objective": "simclr"}, f)
  proc = cli("remedis-pretrain", _args(data, str(tmp_path / "m2"), 2))
  log = proc.communicate(timeout=120)[0]
  assert proc.returncode == 2 and "cannot be resumed" in log and "bit-r50x1" in log
