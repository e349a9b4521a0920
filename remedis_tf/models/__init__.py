"""Encoders for REMEDIS: BiT ResNetV2 and its official `.npz` checkpoint format.

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
from remedis_tf.models.variable_roles import is_norm_or_bias, variable_roles

__all__ = [
  "BLOCK_UNITS",
  "BitCheckpointError",
  "LoadReport",
  "build_bit_encoder",
  "build_encoder_by_name",
  "is_norm_or_bias",
  "load_bit_checkpoint",
  "parse_encoder_name",
  "save_bit_checkpoint",
  "variable_roles",
]
