"""The seams of the one-trainer design: flags bound to configs, the run directory
contract, the error split of the CLIs, and the XLA encoder wrapper."""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf
from absl import flags
from float32_bounds import SAFETY, U32, assert_within

from remedis_tf import config_flags, models, objectives
from remedis_tf.errors import ConfigError, InputNotFoundError, UserError
from remedis_tf.train import cli_util, loop, run_dir
from remedis_tf.train.checkpointing import CheckpointError
from remedis_tf.train.finetune import FinetuneConfig
from remedis_tf.train.pretrain import PretrainConfig
from tfrecords_tools.schema import LabelMode


def _parse(config_cls, argv, **kwargs):
  values = flags.FlagValues()
  holders = config_flags.define_flags(config_cls, flag_values=values, **kwargs)
  values(["prog", *argv])
  return holders, values


def test_flags_follow_the_dataclass_fields_types_defaults_and_registries():
  holders, values = _parse(
    PretrainConfig,
    [
      "--train_data=d/*.tfrecord",
      "--model_dir=m",
      "--objective=byol",
      "--learning_rate=0.1",
      "--augment_override=crop_area_range=(0.35, 1.0)",
      "--augment_override=elastic_prob=0.0",
      "--init_checkpoint=",
      "--tpu=grpc://x",
    ],
  )
  config = config_flags.config_from_flags(PretrainConfig, holders)
  assert config.objective == "byol" and config.base_learning_rate == 0.1
  assert config.augment_overrides == (("crop_area_range", (0.35, 1.0)), ("elastic_prob", 0.0))
  assert config.init_checkpoint is None and config.tpu_address == "grpc://x"
  # Untouched flags keep the dataclass defaults.
  defaults = PretrainConfig(train_data="d/*.tfrecord", model_dir="m")
  assert config.train_steps == defaults.train_steps and config.momentum is None
  # Choices come from the registries, help text from the docstring.
  assert tuple(values["objective"].parser.enum_values) == objectives.NAMES
  assert values["train_steps"].help.startswith("total training steps")
  assert {f for f in holders} == {f.name for f in __import__("dataclasses").fields(PretrainConfig)}


def test_flag_values_that_do_not_convert_name_the_flag():
  holders, _ = _parse(FinetuneConfig, ["--train_data=x", "--model_dir=m", "--label_mode=binary"])
  with pytest.raises(ConfigError, match="--label_mode"):
    config_flags.config_from_flags(FinetuneConfig, holders)
  holders, _ = _parse(
    FinetuneConfig,
    ["--train_data=x", "--model_dir=m", "--label_mode=multi_label", "--class_weights=1,2.5"],
  )
  config = config_flags.config_from_flags(FinetuneConfig, holders)
  assert config.label_mode is LabelMode.MULTI_LABEL and config.class_weights == (1.0, 2.5)


def test_momentum_with_adamw_is_an_error_not_ignored():
  with pytest.raises(ConfigError, match="momentum"):
    PretrainConfig(train_data="x", model_dir="m", optimizer="adamw", momentum=0.5).validate()


def test_run_config_round_trip_and_older_spellings(tmp_path):
  run = run_dir.RunConfig(
    task="finetune",
    encoder="bit-tiny",
    image_size=64,
    label_mode=LabelMode.MULTI_LABEL,
    num_classes=2,
    label_names=("a", "b"),
    settings={"seed": 3, "train_data": ["x", "y"]},
  )
  run_dir.write_run_config(str(tmp_path), run)
  assert run_dir.read_run_config(str(tmp_path)) == run
  data = json.loads((tmp_path / "config.json").read_text())
  assert data["label_mode"] == "multilabel" and data["seed"] == 3
  data["label_mode"] = "multi_label"  # written by the first release
  (tmp_path / "config.json").write_text(json.dumps(data))
  assert run_dir.read_run_config(str(tmp_path)).label_mode is LabelMode.MULTI_LABEL
  run_dir.check_compatible(str(tmp_path), run, ["label_mode", "num_classes"])
  (tmp_path / "config.json").write_text("{broken")
  with pytest.raises(CheckpointError, match="config.json"):
    run_dir.read_run_config(str(tmp_path))


def test_start_kinds_and_missing_start_points(tmp_path):
  assert run_dir.start_kind(None) == run_dir.StartKind.RANDOM
  with pytest.raises(InputNotFoundError):
    run_dir.start_kind(str(tmp_path / "nothing.npz"))
  with pytest.raises(InputNotFoundError):
    run_dir.start_kind(str(tmp_path))  # an empty directory is no start point
  encoder = models.build_encoder_by_name("bit-tiny")
  models.save_bit_checkpoint(encoder, str(tmp_path / "w.npz"))
  assert run_dir.start_kind(str(tmp_path / "w.npz")) == run_dir.StartKind.BIT_NPZ
  tf.train.Checkpoint(encoder=encoder).write(str(tmp_path / "ckpt-1"))
  assert run_dir.start_kind(str(tmp_path / "ckpt-1")) == run_dir.StartKind.CHECKPOINT


def test_restore_model_rebuilds_encoder_and_head(tmp_path):
  encoder = models.build_encoder_by_name("bit-tiny")
  head = run_dir.build_head(int(encoder.output["embedding"].shape[-1]), 3)
  for v in head.weights:
    v.assign(np.full(v.shape, 0.01, np.float32))
  manager = tf.train.CheckpointManager(
    tf.train.Checkpoint(encoder=encoder, head=head, step=tf.Variable(1)),
    str(tmp_path),
    1,
    checkpoint_name="ckpt",
  )
  manager.save()
  run_dir.write_run_config(
    str(tmp_path),
    run_dir.RunConfig("finetune", "bit-tiny", 32, label_mode=LabelMode.MULTI_CLASS, num_classes=3),
  )
  restored = run_dir.restore_model(str(tmp_path))
  images = tf.constant(np.random.default_rng(0).random((2, 32, 32, 3)), tf.float32)
  want = head(encoder(images)["embedding"]).numpy()
  got = restored.classifier()(images)["logits"].numpy()
  np.testing.assert_array_equal(got, want)  # the same weights and ops: bit for bit
  assert restored.head.layers[-1].dtype == "float32"


def test_cli_exit_codes_split_user_errors_from_bugs():
  def user():
    raise ConfigError("bad flag")

  def bug():
    raise ValueError("an internal TensorFlow error")

  assert cli_util.run_reporting_errors(user, None) == cli_util.EXIT_USER_ERROR
  with pytest.raises(ValueError, match="internal"):
    cli_util.run_reporting_errors(bug, None)
  assert issubclass(CheckpointError, UserError) and not issubclass(ValueError, UserError)


def test_compiled_encoder_matches_the_encoder_forward_and_backward():
  # A small encoder with the encoders' output contract (XLA compiles it fast).
  inputs = keras.Input((None, None, 3))
  x = keras.layers.Conv2D(8, 3, activation="relu")(inputs)
  x = keras.layers.Conv2D(16, 3, strides=2)(x)
  encoder = keras.Model(
    inputs, {"feature_map": x, "embedding": keras.layers.GlobalAveragePooling2D()(x)}
  )
  compiled = loop.CompiledEncoder(encoder)
  images = tf.constant(np.random.default_rng(1).random((2, 32, 32, 3)), tf.float32)

  def run(fn):
    with tf.GradientTape() as tape:
      loss = tf.reduce_sum(tf.square(fn(images, training=True)["embedding"]))
    return loss, tape.gradient(loss, encoder.trainable_variables)

  plain_loss, plain_grads = run(encoder)
  xla_loss, xla_grads = run(compiled)
  # XLA fuses and reorders the float32 reductions. The forward chain: convolutions of 27 and
  # 72 terms, the pooling of 14 * 14 positions and the loss's 2 * 16 squares, so each side is
  # within (27 + 72 + 196 + 32 + 4) u of exact, relative to its sum of |terms| (here the
  # loss: a sum of squares, no cancellation); the two sides within twice that.
  chain = 27 + 72 + 196 + 32 + 4
  assert_within(float(xla_loss), float(plain_loss), SAFETY * 2 * chain * U32 * float(plain_loss))
  # Gradients run the chain back and forth (2 chain), relative to the largest gradient (the
  # backward sums do cancel, so elementwise relative bounds would not hold).
  for a, b in zip(xla_grads, plain_grads, strict=True):
    scale = float(np.abs(b.numpy()).max())
    assert_within(a.numpy(), b.numpy(), SAFETY * 2 * (2 * chain) * U32 * scale, "gradient")
  assert not hasattr(compiled, "trainable_variables")  # no attribute forwarding
