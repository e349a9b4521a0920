"""A repository rule that points Bazel's Python toolchain at the project venv.

The venv lives at <workspace>/.venv (made by `make venv`). Its absolute path
differs between checkouts, so it is discovered when the repository is
evaluated instead of being written into a BUILD file. Nothing is fetched.
"""

_BUILD = """\
load("@bazel_tools//tools/python:toolchain.bzl", "py_runtime_pair")

py_runtime(
    name = "venv_py3",
    interpreter_path = "{interpreter}",
    python_version = "PY3",
    stub_shebang = "#!{interpreter}",
    visibility = ["//visibility:public"],
)

py_runtime_pair(
    name = "venv_runtime_pair",
    py3_runtime = ":venv_py3",
)

toolchain(
    name = "toolchain",
    toolchain = ":venv_runtime_pair",
    toolchain_type = "@bazel_tools//tools/python:toolchain_type",
)
"""

def _venv_python_impl(rctx):
    workspace_root = rctx.path(Label("//:WORKSPACE")).dirname
    interpreter = workspace_root.get_child(".venv").get_child("bin").get_child("python3")
    if not interpreter.exists:
        fail("No project virtualenv at %s: run `make venv` first." % interpreter)
    rctx.file("WORKSPACE", 'workspace(name = "%s")\n' % rctx.name)
    rctx.file("BUILD", _BUILD.format(interpreter = str(interpreter)))

venv_python = repository_rule(
    implementation = _venv_python_impl,
    local = True,
    doc = "Defines a py_runtime toolchain for <workspace>/.venv/bin/python3.",
)
