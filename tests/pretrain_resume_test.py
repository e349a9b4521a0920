"""kill -9 then resume; SIGTERM checkpoints and exits 0; clear CLI errors."""

import glob
import json
import os
import signal

import pytest
import tensorflow as tf

from remedis_tf.train.loop import FAULT_ENV as FAULT


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


def _step_of(path):
  return int(os.path.basename(path).split("-")[1].split(".")[0])


@pytest.mark.slow
@pytest.mark.integration
def test_kill9_then_resume_and_sigterm_checkpoints(tmp_path):
  """Interrupts at steps the job announces (REMEDIS_TRAIN_FAULT), never by a timer."""
  from train_testdata import cli, write_multiclass  # helper module next to the tests

  data = write_multiclass(str(tmp_path / "data"), num_shards=1, per_shard=8)
  model_dir = str(tmp_path / "run")
  ckpts = lambda: glob.glob(os.path.join(model_dir, "ckpt-*.index"))
  latest = lambda: tf.train.latest_checkpoint(model_dir)

  # kill -9 right after the step-2 checkpoint.
  proc = cli("remedis-pretrain", _args(data, model_dir, 8), extra_env={FAULT: "kill@2"})
  log = proc.communicate(timeout=240)[0]
  assert proc.returncode == -signal.SIGKILL, log[-3000:]
  assert _step_of(latest()) == 2

  # SIGTERM the resumed run at step 4: it finishes that step's successor, saves, exits 0.
  proc = cli(
    "remedis-pretrain",
    _args(data, model_dir, 8, ["--results_json=" + str(tmp_path / "term.json")]),
    extra_env={FAULT: "term@4"},
  )
  log = proc.communicate(timeout=240)[0]
  assert proc.returncode == 0, log[-3000:]
  term = json.load(open(tmp_path / "term.json"))
  assert term["preempted"] and term["resumed_from"].endswith("ckpt-2")
  assert term["start_step"] == 2 and term["final_step"] == 5
  assert latest().endswith("ckpt-5")

  # The same command without interruption resumes and ends at the requested step.
  proc = cli(
    "remedis-pretrain",
    _args(
      data,
      model_dir,
      7,
      ["--results_json=" + str(tmp_path / "end.json"), "--keep_checkpoint_max=2"],
    ),
  )
  log = proc.communicate(timeout=240)[0]
  assert proc.returncode == 0, log[-3000:]
  end = json.load(open(tmp_path / "end.json"))
  assert end["start_step"] == 5 and end["final_step"] == 7 and not end["preempted"]
  assert latest().endswith("ckpt-7")
  assert len(ckpts()) == 2  # retention
  config = json.load(open(os.path.join(model_dir, "config.json")))
  assert config["encoder"] == "bit-tiny" and config["objective"] == "simclr"


@pytest.mark.slow
@pytest.mark.integration
def test_cli_reports_bad_flags_missing_data_and_incompatible_checkpoints(tmp_path):
  """One user error through the CLI process (exit 2, no traceback), the others in-process.

  The CLI maps every `UserError` to exit status 2 (cli_util); the process case
  checks that mapping, the in-process cases the error and its message.
  """
  from train_testdata import cli, write_multiclass  # helper module next to the tests

  from remedis_tf.errors import UserError
  from remedis_tf.train.pretrain import PretrainConfig, pretrain

  proc = cli("remedis-pretrain", _args(str(tmp_path / "none-*.tfrecord"), str(tmp_path / "m"), 2))
  log = proc.communicate(timeout=120)[0]
  assert proc.returncode == 2 and "no TFRecord files match" in log and "Traceback" not in log
  data = write_multiclass(str(tmp_path / "data"), num_shards=1, per_shard=4)
  common = dict(
    train_data=data, train_steps=2, objective="simclr", global_batch_size=4, image_size=32
  )
  with pytest.raises(UserError, match="bit-r51x1"):
    pretrain(PretrainConfig(model_dir=str(tmp_path / "m"), encoder="bit-r51x1", **common))
  os.makedirs(tmp_path / "m2")
  with open(tmp_path / "m2" / "config.json", "w") as f:
    json.dump({"task": "pretrain", "encoder": "bit-r50x1", "objective": "simclr"}, f)
  with pytest.raises(UserError, match="cannot be resumed") as error:
    pretrain(PretrainConfig(model_dir=str(tmp_path / "m2"), encoder="bit-tiny", **common))
  assert "bit-r50x1" in str(error.value)
