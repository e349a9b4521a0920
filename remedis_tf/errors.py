"""The errors a user can fix, apart from everything else.

A `UserError` means the flags, the input data or the model_dir are wrong:
the CLIs print its message in one line and exit with status 2. Any other
exception is a bug or an environment failure and keeps its traceback (exit
status 1), so a TensorFlow `ValueError` raised deep inside a training step is
never mistaken for a bad flag.

The subclasses also derive from the built-in exception a caller would expect
(`ValueError`, `FileNotFoundError`), so `except ValueError` keeps working.
"""

from __future__ import annotations


class UserError(Exception):
  """Something the user can fix by changing flags, inputs or the model_dir."""


class ConfigError(UserError, ValueError):
  """A configuration value (flag or config field) is invalid or inconsistent."""


class InputDataError(UserError, ValueError):
  """Input data (records, manifest.json, labels) is missing something or malformed."""


class InputNotFoundError(UserError, FileNotFoundError):
  """A file or directory named by the user does not exist."""
