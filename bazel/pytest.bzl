"""pytest_test: one Bazel py_test per tests/*_test.py file, run by pytest."""

def pytest_test(name, src, deps = [], data = [], size = "medium", tags = []):
    """Runs the fast (unmarked) tests of one pytest file as a py_test.

    Tests marked `slow` or `integration` are left to `make test`, so CI does
    not run the slow suite twice.

    Args:
      name: target name.
      src: the test file, e.g. "tests/nt_xent_test.py".
      deps: py_library targets the test imports.
      data: extra runtime files.
      size: Bazel test size.
      tags: Bazel tags.
    """
    native.py_test(
        name = name,
        srcs = ["//bazel:pytest_runner.py", src],
        main = "//bazel:pytest_runner.py",
        args = ["$(location %s)" % src],
        data = ["pyproject.toml", "tests/conftest.py"] + data,
        deps = deps,
        legacy_create_init = False,
        python_version = "PY3",
        srcs_version = "PY3",
        size = size,
        tags = tags,
    )
