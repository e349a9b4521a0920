"""absl flags bound to a frozen config dataclass, so each setting is written once.

A config field is declared once, in its dataclass, with its type, its default
and its line in the class docstring's `Attributes:` section. `define_flags`
turns every field into a flag of the matching kind (the help text is that
docstring line; choices come from `choices(...)` metadata, i.e. from the
registries); `config_from_flags` builds the dataclass back from the parsed
flags and turns a bad value into a `ConfigError` that names the flag.

Field metadata (all optional, via `flag(...)`):
  choices: allowed values (a tuple from a registry, e.g. `objectives.NAMES`).
  name: the flag name when it differs from the field name.
  parse: str -> value, for types the generic rules do not cover.
  skip: leave the field out of the CLI.

Only CLI modules (`*_main.py`) call these functions; library code takes the
dataclasses.
"""

from __future__ import annotations

import ast
import dataclasses
import enum
import re
import sys
import types
import typing
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from absl import flags

from remedis_tf.errors import ConfigError


def flag(
  *,
  choices: Iterable[Any] | None = None,
  name: str | None = None,
  parse: Callable[[str], Any] | None = None,
  skip: bool = False,
) -> dict[str, Any]:
  """Metadata for `dataclasses.field(metadata=...)` (see the module docstring)."""
  meta: dict[str, Any] = {"skip": skip}
  if choices is not None:
    meta["choices"] = tuple(str(c) for c in choices)
  if name is not None:
    meta["name"] = name
  if parse is not None:
    meta["parse"] = parse
  return {"config_flags": meta}


def parse_literal(text: str) -> Any:
  """A Python literal ("(0.35, 1.0)", "0.5", "True"), else the text itself."""
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text


def parse_pairs(items: Sequence[str]) -> tuple[tuple[str, Any], ...]:
  """['field=value', ...] -> (('field', literal value), ...).

  Raises:
    ValueError: an item without '='.
  """
  pairs = []
  for item in items:
    key, sep, value = item.partition("=")
    if not sep or not key.strip():
      raise ValueError(f"expected field=value, got {item!r}")
    pairs.append((key.strip(), parse_literal(value.strip())))
  return tuple(pairs)


def attribute_docs(cls: type) -> dict[str, str]:
  """Field name -> its text in the `Attributes:` sections of `cls` and its bases."""
  docs: dict[str, str] = {}
  for klass in reversed(cls.__mro__):
    text = klass.__dict__.get("__doc__") or ""
    parts = re.split(r"^[ \t]*Attributes:[ \t]*$", text, maxsplit=1, flags=re.M)
    if len(parts) < 2:
      continue
    indent, current = None, None
    for line in parts[1].splitlines():
      if not line.strip():
        continue
      width = len(line) - len(line.lstrip())
      match = re.match(r"^\s*(\w+):\s*(.*)$", line)
      if indent is None and match:
        indent = width
      if match and width == indent:
        current = match.group(1)
        docs[current] = match.group(2).strip()
      elif current is not None and indent is not None and width > indent:
        docs[current] += " " + line.strip()
      else:
        break
  return docs


def _meta(field: dataclasses.Field) -> dict[str, Any]:
  return dict(field.metadata.get("config_flags", {"skip": False}))


def _strip_optional(tp: Any) -> Any:
  if typing.get_origin(tp) in (typing.Union, types.UnionType):
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if len(args) == 1:
      return args[0]
    if str in args:  # e.g. str | Sequence[str]: given as one string.
      return str
  return tp


def _kind(tp: Any) -> str:
  """'bool', 'int', 'float', 'str', 'enum', 'list' or 'pairs' for a field type."""
  tp = _strip_optional(tp)
  if tp is bool:
    return "bool"
  if tp is int:
    return "int"
  if tp is float:
    return "float"
  if isinstance(tp, type) and issubclass(tp, enum.Enum):
    return "enum"
  if tp is str:
    return "str"
  if typing.get_origin(tp) is tuple:
    args = typing.get_args(tp)
    if args and typing.get_origin(args[0]) is tuple:
      return "pairs"
    return "list"
  raise TypeError(f"no flag kind for type {tp!r}")


def define_flags(
  config_cls: type,
  *,
  flag_values: flags.FlagValues = flags.FLAGS,
  required: Sequence[str] = (),
  defaults: Mapping[str, Any] | None = None,
  default_note: str | None = None,
  module_name: str | None = None,
) -> dict[str, flags.FlagHolder]:
  """Defines one flag per field of `config_cls`; returns field name -> flag holder.

  Args:
    config_cls: a dataclass whose docstring documents its fields.
    flag_values: where to define the flags.
    required: fields whose flags must be given.
    defaults: flag defaults that differ from the dataclass defaults (a value
      of None makes the flag optional with "no value" as its default).
    default_note: appended to every help text whose default comes from
      `defaults` (e.g. "default: the scale's").
    module_name: the module the flags belong to (what --helpshort lists);
      default: the calling module.
  """
  docs = attribute_docs(config_cls)
  hints = typing.get_type_hints(config_cls)
  # Flags belong to the calling CLI module (what --helpshort lists), as if
  # it had defined them itself.
  caller = module_name or sys._getframe(1).f_globals.get("__name__", "__main__")
  module_name = sys.argv[0] if caller == "__main__" else caller
  holders = {}
  for field in dataclasses.fields(config_cls):
    meta = _meta(field)
    if meta["skip"]:
      continue
    name = meta.get("name", field.name)
    if defaults is not None and field.name in defaults:
      default = defaults[field.name]
    elif field.default is not dataclasses.MISSING:
      default = field.default
    elif field.default_factory is not dataclasses.MISSING:
      default = field.default_factory()
    else:
      default = None
    help_text = docs.get(field.name, field.name)
    if default_note and defaults is not None and field.name in defaults:
      help_text = f"{help_text} ({default_note})"
    kind = "custom" if "parse" in meta else _kind(hints[field.name])
    choices = meta.get("choices")
    if kind == "enum" and choices is None:
      choices = tuple(m.value for m in _strip_optional(hints[field.name]))
    if isinstance(default, enum.Enum):
      default = default.value
    common = {
      "flag_values": flag_values,
      "required": field.name in required,
      "module_name": module_name,
    }
    if kind == "bool":
      holder = flags.DEFINE_bool(name, default, help_text, **common)
    elif kind == "int":
      holder = flags.DEFINE_integer(name, default, help_text, **common)
    elif kind == "float":
      holder = flags.DEFINE_float(name, default, help_text, **common)
    elif kind == "list":
      holder = flags.DEFINE_list(name, list(default) if default else None, help_text, **common)
    elif kind == "pairs":
      items = [f"{k}={v!r}" for k, v in default or ()]
      holder = flags.DEFINE_multi_string(name, items, help_text, **common)
    elif choices is not None and kind != "custom":
      holder = flags.DEFINE_enum(name, default, list(choices), help_text, **common)
    else:
      holder = flags.DEFINE_string(
        name, None if default is None else str(default), help_text, **common
      )
    holders[field.name] = holder
  return holders


def _convert(field: dataclasses.Field, tp: Any, value: Any) -> Any:
  meta = _meta(field)
  if value is None:
    return None
  if "parse" in meta:
    return meta["parse"](value)
  kind = _kind(tp)
  base = _strip_optional(tp)
  if kind == "pairs":
    return parse_pairs(value)
  if kind == "list":
    args = typing.get_args(base)
    item_type = args[0] if args else str
    return tuple(item_type(v) for v in value)
  if kind == "enum":
    return base(value)
  if kind == "str" and value == "" and _strip_optional(tp) is not tp:
    return None  # --init_checkpoint= means "none".
  return value


def config_from_flags(
  config_cls: type, holders: Mapping[str, flags.FlagHolder], **fixed: Any
) -> Any:
  """Builds `config_cls` from parsed flags; `fixed` fields win over flags.

  A flag left at None keeps the dataclass default.

  Raises:
    ConfigError: a flag value cannot be converted (the message names the flag).
  """
  hints = typing.get_type_hints(config_cls)
  kwargs: dict[str, Any] = {}
  for field in dataclasses.fields(config_cls):
    if field.name in fixed or field.name not in holders:
      continue
    holder = holders[field.name]
    try:
      value = _convert(field, hints[field.name], holder.value)
    except (TypeError, ValueError) as e:
      raise ConfigError(f"--{holder.name}: {e}") from e
    if value is None and holder.value is None and field.default is not None:
      continue
    kwargs[field.name] = value
  kwargs.update(fixed)
  return config_cls(**kwargs)
