"""Test files may import CLI modules (`*_main`) only if their absl flags can coexist.

absl flags are process-global, and pytest collects many test files into one
process (one per xdist worker), so two `*_main` modules that define the same
flag name make collection fail for whichever file comes second. This test
imports, in one fresh process, every `*_main` module that any test file
imports at module level; a DuplicateFlagError there is the collection error
a full run would hit.
"""

import ast
import glob
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _main_modules_imported_by_tests() -> dict[str, list[str]]:
  """{dotted *_main module: [test files importing it at module level]}."""
  found: dict[str, list[str]] = {}
  for path in sorted(glob.glob(os.path.join(ROOT, "tests", "*.py"))):
    with open(path, encoding="utf-8") as f:
      tree = ast.parse(f.read(), path)
    for node in tree.body:  # module level only: imports inside tests run after collection
      names = []
      if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
      elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
        names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
      for name in names:
        if name.rsplit(".", 1)[-1].endswith("_main"):
          found.setdefault(name, []).append(os.path.basename(path))
  return found


def test_the_scan_finds_the_known_importers():
  found = _main_modules_imported_by_tests()
  assert "hub_export.export_main" in found, found  # the scan itself works


def test_main_modules_imported_by_tests_define_distinct_flags():
  found = _main_modules_imported_by_tests()
  code = "import importlib, sys\nfor m in sys.argv[1:]:\n  importlib.import_module(m)\n"
  proc = subprocess.run(
    [sys.executable, "-c", code, *sorted(found)],
    cwd=ROOT,
    capture_output=True,
    text=True,
    env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    timeout=300,
  )
  assert proc.returncode == 0, f"importers: {found}\n{proc.stderr[-3000:]}"
