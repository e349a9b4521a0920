"""Augmentation configs and the named presets `natural`, `cxr` and `pathology`.

`natural` is SimCLR v2's ImageNet recipe. `cxr` follows REMEDIS for
grayscale radiographs: one channel, no hue or saturation, stronger
brightness/contrast, rotation, histogram equalisation, elastic deformation
and gamma. `pathology` keeps colour (hue jitter matters for stain
variation), adds 90-degree rotations and both flips.
"""

from __future__ import annotations

import ast
import dataclasses

from remedis_tf.data.geometric import FILL_MODES


def _check_prob(name: str, value: float) -> None:
  if not 0.0 <= value <= 1.0:
    raise ValueError(f"{name} must be in [0, 1], got {value}")


def _check_range(name: str, value: tuple[float, float], low: float = 0.0) -> None:
  if len(value) != 2 or not low <= value[0] <= value[1]:
    raise ValueError(f"{name} must be (min, max) with {low} <= min <= max, got {value}")


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
  """Every op and probability of the training augmentation.

  Ops run in this order: random resized crop, flips, 90-degree rotation,
  rotation, elastic deformation, histogram equalisation, colour (or
  grayscale) distortion, gamma, blur. Geometric ops run after the crop, at
  the output resolution. Elastic alpha and sigma are fractions of the output
  side (so a preset means the same at 224 and 448 px).

  Attributes:
    name: preset name (informational).
    channels: channels the ops see: 1 decodes to grayscale and uses the
      grayscale-aware distortion (the output is tiled to 3 channels), 3 RGB.
    crop_area_range: area fraction of the random resized crop.
    crop_aspect_range: width / height range of the crop.
    resize_method: tf.image.resize method for crops.
    antialias: low-pass filter when a crop is shrunk.
    hflip_prob: probability of a horizontal flip.
    vflip_prob: probability of a vertical flip.
    rot90_prob: probability of a random k * 90-degree rotation (k in 0..3).
    rotation_prob: probability of a rotation by U(-max, max) degrees.
    rotation_max_degrees: maximum absolute rotation angle.
    rotation_fill_mode: "reflect", "wrap", "constant" or "nearest".
    rotation_fill_value: fill value for "constant".
    elastic_prob: probability of elastic deformation.
    elastic_alpha: RMS displacement as a fraction of the output side.
    elastic_sigma: smoothness of the field as a fraction of the output side.
    equalize_prob: probability of histogram equalisation.
    equalize_bins: bins of the equalisation.
    color_prob: probability of the colour jitter.
    color_strength: SimCLR's colour strength s.
    brightness, contrast, saturation, hue: per-op strengths, multiplied by s.
    color_random_order: jitter ops in a random order.
    grayscale_prob: probability of RGB -> gray (RGB configs only).
    gamma_prob: probability of a gamma change.
    gamma_range: range of gamma (log-uniform).
    blur_prob: probability of Gaussian blur.
    blur_sigma_range: range of the per-image sigma, in pixels.
    blur_kernel_fraction: blur kernel side relative to the image side.
    eval_crop_fraction: central crop (of the shorter side) used for evaluation.
  """

  name: str = "custom"
  channels: int = 3
  crop_area_range: tuple[float, float] = (0.08, 1.0)
  crop_aspect_range: tuple[float, float] = (3 / 4, 4 / 3)
  resize_method: str = "bicubic"
  antialias: bool = False
  hflip_prob: float = 0.5
  vflip_prob: float = 0.0
  rot90_prob: float = 0.0
  rotation_prob: float = 0.0
  rotation_max_degrees: float = 180.0
  rotation_fill_mode: str = "reflect"
  rotation_fill_value: float = 0.0
  elastic_prob: float = 0.0
  elastic_alpha: float = 0.0
  elastic_sigma: float = 0.05
  equalize_prob: float = 0.0
  equalize_bins: int = 256
  color_prob: float = 0.8
  color_strength: float = 1.0
  brightness: float = 0.8
  contrast: float = 0.8
  saturation: float = 0.8
  hue: float = 0.2
  color_random_order: bool = True
  grayscale_prob: float = 0.2
  gamma_prob: float = 0.0
  gamma_range: tuple[float, float] = (0.7, 1.5)
  blur_prob: float = 0.5
  blur_sigma_range: tuple[float, float] = (0.1, 2.0)
  blur_kernel_fraction: float = 0.1
  eval_crop_fraction: float = 0.875

  def __post_init__(self):
    if self.channels not in (1, 3):
      raise ValueError(f"channels must be 1 or 3, got {self.channels}")
    for field in dataclasses.fields(self):
      if field.name.endswith("_prob"):
        _check_prob(field.name, getattr(self, field.name))
    _check_range("crop_area_range", self.crop_area_range)
    if self.crop_area_range[1] > 1.0 or self.crop_area_range[0] <= 0.0:
      raise ValueError(f"crop_area_range must lie in (0, 1], got {self.crop_area_range}")
    _check_range("crop_aspect_range", self.crop_aspect_range)
    _check_range("blur_sigma_range", self.blur_sigma_range)
    _check_range("gamma_range", self.gamma_range)
    if self.gamma_range[0] <= 0:
      raise ValueError("gamma_range must be positive")
    if self.blur_prob > 0 and self.blur_sigma_range[0] <= 0:
      raise ValueError("blur_sigma_range must be positive")
    if self.rotation_fill_mode not in FILL_MODES:
      raise ValueError(f"rotation_fill_mode must be one of {FILL_MODES}")
    if self.elastic_alpha < 0 or self.elastic_sigma <= 0:
      raise ValueError("elastic_alpha must be >= 0 and elastic_sigma > 0")
    if not 0.0 < self.eval_crop_fraction <= 1.0:
      raise ValueError("eval_crop_fraction must be in (0, 1]")


PRESETS: dict[str, AugmentConfig] = {
  # SimCLR v2 ImageNet defaults.
  "natural": AugmentConfig(name="natural"),
  # Grayscale radiographs (REMEDIS CXR): stronger intensity distortion,
  # rotation, histogram equalisation, elastic deformation, gamma.
  "cxr": AugmentConfig(
    name="cxr",
    channels=1,
    crop_area_range=(0.08, 1.0),
    antialias=True,
    hflip_prob=0.5,
    rotation_prob=0.5,
    rotation_max_degrees=20.0,
    rotation_fill_mode="reflect",
    elastic_prob=0.3,
    elastic_alpha=0.01,
    elastic_sigma=0.04,
    equalize_prob=0.5,
    color_prob=0.8,
    color_strength=1.0,
    brightness=0.5,
    contrast=0.7,
    saturation=0.0,
    hue=0.0,
    grayscale_prob=0.0,
    gamma_prob=0.5,
    gamma_range=(0.6, 1.6),
    blur_prob=0.5,
    eval_crop_fraction=1.0,
  ),
  # H&E pathology patches: orientation-free, colour matters.
  "pathology": AugmentConfig(
    name="pathology",
    channels=3,
    hflip_prob=0.5,
    vflip_prob=0.5,
    rot90_prob=1.0,
    color_prob=0.8,
    color_strength=1.0,
    brightness=0.8,
    contrast=0.8,
    saturation=0.8,
    hue=0.2,
    grayscale_prob=0.2,
    blur_prob=0.5,
    eval_crop_fraction=1.0,
  ),
}


def get_preset(name: str | AugmentConfig, **overrides) -> AugmentConfig:
  """Returns a named preset (or the given config) with fields overridden.

  Args:
    name: "natural", "cxr" or "pathology", or an AugmentConfig.
    **overrides: AugmentConfig fields to replace.

  Returns:
    A frozen AugmentConfig.

  Raises:
    ValueError: unknown preset name, unknown field or invalid value.
  """
  if isinstance(name, AugmentConfig):
    config = name
  else:
    if name not in PRESETS:
      raise ValueError(f"unknown preset {name!r}; choose from {sorted(PRESETS)}")
    config = PRESETS[name]
  known = {f.name for f in dataclasses.fields(AugmentConfig)}
  unknown = set(overrides) - known
  if unknown:
    raise ValueError(f"unknown AugmentConfig fields: {sorted(unknown)}")
  return dataclasses.replace(config, **overrides)


def parse_overrides(items: list[str]) -> dict[str, object]:
  """Parses command-line overrides ['field=value', ...] for `get_preset`.

  Values are Python literals ("(0.35, 1.0)", "0.5", "True"); anything that is
  not a literal is kept as a bare string ("reflect").

  Raises:
    ValueError: for an item without '='.
  """
  overrides: dict[str, object] = {}
  for item in items:
    name, sep, value = item.partition("=")
    if not sep:
      raise ValueError(f"augmentation override expects field=value, got {item!r}")
    try:
      overrides[name.strip()] = ast.literal_eval(value)
    except (ValueError, SyntaxError):
      overrides[name.strip()] = value
  return overrides
