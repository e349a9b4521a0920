"""bazel/check_imports.py: the build-time layering check of BUILD's package graph."""

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHECKER = os.path.join(ROOT, "bazel", "check_imports.py")
PACKAGES = "pkg_a,pkg_a/sub,pkg_b"


def _check(tmp_path, package, allow, files):
  for path, text in files.items():
    (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / path).write_text(text)
  return subprocess.run(
    [
      sys.executable,
      CHECKER,
      "--package",
      package,
      "--packages",
      PACKAGES,
      "--allow",
      allow,
      *files,
    ],
    cwd=tmp_path,
    capture_output=True,
    text=True,
  )


def test_declared_imports_pass_undeclared_fail_with_file_and_line(tmp_path):
  ok = _check(
    tmp_path,
    "pkg_a/sub",
    "pkg_a/sub,pkg_a",
    {
      "pkg_a/sub/m.py": "import os\nfrom pkg_a import util\nfrom . import n\n",
      "pkg_a/sub/n.py": "",
    },
  )
  assert ok.returncode == 0, ok.stderr
  bad = _check(
    tmp_path,
    "pkg_a/sub",
    "pkg_a/sub,pkg_a",
    {"pkg_a/sub/m.py": "import os\n\ndef f():\n  from pkg_b.x import y  # lazy imports count\n"},
  )
  assert bad.returncode == 1
  assert "pkg_a/sub/m.py:4: imports pkg_b.x (package pkg_b)" in bad.stderr


def test_from_package_import_subpackage_needs_the_subpackage(tmp_path):
  """`from pkg_a import sub` reaches pkg_a/sub, which pkg_b must declare."""
  bad = _check(tmp_path, "pkg_b", "pkg_b,pkg_a", {"pkg_b/m.py": "from pkg_a import sub\n"})
  assert bad.returncode == 1 and "(package pkg_a/sub)" in bad.stderr
  ok = _check(tmp_path, "pkg_b", "pkg_b,pkg_a,pkg_a/sub", {"pkg_b/m.py": "from pkg_a import sub\n"})
  assert ok.returncode == 0, ok.stderr
