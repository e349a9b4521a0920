"""Generates a labeled, two-site, SYNTHETIC chest radiograph DICOM archive.

Layout of `output_dir`:

  dicom/siteA/pNNNN/sNN/IMNNNN.dcm     DX, 12 bit, MONOCHROME2, uncompressed
  dicom/siteB/PATNNNN/STUDYNN/IMNNNNNN CR, 10 bit, MONOCHROME1, RLE / JPEG 2000
                                       lossless (no file extension)
  labels.csv           sop_instance_uid,site,opacity,cardiomegaly
  splits.csv           sop_instance_uid,site,split
  summary.json         what was generated (counts per site, label, split)
  README_SYNTHETIC.txt says that nothing here is real patient data

Labels: `labels.csv` holds the ground truth of EVERY image. Which labels a
study may use is the study's decision (e.g. a few percent of site A's train
split), so a label-efficiency sweep needs no regeneration; the unused labels
are simply ignored. `splits.csv` assigns whole patients to train / validation
/ test (30 % test, 10 % validation per site, by a seeded permutation), so no
patient crosses splits.

Every identifying attribute (names, ids, birth dates, accession numbers,
addresses, physicians, institutions) is FAKE, present so that the converter's
de-identification has something to remove. Half of the patients are named
'SYNTHETIC^PATIENT...'; the other half get realistic-looking fictional names.

The archive is a pure function of (scale, seed): per-patient random streams
and name-based UIDs make files byte-identical across runs and worker counts.
"""

from __future__ import annotations

import concurrent.futures
import csv
import dataclasses
import datetime
import json
import multiprocessing
import os
import time
import uuid

import numpy as np
import pydicom
from pydicom import uid
from pydicom.dataset import Dataset, FileMetaDataset

from remedis_tf.demo import anatomy, site_profiles

GENERATOR_VERSION = "remedis-tf-synthetic-archive/0.1.0"
_UID_NAMESPACE = uuid.UUID("5b0f7f5e-6a52-4c1e-9a52-52454d454449")  # fixed, arbitrary
SPLIT_FRACTIONS = {"test": 0.3, "validation": 0.1}  # the rest is train


@dataclasses.dataclass(frozen=True)
class Scale:
  """Size of an archive.

  Attributes:
    patients: patients per site, in `site_profiles.SITES` order.
    images_per_patient: inclusive (min, max) images per patient.
    row_scale: multiplier of each site's default matrix rows.
  """

  patients: tuple[int, int]
  images_per_patient: tuple[int, int]
  row_scale: float


SCALES = {
  "tiny": Scale(patients=(14, 12), images_per_patient=(2, 5), row_scale=0.5),
  "default": Scale(patients=(330, 270), images_per_patient=(2, 5), row_scale=1.0),
  "large": Scale(patients=(1600, 1300), images_per_patient=(2, 5), row_scale=1.0),
}

_FIRST_F = (
  "Alba",
  "Brynn",
  "Carys",
  "Delphine",
  "Elowen",
  "Fenna",
  "Greta",
  "Hedda",
  "Ilse",
  "Juno",
  "Katrien",
  "Liesel",
  "Marit",
  "Noor",
  "Odile",
  "Pia",
)
_FIRST_M = (
  "Anders",
  "Bastian",
  "Cyprian",
  "Dario",
  "Emeric",
  "Florian",
  "Gideon",
  "Hollis",
  "Ivo",
  "Jory",
  "Kasimir",
  "Leander",
  "Matthis",
  "Nils",
  "Oren",
  "Piet",
)
_LAST = (
  "Abernathy",
  "Brightwater",
  "Calloway",
  "Dunmore",
  "Everhart",
  "Fairbrook",
  "Galloway",
  "Hawthorne",
  "Ingersoll",
  "Jessop",
  "Kettering",
  "Larkspur",
  "Merriweather",
  "Northcott",
  "Oakhurst",
  "Pemberton",
  "Quillfeather",
  "Ravensworth",
  "Stillwater",
  "Thistlewood",
)
_STREETS = ("Synthetic Street", "Fictional Avenue", "Imaginary Lane", "Placeholder Road")


@dataclasses.dataclass(frozen=True)
class ImageRecord:
  """What the generator knows about one written image."""

  path: str
  site: str
  patient_index: int
  split: str
  sop_instance_uid: str
  labels: dict[str, int]
  view: str
  transfer_syntax: str
  rows: int
  columns: int


def _uid(*parts: object) -> str:
  """A deterministic UUID-derived UID (2.25.<uuid as integer>) named by `parts`."""
  name = "/".join(str(p) for p in parts)
  return f"2.25.{uuid.uuid5(_UID_NAMESPACE, name).int}"


def _patient_splits(num_patients: int, seed: int, site_index: int) -> list[str]:
  """Assigns each patient of a site to train / validation / test."""
  order = np.random.default_rng([seed, site_index, 7]).permutation(num_patients)
  num_test = int(round(SPLIT_FRACTIONS["test"] * num_patients))
  num_val = int(round(SPLIT_FRACTIONS["validation"] * num_patients))
  splits = ["train"] * num_patients
  for rank, patient in enumerate(order):
    if rank < num_test:
      splits[patient] = "test"
    elif rank < num_test + num_val:
      splits[patient] = "validation"
  return splits


def _fake_identity(
  rng: np.random.Generator, site: site_profiles.SiteProfile, site_index: int, patient_index: int
) -> dict[str, str]:
  """Fake identifying attributes of one patient."""
  sex = str(rng.choice(["F", "M"]))
  age = int(rng.integers(site.age_range[0], site.age_range[1] + 1))
  letter = site.name[-1]
  if patient_index % 2 == 0:
    name = f"SYNTHETIC^PATIENT{letter}{patient_index:04d}"
    patient_id = f"SYN-{letter}-{patient_index:05d}"
  else:
    first = str(rng.choice(_FIRST_F if sex == "F" else _FIRST_M))
    middle = chr(ord("A") + int(rng.integers(26)))
    name = f"{rng.choice(_LAST)}^{first}^{middle}"
    patient_id = f"{site_index + 4}{int(rng.integers(10**6, 10**7)):07d}"
  return {
    "PatientName": name,
    "PatientID": patient_id,
    "PatientSex": sex,
    "age": str(age),
    "PatientAddress": f"{int(rng.integers(1, 400))} {rng.choice(_STREETS)}, Faketown",
    "PatientTelephoneNumbers": f"555-01{int(rng.integers(100)):02d}",
    "OtherPatientIDs": f"INS{int(rng.integers(10**8, 10**9))}",
  }


def _sample_pose(rng: np.random.Generator, view: str) -> anatomy.ImagePose:
  """Per-image positioning; AP bedside views are magnified and less tidy."""
  if view == "AP":
    return anatomy.ImagePose(
      shift_x=float(rng.normal(0, 12)),
      shift_y=float(rng.normal(-5, 12)),
      rotation_deg=float(rng.normal(0, 4)),
      magnification=float(rng.normal(1.07, 0.02)),
      heart_magnification=float(rng.normal(1.12, 0.02)),
      inspiration=float(rng.normal(0.92, 0.04)),
    )
  return anatomy.ImagePose(
    shift_x=float(rng.normal(0, 6)),
    shift_y=float(rng.normal(0, 8)),
    rotation_deg=float(rng.normal(0, 1.5)),
    magnification=float(rng.normal(1.0, 0.015)),
    heart_magnification=1.0,
    inspiration=float(rng.normal(1.0, 0.03)),
  )


def _dicom_dataset(
  site: site_profiles.SiteProfile,
  identity: dict[str, str],
  uids: dict[str, str],
  when: datetime.datetime,
  birth: datetime.date,
  view: str,
  station: int,
  image_number: int,
  accession: str,
  stored: site_profiles.StoredImage,
  spacing: float,
) -> Dataset:
  """Builds one image's dataset (pixel data uncompressed)."""
  ds = Dataset()
  ds.SpecificCharacterSet = "ISO_IR 100"
  ds.ImageType = ["DERIVED", "PRIMARY"]
  ds.SOPClassUID = site.sop_class_uid
  ds.SOPInstanceUID = uids["sop"]
  date, tm = when.strftime("%Y%m%d"), when.strftime("%H%M%S")
  ds.StudyDate = ds.SeriesDate = ds.ContentDate = ds.AcquisitionDate = date
  ds.StudyTime = ds.SeriesTime = ds.ContentTime = ds.AcquisitionTime = tm
  ds.AccessionNumber = accession
  ds.Modality = site.modality
  ds.Manufacturer = site.manufacturer
  ds.InstitutionName = site.institution
  ds.InstitutionAddress = "1 Synthetic Way, Nowhere (SYNTHETIC)"
  ds.ReferringPhysicianName = "SYNTHETIC^REFERRER"
  ds.StationName = site.stations[station]
  ds.StudyDescription = "SYNTHETIC CHEST X-RAY"
  ds.SeriesDescription = f"SYNTHETIC CHEST {view}"
  ds.OperatorsName = f"SYNTHETIC^OPERATOR{station + 1}"
  ds.ManufacturerModelName = site.model
  ds.PatientName = identity["PatientName"]
  ds.PatientID = identity["PatientID"]
  ds.PatientBirthDate = birth.strftime("%Y%m%d")
  ds.PatientSex = identity["PatientSex"]
  ds.OtherPatientIDs = identity["OtherPatientIDs"]
  ds.PatientAge = f"{(when.date() - birth).days // 365:03d}Y"
  ds.PatientAddress = identity["PatientAddress"]
  ds.PatientTelephoneNumbers = identity["PatientTelephoneNumbers"]
  ds.PatientComments = "SYNTHETIC DATA - NOT A REAL PATIENT"
  ds.PatientIdentityRemoved = "NO"
  ds.BodyPartExamined = "CHEST"
  ds.ViewPosition = view
  ds.DeviceSerialNumber = f"SYN{site.name[-1]}{station + 1:04d}"
  ds.SoftwareVersions = GENERATOR_VERSION
  ds.ImagerPixelSpacing = [f"{spacing:.4f}", f"{spacing:.4f}"]
  ds.StudyInstanceUID = uids["study"]
  ds.SeriesInstanceUID = uids["series"]
  ds.StudyID = accession[-6:]
  ds.SeriesNumber = 1
  ds.InstanceNumber = image_number
  ds.PatientOrientation = ["L", "F"]
  ds.ImageComments = "SYNTHETIC IMAGE GENERATED BY remedis-tf; NOT A REAL PATIENT"
  ds.BurnedInAnnotation = "NO"
  ds.SamplesPerPixel = 1
  ds.PhotometricInterpretation = site.photometric
  ds.Rows, ds.Columns = stored.pixels.shape
  ds.PixelSpacing = [f"{spacing:.4f}", f"{spacing:.4f}"]
  ds.BitsAllocated = 16
  ds.BitsStored = site.bits_stored
  ds.HighBit = site.bits_stored - 1
  ds.PixelRepresentation = 0
  ds.WindowCenter = (
    list(stored.window_centers) if site.window_count > 1 else stored.window_centers[0]
  )
  ds.WindowWidth = list(stored.window_widths) if site.window_count > 1 else stored.window_widths[0]
  ds.WindowCenterWidthExplanation = (
    list(stored.window_explanations) if site.window_count > 1 else stored.window_explanations[0]
  )
  ds.VOILUTFunction = site.voi_function
  ds.RescaleIntercept = f"{site.rescale_intercept:g}"
  ds.RescaleSlope = f"{site.rescale_slope:g}"
  ds.RescaleType = "US"
  ds.LossyImageCompression = "00"
  if site.modality == "DX":
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.PixelIntensityRelationship = "LOG"
    ds.PixelIntensityRelationshipSign = 1
    ds.PresentationLUTShape = "IDENTITY" if site.photometric == "MONOCHROME2" else "INVERSE"
    ds.DetectorType = "SCINTILLATOR"
    ds.ImageLaterality = "U"
  ds.PixelData = stored.pixels.tobytes()
  return ds


def _file_meta(site: site_profiles.SiteProfile, sop_uid: str) -> FileMetaDataset:
  meta = FileMetaDataset()
  meta.MediaStorageSOPClassUID = site.sop_class_uid
  meta.MediaStorageSOPInstanceUID = sop_uid
  meta.TransferSyntaxUID = uid.ExplicitVRLittleEndian
  meta.ImplementationClassUID = _uid("remedis-tf", GENERATOR_VERSION)
  meta.ImplementationVersionName = "REMEDIS_SYNTH"
  return meta


def _relative_path(
  site: site_profiles.SiteProfile, patient: int, image: int, image_counter: int
) -> str:
  if site.name == "siteA":
    return os.path.join(
      "dicom", site.name, f"p{patient:04d}", f"s{image + 1:02d}", f"IM{image_counter:04d}.dcm"
    )
  return os.path.join(
    "dicom", site.name, f"PAT{patient:04d}", f"STUDY{image + 1:02d}", f"IM{image_counter:06d}"
  )


def _generate_patient(
  output_dir: str, site_index: int, patient_index: int, seed: int, scale: Scale, split: str
) -> list[ImageRecord]:
  """Renders and writes all images of one patient; returns their records."""
  site = site_profiles.SITES[site_index]
  rng = np.random.default_rng([seed, site_index, patient_index])
  identity = _fake_identity(rng, site, site_index, patient_index)
  patient_anatomy = anatomy.sample_anatomy(rng, site.cardiothoracic_mean, site.disease_probability)
  num_images = int(rng.integers(scale.images_per_patient[0], scale.images_per_patient[1] + 1))
  first = datetime.datetime(2019, 1, 1, 7) + datetime.timedelta(
    days=int(rng.integers(0, 4 * 365)), minutes=int(rng.integers(0, 12 * 60))
  )
  birth = first.date() - datetime.timedelta(
    days=int(identity["age"]) * 365 + int(rng.integers(0, 365))
  )
  rows, columns, spacing = site.matrix(scale.row_scale)
  x = (np.arange(columns) - (columns - 1) / 2) * spacing
  y = (np.arange(rows) - (rows - 1) / 2) * spacing
  x_mm, y_mm = (g.astype(np.float32) for g in np.meshgrid(x, y))

  records = []
  when = first
  for image in range(num_images):
    if image:
      when = when + datetime.timedelta(
        days=int(rng.integers(1, 120)), minutes=int(rng.integers(-180, 180))
      )
    view = "AP" if rng.random() < site.ap_fraction else "PA"
    focus = patient_anatomy.opacity_site is not None
    has_opacity = rng.random() < (site.focus_visible if focus else site.incidental_opacity)
    opacities = anatomy.sample_opacities(rng, patient_anatomy, has_opacity)
    pose = _sample_pose(rng, view)
    density = anatomy.render_density(patient_anatomy, pose, opacities, x_mm, y_mm)
    stored = site_profiles.acquire(
      density, site, spacing, rng, exposure=float(rng.uniform(0.6, 1.4))
    )
    station = int(rng.integers(len(site.stations)))
    counter = patient_index * 10 + image + 1
    uids = {k: _uid(seed, site.name, patient_index, image, k) for k in ("study", "series", "sop")}
    accession = f"{site.name[-1]}{when:%y%m%d}{int(rng.integers(10**4)):04d}"
    ds = _dicom_dataset(
      site, identity, uids, when, birth, view, station, image + 1, accession, stored, spacing
    )
    ds.file_meta = _file_meta(site, uids["sop"])
    syntax = site.transfer_syntaxes[station]
    if syntax != uid.ExplicitVRLittleEndian:
      ds.compress(syntax, stored.pixels, generate_instance_uid=False)
    rel = _relative_path(site, patient_index, image, counter)
    path = os.path.join(output_dir, rel)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    labels = {"opacity": int(bool(opacities)), "cardiomegaly": int(patient_anatomy.cardiomegaly)}
    records.append(
      ImageRecord(
        rel, site.name, patient_index, split, uids["sop"], labels, view, str(syntax), rows, columns
      )
    )
  return records


def _readme(scale: str, seed: int) -> str:
  return (
    "SYNTHETIC DATA - NOT REAL PATIENTS - NOT FOR CLINICAL USE\n\n"
    f"Generated by {GENERATOR_VERSION} (scale={scale}, seed={seed}).\n\n"
    "Every image in dicom/ is a computer-drawn chest-radiograph-like phantom; every\n"
    "name, identifier, date, address and institution in the DICOM headers is fake and\n"
    "exists only to exercise de-identification. Findings (labels.csv) are drawn by the\n"
    "generator: 'opacity' = soft bright blob(s) in a lung field, 'cardiomegaly' =\n"
    "cardiothoracic ratio > 0.5. labels.csv holds the ground truth of every image;\n"
    "splits.csv assigns whole patients to train/validation/test. Two fictional sites\n"
    "(siteA: DX, MONOCHROME2, 12 bit; siteB: CR, MONOCHROME1, 10 bit, compressed) differ\n"
    "in equipment, processing and patient mix. See summary.json for counts.\n"
  )


def generate_archive(
  output_dir: str, scale: str | Scale = "default", seed: int = 0, num_workers: int = 1
) -> dict[str, object]:
  """Writes a SYNTHETIC two-site chest radiograph archive.

  Args:
    output_dir: destination folder (created; existing generated files are
      overwritten).
    scale: 'tiny' (~100 images, for tests), 'default' (~2000 images, the demo),
      'large' (~10000 images) or a custom `Scale`.
    seed: the archive is a deterministic function of (scale, seed).
    num_workers: processes used to render patients (results do not depend on it).

  Returns:
    The summary also written to `summary.json`: counts of patients, images,
    positives per finding and images per split for each site, matrix sizes,
    transfer syntaxes and the generation time.
  """
  if isinstance(scale, Scale):
    config, scale = scale, "custom"
  elif scale in SCALES:
    config = SCALES[scale]
  else:
    raise ValueError(f"scale must be one of {sorted(SCALES)} or a Scale, got {scale!r}")
  start = time.perf_counter()
  os.makedirs(output_dir, exist_ok=True)
  jobs = []
  for site_index in range(len(site_profiles.SITES)):
    splits = _patient_splits(config.patients[site_index], seed, site_index)
    for patient in range(config.patients[site_index]):
      jobs.append((output_dir, site_index, patient, seed, config, splits[patient]))
  if num_workers > 1:
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(num_workers, mp_context=context) as pool:
      results = list(pool.map(_generate_patient, *zip(*jobs, strict=True), chunksize=8))
  else:
    results = [_generate_patient(*job) for job in jobs]
  records = [r for patient in results for r in patient]

  with open(os.path.join(output_dir, "labels.csv"), "w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(["sop_instance_uid", "site", *anatomy.FINDINGS])
    for r in records:
      writer.writerow([r.sop_instance_uid, r.site, *(r.labels[k] for k in anatomy.FINDINGS)])
  with open(os.path.join(output_dir, "splits.csv"), "w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(["sop_instance_uid", "site", "split"])
    for r in records:
      writer.writerow([r.sop_instance_uid, r.site, r.split])
  with open(os.path.join(output_dir, "README_SYNTHETIC.txt"), "w") as f:
    f.write(_readme(scale, seed))

  summary: dict[str, object] = {
    "synthetic": True,
    "generator": GENERATOR_VERSION,
    "pydicom": pydicom.__version__,
    "scale": scale,
    "seed": seed,
    "findings": list(anatomy.FINDINGS),
    "num_images": len(records),
    "sites": {},
  }
  for site in site_profiles.SITES:
    mine = [r for r in records if r.site == site.name]
    summary["sites"][site.name] = {
      "manufacturer": site.manufacturer,
      "model": site.model,
      "modality": site.modality,
      "photometric": site.photometric,
      "bits_stored": site.bits_stored,
      "matrix": [mine[0].rows, mine[0].columns] if mine else None,
      "patients": len({r.patient_index for r in mine}),
      "images": len(mine),
      "positives": {k: sum(r.labels[k] for r in mine) for k in anatomy.FINDINGS},
      "views": {v: sum(r.view == v for r in mine) for v in ("PA", "AP")},
      "splits": {s: sum(r.split == s for r in mine) for s in ("train", "validation", "test")},
      "transfer_syntaxes": {
        t: sum(r.transfer_syntax == t for r in mine)
        for t in sorted({r.transfer_syntax for r in mine})
      },
    }
  summary["generation_seconds"] = round(time.perf_counter() - start, 2)
  with open(os.path.join(output_dir, "summary.json"), "w") as f:
    json.dump(summary, f, indent=2)
  return summary
