"""Which slide, case and patient a slide belongs to (raw values, hashed before output).

  * slide: the slide's path relative to the input folder.
  * patient: the labels CSV's patient column for this slide (or its case),
    else the DICOM PatientID, else the TCGA participant of a TCGA barcode in
    the file name (TCGA-XX-XXXX), else the case.
  * case: the labels CSV's case column for this slide, else the DICOM
    AccessionNumber or StudyInstanceUID, else the TCGA participant (GDC calls
    the participant the case), else the slide.
Only keyed hashes of these reach the records (`hashing.keyed_hash`), and the
patient hash alone decides the split, so all slides of a patient share one.
The patient hash equals `remedis-convert`'s for the same PatientID and salt.
"""

from __future__ import annotations

import dataclasses
import posixpath
import re

from tfrecords_tools import hashing
from tfrecords_tools.slide_labels import SlideLabelTable

# A TCGA barcode starts with project, tissue source site and participant.
_TCGA = re.compile(r"^(TCGA-[A-Z0-9]{2}-[A-Z0-9]{4})(?![A-Z0-9])", re.IGNORECASE)


def tcga_participant(name: str) -> str | None:
  """The participant (patient) of a TCGA barcode, upper case, or None.

  Args:
    name: a barcode or a file name starting with one
      ("TCGA-A1-A0SB-01Z-00-DX1.<uuid>.svs").

  Returns:
    "TCGA-A1-A0SB", or None when `name` does not start with a TCGA barcode.
  """
  match = _TCGA.match(posixpath.basename(name))
  return match.group(1).upper() if match else None


@dataclasses.dataclass(frozen=True)
class SlideIds:
  """Raw identifiers of a slide (never written) and their keyed hashes.

  Attributes:
    slide, case, patient: raw values.
    slide_hash, case_hash, patient_hash: hex HMAC-SHA256 keyed by the salt.
  """

  slide: str
  case: str
  patient: str
  slide_hash: str
  case_hash: str
  patient_hash: str


def resolve(
  slide_name: str,
  dicom: dict[str, str],
  table: SlideLabelTable | None,
  salt: bytes,
) -> SlideIds:
  """Resolves and hashes a slide's ids.

  Args:
    slide_name: the slide's path relative to the input folder.
    dicom: identifiers read from a DICOM slide ("PatientID", "StudyInstanceUID",
      "AccessionNumber"); empty for other formats.
    table: the labels CSV, whose case / patient columns take precedence.
    salt: HMAC key.

  Returns:
    The SlideIds.
  """
  key = table.slide_key(slide_name) if table is not None else None
  tcga = tcga_participant(slide_name)
  case = (
    (table.case_of.get(key, "") if table is not None and key else "")
    or dicom.get("AccessionNumber", "")
    or dicom.get("StudyInstanceUID", "")
    or tcga
    or slide_name
  )
  patient = ""
  if table is not None and table.key_type == "slide" and key:
    patient = table.patient_of.get(key, "")
  elif table is not None and table.key_type == "case":
    patient = table.patient_of.get(case, "")
  patient = patient or dicom.get("PatientID", "") or tcga or case
  return SlideIds(
    slide_name,
    case,
    patient,
    hashing.keyed_hash(salt, slide_name),
    hashing.keyed_hash(salt, case),
    hashing.keyed_hash(salt, patient),
  )
