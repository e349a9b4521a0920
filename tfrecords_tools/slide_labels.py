"""Slide labels from a CSV keyed by slide, case or patient.

The key column is the first column named like a slide, case or patient id
(KEY_COLUMNS); its type follows from the name. Label columns and label modes
are those of `tfrecords_tools.labels` (multiclass names or indices, one-hot,
multilabel 0/1/-1), which parses the rows: its "patient_id" key type
normalises keys by stripping whitespace only, which is what every slide, case
and patient key needs.

A CSV keyed by slide may also carry `case_id` and `patient_id` columns: they
then say which case and patient each slide belongs to (for splits and hashed
ids), which a file name alone cannot. A CSV keyed by case may carry
`patient_id`.

A slide matches a row keyed by slide when the key equals, in this order, the
slide's path relative to the input folder, that path without its extension,
its file (or folder) name, that name without its extension, or that name up
to its first dot (a TCGA file "TCGA-..-DX1.<uuid>.svs" matches
"TCGA-..-DX1").
"""

from __future__ import annotations

import csv
import dataclasses
import posixpath

from tfrecords_tools import labels
from tfrecords_tools.labels import LabelCsvError, LabelRow, LabelTable

KEY_TYPES = ("slide", "case", "patient")
KEY_COLUMNS = {
  "slide": "slide",
  "slide_id": "slide",
  "slide_name": "slide",
  "slide_submitter_id": "slide",
  "case": "case",
  "case_id": "case",
  "case_submitter_id": "case",
  "patient": "patient",
  "patient_id": "patient",
  "patientid": "patient",
}


def _key_type(column: str) -> str | None:
  return KEY_COLUMNS.get(column.strip().lower().replace(" ", "_"))


@dataclasses.dataclass(frozen=True)
class SlideLabelTable:
  """Parsed slide labels.

  Attributes:
    key_type: "slide", "case" or "patient".
    table: the rows, keyed by the stripped key.
    case_of: key -> case id, from a case column (key type "slide").
    patient_of: key -> patient id, from a patient column.
  """

  key_type: str
  table: LabelTable
  case_of: dict[str, str]
  patient_of: dict[str, str]

  @property
  def label_names(self) -> tuple[str, ...]:
    """Class names (multiclass) or label column names (multilabel)."""
    return self.table.label_names

  def slide_key(self, slide_name: str) -> str | None:
    """The CSV key that matches a slide's relative name, or None (see module doc)."""
    base = posixpath.basename(slide_name)
    for candidate in (
      slide_name,
      posixpath.splitext(slide_name)[0],
      base,
      posixpath.splitext(base)[0],
      base.split(".", 1)[0],
    ):
      if candidate and candidate in self.table.rows:
        return candidate
    return None


def read_slide_labels(
  csv_path: str,
  key_column: str | None = None,
  label_columns: tuple[str, ...] = (),
  label_mode: str = "multiclass",
  site_column: str | None = None,
) -> SlideLabelTable:
  """Reads a slide labels CSV.

  Args:
    csv_path: the CSV (UTF-8, header row).
    key_column: the key column (default: the first slide/case/patient column).
    label_columns: label columns (default: every column that is neither a key,
      case or patient column nor the site column).
    label_mode: "multiclass" or "multilabel".
    site_column: site column (default: "site" when present).

  Returns:
    The SlideLabelTable.

  Raises:
    LabelCsvError: a user error in the file or the arguments.
  """
  try:
    with open(csv_path, newline="", encoding="utf-8-sig") as f:
      reader = csv.reader(f)
      header = [h.strip() for h in next(reader, [])]
      body = list(reader)
  except (OSError, UnicodeDecodeError, csv.Error) as e:
    raise LabelCsvError(f"cannot read labels CSV {csv_path}: {e}") from e
  if not header:
    raise LabelCsvError(f"labels CSV {csv_path} is empty (no header row)")
  if key_column is None:
    key_column = next((h for h in header if _key_type(h)), None)
    if key_column is None:
      raise LabelCsvError(
        f"no key column found among {header}; name one slide_id, case_id or patient_id"
      )
  if key_column not in header:
    raise LabelCsvError(f"key column {key_column!r} not in CSV header {header}")
  key_type = _key_type(key_column)
  if key_type is None:
    raise LabelCsvError(
      f"cannot tell whether key column {key_column!r} holds slide, case or patient ids; "
      f"name it one of {sorted(KEY_COLUMNS)}"
    )
  if site_column is None:
    site_column = next((h for h in header if h.lower() in ("site", "site_id", "hospital")), None)
  id_columns = {h: _key_type(h) for h in header if _key_type(h) and h != key_column}
  if not label_columns:
    label_columns = tuple(h for h in header if h not in (key_column, site_column, *id_columns))
  table = labels.read_labels(
    csv_path,
    key_column=key_column,
    key_type="patient_id",  # strip-only key normalisation
    label_columns=label_columns,
    label_mode=label_mode,
    site_column=site_column,
  )
  case_of: dict[str, str] = {}
  patient_of: dict[str, str] = {}
  key_i = header.index(key_column)
  for column, kind in id_columns.items():
    if KEY_TYPES.index(kind) <= KEY_TYPES.index(key_type):
      continue  # only coarser ids (slide -> case -> patient) are mappings
    target = case_of if kind == "case" else patient_of
    i = header.index(column)
    for row in body:
      if len(row) > max(i, key_i) and row[key_i].strip() and row[i].strip():
        target.setdefault(row[key_i].strip(), row[i].strip())
  return SlideLabelTable(key_type, table, case_of, patient_of)


def lookup(
  table: SlideLabelTable, slide_key: str | None, case: str, patient: str
) -> LabelRow | None:
  """The label row of a slide, by the table's key type.

  Args:
    table: the labels.
    slide_key: the slide's matching key (`SlideLabelTable.slide_key`), or None.
    case: the slide's raw case id.
    patient: the slide's raw patient id.

  Returns:
    The LabelRow or None.
  """
  key = {"slide": slide_key, "case": case, "patient": patient}[table.key_type]
  return table.table.rows.get(key.strip()) if key else None
