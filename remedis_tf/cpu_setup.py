"""oneDNN on by default, decided before TensorFlow is imported; the CPU's vector features.

TensorFlow 2.21 turns its oneDNN kernels on by default only on CPUs with
AVX-512-class features; on AVX2-only CPUs they stay off and a BiT training
step runs about 3x slower. Every entry point of remedis-tf (the CLIs, the
demo, the benchmarks, the Bazel binaries) imports this module first, which
sets `TF_ENABLE_ONEDNN_OPTS=1` unless the user set the variable (a user's `0`
is respected), and prints the setting in force once, on stderr. The variable
is read when TensorFlow is imported, so importing this module after
TensorFlow changes nothing (and says so).

Turn oneDNN off with `TF_ENABLE_ONEDNN_OPTS=0` in the environment.
"""

from __future__ import annotations

import os
import platform
import sys
from typing import Any

ONEDNN_ENV = "TF_ENABLE_ONEDNN_OPTS"


def cpu_info() -> dict[str, Any]:
  """The CPU model and the vector features that decide TensorFlow's speed.

  Returns:
    {'model': str, 'avx2': bool, 'avx512f': bool, 'avx512_bf16': bool,
     'amx': bool, 'cores': int}; the flags come from /proc/cpuinfo (False
    where that file does not exist).
  """
  flags: set[str] = set()
  model = platform.processor() or platform.machine()
  try:
    with open("/proc/cpuinfo", encoding="utf-8") as f:
      for line in f:
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "flags" and not flags:
          flags = set(value.split())
        elif key == "model name" and value.strip():
          model = value.strip()
  except OSError:
    pass
  return {
    "model": model,
    "avx2": "avx2" in flags,
    "avx512f": "avx512f" in flags,
    "avx512_bf16": "avx512_bf16" in flags,
    "amx": "amx_tile" in flags,
    "cores": os.cpu_count() or 1,
  }


def cpu_class(info: dict[str, Any] | None = None) -> str:
  """'AVX-512', 'AVX2 only' or 'no AVX2' for the report and the README figures."""
  info = info or cpu_info()
  if info["avx512f"]:
    return "AVX-512"
  return "AVX2 only" if info["avx2"] else "no AVX2"


def onednn_setting() -> dict[str, str]:
  """{'value': '0'|'1', 'source': 'user'|'remedis-tf default'} in force now."""
  return {"value": os.environ.get(ONEDNN_ENV, ""), "source": _SOURCE}


def _configure() -> str:
  if ONEDNN_ENV in os.environ:
    return "user"
  os.environ[ONEDNN_ENV] = "1"
  return "remedis-tf default"


_SOURCE = _configure()
_LATE = "tensorflow" in sys.modules and _SOURCE != "user"
sys.stderr.write(
  f"remedis-tf: {ONEDNN_ENV}={os.environ[ONEDNN_ENV]} ({_SOURCE}"
  + ("; TensorFlow was imported first, so it may not apply" if _LATE else "")
  + f"); CPU {cpu_class()}. Set {ONEDNN_ENV}=0 to turn oneDNN off.\n"
)
