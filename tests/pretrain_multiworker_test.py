"""Two remedis-pretrain processes under MultiWorkerMirroredStrategy on localhost."""

import json
import math
import os

import pytest
from float32_bounds import bit_reduction_sizes, statistical_relative_bound

from remedis_tf.train.pretrain import PretrainConfig, pretrain

COMMON = dict(encoder="bit-tiny", global_batch_size=8, image_size=32, objective="simclr", seed=3)
TEMPERATURE = 0.1  # SimCLR's default


def _first_loss_tolerance() -> float:
  """|first-step loss, 2 workers - 1 process|, both float32 with other batch splits.

  Statistical bound (float32_bounds): the projections carry the relative
  error rho of the encoder's reductions at 32 px, the SimCLR head's (2048-term
  dot products and sync BatchNorm over 2 * 8 rows, three layers) and the
  normalisation of 128-d vectors. A logit u.v / tau then errs by about
  rho / tau, a softmax cross-entropy by at most twice its largest logit error,
  and the loss averages 2 M = 16 anchors with independent errors:
  |dL| ~ 2 rho / tau / sqrt(16) per evaluation, two evaluations.
  """
  sizes = bit_reduction_sizes(height=32, width_px=32) + [2048, 16] * 3 + [128, 128, 16, 16]
  rho = statistical_relative_bound(sizes)
  return 2 * (2 * rho / TEMPERATURE) / math.sqrt(16)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
  from train_testdata import write_multiclass  # helper module next to the tests

  return write_multiclass(str(tmp_path_factory.mktemp("data")), num_shards=2, per_shard=4)


@pytest.fixture(scope="module")
def single_first_loss(data, tmp_path_factory):
  """One process on the same global batch (both shards = all 8 records of epoch 0)."""
  single = pretrain(
    PretrainConfig(
      train_data=data,
      model_dir=str(tmp_path_factory.mktemp("single")),
      image_summaries=False,
      train_steps=1,
      **COMMON,
    )
  )
  assert single["num_replicas"] == 1
  return single["loss_history"][0][1]


@pytest.mark.slow
@pytest.mark.integration
@pytest.mark.parametrize("jit_compile", [False, True])
def test_two_workers_match_each_other_and_single_process(
  data, single_first_loss, tmp_path, monkeypatch, jit_compile
):
  """With jit_compile the workers compile only the encoder (see distribute.jit_scope)."""
  from train_testdata import run_workers  # helper module next to the tests

  # Two worker processes share the machine: one intra-op thread each (the
  # environment is inherited), so they do not oversubscribe the cores.
  monkeypatch.setenv("TF_NUM_INTRAOP_THREADS", "1")
  outputs = [str(tmp_path / f"worker{i}.json") for i in range(2)]
  worker_args = [
    [
      f"--train_data={data}",
      f"--model_dir={tmp_path / 'mw'}",
      "--strategy=multi_worker",
      f"--results_json={out}",
      "--train_steps=2",
      "--checkpoint_steps=1",
      "--log_every_steps=1",
      "--image_summaries=false",
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
  assert r0["num_replicas"] == 2 and r0["final_step"] == 2 and r1["final_step"] == 2
  assert r0["is_chief"] and not r1["is_chief"]
  assert r0["encoder_weights"]["sha256"] == r1["encoder_weights"]["sha256"]
  assert r0["loss_history"] == r1["loss_history"]
  # Only the chief wrote into model_dir (a checkpoint per step); the worker's scratch dir is gone.
  assert os.path.exists(tmp_path / "mw" / "ckpt-1.index")
  assert os.path.exists(tmp_path / "mw" / "ckpt-2.index")
  assert not os.path.exists(tmp_path / "mw" / ".workers" / "worker_1")
  assert abs(r0["loss_history"][0][1] - single_first_loss) <= _first_loss_tolerance()
