"""Encoders for REMEDIS: BiT ResNetV2 (and its official `.npz` checkpoints) and SavedModels.

`remedis_tf.models.heads` (projection heads) is a separate module and is not
imported here.
"""

from remedis_tf.models.bit_checkpoint import (
  BitCheckpointError,
  LoadReport,
  load_bit_checkpoint,
  save_bit_checkpoint,
)
from remedis_tf.models.bit_resnet import (
  BLOCK_UNITS,
  build_bit_encoder,
  build_encoder_by_name,
  parse_encoder_name,
)
from remedis_tf.models.saved_model_encoder import SavedModelEncoder, load_encoder
from remedis_tf.models.variable_roles import (
  kernel_variables,
  norm_and_bias_variables,
  variable_roles,
)

__all__ = [
  "BLOCK_UNITS",
  "BitCheckpointError",
  "LoadReport",
  "build_bit_encoder",
  "build_encoder_by_name",
  "kernel_variables",
  "load_encoder",
  "norm_and_bias_variables",
  "SavedModelEncoder",
  "load_bit_checkpoint",
  "parse_encoder_name",
  "save_bit_checkpoint",
  "variable_roles",
]
