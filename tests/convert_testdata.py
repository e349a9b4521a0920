"""Synthetic DICOM objects for the converter tests (generated with pydicom).

Every object carries identifying attributes (`IDENTIFIERS`) so tests can check
that none of them reaches the output.
"""

from __future__ import annotations

import glob
import io
import os
import random
import warnings

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


# ---------------------------------------------------------------------------
# Palette colour: files written in either byte order, and a reference read
# from a file's own bytes (independent of pydicom's LUT code, which misreads
# big endian palette data in pydicom 3.0.2).

BIG_ENDIAN_UID = "1.2.840.10008.1.2.2"  # Explicit VR Big Endian
COLORS = ("Red", "Green", "Blue")


def ow_bytes(entries, bits: int, order: str) -> bytes:
  """Encodes LUT entries as an OW value written in byte order `order`.

  16-bit entries are one word each. 8-bit entries are packed two per word,
  the first in the low byte (PS3.5 8.1.1 and PS3.3 C.7.6.3.1.6), padded to a
  whole word; a big endian file therefore stores each pair swapped.

  Args:
    entries: (N,) non-negative ints.
    bits: 8 (packed) or 16 (one per word).
    order: "<" or ">".

  Returns:
    The element's bytes as they appear in the file.
  """
  entries = [int(v) for v in entries]
  if bits == 16:
    words = entries
  else:
    if len(entries) % 2:
      entries.append(0)
    words = [entries[i] | entries[i + 1] << 8 for i in range(0, len(entries), 2)]
  return np.asarray(words, dtype=np.int64).astype(order + "u2").tobytes()


def palette_dataset(
  indices: np.ndarray,
  luts,
  *,
  bits: int = 16,
  first: int = 0,
  order: str = "<",
  segmented=None,
  words_for_8_bit: bool = False,
) -> Dataset:
  """A PALETTE COLOR dataset whose LUT data are stored in byte order `order`.

  Args:
    indices: (H, W) or (F, H, W) uint8 / uint16 palette indices.
    luts: three (N,) red, green, blue tables.
    bits: bits per LUT entry (the descriptor's third value).
    first: first mapped index (the descriptor's second value).
    order: "<" for little endian files, ">" for `encode(ds, "big_endian")`.
    segmented: None, or three lists of segmented LUT entries written instead
      of `luts` (whose lengths give the descriptors).
    words_for_8_bit: store 8-bit entries one per 16-bit word (an old layout)
      instead of packed.

  Returns:
    The dataset (explicit VR little endian file meta; encode it with
    "big_endian" when `order` is ">").
  """
  ds = make_dataset(
    indices,
    photometric="PALETTE COLOR",
    bits_stored=indices.dtype.itemsize * 8,
    sop_class=SECONDARY_CAPTURE,
  )
  for i, color in enumerate(COLORS):
    n = len(luts[i])
    setattr(ds, f"{color}PaletteColorLookupTableDescriptor", [n % 65536, first, bits])
    word_bits = 16 if (bits > 8 or words_for_8_bit) else 8
    if segmented is None:
      setattr(ds, f"{color}PaletteColorLookupTableData", ow_bytes(luts[i], word_bits, order))
    else:
      value = ow_bytes(segmented[i], word_bits, order)
      setattr(ds, f"Segmented{color}PaletteColorLookupTableData", value)
  return ds


def expand_segments_reference(entries) -> list[int]:
  """Expands discrete (0) and linear (1) segments, PS3.3 C.7.9.2, in integers.

  A linear segment of length L from y0 (the previous entry) to y1 gives
  y0 + (y1 - y0) * i / L for i = 1..L, rounded half up, computed exactly as
  floor((2 * (y0 * L + (y1 - y0) * i) + L) / (2 * L)).
  """
  entries = [int(v) for v in entries]
  out: list[int] = []
  i = 0
  while i + 1 < len(entries):
    opcode, length = entries[i], entries[i + 1]
    if opcode == 0:
      out.extend(entries[i + 2 : i + 2 + length])
      i += 2 + length
    elif opcode == 1:
      y0, y1 = out[-1], entries[i + 2]
      out.extend(
        (2 * (y0 * length + (y1 - y0) * k) + length) // (2 * length) for k in range(1, length + 1)
      )
      i += 3
    else:
      raise ValueError(f"opcode {opcode} is not expanded by the reference")
  return out


def _raw(ds: Dataset, keyword: str):
  """The element as read from the file, before pydicom converts its value."""
  from pydicom.datadict import tag_for_keyword
  from pydicom.dataelem import RawDataElement

  elem = ds.get_item(tag_for_keyword(keyword))
  assert isinstance(elem, RawDataElement), keyword
  return elem


def raw_palette_reference(path: str) -> np.ndarray:
  """8-bit RGB frames of a PALETTE COLOR file, from the file's own bytes.

  The byte order comes from the transfer syntax UID (or, without file meta,
  from the first element's group number); each descriptor and each LUT data
  element is decoded from its raw bytes with NumPy '<u2' / '>u2' dtypes (8-bit
  entries: two per word, low byte first). Only the indices come from pydicom
  (its pixel decoders, not its LUT code). An index below the first mapped
  value takes the first entry, one past the table the last; n-bit entries
  become round(v * 255 / (2**n - 1)).

  Args:
    path: the file.

  Returns:
    (F, H, W, 3) uint8.
  """
  with open(path, "rb") as f:
    data = f.read()
  with warnings.catch_warnings():  # bare datasets: "found implicit VR"
    warnings.simplefilter("ignore")
    ds = pydicom.dcmread(path, force=True)
    pixel_ds = pydicom.dcmread(path, force=True)
  meta = getattr(ds, "file_meta", None)
  uid = str(meta.get("TransferSyntaxUID", "")) if meta is not None else ""
  if uid:
    order = ">" if uid == BIG_ENDIAN_UID else "<"
  else:  # A bare dataset: group 0x0008 reads 08 00 in little endian.
    order = "<" if data[:2] == b"\x08\x00" else ">"
  signed = ds.get_item(0x00280103) is not None and ds.PixelRepresentation == 1
  channels = []
  if not uid:
    pixel_ds.file_meta = FileMetaDataset()
    pixel_ds.file_meta.TransferSyntaxUID = (
      ImplicitVRLittleEndian if pixel_ds.original_encoding[0] else ExplicitVRLittleEndian
    )
  indices = pixel_ds.pixel_array
  if int(pixel_ds.get("NumberOfFrames", 1) or 1) == 1:
    indices = indices[None]
  indices = indices.astype(np.int64)
  for color in COLORS:
    n, first, bits = (
      int(v)
      for v in np.frombuffer(
        _raw(ds, f"{color}PaletteColorLookupTableDescriptor").value, order + "u2"
      )
    )
    n = n or 65536
    if signed and first >= 32768:
      first -= 65536
    if f"{color}PaletteColorLookupTableData" in ds:
      value = _raw(ds, f"{color}PaletteColorLookupTableData").value
      words = np.frombuffer(value, order + "u2").astype(np.int64)
      lut = words
      if len(value) != 2 * n:  # 8-bit entries, two per word, low byte first.
        lut = np.stack([words & 0xFF, words >> 8], axis=-1).reshape(-1)
    else:
      value = _raw(ds, f"Segmented{color}PaletteColorLookupTableData").value
      words = np.frombuffer(value, order + "u2").astype(np.int64)
      if bits == 8:
        words = np.stack([words & 0xFF, words >> 8], axis=-1).reshape(-1)
      lut = np.asarray(expand_segments_reference(words), dtype=np.int64)
    lut = lut[:n]
    assert lut.max() <= 2**bits - 1, (path, color, bits)
    mapped = lut[np.clip(indices - first, 0, lut.size - 1)]
    # round(v * 255 / D) in integers, D = 2**bits - 1; v * 255 / D is never a
    # tie (510 v is even, (2k + 1) D odd), so half up equals half to even.
    top = 2**bits - 1
    channels.append(((2 * mapped * 255 + top) // (2 * top)).astype(np.uint8))
  return np.stack(channels, axis=-1)


def shipped_file(name: str) -> str:
  """Path of a .dcm shipped by pydicom or pydicom-data, found by globbing.

  (pydicom.data.get_testdata_files tries to download, which hangs offline.)
  """
  for path in all_shipped_files():
    if os.path.basename(path) == name:
      return path
  raise FileNotFoundError(name)


def damaged_copies(data: bytes, count: int, seed: int) -> list[bytes]:
  """Deterministic damaged versions of a file: truncations and byte flips.

  Args:
    data: the intact file.
    count: how many copies; every third is a truncation, the others
      overwrite 1, 4, 16 or 64 random bytes.
    seed: the random seed.

  Returns:
    `count` damaged copies.
  """
  rng = random.Random(seed)
  out = []
  for i in range(count):
    b = bytearray(data)
    if i % 3 == 0:
      b = b[: rng.randrange(1, len(b))]
    else:
      for _ in range(rng.choice([1, 4, 16, 64])):
        b[rng.randrange(len(b))] = rng.randrange(256)
    out.append(bytes(b))
  return out
