r"""remedis-embed: pooled embeddings of a TFRecord dataset with a SavedModel encoder.

  remedis-embed --model /exports/cxr-50x1-remedis-m \
      --data '/data/cxr/*.tfrecord' --output /tmp/cxr_embeddings.npz

Any SavedModel in the PhysioNet calling convention works (ours or the
released ones). Output `.npz` holds 'embedding' (N, C) and each record's
hashed ids, labels, split and site; `.tfrecord` streams tf.Examples instead
(for large sets). See hub_export.embed.
"""

from __future__ import annotations

from absl import app, flags, logging

from hub_export import embed

_MODEL = flags.DEFINE_string("model", None, "SavedModel directory.", required=True)
_DATA = flags.DEFINE_string("data", None, "Glob of TFRecord files.", required=True)
_OUTPUT = flags.DEFINE_string(
  "output", None, "Output file: .npz, or .tfrecord / .tfrecords.", required=True
)
_IMAGE_SIZE = flags.DEFINE_integer(
  "image_size",
  None,
  "Image side; default: the model's assets/remedis.json, its release name "
  "(cxr: 448, path: 224), else 224.",
)
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 32, "Images per forward pass.")
_LOG_EVERY = flags.DEFINE_integer("log_every", 10, "Progress log period, in batches.")


def main(argv: list[str]) -> None:
  del argv
  count = embed.embed_dataset(
    _MODEL.value,
    _DATA.value,
    _OUTPUT.value,
    image_size=_IMAGE_SIZE.value,
    batch_size=_BATCH_SIZE.value,
    log_every=_LOG_EVERY.value,
  )
  logging.info("Wrote %d embeddings to %s.", count, _OUTPUT.value)


def run() -> None:
  app.run(main)


if __name__ == "__main__":
  run()
