"""Short pretraining of a tiny BiT encoder with each objective (integration).

Generated images (synthetic, no real data): smooth random colour fields at
32 px. Two fixed views per image (flip + brightness noise). For each objective
the loss on the fixed batch must stay finite and drop over a few LARS steps
(distributed equivalence is tested with a stand-in encoder in objectives_test.py).
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from remedis_tf import objectives
from remedis_tf.models import build_bit_encoder, norm_and_bias_variables
from remedis_tf.models.group_norm import GroupNorm
from remedis_tf.optim import LARS, WarmupCosine

BATCH = 8
STEPS = 6
LR = {"relic": 0.05}  # default 0.2
SMALL = {
  "simclr": dict(proj_output_dim=32, proj_hidden_dim=64, proj_num_layers=2),
  "moco_v2": dict(proj_output_dim=32, proj_hidden_dim=64, queue_size=256),
  "barlow_twins": dict(proj_output_dim=32, proj_hidden_dim=64, proj_num_layers=2),
  "relic": dict(proj_output_dim=32, proj_hidden_dim=64, proj_num_layers=2),
  "byol": dict(proj_output_dim=32, proj_hidden_dim=64, pred_hidden_dim=64),
}


def _views():
  rng = np.random.default_rng(0)
  coarse = rng.uniform(size=(BATCH, 4, 4, 3)).astype(np.float32)
  images = tf.image.resize(coarse, (32, 32)).numpy()
  v1 = np.clip(images + 0.05 * rng.normal(size=images.shape), 0, 1).astype(np.float32)
  v2 = np.clip(images[:, :, ::-1] * rng.uniform(0.8, 1.2, size=(BATCH, 1, 1, 1)), 0, 1)
  return v1, v2.astype(np.float32)


@pytest.mark.slow
@pytest.mark.integration
@pytest.mark.parametrize("name", list(SMALL))
def test_pretraining_lowers_loss(name):
  keras.utils.set_random_seed(0)
  encoder = build_bit_encoder(block_units=(1, 1, 1, 1))
  objective = objectives.get(name, **SMALL[name])
  objective.build(encoder, encoder.output["embedding"].shape[-1])
  networks = [encoder, *objective.trainable_networks]
  variables = [v for net in networks for v in net.trainable_variables]
  optimizer = LARS(
    WarmupCosine(LR.get(name, 0.2), BATCH, warmup_steps=1, total_steps=STEPS + 2, scaling="none"),
    weight_decay=1e-6,
    exclude_from_weight_decay=norm_and_bias_variables(*networks, extra_norm_types=(GroupNorm,)),
  )
  optimizer.build(variables)
  v1, v2 = (tf.constant(v) for v in _views())

  @tf.function
  def train_step(a, b):
    with tf.GradientTape() as tape:
      loss = objective.compute_loss(encoder, a, b, True).loss
    optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables, strict=True))
    objective.after_step()
    return loss

  queue0 = objective.queue.numpy() if name == "moco_v2" else None
  losses = []
  for step in range(STEPS + 1):
    if queue0 is not None and step == STEPS:  # the last loss sees the first step's negatives
      objective.queue.assign(queue0)
    losses.append(float(train_step(v1, v2)))  # the loss before this step's update
  assert np.all(np.isfinite(losses))
  assert np.mean(losses[-2:]) < losses[0], (name, losses)
