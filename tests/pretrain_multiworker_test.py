"""Two remedis-pretrain processes under MultiWorkerMirroredStrategy on localhost."""

import json
import os

import pytest

from remedis_tf.train.pretrain import PretrainConfig, pretrain

COMMON = dict(
  encoder="bit-tiny", train_steps=3, global_batch_size=8, image_size=32, objective="simclr", seed=3
)


@pytest.mark.slow
@pytest.mark.integration
@pytest.mark.parametrize("jit_compile", [False, True])
def test_two_workers_match_each_other_and_single_process(tmp_path, jit_compile):
  """With jit_compile the workers compile only the encoder (see distribute.jit_scope)."""
  from train_testdata import run_workers, write_multiclass  # helper module next to the tests

  data = write_multiclass(str(tmp_path / "data"), num_shards=2, per_shard=4)
  outputs = [str(tmp_path / f"worker{i}.json") for i in range(2)]
  worker_args = [
    [
      f"--train_data={data}",
      f"--model_dir={tmp_path / 'mw'}",
      "--strategy=multi_worker",
      f"--results_json={out}",
      "--checkpoint_steps=2",
      "--log_every_steps=1",
      f"--jit_compile={jit_compile}",
      *(f"--{k}={v}" for k, v in COMMON.items()),
    ]
    for out in outputs
  ]
  procs, logs = run_workers("remedis-pretrain", worker_args)
  for p, log in zip(procs, logs, strict=True):
    assert p.returncode == 0, log[-3000:]
  if jit_compile:
    assert "XLA compiles the encoder's forward and backward pass" in logs[0]
  r0, r1 = (json.load(open(o)) for o in outputs)
  assert r0["num_replicas"] == 2 and r0["final_step"] == 3 and r1["final_step"] == 3
  assert r0["is_chief"] and not r1["is_chief"]
  assert r0["encoder_weights"]["sha256"] == r1["encoder_weights"]["sha256"]
  assert r0["loss_history"] == r1["loss_history"]
  # Only the chief wrote into model_dir; the worker's scratch dir is gone.
  assert os.path.exists(tmp_path / "mw" / "ckpt-3.index")
  assert not os.path.exists(tmp_path / "mw" / ".workers" / "worker_1")
  # Single process on the same global batch (both shards = all 8 records of epoch 0).
  single = pretrain(
    PretrainConfig(
      train_data=data, model_dir=str(tmp_path / "single"), image_summaries=False, **COMMON
    )
  )
  assert single["num_replicas"] == 1
  assert r0["loss_history"][0][1] == pytest.approx(single["loss_history"][0][1], rel=1e-4)
