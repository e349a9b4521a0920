r"""remedis-demo: REMEDIS's data-efficient generalisation study on synthetic data.

Usage:
  remedis-demo --output_dir demo_output [--scale tiny|default|large] \
      [--bit_checkpoint BiT-S-R50x1.npz] [--seed 0] [--until STAGE]

Generates a labelled SYNTHETIC two-site chest X-ray DICOM archive, converts
it, pretrains with SimCLR on both sites' unlabelled train images, fine-tunes
REMEDIS and a supervised baseline at several label counts, evaluates in
distribution (site A) and out of distribution (site B), exports the REMEDIS
encoder as a TF-Hub SavedModel and writes report.md, report.json and plots
to --output_dir. Rerunning resumes: finished stages and runs are skipped.
"""

from __future__ import annotations

from remedis_tf import cpu_setup  # noqa: F401  (oneDNN default, before TensorFlow)

# isort: split
from absl import app, flags, logging

from remedis_tf.demo import study, study_config

_OUTPUT_DIR = flags.DEFINE_string(
  "output_dir", None, "Study output directory (reused to resume).", required=True
)
_SCALE = flags.DEFINE_enum(
  "scale",
  "default",
  list(study_config.SCALE_PRESETS),
  "tiny: a minute-long smoke run; default: ~2,100 images, the README's main job; "
  "large: ~10,000 images, bigger model input and more steps.",
)
_BIT_CHECKPOINT = flags.DEFINE_string(
  "bit_checkpoint",
  None,
  "BiT .npz (e.g. BiT-S-R50x1.npz, matching --encoder) to initialise the encoder; "
  "default: random initialisation (stated in the report).",
)
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the archive, the initialisation and the runs.")
_ENCODER = flags.DEFINE_string(
  "encoder", None, "Encoder name, e.g. bit-tiny or bit-r50x1 (default: the scale's)."
)
_PRETRAIN_STEPS = flags.DEFINE_integer(
  "pretrain_steps", None, "SimCLR steps (default: the scale's)."
)
_FINETUNE_STEPS = flags.DEFINE_integer(
  "finetune_steps", None, "Steps of each fine-tuning run (default: the scale's)."
)
_FINETUNE_LR = flags.DEFINE_float(
  "finetune_learning_rate", None, "Peak SGD learning rate of fine-tuning (default: the scale's)."
)
_HEADLINE = flags.DEFINE_enum(
  "headline_finding",
  None,
  list(study_config.FINDINGS),
  "Finding of the curves and the data-efficiency factor (default: the scale's).",
)
_NUM_SEEDS = flags.DEFINE_integer(
  "num_seeds", None, "Repeats per label count (default: the scale's)."
)
_NUM_WORKERS = flags.DEFINE_integer(
  "num_workers", None, "Processes for archive generation and conversion (default: the scale's)."
)
_UNTIL = flags.DEFINE_enum(
  "until", None, list(study_config.STAGES), "Stop after this stage (default: run all)."
)


def main(argv: list[str]) -> None:
  """Runs the study and prints the headline table."""
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.INFO)
  config = study_config.make_config(
    _OUTPUT_DIR.value,
    _SCALE.value,
    seed=_SEED.value,
    bit_checkpoint=_BIT_CHECKPOINT.value,
    encoder=_ENCODER.value,
    pretrain_steps=_PRETRAIN_STEPS.value,
    finetune_steps=_FINETUNE_STEPS.value,
    finetune_learning_rate=_FINETUNE_LR.value,
    headline_finding=_HEADLINE.value,
    num_seeds=_NUM_SEEDS.value,
    num_workers=_NUM_WORKERS.value,
    until=_UNTIL.value,
  )
  report = study.run_study(config)
  if "until" in report:
    print(f"Stopped after stage {report['until']}; rerun without --until to finish.")
    return
  print(study.headline_table(report))
  print(f"Report: {config.output_dir}/report.md (SYNTHETIC data: shows the pipeline works).")


def run() -> None:
  """Console-script entry point."""
  app.run(main)


if __name__ == "__main__":
  run()
