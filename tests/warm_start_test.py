"""trainer.WarmStart: runs that reuse built models and a traced step equal fresh runs.

The demo's fine-tuning workers run dozens of runs with one WarmStart. Each
warm run must end with the same weights, losses and predictions, bit for
bit, as the same run built and traced from scratch, and must really skip the
tracing (else the feature is pointless).
"""

import numpy as np
import pytest
import train_testdata

from remedis_tf import models
from remedis_tf.train import evaluate, trainer
from remedis_tf.train.finetune import FinetuneConfig, FinetuneTask, finetune

TINY = dict(encoder="bit-tiny", image_size=32, global_batch_size=4, train_steps=2)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  root = tmp_path_factory.mktemp("warm")
  data = train_testdata.write_multiclass(str(root / "data"))
  npz = str(root / "bit.npz")
  models.save_bit_checkpoint(models.build_encoder_by_name("bit-tiny"), npz)
  return root, data, npz


def _config(setup, name, **kw):
  root, data, npz = setup
  settings = dict(TINY, train_data=data, init_from=npz, learning_rate=0.1, checkpoint_steps=0)
  settings.update(kw)
  return FinetuneConfig(model_dir=str(root / name), **settings)


def _predict(config, warm=None):
  return evaluate.predict_each(
    [evaluate.EvaluateConfig(data=config.train_data, model_dir=config.model_dir)], warm
  )[0]


@pytest.mark.slow
@pytest.mark.integration
def test_warm_runs_equal_fresh_runs_and_trace_once(setup):
  # Same start and step settings; different seeds, label subsets and data order.
  runs = {"a": dict(seed=0), "b": dict(seed=1, label_fraction=0.5)}
  cold = {name: finetune(_config(setup, f"cold_{name}", **kw)) for name, kw in runs.items()}
  warm = trainer.WarmStart()
  hot = {
    name: finetune(_config(setup, f"warm_{name}", **kw), warm=warm) for name, kw in runs.items()
  }

  assert [hot[n]["warm_start"] for n in runs] == [False, True]
  assert not any(cold[n]["warm_start"] for n in runs)
  for name in runs:
    assert hot[name]["encoder_weights"] == cold[name]["encoder_weights"], name
    assert hot[name]["loss_history"] == cold[name]["loss_history"], name
  # The runs differ from each other, so equal fingerprints are not vacuous.
  assert cold["a"]["encoder_weights"] != cold["b"]["encoder_weights"]

  (slot,) = warm.slots.values()
  (function,) = slot.functions.values()
  assert function.experimental_get_tracing_count() == 1

  # Predicting the checkpoint the slot holds uses the model in memory, traced once;
  # the probabilities equal those of the model restored from the file.
  last = _config(setup, "warm_b")
  assert warm.holding(hot["b"]["checkpoint"]) is slot
  in_memory = _predict(last, warm)
  (probabilities,) = slot.extras.values()
  assert probabilities.experimental_get_tracing_count() == 1
  np.testing.assert_array_equal(in_memory["probabilities"], _predict(last)["probabilities"])
  np.testing.assert_array_equal(
    in_memory["probabilities"], _predict(_config(setup, "cold_b"))["probabilities"]
  )
  # A checkpoint the slot does not hold is restored from its file.
  other = _config(setup, "warm_a")
  assert warm.holding(hot["a"]["checkpoint"]) is None
  np.testing.assert_array_equal(
    _predict(other, warm)["probabilities"], _predict(_config(setup, "cold_a"))["probabilities"]
  )


def _key(config):
  task = FinetuneTask(config)
  task.prepare()
  return task.warm_key()


def test_what_the_key_holds(setup, tmp_path):
  base = _key(_config(setup, "k"))
  assert base is not None
  # Data, output and logging settings do not change it.
  same = _config(setup, "k2", seed=5, label_fraction=0.5, log_every_steps=1, checkpoint_steps=1)
  assert _key(same) == base
  # What the traced step bakes in does: weight decay (another loss), the learning rate.
  assert _key(_config(setup, "k", weight_decay=1e-3)) != base
  assert _key(_config(setup, "k", learning_rate=0.2)) != base
  # Another start point, even with every setting equal.
  encoder = models.build_encoder_by_name("bit-tiny")
  other_npz = str(tmp_path / "other.npz")
  models.save_bit_checkpoint(encoder, other_npz)
  assert _key(_config(setup, "k", init_from=other_npz)) != base
  # A random start depends on the seed: never reused.
  assert _key(_config(setup, "k", init_from=None)) is None
