r"""Writes the SYNTHETIC two-site chest radiograph DICOM archive of the demo.

Example:
  python -m remedis_tf.demo.synthetic_archive_main --output_dir=/tmp/synthetic \
      --scale=default --seed=0
"""

from __future__ import annotations

from remedis_tf import cpu_setup  # noqa: F401  (oneDNN default, before TensorFlow)

# isort: split
import json

from absl import app, flags, logging

from remedis_tf.demo import synthetic_archive

_OUTPUT_DIR = flags.DEFINE_string(
  "output_dir", None, "Folder to write the archive to.", required=True
)
_SCALE = flags.DEFINE_enum(
  "scale",
  "default",
  sorted(synthetic_archive.SCALES),
  "Archive size: tiny (~100 images), default (~2000), large (~10000).",
)
_SEED = flags.DEFINE_integer("seed", 0, "The archive is a deterministic function of the seed.")
_NUM_WORKERS = flags.DEFINE_integer(
  "num_workers", 1, "Processes used to render; the output does not depend on it."
)


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  summary = synthetic_archive.generate_archive(
    _OUTPUT_DIR.value, scale=_SCALE.value, seed=_SEED.value, num_workers=_NUM_WORKERS.value
  )
  logging.info("Wrote a SYNTHETIC archive to %s", _OUTPUT_DIR.value)
  print(json.dumps(summary, indent=2))


def run() -> None:
  app.run(main)


if __name__ == "__main__":
  run()
