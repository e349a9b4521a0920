"""Metadata written next to an exported encoder (`assets/remedis.json`).

The release names of the PhysioNet "Medical AI Research Foundations" models,
`{cxr|path}-{50x1|152x2}-remedis-{s|m}`, encode modality, ResNet depth and
width, and the BiT upstream (S: ImageNet-1k, M: ImageNet-21k). This module
parses such names into an `ExportMetadata` and reads/writes it as JSON.
"""

from __future__ import annotations

import dataclasses
import json
import re
from typing import Any

import tensorflow as tf

from remedis_tf import __version__

METADATA_FILENAME = "remedis.json"
FORMAT_VERSION = 1

# Pretraining image sizes of the release: chest X-ray 448 px, pathology 224 px.
MODALITY_IMAGE_SIZE = {"cxr": 448, "path": 224}
MODALITY_DESCRIPTION = {"cxr": "chest X-ray", "path": "digital pathology"}
UPSTREAM_DESCRIPTION = {
  "s": "BiT-S (supervised on ImageNet-1k)",
  "m": "BiT-M (supervised on ImageNet-21k)",
}

PREPROCESSING = (
  "float32 images of shape (N, H, W, 3), RGB, values in [0, 1] (grayscale "
  "repeated to 3 channels); the model rescales to [-1, 1] itself. H and W "
  "should be multiples of 32; the feature map is (N, H/32, W/32, 2048*width)."
)

_RELEASE_NAME = re.compile(r"^(cxr|path)-(50|101|152)x([1-4])-remedis-(s|m)$")


def _software_version() -> str:
  return f"remedis-tf {__version__}; tensorflow {tf.__version__}"


@dataclasses.dataclass(frozen=True)
class ExportMetadata:
  """What a user of an exported encoder needs to know about it.

  Attributes:
    name: export name, e.g. "cxr-50x1-remedis-m".
    architecture: encoder family, e.g. "BiT ResNetV2-50x1".
    depth: ResNet depth (50, 101, 152); 0 when unknown.
    width: ResNet width multiplier.
    feature_dim: channels of the feature map and length of the embedding.
    output_stride: spatial reduction of the feature map (32 for BiT).
    pretrain_image_size: image side the encoder was pretrained at.
    modality: imaging modality, e.g. "chest X-ray".
    preprocessing: the input contract in words.
    objective: pretraining objective, e.g. "SimCLR".
    upstream: supervised upstream the encoder started from.
    training_data: description of the pretraining data.
    software_version: versions of remedis-tf and TensorFlow that exported it.
    label_names: class names, for an export that includes a classifier.
    label_mode: "multiclass" (softmax) or "multilabel" (sigmoid), with
      label_names.
    format_version: version of this metadata layout.
  """

  name: str = "remedis-encoder"
  architecture: str = "BiT ResNetV2"
  depth: int = 0
  width: int = 1
  feature_dim: int = 2048
  output_stride: int = 32
  pretrain_image_size: int = 224
  modality: str = "unspecified"
  preprocessing: str = PREPROCESSING
  objective: str = "SimCLR"
  upstream: str = "unspecified"
  training_data: str = "unspecified"
  software_version: str = dataclasses.field(default_factory=_software_version)
  label_names: tuple[str, ...] = ()
  label_mode: str = ""
  format_version: int = FORMAT_VERSION

  def to_json(self) -> str:
    """Returns the metadata as indented JSON text."""
    data = dataclasses.asdict(self)
    data["label_names"] = list(self.label_names)
    return json.dumps(data, indent=2, sort_keys=True) + "\n"

  @classmethod
  def from_json(cls, text: str) -> ExportMetadata:
    """Parses `to_json` output; unknown keys are ignored, missing ones default."""
    data = json.loads(text)
    known = {f.name for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {k: v for k, v in data.items() if k in known}
    if "label_names" in kwargs:
      kwargs["label_names"] = tuple(kwargs["label_names"])
    return cls(**kwargs)

  def replace(self, **changes: Any) -> ExportMetadata:
    """Returns a copy with `changes` applied."""
    return dataclasses.replace(self, **changes)


def parse_release_name(name: str) -> dict[str, Any] | None:
  """Splits a release name into its parts.

  Args:
    name: e.g. "path-152x2-remedis-s".

  Returns:
    {"modality_key": "path", "depth": 152, "width": 2, "upstream_key": "s"},
    or None when `name` does not follow the release convention.
  """
  match = _RELEASE_NAME.match(name)
  if match is None:
    return None
  modality, depth, width, upstream = match.groups()
  return {
    "modality_key": modality,
    "depth": int(depth),
    "width": int(width),
    "upstream_key": upstream,
  }


def release_name(modality_key: str, depth: int, width: int, upstream_key: str) -> str:
  """Builds a release name, e.g. ("cxr", 50, 1, "m") -> "cxr-50x1-remedis-m"."""
  name = f"{modality_key}-{depth}x{width}-remedis-{upstream_key}"
  if parse_release_name(name) is None:
    raise ValueError(f"Not a valid release name: {name!r}")
  return name


def metadata_for(
  name: str,
  feature_dim: int,
  depth: int = 0,
  width: int = 0,
  **overrides: Any,
) -> ExportMetadata:
  """Builds metadata for an export named `name`.

  A release name fills modality, depth, width, upstream and pretraining image
  size; any other name keeps the defaults. `overrides` win over both.

  Args:
    name: export name.
    feature_dim: channels of the exported feature map (from the model itself).
    depth: ResNet depth when known from the model (0: unknown).
    width: width multiplier when known from the model (0: derive).
    **overrides: any `ExportMetadata` field.

  Returns:
    The metadata.
  """
  fields: dict[str, Any] = {"name": name, "feature_dim": feature_dim}
  parts = parse_release_name(name)
  if parts is not None:
    fields.update(
      depth=parts["depth"],
      width=parts["width"],
      modality=MODALITY_DESCRIPTION[parts["modality_key"]],
      pretrain_image_size=MODALITY_IMAGE_SIZE[parts["modality_key"]],
      upstream=UPSTREAM_DESCRIPTION[parts["upstream_key"]],
    )
  if depth:
    fields["depth"] = depth
  if width:
    fields["width"] = width
  elif "width" not in fields:
    fields["width"] = max(1, feature_dim // 2048)
  d = fields.get("depth", 0)
  fields["architecture"] = f"BiT ResNetV2-{d}x{fields['width']}" if d else "BiT ResNetV2"
  fields.update(overrides)
  return ExportMetadata(**fields)
