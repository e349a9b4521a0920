"""Tests of the demo's fine-tuning run bookkeeping (study_runs) and worker pool (run_pool)."""

import dataclasses
import hashlib
import json
import os
import signal

import pytest
import tensorflow as tf

from remedis_tf.demo import run_pool, study_runs
from remedis_tf.errors import InputNotFoundError
from remedis_tf.train.preemption import PreemptionWatcher


def _spec(root, **changes):
  settings = {
    "encoder": "bit-tiny",
    "label_fraction": 0.25,
    "train_steps": 4,
    "global_batch_size": 8,
    "image_size": 64,
    "label_mode": "multi_label",
    "num_classes": 2,
    "label_names": ("opacity", "cardiomegaly"),
    "learning_rate": 0.015,
    "split": "train",
    "augment_preset": "cxr",
    "augment_overrides": (("crop_area_range", (0.35, 1.0)),),
    "checkpoint_steps": 0,
    "keep_checkpoint_max": 1,
    "seed": 0,
    "log_every_steps": 4,
    "summary_every_steps": 4,
  }
  spec = study_runs.RunSpec(
    name="remedis/siteA_n8_seed0",
    model_dir=os.path.join(root, "runs", "remedis", "siteA_n8_seed0"),
    root=root,
    init_from=os.path.join(root, "pretrain"),
    train_data=os.path.join(root, "records", "siteA", "train-*.tfrecord"),
    eval_data=(("siteA", os.path.join(root, "records", "siteA", "test-*.tfrecord")),),
    settings=settings,
    eval_batch_size=30,
    digests={"init": "a" * 64, "train": "b" * 64, "siteA": "c" * 64},
  )
  return dataclasses.replace(spec, **changes)


def test_config_hash_changes_with_every_setting_and_input_but_not_with_paths(tmp_path):
  spec = _spec(str(tmp_path))
  base = spec.config_hash()
  assert len(base) == 64 and base == _spec(str(tmp_path)).config_hash()
  changed = {
    "encoder": "bit-r50x1",
    "label_fraction": 0.5,
    "train_steps": 5,
    "global_batch_size": 16,
    "image_size": 96,
    "learning_rate": 0.03,
    "augment_preset": "natural",
    "augment_overrides": (("crop_area_range", (0.3, 1.0)),),
    "seed": 1,
    "label_names": ("a", "b"),
  }
  for key, value in changed.items():
    other = _spec(str(tmp_path), settings={**spec.settings, key: value})
    assert other.config_hash() != base, key
  for key in spec.digests:
    other = _spec(str(tmp_path), digests={**spec.digests, key: "d" * 64})
    assert other.config_hash() != base, key
  assert _spec(str(tmp_path), eval_batch_size=31).config_hash() != base
  both = (*spec.eval_data, ("siteB", "x"))
  assert _spec(str(tmp_path), eval_data=both).config_hash() != base
  # A moved study (other paths, same inputs) keeps its hashes.
  moved = _spec(str(tmp_path / "moved"))
  assert moved.model_dir != spec.model_dir and moved.config_hash() == base


def test_file_digest_is_sha256_of_names_and_bytes_in_name_order(tmp_path):
  paths = []
  for name, data in (("b.tfrecord", b"second"), ("a.tfrecord", b"first")):
    paths.append(str(tmp_path / name))
    with open(paths[-1], "wb") as f:
      f.write(data)
  expected = hashlib.sha256(b"a.tfrecord\0first" + b"b.tfrecord\0second").hexdigest()
  assert study_runs.file_digest(paths) == expected == study_runs.file_digest(paths[::-1])
  assert study_runs.records_digest(str(tmp_path / "*.tfrecord")) == expected
  with open(paths[0], "ab") as f:
    f.write(b"!")
  assert study_runs.file_digest(paths) != expected
  with pytest.raises(ValueError, match="No records"):
    study_runs.records_digest(str(tmp_path / "none-*.tfrecord"))


def test_checkpoint_digest_covers_the_newest_checkpoint(tmp_path):
  variable = tf.Variable([1.0, 2.0])
  checkpoint = tf.train.Checkpoint(v=variable)
  first = checkpoint.save(str(tmp_path / "ckpt"))
  by_prefix = study_runs.checkpoint_digest(first)
  assert study_runs.checkpoint_digest(str(tmp_path)) == by_prefix
  variable.assign([1.0, 3.0])
  checkpoint.save(str(tmp_path / "ckpt"))
  assert study_runs.checkpoint_digest(str(tmp_path)) != by_prefix
  with pytest.raises(ValueError, match="No checkpoint"):
    study_runs.checkpoint_digest(str(tmp_path / "empty"))


def _read(path):
  with open(path) as f:
    return json.load(f)


def _write_result(spec, **changes):
  os.makedirs(spec.model_dir, exist_ok=True)
  path = spec.predictions_path("siteA")
  with open(path, "wb") as f:
    f.write(b"npz")
  result = {
    "config_hash": spec.config_hash(),
    "steps_trained": spec.train_steps,
    "predictions": {"siteA": os.path.relpath(path, spec.root)},
    **changes,
  }
  with open(os.path.join(spec.model_dir, study_runs.RESULT_JSON), "w") as f:
    json.dump(result, f)
  return result


def test_load_finished_accepts_only_complete_results_of_the_same_configuration(tmp_path):
  spec = _spec(str(tmp_path))
  assert study_runs.load_finished(spec) is None  # nothing yet
  result = _write_result(spec)
  assert study_runs.load_finished(spec) == result
  _write_result(spec, steps_trained=spec.train_steps - 1)  # truncated
  assert study_runs.load_finished(spec) is None
  _write_result(spec, config_hash="0" * 64)  # another configuration
  assert study_runs.load_finished(spec) is None
  _write_result(spec, predictions={})  # no predictions
  assert study_runs.load_finished(spec) is None
  _write_result(spec)
  os.remove(spec.predictions_path("siteA"))  # predictions file lost
  assert study_runs.load_finished(spec) is None


def test_prepare_model_dir_empties_a_run_of_another_configuration(tmp_path):
  spec = _spec(str(tmp_path))
  os.makedirs(spec.model_dir)
  stale = os.path.join(spec.model_dir, "ckpt-2.index")
  with open(stale, "w") as f:
    f.write("x")
  # Files without a run_spec.json belong to an unknown configuration.
  assert study_runs.prepare_model_dir(spec) is True and not os.path.exists(stale)
  recorded = _read(os.path.join(spec.model_dir, study_runs.SPEC_JSON))
  assert recorded["config_hash"] == spec.config_hash()
  # The same configuration keeps its checkpoint (the run resumes).
  with open(stale, "w") as f:
    f.write("x")
  assert study_runs.prepare_model_dir(spec) is False and os.path.exists(stale)
  # Another configuration does not.
  other = _spec(str(tmp_path), settings={**spec.settings, "seed": 5})
  assert study_runs.prepare_model_dir(other) is True and not os.path.exists(stale)
  recorded = _read(os.path.join(spec.model_dir, study_runs.SPEC_JSON))
  assert recorded["config_hash"] == other.config_hash()


def test_signal_after_polls_sends_sigterm_on_the_given_poll_and_returns_once_it_arrived():
  with PreemptionWatcher((signal.SIGTERM,)) as inner:
    hook = study_runs.SignalAfterPolls(inner, after=3, pid=os.getpid())
    assert [hook.requested, hook.requested] == [False, False]
    assert not inner.requested
    assert hook.requested is True  # the real SIGTERM went through the handler
    assert inner.signal_received == signal.SIGTERM


def test_interrupt_hook_applies_to_the_named_run_only_when_it_starts_fresh(tmp_path, monkeypatch):
  spec = _spec(str(tmp_path))
  watcher = PreemptionWatcher(())
  assert study_runs.interrupt_hook(spec, watcher, 1) is watcher  # no hook set
  monkeypatch.setenv(study_runs.INTERRUPT_ENV, "baseline/siteA_n8_seed0@2")
  assert study_runs.interrupt_hook(spec, watcher, 1) is watcher  # another run
  monkeypatch.setenv(study_runs.INTERRUPT_ENV, f"{spec.name}@2")
  assert isinstance(study_runs.interrupt_hook(spec, watcher, 1), study_runs.SignalAfterPolls)
  tf.train.Checkpoint(v=tf.Variable(1.0)).save(os.path.join(spec.model_dir, "ckpt"))
  assert study_runs.interrupt_hook(spec, watcher, 1) is watcher  # resuming: no second stop


@pytest.mark.slow
def test_pool_reraises_a_worker_error_with_its_type_and_remote_traceback(tmp_path):
  spec = _spec(str(tmp_path), init_from="")  # no records exist under tmp_path
  # A pool of 2 given one run starts one worker (a process it could not use costs a start).
  with run_pool.RunPool(2) as pool, PreemptionWatcher(()) as watcher:
    with pytest.raises(InputNotFoundError) as raised:
      pool.run([spec], watcher)
  assert pool.processes_started == 1
  cause = raised.value.__cause__
  assert isinstance(cause, run_pool.RemoteTraceback)
  assert "In fine-tuning run remedis/siteA_n8_seed0" in str(cause) and "Traceback" in str(cause)
