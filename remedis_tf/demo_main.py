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

Stopping: SIGTERM or SIGINT (Ctrl-C) checkpoints the pretraining or the
fine-tuning runs in progress and stops the study with exit code 3
("interrupted; rerun the same command to resume"). Rerunning the same command
resumes each checkpointed run from its checkpoint; a run counts as finished
only when it reached its step count with the same configuration.

Exit codes: 0 done; 1 error (bad flags, bad input, a failure with its
traceback); 3 interrupted by SIGTERM/SIGINT, resumable.
"""

from __future__ import annotations

from remedis_tf import cpu_setup  # noqa: F401  (oneDNN default, before TensorFlow)

# isort: split
import sys

from absl import app, flags, logging

from remedis_tf.demo import study, study_config
from remedis_tf.train.cli_util import EXIT_INTERRUPTED

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
_POSITIVE_PAIRS = flags.DEFINE_enum(
  "positive_pairs",
  None,
  list(study_config.POSITIVE_PAIRS),
  "Pretraining's positive pairs: augment (two views of one image) or micle (two images "
  "of one patient; the report names which was used). Default: augment.",
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
_FINETUNE_WORKERS = flags.DEFINE_integer(
  "finetune_workers",
  None,
  "Processes that run fine-tuning runs in parallel, one TensorFlow thread each "
  "(default 0: one per usable CPU core, at most 8). Results do not depend on it.",
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
    positive_pairs=_POSITIVE_PAIRS.value,
    finetune_steps=_FINETUNE_STEPS.value,
    finetune_learning_rate=_FINETUNE_LR.value,
    headline_finding=_HEADLINE.value,
    num_seeds=_NUM_SEEDS.value,
    num_workers=_NUM_WORKERS.value,
    finetune_workers=_FINETUNE_WORKERS.value,
    until=_UNTIL.value,
  )
  try:
    report = study.run_study(config)
  except study.StudyInterrupted as e:
    print(
      f"Interrupted ({e}); checkpoints are saved. Rerun the same command to resume.",
      file=sys.stderr,
    )
    sys.exit(EXIT_INTERRUPTED)
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
