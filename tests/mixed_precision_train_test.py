"""--mixed_precision=bfloat16 end to end: pretraining (three objectives, with
and without XLA), then fine-tuning from its checkpoint.

bfloat16 keeps about 3 significant digits, so each first-step loss is compared
with the float32 run on the same batch within 5%, and checkpoints must hold
float32 variables only (Keras' mixed_bfloat16 policy computes in bfloat16 and
keeps float32 weights).
"""

import numpy as np
import pytest
import tensorflow as tf


def _dtypes(model_dir):
  reader = tf.train.load_checkpoint(model_dir)
  return {
    name: dtype
    for name, dtype in reader.get_variable_to_dtype_map().items()
    if name != "_CHECKPOINTABLE_OBJECT_GRAPH"
  }


@pytest.mark.slow
@pytest.mark.integration
@pytest.mark.parametrize(
  "objective,jit_compile",
  [("simclr", False), ("simclr", True), ("moco_v2", False), ("byol", False)],
)
def test_bfloat16_pretrain_matches_float32_then_finetunes(tmp_path, objective, jit_compile):
  from train_testdata import write_multiclass  # helper module next to the tests

  from remedis_tf.train.finetune import FinetuneConfig, finetune
  from remedis_tf.train.pretrain import PretrainConfig, pretrain

  data = write_multiclass(str(tmp_path / "data"), num_shards=1, per_shard=8)
  common = dict(
    train_data=data,
    encoder="bit-tiny",
    objective=objective,
    train_steps=3,
    global_batch_size=4,
    image_size=32,
    image_summaries=False,
    jit_compile=jit_compile,
    seed=2,
  )
  bf16 = pretrain(
    PretrainConfig(model_dir=str(tmp_path / "bf16"), mixed_precision="bfloat16", **common)
  )
  f32 = pretrain(PretrainConfig(model_dir=str(tmp_path / "f32"), **common))
  losses = [loss for _, loss in bf16["loss_history"]]
  assert bf16["final_step"] == 3 and np.all(np.isfinite(losses))
  assert losses[0] == pytest.approx(f32["loss_history"][0][1], rel=0.05)
  assert losses[0] != f32["loss_history"][0][1]  # bfloat16 really computed something.
  dtypes = _dtypes(str(tmp_path / "bf16"))
  floats = {n: d for n, d in dtypes.items() if d.is_floating}
  assert len(floats) > 20 and set(floats.values()) == {tf.float32}, set(floats.values())

  ft = finetune(
    FinetuneConfig(
      train_data=data,
      model_dir=str(tmp_path / "ft"),
      init_from=str(tmp_path / "bf16"),
      encoder="bit-tiny",
      train_steps=2,
      global_batch_size=4,
      image_size=32,
      learning_rate=0.05,
      mixed_precision="bfloat16",
      jit_compile=jit_compile,
    )
  )
  assert ft["initialized_from"].startswith("checkpoint:") and ft["final_step"] == 2
  assert np.isfinite(ft["metrics"]["loss"])
  assert {d for d in _dtypes(str(tmp_path / "ft")).values() if d.is_floating} == {tf.float32}
