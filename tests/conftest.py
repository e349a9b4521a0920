"""Shared pytest set-up: oneDNN on, threads per worker, quiet TensorFlow, two logical CPUs,
longest test files first.

* oneDNN: `remedis_tf.cpu_setup` turns it on (unless TF_ENABLE_ONEDNN_OPTS is
  set) before TensorFlow is imported, as every entry point does, so the suite
  runs at full speed on AVX2-only CPUs too.
* Threads: with N pytest-xdist workers on C cores, each worker's TensorFlow
  gets max(1, C // N) intra-op and inter-op threads (TF_NUM_INTRAOP_THREADS /
  TF_NUM_INTEROP_THREADS, which child processes inherit), so TensorFlow's
  thread pools do not oversubscribe the cores. `make test` runs 3 workers on
  2 cores (1 thread each): part of each test's time is single-threaded
  Python tracing and waiting on child processes, and the third worker fills it.
* XLA: the tests compile with LLVM's optimization level 0
  (XLA_FLAGS=--xla_backend_optimization_level=0 unless XLA_FLAGS is set;
  child processes inherit it). XLA's own graph passes (fusion, layout) are
  the same; only the machine code is less optimised, which compiles bit-tiny's
  training step in about half the CPU time (13 -> 7 s) and runs it slower,
  which a test's one or two steps do not notice. Measured on a 2-core AVX2
  CPU: the multi-worker XLA test 84 -> 71 CPU s, the bfloat16 XLA test with
  the XLA forward test 77 -> 66 CPU s.
* Two logical CPUs let MirroredStrategy tests run a real 2-replica all-reduce
  on a CPU-only machine. The split must happen before TensorFlow creates its
  devices, so it is done here, once, before any test module runs.
"""

import os
import resource
import sys

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("PYTHONHASHSEED", "0")
_workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
_threads = str(max(1, (os.cpu_count() or 1) // _workers))
os.environ.setdefault("TF_NUM_INTRAOP_THREADS", _threads)
os.environ.setdefault("TF_NUM_INTEROP_THREADS", _threads)
os.environ.setdefault("XLA_FLAGS", "--xla_backend_optimization_level=0")

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
  sys.path.insert(0, _ROOT)
# scikit-learn (an independent reference of some tests) lives outside site-packages, in
# .venv/reference (Makefile), so that the TensorFlow processes the tests start do not
# import it with Keras. Appended: site-packages keeps precedence.
_REFERENCE = os.path.join(sys.prefix, "reference")
if os.path.isdir(_REFERENCE) and _REFERENCE not in sys.path:
  sys.path.append(_REFERENCE)

from remedis_tf import cpu_setup  # noqa: E402, F401  (oneDNN default, before TensorFlow)

# isort: split
import tensorflow as tf  # noqa: E402

_cpus = tf.config.list_physical_devices("CPU")
try:
  tf.config.set_logical_device_configuration(_cpus[0], [tf.config.LogicalDeviceConfiguration()] * 2)
except RuntimeError:  # devices already initialised by an earlier import
  pass


# The longest test files, longest first (CPU seconds of their tests, the junit property
# cpu_seconds, in one `make test` on a 2-core AVX2 machine, 2026-12-01, commit 100f6f9).
# Only the scheduling order depends on it.
LONGEST_FILES = (
  "demo_study_test.py",  # 162
  "hub_export_onnx_test.py",  # 126
  "mixed_precision_train_test.py",  # 119
  "pretrain_multiworker_test.py",  # 103
  "hub_export_finetune_test.py",  # 85
  "pretrain_behaviour_test.py",  # 64
  "finetune_evaluate_test.py",  # 64
  "bit_resnet_test.py",  # 60
  "pretrain_resume_test.py",  # 53
  "hub_export_finetuned_saved_model_test.py",  # 44
  "pretrain_objectives_loop_test.py",  # 42
)


def pytest_collection_modifyitems(items):
  """The longest test files first, then the rest in collection order.

  pytest-xdist's --dist loadfile hands whole files to workers in collection
  order; starting the long end-to-end files first keeps one of them from
  being the last thing running while the other workers sit idle.
  """
  rank = {name: i for i, name in enumerate(LONGEST_FILES)}
  items.sort(key=lambda item: rank.get(os.path.basename(str(item.fspath)), len(rank)))


def _cpu_seconds() -> float:
  """CPU time (user + system) of this process and of the children it has waited for."""
  own = resource.getrusage(resource.RUSAGE_SELF)
  children = resource.getrusage(resource.RUSAGE_CHILDREN)
  return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


_CPU_AT_START = pytest.StashKey[float]()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
  """Notes the CPU time at the start of each test (see pytest_runtest_makereport)."""
  item.stash[_CPU_AT_START] = _cpu_seconds()
  yield


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
  """Records each test's CPU seconds (setup, call, teardown; child processes included).

  The suite is CPU-bound on 2 cores, and on a shared machine a test's wall time
  depends on what the other workers run beside it; its CPU time is the figure to
  compare between runs. It lands in the JUnit XML as the property `cpu_seconds`
  (the teardown report carries it).
  """
  if call.when == "teardown" and _CPU_AT_START in item.stash:
    item.user_properties.append(
      ("cpu_seconds", round(_cpu_seconds() - item.stash[_CPU_AT_START], 2))
    )
  yield
