"""remedis_package: one py_library per source package, with a build-time layering check."""

# Every first-party package directory (a package's modules are its *.py files).
PACKAGES = [
    "tfrecords_tools",
    "remedis_tf",
    "remedis_tf/models",
    "remedis_tf/objectives",
    "remedis_tf/optim",
    "remedis_tf/data",
    "remedis_tf/train",
    "remedis_tf/demo",
    "hub_export",
]

def _target(package):
    return package.replace("/", "_")

def remedis_package(package, deps = [], name = None, srcs = None):
    """A py_library of `package`/*.py whose imports may only reach `deps`.

    The genrule `<target>_imports` runs bazel/check_imports.py over the sources,
    so `bazel build //...` fails on an import of an undeclared package; and
    declaring it adds a Bazel dependency, where a cycle is an error.

    Args:
      package: the package directory, e.g. "remedis_tf/train".
      deps: the package directories it may import (besides itself).
      name: target name (default: the package path with "_" for "/").
      srcs: the sources (default: every package/*.py).
    """
    name = name or _target(package)
    srcs = srcs if srcs != None else native.glob([package + "/*.py"])
    native.genrule(
        name = name + "_imports",
        srcs = srcs,
        outs = [name + "_imports.ok"],
        tools = ["//bazel:check_imports.py"],
        cmd = "python3 $(location //bazel:check_imports.py) --package {pkg} --packages {all} --allow {allow} $(SRCS) && touch $@".format(
            pkg = package,
            all = ",".join(PACKAGES),
            allow = ",".join([package] + deps),
        ),
    )
    native.py_library(
        name = name,
        srcs = srcs,
        srcs_version = "PY3",
        data = [":" + name + "_imports"],
        deps = [":" + _target(d) for d in deps],
    )
