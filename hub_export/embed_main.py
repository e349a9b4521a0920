r"""remedis-embed: pooled embeddings of a TFRecord dataset with a SavedModel encoder.

  remedis-embed --model /exports/cxr-50x1-remedis-m \
      --data '/data/cxr/*.tfrecord' --output /tmp/cxr_embeddings.npz

Any SavedModel in the PhysioNet calling convention works (ours or the
released ones). Output `.npz` holds 'embedding' (N, C) and each record's
hashed ids, labels, split and site; `.tfrecord` streams tf.Examples instead
(for large sets). See hub_export.embed.

Preprocessing: every image is resized whole (bilinear) to --image_size.
--central_crop_fraction=F (in (0, 1]; default 1.0, no crop) first keeps the
central box of F times each side (e.g. 0.875, as in standard evaluation
preprocessing), then resizes that box to --image_size.
"""

from __future__ import annotations

from remedis_tf import cpu_setup  # noqa: F401  (oneDNN default, before TensorFlow)

# isort: split
from absl import app, flags, logging

from hub_export import embed
from remedis_tf.errors import UserError
from remedis_tf.train import cli_util

_MODEL = flags.DEFINE_string("model", None, "SavedModel directory.", required=True)
_DATA = flags.DEFINE_string("data", None, "Glob of TFRecord files.", required=True)
_OUTPUT = flags.DEFINE_string(
  "output",
  None,
  "Output file: .npz; .tfrecord / .tfrecords (streamed); .h5 / .hdf5: one bag of patch "
  "embeddings per slide (records from remedis-tile), for multiple-instance learning.",
  required=True,
)
_IMAGE_SIZE = flags.DEFINE_integer(
  "image_size",
  None,
  "Image side; default: the model's assets/remedis.json, its release name "
  "(cxr: 448, path: 224), else 224.",
)
_CENTRAL_CROP_FRACTION = flags.DEFINE_float(
  "central_crop_fraction",
  1.0,
  "Keep the central box of this fraction of each image side before resizing "
  "to --image_size; in (0, 1], 1.0 keeps the whole image.",
)
flags.register_validator(
  _CENTRAL_CROP_FRACTION.name,
  lambda value: 0.0 < value <= 1.0,
  message="--central_crop_fraction must be in (0, 1].",
)
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 32, "Images per forward pass.")
_LOG_EVERY = flags.DEFINE_integer("log_every", 10, "Progress log period, in batches.")


def main(argv: list[str]) -> int:
  del argv
  try:
    count = embed.embed_dataset(
      _MODEL.value,
      _DATA.value,
      _OUTPUT.value,
      image_size=_IMAGE_SIZE.value,
      batch_size=_BATCH_SIZE.value,
      log_every=_LOG_EVERY.value,
      central_crop_fraction=_CENTRAL_CROP_FRACTION.value,
    )
  except UserError as e:
    logging.error("%s: %s", type(e).__name__, e)
    return cli_util.EXIT_USER_ERROR
  logging.info("Wrote %d embeddings to %s.", count, _OUTPUT.value)
  return cli_util.EXIT_OK


def run() -> None:
  """Console-script entry point."""
  app.run(main)


if __name__ == "__main__":
  run()
