"""Fine-tuning from each kind of start, then evaluation checked against scikit-learn.

Each start point is checked to be really loaded, weight for weight (issue 13, item 4):
a run with learning rate 0 ends at its checkpoint's encoder, the blocks frozen in a
run from a BiT .npz keep the .npz's (perturbed, so recognisable) weights, and an
encoder frozen from a SavedModel computes what the exported one does.
"""

import json

import numpy as np
import pytest
import tensorflow as tf
from float32_bounds import assert_network_close, bit_tiny_bound
from sklearn.metrics import roc_auc_score

from remedis_tf import models
from remedis_tf.train import run_dir
from remedis_tf.train.evaluate import EvaluateConfig, evaluate, predict, predict_each
from remedis_tf.train.evaluation_metrics import compute_metrics
from remedis_tf.train.finetune import FinetuneConfig, finetune, hyperrule_schedule
from remedis_tf.train.pretrain import PretrainConfig, pretrain

TINY = dict(encoder="bit-tiny", image_size=32, global_batch_size=4)


def test_hyperrule_schedule_follows_bit():
  assert hyperrule_schedule(5_000) == hyperrule_schedule(19_999)
  small = hyperrule_schedule(100)
  assert (small.warmup_steps, small.decay_steps, small.total_steps) == (100, (200, 300, 400), 500)
  assert hyperrule_schedule(100_000).total_steps == 10_000
  assert hyperrule_schedule(10**6).total_steps == 20_000
  custom = hyperrule_schedule(100, train_steps=1000)
  assert custom.decay_steps == (300, 600, 900) and custom.warmup_steps == 50


@pytest.mark.slow
@pytest.mark.integration
def test_finetune_from_each_start_and_evaluate(tmp_path):
  from train_testdata import cli, encoder_arrays, write_multiclass, write_multilabel

  mc = write_multiclass(str(tmp_path / "mc"), num_shards=1, per_shard=8)
  ml = write_multilabel(str(tmp_path / "ml"), n=12, k=3)

  # 1. From our pretraining checkpoint (a model_dir), multi-class, label fraction.
  pre_dir = str(tmp_path / "pre")
  pre = pretrain(
    PretrainConfig(train_data=mc, model_dir=pre_dir, train_steps=1, image_summaries=False, **TINY)
  )
  r1 = finetune(
    FinetuneConfig(
      train_data=mc,
      model_dir=str(tmp_path / "ft_ckpt"),
      init_from=pre_dir,
      train_steps=2,
      label_fraction=0.7,
      learning_rate=0.0,  # The encoder must end where it started, weight for weight.
      **TINY,
    )
  )
  assert r1["initialized_from"].startswith("checkpoint:") and r1["final_step"] == 2
  assert r1["label_mode"] == "multiclass" and r1["num_classes"] == 2
  assert pre["final_step"] == 1
  got = encoder_arrays(str(tmp_path / "ft_ckpt"))
  assert all(np.array_equal(a, b) for a, b in zip(got, encoder_arrays(pre_dir), strict=True))
  fresh = models.build_encoder_by_name("bit-tiny")
  assert not all(np.array_equal(a, b.numpy()) for a, b in zip(got, fresh.weights, strict=True))

  # 2. From a BiT .npz, multi-label with class weights and a frozen stem: remedis-finetune
  #    run as a process (exit 0, results in --results_json).
  enc = models.build_encoder_by_name("bit-tiny")
  rng = np.random.default_rng(7)
  for v in enc.weights:  # Not a fresh initialisation: recognisable weights.
    v.assign(v.numpy() + rng.normal(0, 0.05, v.shape).astype(np.float32))
  models.save_bit_checkpoint(enc, str(tmp_path / "bit.npz"))
  common = ["--encoder=bit-tiny", "--image_size=32", "--global_batch_size=4"]
  proc = cli(
    "remedis-finetune",
    [
      f"--train_data={ml}",
      f"--model_dir={tmp_path / 'ft_npz'}",
      f"--init_from={tmp_path / 'bit.npz'}",
      "--train_steps=2",
      "--freeze_up_to=block1",
      "--class_weights=1.0,2.0,1.0",
      "--learning_rate=0.1",
      f"--results_json={tmp_path / 'ft_npz.json'}",
      *common,
    ],
  )
  log = proc.communicate(timeout=300)[0]
  assert proc.returncode == 0, log[-3000:]
  r2 = json.loads((tmp_path / "ft_npz.json").read_text())
  assert r2["initialized_from"].startswith("bit_npz:") and r2["label_mode"] == "multilabel"
  assert r2["final_step"] == 2 and np.isfinite(r2["metrics"]["loss"])
  settings = json.loads((tmp_path / "ft_npz" / "config.json").read_text())
  assert settings["class_weights"] == [1.0, 2.0, 1.0] and settings["freeze_up_to"] == "block1"
  # The frozen blocks hold the .npz's weights exactly; the last block trained.
  trained = run_dir.restore_model(str(tmp_path / "ft_npz")).encoder
  for block in ("root_block", "block1", "block4"):
    same = [
      np.array_equal(a.numpy(), b.numpy())
      for a, b in zip(trained.get_layer(block).weights, enc.get_layer(block).weights, strict=True)
    ]
    assert all(same) if block != "block4" else not all(same), block
  # A start point that does not exist is a user error: exit 2, one line naming it.
  missing = str(tmp_path / "no-such-start.npz")
  proc = cli(
    "remedis-finetune",
    [f"--train_data={ml}", f"--model_dir={tmp_path / 'ft_bad'}", f"--init_from={missing}", *common],
  )
  log = proc.communicate(timeout=300)[0]
  assert proc.returncode == 2 and missing in log and "Traceback" not in log, log[-3000:]

  # 3. From a hub SavedModel, linear evaluation.
  from hub_export.export import export_encoder

  export_encoder(enc, str(tmp_path / "hub"))
  r3 = finetune(
    FinetuneConfig(
      train_data=mc,
      model_dir=str(tmp_path / "ft_hub"),
      init_from=str(tmp_path / "hub"),
      train_steps=2,
      freeze_up_to="all",
      **TINY,
    )
  )
  assert r3["initialized_from"].startswith("saved_model:") and r3["final_step"] == 2
  # Frozen, the fine-tuned encoder computes what the exported one does: two float32
  # evaluations of bit-tiny (the SavedModel's graph, Keras), twice its statistical bound.
  images = tf.constant(np.random.default_rng(3).random((2, 32, 32, 3)), tf.float32)
  restored = run_dir.restore_model(str(tmp_path / "ft_hub"), image_size=32).encoder
  assert_network_close(
    restored(images)["feature_map"].numpy(),
    enc(images)["feature_map"].numpy(),
    bit_tiny_bound(32, 32),
    err_msg="feature_map",
  )

  # Evaluate the multi-label model with remedis-evaluate run as a process (exit 0);
  # AUROC vs sklearn on the predictions it saved.
  out = tmp_path / "eval.json"
  proc = cli(
    "remedis-evaluate",
    [
      f"--data={ml}",
      f"--model_dir={tmp_path / 'ft_npz'}",
      f"--output_json={out}",
      f"--predictions_npz={tmp_path / 'pred.npz'}",
      "--num_bootstrap=200",
    ],
  )
  log = proc.communicate(timeout=300)[0]
  assert proc.returncode == 0, log[-3000:]
  res = json.loads(out.read_text())
  pred = np.load(tmp_path / "pred.npz")
  y, p = pred["labels"], pred["probabilities"]
  assert y.shape == (12, 3) and res["n_examples"] == 12 and res["n_patients"] == 6
  for k, name in enumerate(["c0", "c1", "c2"]):
    m = y[:, k] >= 0
    got = res["auroc"]["per_label"][name]
    if len(np.unique(y[m, k])) == 2:
      # float64 sums over 12 examples in two orders: 2 gamma_12 (u = 2^-53) plus the
      # normalisation, times SAFETY (2).
      f64 = 2 * 2 * (12 + 4) * 2.0**-53
      assert got["value"] == pytest.approx(roc_auc_score(y[m, k], p[m, k]), abs=f64)
      assert got["ci_low"] <= got["value"] <= got["ci_high"]
  # JSON writes a float64's shortest round-tripping repr: the process's metrics, read back,
  # equal those recomputed here from the predictions it saved (same arrays, same seed).
  again = compute_metrics(
    y, p, "multilabel", pred["patient_ids"], ["c0", "c1", "c2"], num_bootstrap=200
  )
  assert res["auroc"] == json.loads(json.dumps(again["auroc"]))

  # The SavedModel-started model evaluates too (encoder rebuilt from the SavedModel).
  res3 = evaluate(EvaluateConfig(data=mc, model_dir=str(tmp_path / "ft_hub"), num_bootstrap=50))
  assert res3["n_examples"] == 8

  # Several data sets of one model restored once: each equals its own `predict`,
  # with another batch size (a partial last batch) in the same call.
  alone = [
    predict(EvaluateConfig(data=ml, model_dir=str(tmp_path / "ft_npz"), batch_size=5)),
    predict(EvaluateConfig(data=ml, model_dir=str(tmp_path / "ft_npz"), batch_size=7)),
  ]
  together = predict_each(
    [
      EvaluateConfig(data=ml, model_dir=str(tmp_path / "ft_npz"), batch_size=5),
      EvaluateConfig(data=ml, model_dir=str(tmp_path / "ft_npz"), batch_size=7),
    ]
  )
  assert len(together) == 2 and together[1]["probabilities"].shape == (12, 3)
  for a, b in zip(alone, together, strict=True):
    assert set(a) == set(b)
    for key in ("labels", "patient_ids", "source_ids"):
      np.testing.assert_array_equal(a[key], b[key])
    # The same graph on the same batches: identical floats.
    np.testing.assert_array_equal(a["probabilities"], b["probabilities"])
  with pytest.raises(ValueError, match="same model"):
    predict_each(
      [
        EvaluateConfig(data=ml, model_dir=str(tmp_path / "ft_npz")),
        EvaluateConfig(data=ml, model_dir=str(tmp_path / "ft_ckpt")),
      ]
    )
