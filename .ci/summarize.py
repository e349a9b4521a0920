"""The line CI reads last: every test counted once, whichever runners ran it.

Usage: summarize.py PYTEST_XML [PYTEST_XML ...] BAZEL_TESTLOGS_DIR

`make test` (pytest) runs the whole suite; `bazel test //...` runs the fast
unit tests again, each Bazel py_test being pytest on one file with
--junitxml=$XML_OUTPUT_FILE. A test is identified by (test file, test name),
so a fast test that both runners ran is one test: it passed if it passed in
every runner that ran it, failed if it failed in any. Prints what each runner
ran, then "N passed, N failed, N skipped" as the final line. Exits 1 when
nothing ran or anything failed.
"""

import glob
import os
import sys
import xml.etree.ElementTree as ET

ORDER = {"passed": 0, "skipped": 1, "failed": 2}


def outcomes(paths: list[str]) -> dict[tuple[str, str], str]:
  """(test module, test name) -> 'passed' | 'failed' | 'skipped' over JUnit files."""
  found: dict[tuple[str, str], str] = {}
  for path in paths:
    try:
      root = ET.parse(path).getroot()
    except (ET.ParseError, OSError) as e:
      print(f"unreadable result file {path}: {e}")
      found[(path, "<unreadable>")] = "failed"
      continue
    for case in root.iter("testcase"):
      module = (case.get("classname") or "").split(".")[-1]  # tests.x_test -> x_test
      key = (module, case.get("name") or "")
      tags = {child.tag for child in case}
      outcome = (
        "failed" if tags & {"failure", "error"} else "skipped" if "skipped" in tags else "passed"
      )
      if ORDER[outcome] >= ORDER[found.get(key, "passed")]:
        found[key] = outcome
  return found


def counts(results: dict[tuple[str, str], str]) -> tuple[int, int, int]:
  values = list(results.values())
  return values.count("passed"), values.count("failed"), values.count("skipped")


def main() -> int:
  *pytest_xmls, testlogs = sys.argv[1:]
  missing = [p for p in pytest_xmls if not os.path.exists(p)]
  py = outcomes([p for p in pytest_xmls if os.path.exists(p)])
  bz = outcomes(sorted(glob.glob(os.path.join(testlogs, "**", "test.xml"), recursive=True)))
  union = dict(py)
  for key, outcome in bz.items():
    if ORDER[outcome] >= ORDER[union.get(key, "passed")]:
      union[key] = outcome
  both = len(set(py) & set(bz))
  line = "{} passed, {} failed, {} skipped"
  print("pytest (make test: the whole suite): " + line.format(*counts(py)))
  print("bazel test //... (the fast unit tests): " + line.format(*counts(bz)))
  print(f"{both} tests ran under both runners and are counted once below.")
  passed, failed, skipped = counts(union)
  for path in missing:
    failed += 1
    print(f"no results at {path}")
  print(f"{passed} passed, {failed} failed, {skipped} skipped")
  return 0 if failed == 0 and passed > 0 else 1


if __name__ == "__main__":
  sys.exit(main())
