""".ci/summarize.py: CI's last line counts each test once, whichever runners ran it.

Issue 13, item 6: CI used to add pytest's counts to Bazel's, so every fast
test (run by both) was counted twice. These JUnit files are written here in
the two runners' own shapes (pytest: classname `tests.<module>`; a Bazel
py_test: pytest on one file, classname `<module>`).
"""

import importlib.util
import os

import pytest

_PATH = os.path.join(
  os.path.dirname(os.path.dirname(os.path.abspath(__file__))), ".ci", "summarize.py"
)


@pytest.fixture(scope="module")
def summarize():
  spec = importlib.util.spec_from_file_location("ci_summarize", _PATH)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _junit(path, classname, cases):
  """cases: (name, outcome) with outcome 'passed', 'failed', 'error' or 'skipped'."""
  body = []
  for name, outcome in cases:
    inner = {"passed": "", "failed": "<failure message='x'/>", "error": "<error message='x'/>"}
    inner["skipped"] = "<skipped message='x'/>"
    body.append(f"<testcase classname='{classname}' name='{name}'>{inner[outcome]}</testcase>")
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w") as f:
    f.write(f"<testsuites><testsuite name='pytest'>{''.join(body)}</testsuite></testsuites>")


def _main(summarize, monkeypatch, capsys, argv):
  monkeypatch.setattr("sys.argv", ["summarize.py", *argv])
  code = summarize.main()
  return code, capsys.readouterr().out.strip().splitlines()


def test_a_test_run_by_both_runners_counts_once(summarize, tmp_path, monkeypatch, capsys):
  pytest_xml = str(tmp_path / "pytest.xml")
  _junit(pytest_xml, "tests.a_test", [("test_fast", "passed"), ("test_slow", "passed")])
  _junit(str(tmp_path / "pytest-beam.xml"), "tests.beam_test", [("test_beam", "passed")])
  logs = tmp_path / "bazel-testlogs"
  _junit(str(logs / "a_test" / "test.xml"), "a_test", [("test_fast", "passed")])
  code, lines = _main(
    summarize, monkeypatch, capsys, [pytest_xml, str(tmp_path / "pytest-beam.xml"), str(logs)]
  )
  assert code == 0
  assert lines[-1] == "3 passed, 0 failed, 0 skipped"
  assert "1 tests ran under both runners" in "\n".join(lines)


def test_a_failure_in_either_runner_fails_the_test_once(summarize, tmp_path, monkeypatch, capsys):
  pytest_xml = str(tmp_path / "pytest.xml")
  _junit(pytest_xml, "tests.a_test", [("test_x", "passed"), ("test_y", "error")])
  logs = tmp_path / "bazel-testlogs"
  _junit(str(logs / "a_test" / "test.xml"), "a_test", [("test_x", "failed")])
  code, lines = _main(summarize, monkeypatch, capsys, [pytest_xml, str(logs)])
  assert code == 1 and lines[-1] == "0 passed, 2 failed, 0 skipped"


def test_no_test_run_or_a_missing_result_file_fails(summarize, tmp_path, monkeypatch, capsys):
  empty = str(tmp_path / "empty.xml")
  _junit(empty, "tests.a_test", [])
  code, lines = _main(summarize, monkeypatch, capsys, [empty, str(tmp_path / "no-logs")])
  assert code == 1 and lines[-1] == "0 passed, 0 failed, 0 skipped"
  code, lines = _main(
    summarize, monkeypatch, capsys, [str(tmp_path / "missing.xml"), str(tmp_path / "no-logs")]
  )
  assert code == 1 and lines[-1] == "0 passed, 1 failed, 0 skipped"
