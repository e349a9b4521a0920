"""Self-supervised objectives: SimCLR, MoCo-v2, Barlow Twins, ReLIC, BYOL.

`get(name, **overrides)` builds an `Objective` from its frozen config with the
given fields replaced, e.g. `get("simclr", temperature=0.2)`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from remedis_tf.objectives.barlow_twins import BarlowTwins, BarlowTwinsConfig, barlow_twins_loss
from remedis_tf.objectives.base import LossOutput, Objective
from remedis_tf.objectives.byol import BYOL, BYOLConfig, byol_loss
from remedis_tf.objectives.moco import MoCoV2, MoCoV2Config, moco_loss
from remedis_tf.objectives.nt_xent import nt_xent_loss
from remedis_tf.objectives.relic import ReLIC, ReLICConfig, relic_loss
from remedis_tf.objectives.simclr import SimCLR, SimCLRConfig

_REGISTRY: dict[str, tuple[type[Objective], type]] = {
  "simclr": (SimCLR, SimCLRConfig),
  "moco_v2": (MoCoV2, MoCoV2Config),
  "barlow_twins": (BarlowTwins, BarlowTwinsConfig),
  "relic": (ReLIC, ReLICConfig),
  "byol": (BYOL, BYOLConfig),
}

NAMES = tuple(_REGISTRY)


def get_config_class(name: str) -> type:
  """The frozen config dataclass of objective `name`."""
  if name not in _REGISTRY:
    raise ValueError(f"Unknown objective {name!r}; choose one of {NAMES}.")
  return _REGISTRY[name][1]


def get(name: str, **overrides: Any) -> Objective:
  """An unbuilt Objective `name` whose config has `overrides` applied.

  Args:
    name: one of 'simclr', 'moco_v2', 'barlow_twins', 'relic', 'byol'.
    **overrides: config fields to replace (unknown fields raise TypeError).

  Returns:
    The Objective; call `.build(encoder, embedding_dim)` in the strategy scope.
  """
  config_cls = get_config_class(name)
  return _REGISTRY[name][0](dataclasses.replace(config_cls(), **overrides))


__all__ = [
  "BYOL",
  "NAMES",
  "BYOLConfig",
  "BarlowTwins",
  "BarlowTwinsConfig",
  "MoCoV2",
  "MoCoV2Config",
  "LossOutput",
  "Objective",
  "ReLIC",
  "ReLICConfig",
  "SimCLR",
  "SimCLRConfig",
  "barlow_twins_loss",
  "byol_loss",
  "get",
  "get_config_class",
  "moco_loss",
  "nt_xent_loss",
  "relic_loss",
]
