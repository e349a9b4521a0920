"""SimCLR (v2): SimCLRv2 projection head + NT-Xent with global-batch negatives."""

from __future__ import annotations

import dataclasses

import keras
import tensorflow as tf

from remedis_tf.objectives.base import LossOutput, ProjectionHeadObjective
from remedis_tf.objectives.nt_xent import nt_xent_loss


@dataclasses.dataclass(frozen=True)
class SimCLRConfig:
  """SimCLR hyper-parameters (defaults: SimCLRv2 / REMEDIS).

  Attributes:
    temperature: NT-Xent temperature.
    normalize: L2-normalise projections before the similarity.
    proj_num_layers: layers of the SimCLRv2 projection head.
    proj_output_dim: projection width.
    proj_hidden_dim: middle-layer width; None = the encoder embedding width.
    ft_proj_selector: head layer feeding fine-tuning (0 = encoder embedding).
  """

  temperature: float = 0.1
  normalize: bool = True
  proj_num_layers: int = 3
  proj_output_dim: int = 128
  proj_hidden_dim: int | None = None
  ft_proj_selector: int = 0


class SimCLR(ProjectionHeadObjective):
  """SimCLR: both views go through encoder and head as one batch of 2n."""

  name = "simclr"
  head_name = "simclr_projection_head"
  head_options = {"use_bn": True, "final_bn": True}

  def __init__(self, config: SimCLRConfig | None = None) -> None:
    super().__init__()
    self.config = config or SimCLRConfig()

  def compute_loss(
    self,
    encoder: keras.Model,
    view1: tf.Tensor,
    view2: tf.Tensor,
    training: bool,
  ) -> LossOutput:
    """See `Objective.compute_loss`; metrics: loss, contrast_acc, contrast_entropy."""
    z1, z2, h1 = self.project_views(encoder, view1, view2, training)
    loss, metrics = nt_xent_loss(z1, z2, self.config.temperature, normalize=self.config.normalize)
    return LossOutput(loss, metrics, h1)
