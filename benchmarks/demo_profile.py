"""Where the demo's fine-tuning time goes, and which process layout runs it fastest.

Uses an existing study folder (`remedis-demo --output_dir DIR --until pretrain`
makes one) and fine-tunes from its pretrained encoder on site-A records, as
the demo does. Three modes:

  profile  one fine-tuning run and its test prediction in this process under
           cProfile with a CPU-time clock; prints the CPU seconds of the
           named phases (tf.function tracing, tf.data building, graph
           execution, checkpoint writes, ...) and the top functions.
           --eval_batch_size=128 reproduces the old driver's evaluation (a
           partial last batch, so a second trace); the default is one batch.
  compare  the same set of runs (--runs) done (a) sequentially in one process
           with --threads TensorFlow threads and (b) by --workers processes
           with one thread each, started together; optionally (c) with
           oneDNN limited to AVX2 (ONEDNN_MAX_CPU_ISA=AVX2), to estimate an
           AVX2-only machine. Prints wall and CPU seconds and ratios against
           (a), all measured in this run.
  child    (internal) runs given seeds and prints one JSON line.

On a shared machine wall times move with the other load; the ratios of
set-ups measured back to back, and the CPU seconds, are what to compare.

  .venv/bin/python benchmarks/demo_profile.py --study_dir=demo_output --mode=profile
  .venv/bin/python benchmarks/demo_profile.py --study_dir=demo_output --mode=compare --runs=4
"""

from __future__ import annotations

from remedis_tf import cpu_setup  # noqa: F401  (oneDNN default, before TensorFlow)

# isort: split
import cProfile
import json
import os
import pstats
import shutil
import subprocess
import sys
import tempfile
import time

from absl import app, flags

_STUDY_DIR = flags.DEFINE_string(
  "study_dir", "demo_output", "Study folder with records and pretrain."
)
_MODE = flags.DEFINE_enum("mode", "compare", ["profile", "compare", "child"], "See the docstring.")
_STEPS = flags.DEFINE_integer("steps", 50, "Fine-tuning steps per run.")
_BATCH = flags.DEFINE_integer("batch_size", 16, "Fine-tuning batch size.")
_EVAL_BATCH = flags.DEFINE_integer("eval_batch_size", 1024, "Prediction batch size.")
_IMAGE_SIZE = flags.DEFINE_integer("image_size", 64, "Image side (a multiple of 32).")
_LR = flags.DEFINE_float("learning_rate", 0.015, "Peak fine-tuning learning rate.")
_FRACTION = flags.DEFINE_float("label_fraction", 0.05, "Label fraction of every run.")
_THREADS = flags.DEFINE_integer("threads", 0, "TensorFlow threads (0: TensorFlow's default).")
_RUNS = flags.DEFINE_integer("runs", 4, "Runs per set-up (compare).")
_WORKERS = flags.DEFINE_integer("workers", 2, "Processes of the parallel set-up (compare).")
_AVX2 = flags.DEFINE_bool("avx2", True, "Also measure with ONEDNN_MAX_CPU_ISA=AVX2 (compare).")
_SEEDS = flags.DEFINE_list("seeds", ["0"], "Seeds of the runs (child).")
_TOP = flags.DEFINE_integer("top", 25, "Functions listed (profile).")
_WARM = flags.DEFINE_bool(
  "warm", True, "Runs share a trainer.WarmStart, as the demo's workers do (profile)."
)

# Phases of a run: (label, file name fragment, function name), summed as cumulative CPU.
_PHASES = (
  ("fine-tune, total", "finetune.py", "finetune"),
  ("  tf.function tracing (train step, input maps)", "tracing_compilation.py", "trace_function"),
  (
    "  tf.data pipeline building (traces augmentation)",
    "input_pipeline.py",
    "make_supervised_dataset",
  ),
  ("  graph execution (first call: graph optimisation, kernels)", "execute.py", "quick_execute"),
  ("  checkpoint writes", "checkpointing.py", "save"),
  ("predict (both sites), total", "evaluate.py", "predict_each"),
  ("  model rebuild + restore", "run_dir.py", "restore_model"),
)


def _setup_threads(threads: int) -> None:
  import tensorflow as tf  # noqa: PLC0415

  if threads:
    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(threads)


def _one_run(study_dir: str, model_dir: str, seed: int, warm=None) -> dict[str, float]:
  """A fine-tuning run and its prediction, as the demo does them; seconds and CPU seconds."""
  import keras  # noqa: PLC0415

  from remedis_tf.demo.study_config import DEMO_AUGMENT_OVERRIDES, FINDINGS  # noqa: PLC0415
  from remedis_tf.train import evaluate, finetune  # noqa: PLC0415

  shutil.rmtree(model_dir, ignore_errors=True)
  t0, c0 = time.perf_counter(), time.process_time()
  result = finetune.finetune(
    finetune.FinetuneConfig(
      train_data=os.path.join(study_dir, "records", "siteA", "train-*.tfrecord"),
      model_dir=model_dir,
      init_from=os.path.join(study_dir, "pretrain"),
      encoder="bit-tiny",
      label_fraction=_FRACTION.value,
      train_steps=_STEPS.value,
      global_batch_size=_BATCH.value,
      image_size=_IMAGE_SIZE.value,
      label_mode="multi_label",
      num_classes=len(FINDINGS),
      label_names=FINDINGS,
      learning_rate=_LR.value,
      split="train",
      augment_preset="cxr",
      augment_overrides=DEMO_AUGMENT_OVERRIDES,
      checkpoint_steps=0,
      keep_checkpoint_max=1,
      seed=seed,
      log_every_steps=_STEPS.value,
      summary_every_steps=_STEPS.value,
    ),
    warm=warm,
  )
  if warm is None:
    keras.backend.clear_session()
  t1, c1 = time.perf_counter(), time.process_time()
  evaluate.predict_each(  # Both sites' test splits, one restore, as the demo does.
    [
      evaluate.EvaluateConfig(
        data=os.path.join(study_dir, "records", site, "test-*.tfrecord"),
        model_dir=model_dir,
        split="test",
        batch_size=_EVAL_BATCH.value,
      )
      for site in ("siteA", "siteB")
    ],
    warm,
  )
  if warm is None:
    keras.backend.clear_session()
  t2, c2 = time.perf_counter(), time.process_time()
  return {
    "finetune_s": t1 - t0,
    "finetune_cpu_s": c1 - c0,
    "predict_s": t2 - t1,
    "predict_cpu_s": c2 - c1,
    "steady_images_per_second": float(result["images_per_second"]),
  }


def _profile(study_dir: str) -> None:
  _setup_threads(_THREADS.value)
  with tempfile.TemporaryDirectory() as tmp:
    from remedis_tf.train import trainer  # noqa: PLC0415

    shared = trainer.WarmStart() if _WARM.value else None
    warm = _one_run(study_dir, os.path.join(tmp, "warm"), 0, shared)  # imports, first traces
    profiler = cProfile.Profile(time.process_time)
    profiler.enable()
    timed = _one_run(study_dir, os.path.join(tmp, "run"), 1, shared)
    profiler.disable()
  stats = pstats.Stats(profiler)
  print(f"warm-up run: {json.dumps({k: round(v, 2) for k, v in warm.items()})}")
  print(f"profiled run: {json.dumps({k: round(v, 2) for k, v in timed.items()})}")
  print("CPU seconds under cProfile (which slows Python-heavy phases):")
  for label, file_part, name in _PHASES:
    cumulative = sum(
      row[3] for (path, _, fn), row in stats.stats.items() if fn == name and file_part in path
    )
    print(f"  {label:<62} {cumulative:7.2f}")
  stats.sort_stats("tottime").print_stats(_TOP.value)


def _child(study_dir: str) -> None:
  _setup_threads(_THREADS.value)
  runs = []
  with tempfile.TemporaryDirectory() as tmp:
    for seed in _SEEDS.value:
      runs.append(_one_run(study_dir, os.path.join(tmp, f"run{seed}"), int(seed)))
  print("RESULT " + json.dumps({"runs": runs, "cpu_s": time.process_time()}))


def _spawn(seeds: list[int], threads: int, isa: str | None) -> subprocess.Popen:
  env = dict(os.environ)
  if isa:
    env["ONEDNN_MAX_CPU_ISA"] = isa
  command = [
    sys.executable,
    os.path.abspath(__file__),
    "--mode=child",
    f"--study_dir={_STUDY_DIR.value}",
    f"--steps={_STEPS.value}",
    f"--batch_size={_BATCH.value}",
    f"--eval_batch_size={_EVAL_BATCH.value}",
    f"--label_fraction={_FRACTION.value}",
    f"--image_size={_IMAGE_SIZE.value}",
    f"--learning_rate={_LR.value}",
    f"--threads={threads}",
    f"--seeds={','.join(str(s) for s in seeds)}",
  ]
  return subprocess.Popen(
    command, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
  )


def _collect(processes: list[subprocess.Popen]) -> dict[str, float]:
  cpu, runs = 0.0, []
  for process in processes:
    out, _ = process.communicate()
    if process.returncode:
      raise RuntimeError(f"child exited with {process.returncode}")
    line = next(x for x in out.splitlines() if x.startswith("RESULT "))
    data = json.loads(line[len("RESULT ") :])
    cpu += data["cpu_s"]
    runs += data["runs"]
  steady = sum(r["steady_images_per_second"] for r in runs) / len(runs)
  return {"cpu_s": cpu, "steady_images_per_second_per_run": steady}


def _setup(name: str, layout: list[list[int]], threads: int, isa: str | None) -> dict[str, float]:
  t0 = time.perf_counter()
  result = _collect([_spawn(seeds, threads, isa) for seeds in layout])
  result["wall_s"] = time.perf_counter() - t0
  result["name"] = name
  return result


def _compare() -> None:
  seeds = list(range(_RUNS.value))
  split = [seeds[i :: _WORKERS.value] for i in range(_WORKERS.value)]
  setups = [
    (
      f"1 process, {_THREADS.value or 'default'} threads, sequential",
      [seeds],
      _THREADS.value,
      None,
    ),
    (f"{_WORKERS.value} processes x 1 thread", split, 1, None),
  ]
  if _AVX2.value:
    setups.append((f"{_WORKERS.value} processes x 1 thread, oneDNN AVX2 only", split, 1, "AVX2"))
  load = os.getloadavg()
  results = [_setup(*s) for s in setups]
  base = results[0]["wall_s"]
  print(
    f"{_RUNS.value} runs of {_STEPS.value} steps x {_BATCH.value} images (+ prediction); "
    f"load average before: {load[0]:.1f}, after: {os.getloadavg()[0]:.1f}; CPU {cpu_setup.cpu_class()}"
  )
  print(f"{'set-up':<52}{'wall s':>8}{'CPU s':>8}{'vs first':>10}{'steady img/s/run':>18}")
  for r in results:
    print(
      f"{r['name']:<52}{r['wall_s']:8.1f}{r['cpu_s']:8.1f}{base / r['wall_s']:9.2f}x"
      f"{r['steady_images_per_second_per_run']:18.1f}"
    )


def main(argv: list[str]) -> None:
  del argv
  study_dir = os.path.abspath(_STUDY_DIR.value)
  if not os.path.isdir(os.path.join(study_dir, "pretrain")):
    raise app.UsageError(
      f"--study_dir {study_dir} has no pretrain/ (run remedis-demo --until pretrain)."
    )
  {"profile": lambda: _profile(study_dir), "child": lambda: _child(study_dir), "compare": _compare}[
    _MODE.value
  ]()


if __name__ == "__main__":
  app.run(main)
