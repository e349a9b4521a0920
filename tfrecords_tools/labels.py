"""Labels from a CSV keyed by SOP instance, study, patient or relative path.

One key column, one or more label columns and an optional site column.
  * multiclass, one label column: the values are class names (label names are
    their sorted unique values) or, when every value is an integer >= 0, class
    indices (label names "0".."K-1").
  * multiclass, several label columns: one-hot; exactly one column must be 1.
  * multilabel: each column is 0, 1 or empty / -1 (unknown).
A row whose label cannot be read is reported ("label_error") and ignored; the
file as a whole is rejected (`LabelCsvError`, a user error) when it has no
header, the key / label / site columns are missing, or no row is usable.
"""

from __future__ import annotations

import csv
import dataclasses
import os
import posixpath

KEY_TYPES = ("sop_instance_uid", "study_instance_uid", "patient_id", "path")
LABEL_MODES = ("multiclass", "multilabel")

_KEY_NAMES = {
  "sopinstanceuid": "sop_instance_uid",
  "sop_instance_uid": "sop_instance_uid",
  "sop_uid": "sop_instance_uid",
  "studyinstanceuid": "study_instance_uid",
  "study_instance_uid": "study_instance_uid",
  "study_uid": "study_instance_uid",
  "patientid": "patient_id",
  "patient_id": "patient_id",
  "path": "path",
  "relative_path": "path",
  "file": "path",
  "filename": "path",
}
_SITE_NAMES = ("site", "site_id", "hospital")


class LabelCsvError(ValueError):
  """The labels CSV is unusable (a user error)."""


@dataclasses.dataclass(frozen=True)
class LabelRow:
  """One usable CSV row.

  Attributes:
    row_number: 1-based line number in the CSV (header is line 1).
    label: class index (multiclass) or -1.
    multi_label: K floats in {0, 1, -1}.
    site: the row's site ('' when absent).
  """

  row_number: int
  label: int
  multi_label: tuple[float, ...]
  site: str


@dataclasses.dataclass(frozen=True)
class LabelTable:
  """Parsed labels.

  Attributes:
    key_type: one of KEY_TYPES.
    label_mode: "multiclass" or "multilabel".
    label_names: class names (multiclass) or label column names (multilabel).
    rows: normalized key -> LabelRow.
    row_errors: [{"row": n, "reason": ..., "detail": ...}] for unusable rows.
    num_rows: data rows in the CSV.
  """

  key_type: str
  label_mode: str
  label_names: tuple[str, ...]
  rows: dict[str, LabelRow]
  row_errors: tuple[dict, ...]
  num_rows: int

  def lookup(self, key: str) -> LabelRow | None:
    """Returns the row for a raw key value, or None."""
    return self.rows.get(normalize_key(key, self.key_type))


def normalize_key(value: str, key_type: str) -> str:
  """Normalizes a key (paths: forward slashes, no leading './')."""
  value = value.strip()
  if key_type == "path":
    value = posixpath.normpath(value.replace("\\", "/")).lstrip("/")
    if value == ".":
      value = ""
  return value


def _key_type_for(column: str) -> str | None:
  return _KEY_NAMES.get(column.strip().lower().replace(" ", "_"))


def _parse_int(text: str) -> int | None:
  try:
    value = float(text)
  except ValueError:
    return None
  return int(value) if value.is_integer() else None


def read_labels(
  csv_path: str,
  key_column: str | None = None,
  key_type: str | None = None,
  label_columns: tuple[str, ...] = (),
  label_mode: str = "multiclass",
  site_column: str | None = None,
) -> LabelTable:
  """Reads and validates a labels CSV.

  Args:
    csv_path: path to the CSV (UTF-8, header row).
    key_column: the key column; default: the first column whose name is a
      known key name (SOPInstanceUID, StudyInstanceUID, PatientID, path ...).
    key_type: one of KEY_TYPES; default: inferred from the key column name.
    label_columns: label columns; default: every column that is not the key,
      the site column or another known key column.
    label_mode: "multiclass" or "multilabel".
    site_column: the site column; default: "site" when present.

  Returns:
    The LabelTable.

  Raises:
    LabelCsvError: on any user error in the file or the arguments.
  """
  if label_mode not in LABEL_MODES:
    raise LabelCsvError(f"label_mode must be one of {LABEL_MODES}, got {label_mode!r}")
  if not os.path.isfile(csv_path):
    raise LabelCsvError(f"labels CSV not found: {csv_path}")
  try:
    with open(csv_path, newline="", encoding="utf-8-sig") as f:
      reader = csv.reader(f)
      header = next(reader, None)
      body = list(reader)
  except (OSError, UnicodeDecodeError, csv.Error) as e:
    raise LabelCsvError(f"cannot read labels CSV {csv_path}: {e}") from e
  if not header:
    raise LabelCsvError(f"labels CSV {csv_path} is empty (no header row)")
  header = [h.strip() for h in header]
  if len(set(header)) != len(header):
    raise LabelCsvError(f"labels CSV has duplicate column names: {header}")

  if key_column is None:
    key_column = next((h for h in header if _key_type_for(h)), None)
    if key_column is None:
      raise LabelCsvError(
        f"no key column found among {header}; pass the key column "
        "(SOPInstanceUID, StudyInstanceUID, PatientID or path)"
      )
  if key_column not in header:
    raise LabelCsvError(f"key column {key_column!r} not in CSV header {header}")
  key_type = key_type or _key_type_for(key_column)
  if key_type not in KEY_TYPES:
    raise LabelCsvError(
      f"cannot infer the key type of column {key_column!r}; give one of {KEY_TYPES}"
    )
  if site_column is None:
    site_column = next((h for h in header if h.lower() in _SITE_NAMES), None)
  elif site_column not in header:
    raise LabelCsvError(f"site column {site_column!r} not in CSV header {header}")
  if not label_columns:
    label_columns = tuple(
      h for h in header if h not in (key_column, site_column) and not _key_type_for(h)
    )
  missing = [c for c in label_columns if c not in header]
  if missing:
    raise LabelCsvError(f"label columns {missing} not in CSV header {header}")
  if not label_columns:
    raise LabelCsvError("the labels CSV has no label column")

  key_i = header.index(key_column)
  site_i = header.index(site_column) if site_column else None
  label_is = [header.index(c) for c in label_columns]

  def cell(row: list[str], i: int) -> str:
    return row[i].strip() if i < len(row) else ""

  # Multiclass class names from a single column.
  class_index: dict[str, int] = {}
  if label_mode == "multiclass" and len(label_columns) == 1:
    values = {cell(r, label_is[0]) for r in body if any(c.strip() for c in r)} - {""}
    ints = {v: _parse_int(v) for v in values}
    if values and all(i is not None and i >= 0 for i in ints.values()):
      num = max(ints.values()) + 1  # type: ignore[type-var]
      label_names = tuple(str(i) for i in range(num))
      class_index = {v: ints[v] for v in values}  # type: ignore[misc]
    else:
      label_names = tuple(sorted(values))
      class_index = {v: i for i, v in enumerate(label_names)}
  else:
    label_names = tuple(label_columns)
  k = len(label_names)

  rows: dict[str, LabelRow] = {}
  errors: list[dict] = []
  num_rows = 0
  for line, row in enumerate(body, start=2):
    if not any(c.strip() for c in row):
      continue
    num_rows += 1
    key = normalize_key(cell(row, key_i), key_type)
    if not key:
      errors.append({"row": line, "reason": "label_error", "detail": "empty key"})
      continue
    texts = [cell(row, i) for i in label_is]
    label, multi, detail = -1, [-1.0] * k, ""
    if label_mode == "multiclass" and len(label_is) == 1:
      if texts[0] in class_index:
        label = class_index[texts[0]]
        multi = [0.0] * k
        multi[label] = 1.0
      else:
        detail = "empty label"
    else:
      parsed = [_parse_int(t) if t else -1 for t in texts]
      if any(p not in (0, 1, -1) for p in parsed):
        detail = f"label values must be 0, 1, -1 or empty, got {texts}"
      elif label_mode == "multiclass":
        if parsed.count(1) != 1 or -1 in parsed:
          detail = f"one-hot multiclass row needs exactly one 1, got {texts}"
        else:
          label = parsed.index(1)
          multi = [float(p) for p in parsed]
      else:
        multi = [float(p) for p in parsed]
    if detail:
      errors.append({"row": line, "reason": "label_error", "detail": detail})
      continue
    if key in rows:
      errors.append(
        {
          "row": line,
          "reason": "duplicate_label_key",
          "detail": f"same key as row {rows[key].row_number}; row ignored",
        }
      )
      continue
    site = cell(row, site_i) if site_i is not None else ""
    rows[key] = LabelRow(line, label, tuple(multi), site)
  if not rows:
    raise LabelCsvError(
      f"labels CSV {csv_path} has no usable row ({num_rows} rows, {len(errors)} errors)"
    )
  return LabelTable(key_type, label_mode, label_names, rows, tuple(errors), num_rows)
