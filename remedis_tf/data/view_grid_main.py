r"""Writes a PNG grid of augmented views (remedis-augment-grid).

  remedis-augment-grid --input='/data/cxr/train-*.tfrecord' --preset=cxr \
      --output=/tmp/cxr_grid.png --num_images=4 --num_views=6 --image_size=224 \
      --override=rotation_prob=1.0 --override=elastic_prob=1.0
"""

from __future__ import annotations

from remedis_tf import cpu_setup  # noqa: F401  (oneDNN default, before TensorFlow)

# isort: split
from absl import app, flags, logging

from remedis_tf.data.presets import parse_overrides
from remedis_tf.data.view_grid import write_view_grid

_INPUT = flags.DEFINE_string("input", None, "TFRecord glob pattern.", required=True)
_OUTPUT = flags.DEFINE_string("output", "augment_grid.png", "PNG to write.")
_PRESET = flags.DEFINE_enum("preset", "cxr", ["natural", "cxr", "pathology"], "Preset.")
_NUM_IMAGES = flags.DEFINE_integer("num_images", 4, "Rows (images).")
_NUM_VIEWS = flags.DEFINE_integer("num_views", 6, "Augmented views per image.")
_IMAGE_SIZE = flags.DEFINE_integer("image_size", 224, "Side of each view.")
_SEED = flags.DEFINE_integer("seed", 0, "Augmentation seed.")
_OVERRIDE = flags.DEFINE_multi_string(
  "override", [], "AugmentConfig field=value (Python literal), repeatable."
)


def main(argv: list[str]) -> None:
  del argv
  from remedis_tf.data.presets import get_preset

  config = get_preset(_PRESET.value, **parse_overrides(_OVERRIDE.value))
  height, width = write_view_grid(
    _OUTPUT.value,
    _INPUT.value,
    preset=config,
    num_images=_NUM_IMAGES.value,
    num_views=_NUM_VIEWS.value,
    image_size=_IMAGE_SIZE.value,
    seed=_SEED.value,
  )
  logging.info("wrote %s (%dx%d)", _OUTPUT.value, width, height)


def run() -> None:
  app.run(main)


if __name__ == "__main__":
  run()
