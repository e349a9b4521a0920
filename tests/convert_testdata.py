"""Synthetic DICOM objects for the converter tests (generated with pydicom).

Every object carries identifying attributes (`IDENTIFIERS`) so tests can check
that none of them reaches the output.
"""

from __future__ import annotations

import glob
import io
import os

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
  DeflatedExplicitVRLittleEndian,
  ExplicitVRBigEndian,
  ExplicitVRLittleEndian,
  ImplicitVRLittleEndian,
  JPEG2000Lossless,
  RLELossless,
  generate_uid,
)

# Identifying values planted in every generated object.
IDENTIFIERS = {
  "PatientName": "Doe^Jane^Secretname",
  "PatientBirthDate": "19561103",
  "AccessionNumber": "ACCN98765431",
  "InstitutionName": "Saint Nowhere Hospital",
  "ReferringPhysicianName": "House^Gregory",
  "StudyDescription": "Private free text about the patient",
}

SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
DX_IMAGE = "1.2.840.10008.5.1.4.1.1.1.1"
BASIC_TEXT_SR = "1.2.840.10008.5.1.4.1.1.88.11"


def ramp(
  h: int = 64, w: int = 48, lo: int = 0, hi: int = 4095, seed: int = 0, dtype=np.uint16
) -> np.ndarray:
  """A deterministic non-constant test image with values in [lo, hi]."""
  rng = np.random.default_rng(seed)
  y, x = np.mgrid[:h, :w]
  base = x / max(w - 1, 1) * 0.6 + y / max(h - 1, 1) * 0.4
  noise = rng.uniform(0, 0.05, size=(h, w))
  values = lo + (hi - lo) * np.clip(base * 0.95 + noise, 0, 1)
  values[0, 0], values[-1, -1] = lo, hi
  return np.rint(values).astype(dtype)


def make_dataset(
  pixels: np.ndarray,
  *,
  photometric: str = "MONOCHROME2",
  bits_stored: int = 12,
  patient_id: str = "PAT-0001",
  sop_uid: str | None = None,
  study_uid: str | None = None,
  modality: str = "DX",
  sop_class: str = DX_IMAGE,
  **attrs,
) -> Dataset:
  """Builds an uncompressed dataset (explicit VR little endian) around `pixels`.

  Args:
    pixels: (H, W), (F, H, W), (H, W, 3) or (F, H, W, 3); its dtype sets
      BitsAllocated and PixelRepresentation.
    photometric: PhotometricInterpretation.
    bits_stored: BitsStored.
    patient_id: PatientID.
    sop_uid: SOPInstanceUID (generated when None).
    study_uid: StudyInstanceUID (generated when None).
    modality: Modality.
    sop_class: SOPClassUID.
    **attrs: further attributes set by keyword (WindowCenter=..., ...).

  Returns:
    The dataset, with file meta.
  """
  color = photometric in ("RGB", "YBR_FULL", "YBR_FULL_422")
  frames = pixels.ndim == (4 if color else 3)
  ds = Dataset()
  ds.file_meta = FileMetaDataset()
  ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
  ds.file_meta.MediaStorageSOPClassUID = sop_class
  ds.SOPClassUID = sop_class
  ds.SOPInstanceUID = sop_uid or generate_uid()
  ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
  ds.StudyInstanceUID = study_uid or generate_uid()
  ds.SeriesInstanceUID = generate_uid()
  ds.PatientID = patient_id
  for key, value in IDENTIFIERS.items():
    setattr(ds, key, value)
  ds.Modality = modality
  ds.BodyPartExamined = "CHEST"
  ds.ViewPosition = "PA"
  shape = pixels.shape[1:] if frames else pixels.shape
  ds.Rows, ds.Columns = int(shape[0]), int(shape[1])
  if frames:
    ds.NumberOfFrames = int(pixels.shape[0])
  ds.SamplesPerPixel = 3 if color else 1
  if color:
    ds.PlanarConfiguration = 0
  ds.PhotometricInterpretation = photometric
  ds.BitsAllocated = pixels.dtype.itemsize * 8
  ds.BitsStored = bits_stored
  ds.HighBit = bits_stored - 1
  ds.PixelRepresentation = 1 if pixels.dtype.kind == "i" else 0
  for key, value in attrs.items():
    setattr(ds, key, value)
  ds.PixelData = np.ascontiguousarray(pixels).astype(pixels.dtype.newbyteorder("<")).tobytes()
  return ds


def encode(ds: Dataset, syntax: str = "explicit") -> bytes:
  """Writes the dataset with a transfer syntax and returns the file bytes.

  Args:
    ds: an uncompressed explicit VR little endian dataset from make_dataset.
    syntax: "explicit", "implicit", "big_endian", "deflate", "rle", "j2k".

  Returns:
    The DICOM file bytes (with preamble and file meta).
  """
  ds = ds.copy()
  ds.file_meta = ds.file_meta.copy() if hasattr(ds.file_meta, "copy") else ds.file_meta
  buf = io.BytesIO()
  if syntax == "explicit":
    ds.save_as(buf, enforce_file_format=True)
  elif syntax == "implicit":
    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    ds.save_as(buf, enforce_file_format=True)
  elif syntax == "deflate":
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    ds.save_as(buf, enforce_file_format=True)
  elif syntax == "big_endian":
    arr = np.frombuffer(
      ds.PixelData, dtype=f"<{'u' if ds.PixelRepresentation == 0 else 'i'}{ds.BitsAllocated // 8}"
    )
    ds.PixelData = arr.astype(arr.dtype.newbyteorder(">")).tobytes()
    ds.file_meta.TransferSyntaxUID = ExplicitVRBigEndian
    ds.save_as(buf, enforce_file_format=True, little_endian=False, implicit_vr=False)
  elif syntax in ("rle", "j2k"):
    ds.compress(RLELossless if syntax == "rle" else JPEG2000Lossless)
    ds.save_as(buf, enforce_file_format=True)
  else:
    raise ValueError(syntax)
  return buf.getvalue()


def write(path: str, data: bytes) -> str:
  """Writes bytes to `path` (creating folders) and returns the path."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "wb") as f:
    f.write(data)
  return path


def pydicom_test_file(name: str) -> str:
  """Path of a file shipped with pydicom or pydicom-data (no download)."""
  from pydicom.data import get_testdata_file

  path = get_testdata_file(name, download=False)
  if path is None:
    raise FileNotFoundError(name)
  return str(path)


def pydicom_data_dir() -> str:
  """The folder of pydicom-data's real files."""
  import data_store

  return os.path.join(os.path.dirname(data_store.__file__), "data")


def all_shipped_files() -> list[str]:
  """Every .dcm shipped by pydicom and pydicom-data."""
  base = os.path.join(os.path.dirname(pydicom.__file__), "data", "test_files")
  return sorted(
    glob.glob(os.path.join(base, "*.dcm")) + glob.glob(os.path.join(pydicom_data_dir(), "*.dcm"))
  )


def reference_uint16(ds, stored, index=0, prefer_lut=True):
  """The independent reference for monochrome pixels.

  pydicom's apply_modality_lut then apply_voi_lut, normalized by the output
  range pydicom's windowing uses (or the VOI LUT's bit depth), inverted for
  MONOCHROME1, scaled to 0..65535 and rounded.
  """
  from pydicom.pixels import apply_modality_lut, apply_voi_lut

  values = apply_modality_lut(stored, ds)
  out = apply_voi_lut(values, ds, index=index, prefer_lut=prefer_lut)
  if "VOILUTSequence" in ds and (prefer_lut or "WindowCenter" not in ds):
    y_min, y_max = 0.0, 2.0 ** ds.VOILUTSequence[0].LUTDescriptor[2] - 1
  elif ds.get("ModalityLUTSequence"):
    y_min, y_max = 0.0, 2.0 ** ds.ModalityLUTSequence[0].LUTDescriptor[2] - 1
  else:
    bits = ds.BitsStored
    y_min, y_max = (
      (0, 2**bits - 1) if ds.PixelRepresentation == 0 else (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
    )
    if "RescaleSlope" in ds and "RescaleIntercept" in ds:
      y_min = y_min * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
      y_max = y_max * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
  norm = (out.astype(np.float64) - y_min) / (y_max - y_min)
  if ds.PhotometricInterpretation == "MONOCHROME1":
    norm = 1.0 - norm
  return np.rint(norm * 65535.0).astype(np.int64)
