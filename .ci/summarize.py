"""Sums pytest's and Bazel's JUnit XML results into the line CI reads last.

Usage: summarize.py PYTEST_XML [PYTEST_XML ...] BAZEL_TESTLOGS_DIR

Each Bazel py_test runs pytest with --junitxml=$XML_OUTPUT_FILE, so
bazel-testlogs/**/test.xml holds one <testcase> per test function too.
Prints per-source counts, then "N passed, N failed" as the final line.
Exits 1 when nothing ran or anything failed.
"""

import glob
import os
import sys
import xml.etree.ElementTree as ET


def count(paths: list[str]) -> tuple[int, int, int]:
  passed = failed = skipped = 0
  for path in paths:
    try:
      root = ET.parse(path).getroot()
    except (ET.ParseError, OSError) as e:
      print(f"unreadable result file {path}: {e}")
      failed += 1
      continue
    for case in root.iter("testcase"):
      tags = {child.tag for child in case}
      if "failure" in tags or "error" in tags:
        failed += 1
      elif "skipped" in tags:
        skipped += 1
      else:
        passed += 1
  return passed, failed, skipped


def main() -> int:
  *pytest_xmls, testlogs = sys.argv[1:]
  missing = [p for p in pytest_xmls if not os.path.exists(p)]
  py = count([p for p in pytest_xmls if os.path.exists(p)])
  bz = count(sorted(glob.glob(os.path.join(testlogs, "**", "test.xml"), recursive=True)))
  print(f"pytest (make test): {py[0]} passed, {py[1]} failed, {py[2]} skipped")
  print(f"bazel test //...:   {bz[0]} passed, {bz[1]} failed, {bz[2]} skipped")
  passed, failed, skipped = py[0] + bz[0], py[1] + bz[1], py[2] + bz[2]
  for path in missing:
    failed += 1
    print(f"no results at {path}")
  print(f"{passed} passed, {failed} failed, {skipped} skipped")
  return 0 if failed == 0 and passed > 0 else 1


if __name__ == "__main__":
  sys.exit(main())
