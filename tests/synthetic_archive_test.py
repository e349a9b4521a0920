"""Tests of the SYNTHETIC two-site DICOM archive generator.

Every check reads the written files back with pydicom and displays them with
pydicom's own modality LUT + VOI LUT (+ inversion for MONOCHROME1), never with
the project's converter.
"""

from __future__ import annotations

import csv
import glob
import hashlib
import json
import os

import numpy as np
import pydicom
import pytest
from pydicom.pixels import apply_modality_lut, apply_voi_lut
from scipy import ndimage
from sklearn.metrics import roc_auc_score

from remedis_tf.demo import anatomy, site_profiles, synthetic_archive


def _files(root: str, site: str = "") -> list[str]:
  pattern = os.path.join(root, "dicom", site or "*", "**", "*")
  return sorted(f for f in glob.glob(pattern, recursive=True) if os.path.isfile(f))


def _display(ds: pydicom.Dataset) -> np.ndarray:
  """pydicom's display pipeline, scaled to [0, 1] with bright = dense."""
  shown = apply_voi_lut(apply_modality_lut(ds.pixel_array, ds), ds).astype(np.float64)
  shown = (shown - shown.min()) / np.ptp(shown)
  return 1.0 - shown if ds.PhotometricInterpretation == "MONOCHROME1" else shown


def _regions(ds: pydicom.Dataset) -> dict[str, np.ndarray]:
  """Boolean masks of fixed anatomical boxes, placed in mm from the image centre."""
  spacing = float(ds.PixelSpacing[0])
  y = (np.arange(ds.Rows) - (ds.Rows - 1) / 2) * spacing
  x = (np.arange(ds.Columns) - (ds.Columns - 1) / 2) * spacing
  xx, yy = np.meshgrid(x, y)
  return {
    "lung": (yy > -60) & (yy < -10) & (np.abs(xx) > 50) & (np.abs(xx) < 90),
    "lung_band": (yy > -110) & (yy < 60) & (np.abs(xx) > 35) & (np.abs(xx) < 115),
    "mediastinum": (yy > -120) & (yy < -80) & (np.abs(xx) < 10),
  }


def _read_csv(path: str) -> list[dict[str, str]]:
  with open(path, newline="") as f:
    return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> tuple[str, dict]:
  root = str(tmp_path_factory.mktemp("synthetic"))
  return root, synthetic_archive.generate_archive(root, scale="tiny", seed=0)


@pytest.mark.slow
def test_tiny_archive_layout_and_summary(archive):
  root, summary = archive
  files = _files(root)
  labels = _read_csv(os.path.join(root, "labels.csv"))
  splits = _read_csv(os.path.join(root, "splits.csv"))
  assert 60 <= len(files) <= 150
  assert summary["num_images"] == len(files) == len(labels) == len(splits)
  assert summary["synthetic"] is True
  assert list(labels[0]) == ["sop_instance_uid", "site", "opacity", "cardiomegaly"]
  with open(os.path.join(root, "summary.json")) as f:
    on_disk = json.load(f)
  assert on_disk["sites"] == summary["sites"]
  with open(os.path.join(root, "README_SYNTHETIC.txt")) as f:
    assert f.read().startswith("SYNTHETIC DATA")
  for site in ("siteA", "siteB"):
    site_files = _files(root, site)
    assert len(site_files) == summary["sites"][site]["images"] > 0
    assert sum(1 for r in labels if r["site"] == site) == len(site_files)
  # siteA files end in .dcm, siteB files have no extension.
  assert all(f.endswith(".dcm") for f in _files(root, "siteA"))
  assert not any("." in os.path.basename(f) for f in _files(root, "siteB"))
  # Patients have 2-5 images, and no patient crosses splits.
  split_of = {r["sop_instance_uid"]: r["split"] for r in splits}
  per_patient: dict[str, list[str]] = {}
  for f in files:
    ds = pydicom.dcmread(f, stop_before_pixels=True)
    per_patient.setdefault(ds.PatientID, []).append(split_of[ds.SOPInstanceUID])
  assert all(2 <= len(v) <= 5 for v in per_patient.values())
  assert all(len(set(v)) == 1 for v in per_patient.values())
  assert {s for v in per_patient.values() for s in v} == {"train", "validation", "test"}


@pytest.mark.slow
def test_every_file_is_valid_dicom_and_decodes(archive):
  root, _ = archive
  labels = {r["sop_instance_uid"]: r for r in _read_csv(os.path.join(root, "labels.csv"))}
  for path in _files(root):
    ds = pydicom.dcmread(path)
    assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    assert ds.file_meta.MediaStorageSOPClassUID == ds.SOPClassUID
    assert ds.SOPClassUID in (site_profiles.DX_FOR_PRESENTATION, site_profiles.CR_IMAGE_STORAGE)
    assert ds.BodyPartExamined == "CHEST" and ds.ViewPosition in ("PA", "AP")
    pixels = ds.pixel_array
    assert pixels.shape == (ds.Rows, ds.Columns) and pixels.dtype == np.uint16
    assert pixels.max() < 2**ds.BitsStored
    assert pixels.std() > 0
    assert labels[ds.SOPInstanceUID]["site"] == path.split(os.sep)[-4]


@pytest.mark.slow
def test_identifying_attributes_are_present_and_fake(archive):
  root, _ = archive
  names = set()
  for path in _files(root):
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    for keyword in (
      "PatientName",
      "PatientID",
      "PatientBirthDate",
      "AccessionNumber",
      "InstitutionName",
      "ReferringPhysicianName",
      "PatientAddress",
      "StudyDate",
      "OtherPatientIDs",
    ):
      assert str(ds.data_element(keyword).value), keyword
    assert "SYNTHETIC" in ds.PatientComments and "SYNTHETIC" in ds.InstitutionName
    names.add(str(ds.PatientName))
  synthetic = {n for n in names if n.startswith("SYNTHETIC^PATIENT")}
  assert synthetic and names - synthetic  # both styles of fake names occur


@pytest.mark.slow
def test_sites_differ_in_acquisition_tags(archive):
  root, _ = archive
  a = pydicom.dcmread(_files(root, "siteA")[0])
  b = pydicom.dcmread(_files(root, "siteB")[0])
  for keyword in (
    "Manufacturer",
    "ManufacturerModelName",
    "Modality",
    "BitsStored",
    "PhotometricInterpretation",
    "RescaleSlope",
    "RescaleIntercept",
    "VOILUTFunction",
    "Rows",
    "PixelSpacing",
    "SOPClassUID",
  ):
    assert a.data_element(keyword).value != b.data_element(keyword).value, keyword
  assert (a.PhotometricInterpretation, b.PhotometricInterpretation) == (
    "MONOCHROME2",
    "MONOCHROME1",
  )
  assert (a.BitsStored, b.BitsStored) == (12, 10)
  assert a.data_element("WindowCenter").VM == 1 and b.data_element("WindowCenter").VM == 2
  syntaxes = {
    site: {
      pydicom.dcmread(f, stop_before_pixels=True).file_meta.TransferSyntaxUID
      for f in _files(root, site)
    }
    for site in ("siteA", "siteB")
  }
  assert syntaxes["siteA"] == {pydicom.uid.ExplicitVRLittleEndian}
  assert syntaxes["siteB"] <= {pydicom.uid.RLELossless, pydicom.uid.JPEG2000Lossless}
  assert all(s.is_compressed for s in syntaxes["siteB"])


@pytest.mark.slow
def test_display_shows_dark_lungs_and_bright_mediastinum_at_both_sites(archive):
  root, _ = archive
  for site in ("siteA", "siteB"):
    lungs, mediastina = [], []
    for path in _files(root, site):
      ds = pydicom.dcmread(path)
      shown, regions = _display(ds), _regions(ds)
      lungs.append(shown[regions["lung"]].mean())
      mediastina.append(shown[regions["mediastinum"]].mean())
    # Each image: lung field darker than mediastinum by a wide margin.
    assert np.all(np.array(mediastina) - np.array(lungs) > 0.2), site
    assert np.mean(lungs) < 0.5 < np.mean(mediastina), site


@pytest.mark.slow
def test_label_prevalence_matches_site_patient_mix(archive):
  root, summary = archive
  labels = _read_csv(os.path.join(root, "labels.csv"))
  for site in site_profiles.SITES:
    rows = [r for r in labels if r["site"] == site.name]
    opacity = np.mean([int(r["opacity"]) for r in rows])
    expected = (
      site.disease_probability * site.focus_visible
      + (1 - site.disease_probability) * site.incidental_opacity
    )
    assert abs(opacity - expected) < 0.2, (site.name, opacity, expected)
    assert summary["sites"][site.name]["positives"]["opacity"] == sum(
      int(r["opacity"]) for r in rows
    )
    assert 0 < np.mean([int(r["cardiomegaly"]) for r in rows]) < 0.6


@pytest.mark.slow
def test_same_seed_same_bytes_any_workers_other_seed_differs(archive, tmp_path):
  root, _ = archive
  again = str(tmp_path / "again")
  synthetic_archive.generate_archive(again, scale="tiny", seed=0, num_workers=2)
  first, second = _files(root), _files(again)
  assert [os.path.relpath(f, root) for f in first] == [os.path.relpath(f, again) for f in second]
  for f, g in zip(first, second, strict=True):
    with open(f, "rb") as a, open(g, "rb") as b:
      assert hashlib.sha256(a.read()).digest() == hashlib.sha256(b.read()).digest(), f
  with open(os.path.join(root, "labels.csv")) as a, open(os.path.join(again, "labels.csv")) as b:
    assert a.read() == b.read()
  other = str(tmp_path / "other")
  synthetic_archive.generate_archive(
    other,
    scale=synthetic_archive.Scale(patients=(1, 1), images_per_patient=(2, 2), row_scale=0.5),
    seed=1,
  )
  for site in ("siteA", "siteB"):
    new = pydicom.dcmread(_files(other, site)[0])
    old = pydicom.dcmread(_files(root, site)[0])
    assert new.SOPInstanceUID != old.SOPInstanceUID
    assert new.pixel_array.shape == old.pixel_array.shape
    assert not np.array_equal(new.pixel_array, old.pixel_array)


@pytest.mark.slow
def test_opacity_raises_lung_brightness_in_the_archive(tmp_path):
  """Independent evidence the label is visible but not trivial (per site AUROC).

  The score is the plain mean display brightness of a fixed box over both lung
  fields; a real model does better, so the bounds are loose.
  """
  root = str(tmp_path)
  synthetic_archive.generate_archive(
    root,
    scale=synthetic_archive.Scale(patients=(60, 50), images_per_patient=(2, 5), row_scale=0.25),
    seed=0,
  )
  labels = {
    r["sop_instance_uid"]: int(r["opacity"]) for r in _read_csv(os.path.join(root, "labels.csv"))
  }
  for site, lowest in (("siteA", 0.6), ("siteB", 0.55)):
    scores, truth = [], []
    for path in _files(root, site):
      ds = pydicom.dcmread(path)
      scores.append(_display(ds)[_regions(ds)["lung_band"]].mean())
      truth.append(labels[ds.SOPInstanceUID])
    auroc = roc_auc_score(truth, scores)
    assert lowest < auroc < 0.95, (site, auroc)


def _acquire_and_display(
  density: np.ndarray, site: site_profiles.SiteProfile, spacing: float, seed: int
) -> np.ndarray:
  """Stores `density` as `site` would and displays it with pydicom's LUTs."""
  stored = site_profiles.acquire(density, site, spacing, np.random.default_rng(seed))
  ds = pydicom.Dataset()
  ds.PhotometricInterpretation = site.photometric
  ds.BitsStored, ds.BitsAllocated, ds.PixelRepresentation = site.bits_stored, 16, 0
  ds.RescaleSlope, ds.RescaleIntercept = site.rescale_slope, site.rescale_intercept
  ds.WindowCenter, ds.WindowWidth = stored.window_centers[0], stored.window_widths[0]
  ds.VOILUTFunction = site.voi_function
  return _display_array(ds, stored.pixels)


def _display_array(ds: pydicom.Dataset, pixels: np.ndarray) -> np.ndarray:
  shown = apply_voi_lut(apply_modality_lut(pixels, ds), ds).astype(np.float64)
  shown = (shown - shown.min()) / np.ptp(shown)
  return 1.0 - shown if ds.PhotometricInterpretation == "MONOCHROME1" else shown


def _phantom(rows: int, columns: int, spacing: float, opacity: bool, seed: int = 3):
  rng = np.random.default_rng(seed)
  patient = anatomy.sample_anatomy(rng, 0.45, disease_probability=1.0)
  blobs = anatomy.sample_opacities(rng, patient, present=opacity)
  x = (np.arange(columns) - (columns - 1) / 2) * spacing
  y = (np.arange(rows) - (rows - 1) / 2) * spacing
  xx, yy = np.meshgrid(x, y)
  return anatomy.render_density(patient, anatomy.ImagePose(), blobs, xx, yy), blobs


def test_both_sites_display_the_same_anatomy_alike():
  """MONOCHROME1 storage, after pydicom's LUTs and inversion, matches the anatomy."""
  shown = {}
  for site in site_profiles.SITES:
    density, _ = _phantom(96, 96, 4.4, opacity=False)
    shown[site.name] = _acquire_and_display(density, site, 4.4, seed=0)
    # Brightness follows density (rank correlation, robust to the contrast curve).
    rank = lambda a: np.argsort(np.argsort(a.ravel()))
    assert np.corrcoef(rank(density), rank(shown[site.name]))[0, 1] > 0.9, site.name
  assert np.corrcoef(shown["siteA"].ravel(), shown["siteB"].ravel())[0, 1] > 0.9
  # The sites still differ (contrast curve, blur, noise, marker).
  assert np.abs(shown["siteA"] - shown["siteB"]).mean() > 0.03


def test_opacity_is_brighter_where_the_blob_is():
  negative, _ = _phantom(128, 128, 3.4, opacity=False)
  positive, blobs = _phantom(128, 128, 3.4, opacity=True)
  assert blobs
  added = positive - negative
  assert added.min() >= 0 and added.max() > 0.5 * blobs[0].amplitude
  for site in site_profiles.SITES:
    difference = _acquire_and_display(positive, site, 3.4, seed=1) - _acquire_and_display(
      negative, site, 3.4, seed=1
    )
    blob = added > 0.5 * added.max()
    assert difference[blob].mean() > 0.05, site.name
    assert abs(difference[added < 1e-3].mean()) < 0.02, site.name


def test_gaussian_blur_matches_scipy():
  image = np.random.default_rng(0).random((40, 31))
  for sigma in (0.3, 1.0, 3.6):
    np.testing.assert_allclose(
      site_profiles.gaussian_blur(image, sigma),
      ndimage.gaussian_filter(image, sigma, mode="reflect", truncate=3.0),
      atol=1e-12,
    )


def test_site_matrix_follows_field_of_view():
  rows, columns, spacing = site_profiles.SITE_B.matrix(0.5)
  assert rows == 112 and spacing == pytest.approx(400.0 / 112)
  assert columns == round(350.0 / spacing)
  assert site_profiles.SITE_A.matrix() == (256, 256, pytest.approx(430.0 / 256))


def test_unknown_scale_is_rejected(tmp_path):
  with pytest.raises(ValueError, match="scale"):
    synthetic_archive.generate_archive(str(tmp_path), scale="huge")
