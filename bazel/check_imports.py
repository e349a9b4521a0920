"""Build-time layering check: a package may import only the packages it declares.

Usage (from the genrule of `remedis_package` in bazel/packages.bzl):
  check_imports.py --package remedis_tf/train --packages PKG,... --allow PKG,... SRC...

`--packages` lists every first-party package directory of the repository;
`--allow` those this package's Bazel target depends on (itself included).
Every `import` and `from ... import` in the sources (also inside functions)
that names a first-party module is mapped to its package: the longest listed
directory that is a prefix of the module path. An import of an undeclared
package fails the build with the file, line and the missing dependency, so a
new dependency must be declared in BUILD, where Bazel rejects cycles.
"""

import argparse
import ast
import sys


def package_of(module: str, packages: list[str]) -> str | None:
  """The longest package (dotted) that `module` is or lies in; None if not first-party."""
  best = None
  for package in packages:
    if module == package or module.startswith(package + "."):
      if best is None or len(package) > len(best):
        best = package
  return best


def imported_modules(tree: ast.AST, current: str) -> list[tuple[int, str]]:
  """(line, dotted module) of every import in `tree`; `from a import b` yields a.b and a."""
  found = []
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      found += [(node.lineno, alias.name) for alias in node.names]
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:  # relative import
        parts = current.split(".")[: -node.level]
        base = ".".join([*parts, base] if base else parts)
      found.append((node.lineno, base))
      found += [(node.lineno, f"{base}.{alias.name}") for alias in node.names]
  return found


def main() -> int:
  parser = argparse.ArgumentParser()
  parser.add_argument("--package", required=True)
  parser.add_argument("--packages", required=True)
  parser.add_argument("--allow", required=True)
  parser.add_argument("sources", nargs="+")
  args = parser.parse_args()
  packages = [p.replace("/", ".") for p in args.packages.split(",")]
  allowed = {p.replace("/", ".") for p in args.allow.split(",")}
  errors = []
  for path in args.sources:
    module = path[:-3].replace("/", ".")
    with open(path, encoding="utf-8") as f:
      tree = ast.parse(f.read(), path)
    for line, name in imported_modules(tree, module):
      target = package_of(name, packages)
      if target is not None and target not in allowed:
        errors.append(f"{path}:{line}: imports {name} (package {target.replace('.', '/')})")
  if errors:
    print(
      f"{args.package}: imports of packages its BUILD target does not depend on:\n  "
      + "\n  ".join(sorted(set(errors)))
      + "\nDeclare the dependency in BUILD (Bazel then rejects a cycle) or remove the import.",
      file=sys.stderr,
    )
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main())
