"""Entry point of every Bazel py_test: runs pytest on the given test files.

Only the fast unit tests run here (markers `slow` and `integration` are
deselected); `make test` runs everything. pytest's exit status 5 ("no tests
collected", e.g. a file of integration tests only) counts as success.
"""

import os
import sys

import pytest


def main() -> int:
  files = sys.argv[1:]
  if not files:
    print("pytest_runner: no test file given", file=sys.stderr)
    return 2
  os.environ.setdefault("MPLCONFIGDIR", os.environ.get("TEST_TMPDIR", "/tmp"))
  args = [
    "-q",
    "-p",
    "no:cacheprovider",
    "-m",
    "not slow and not integration",
    "-c",
    "pyproject.toml",
    "--rootdir",
    os.getcwd(),
  ]
  xml_output = os.environ.get("XML_OUTPUT_FILE")
  if xml_output:  # Bazel reads per-test results from here.
    args.append(f"--junitxml={xml_output}")
  args += [
    *files,
  ]
  status = pytest.main(args)
  return 0 if status == pytest.ExitCode.NO_TESTS_COLLECTED else int(status)


if __name__ == "__main__":
  sys.exit(main())
