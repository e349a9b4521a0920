"""oneDNN is on by default in every entry point, a user's 0 is respected, and both are logged."""

import os
import subprocess
import sys

import pytest

from remedis_tf import cpu_setup

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TF_SAYS_ON = "oneDNN custom operations are on"  # TensorFlow's own start-up line


def test_cpu_info_reads_the_flags_the_kernel_reports():
  info = cpu_setup.cpu_info()
  if not os.path.exists("/proc/cpuinfo"):
    pytest.skip("no /proc/cpuinfo on this platform")
  with open("/proc/cpuinfo") as f:
    flags = next(line for line in f if line.startswith("flags")).split(":", 1)[1].split()
  assert info["avx512f"] == ("avx512f" in flags) and info["avx2"] == ("avx2" in flags)
  assert cpu_setup.cpu_class(info) in ("AVX-512", "AVX2 only", "no AVX2")


def _run_cli(onednn):
  env = {k: v for k, v in os.environ.items() if k != cpu_setup.ONEDNN_ENV}
  env.update(TF_CPP_MIN_LOG_LEVEL="0", CUDA_VISIBLE_DEVICES="", PYTHONPATH=ROOT)
  if onednn is not None:
    env[cpu_setup.ONEDNN_ENV] = onednn
  # A real CLI process that imports TensorFlow and stops at a user error.
  args = ["--data=/nonexistent/*.tfrecord", "--model_dir=/nonexistent", "--output_json=/tmp/x"]
  proc = subprocess.run(
    [sys.executable, "-m", "remedis_tf.evaluate_main", *args],
    env=env,
    capture_output=True,
    text=True,
    timeout=300,
    cwd=ROOT,
  )
  assert proc.returncode == 2, proc.stderr[-2000:]  # a user error: one line, exit 2
  return proc.stderr


@pytest.mark.integration
def test_cli_turns_onednn_on_unless_the_user_says_0():
  log = _run_cli(None)
  assert "remedis-tf: TF_ENABLE_ONEDNN_OPTS=1 (remedis-tf default)" in log
  assert TF_SAYS_ON in log  # TensorFlow itself confirms it
  assert log.count("remedis-tf: TF_ENABLE_ONEDNN_OPTS") == 1  # logged once
  log = _run_cli("0")
  assert "remedis-tf: TF_ENABLE_ONEDNN_OPTS=0 (user)" in log
  assert TF_SAYS_ON not in log
  assert "Traceback" not in log
