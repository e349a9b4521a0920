"""Projection heads and predictors for self-supervised objectives.

The SimCLRv2 head (Chen et al., 2020, "Big Self-Supervised Models are Strong
Semi-Supervised Learners") is a stack of `num_layers` linear layers:

  middle layers: Dense(hidden_dim, no bias) -> BatchNorm(center, scale) -> ReLU
  last layer:    Dense(output_dim, no bias) -> BatchNorm(no centering), no ReLU

with BatchNorm synchronised across replicas. `ft_proj_selector` picks which
hidden representation feeds fine-tuning: 0 is the head's input (the encoder
embedding), k is the output of layer k. The same builder makes the MLP heads
of MoCo-v2 (no BN, biases), Barlow Twins and BYOL (BN in the middle layers,
plain final Dense) through `use_bn` and `final_bn`.
"""

from __future__ import annotations

import keras

from remedis_tf.models.outputs import FINETUNE_FEATURES, PROJECTION

BATCH_NORM_MOMENTUM = 0.9
BATCH_NORM_EPSILON = 1e-5


def build_projection_head(
  input_dim: int,
  num_layers: int = 3,
  output_dim: int = 128,
  hidden_dim: int | None = None,
  use_bn: bool = True,
  final_bn: bool = True,
  ft_proj_selector: int = 0,
  name: str = "projection_head",
) -> keras.Model:
  """Builds an MLP projection head as a functional keras.Model.

  Args:
    input_dim: width D of the input embedding.
    num_layers: number of linear layers (>= 1); SimCLRv2 default 3.
    output_dim: width of the projection; SimCLR default 128.
    hidden_dim: width of the middle layers; None means `input_dim` (SimCLRv2).
    use_bn: BatchNorm (synchronised across replicas) + ReLU after each middle
      layer's bias-free Dense; if False, middle layers are Dense(bias) + ReLU.
    final_bn: end with a bias-free Dense followed by BatchNorm without
      centering (SimCLRv2); if False the last layer is a Dense with bias.
    ft_proj_selector: index in [0, num_layers] of the representation returned
      as 'finetune_features' (0 = input, k = output of layer k).
    name: model name.

  Returns:
    keras.Model mapping (N, input_dim) to {'projection': (N, output_dim),
    'finetune_features': (N, width of the selected layer)}.

  Raises:
    ValueError: on invalid `num_layers` or `ft_proj_selector`.
  """
  if num_layers < 1:
    raise ValueError(f"num_layers must be >= 1, got {num_layers}.")
  if not 0 <= ft_proj_selector <= num_layers:
    raise ValueError(f"ft_proj_selector must be in [0, {num_layers}], got {ft_proj_selector}.")
  hidden_dim = hidden_dim or input_dim
  inputs = keras.Input((input_dim,), name="embedding")
  hiddens = [inputs]
  x = inputs
  for j in range(num_layers):
    last = j == num_layers - 1
    width = output_dim if last else hidden_dim
    bn = final_bn if last else use_bn
    x = keras.layers.Dense(width, use_bias=not bn, name=f"nl_{j}_dense")(x)
    if bn:
      x = keras.layers.BatchNormalization(
        momentum=BATCH_NORM_MOMENTUM,
        epsilon=BATCH_NORM_EPSILON,
        center=not last,
        synchronized=True,
        name=f"nl_{j}_bn",
      )(x)
    if not last:
      x = keras.layers.ReLU(name=f"nl_{j}_relu")(x)
    hiddens.append(x)
  return keras.Model(
    inputs, {PROJECTION: x, FINETUNE_FEATURES: hiddens[ft_proj_selector]}, name=name
  )
