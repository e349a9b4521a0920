"""Slide readers, input listing, slide ids and slide labels, on generated slides."""

import os

import numpy as np
import pytest
import slide_testdata as td

from tfrecords_tools import slide_ids, slide_inputs, slide_labels
from tfrecords_tools.labels import LabelCsvError
from tfrecords_tools.slide_reader import (
  SOURCE_DICOM,
  SOURCE_OPENSLIDE,
  SlideError,
  SlideSource,
  open_slide,
)


@pytest.fixture(scope="module")
def slides(tmp_path_factory):
  root = tmp_path_factory.mktemp("slides")
  slide = td.make_slide(width=512, height=384, num_levels=3, seed=3)
  td.write_generic_tiff(str(root / "generic.tif"), slide)
  td.write_generic_tiff(str(root / "nompp.tiff"), slide, resolution=False)
  td.write_aperio_svs(str(root / "aperio.svs"), slide)
  td.write_dicom_wsi(str(root / "dicom_slide"), slide)
  (root / "notes.txt").write_text("not a slide")
  (root / "broken.svs").write_bytes(b"II*\x00" + bytes(200))
  return root, slide


def _source(root, name):
  listing = slide_inputs.list_slides(str(root))
  return next(s for s in listing.slides if s.name == name)


@pytest.mark.parametrize("name", ["generic.tif", "aperio.svs", "dicom_slide"])
def test_levels_mpp_and_pixels_match_the_written_pyramid(slides, name):
  root, slide = slides
  with open_slide(_source(root, name)) as s:
    assert s.level_dimensions == tuple((lv.shape[1], lv.shape[0]) for lv in slide.levels)
    assert s.level_downsamples == pytest.approx([1.0, 2.0, 4.0], rel=1e-9)
    assert s.mpp == pytest.approx((slide.mpp, slide.mpp), rel=1e-6)
    for level, (x, y, w, h) in (
      (0, (100, 60, 70, 50)),
      (1, (31, 17, 90, 40)),
      (2, (0, 0, 128, 96)),
    ):
      np.testing.assert_array_equal(
        s.read_region(level, x, y, w, h), slide.levels[level][y : y + h, x : x + w]
      )
    # Past the right/bottom edge: the background colour (white for these files).
    region = s.read_region(2, 120, 90, 16, 16)
    np.testing.assert_array_equal(region[:6, :8], slide.levels[2][90:96, 120:128])
    assert (region[6:] == 255).all() and (region[:, 8:] == 255).all()


def test_vendor_and_identifiers(slides):
  root, _ = slides
  with open_slide(_source(root, "aperio.svs")) as s:
    assert s.vendor == "aperio" and s.identifiers == {}
  with open_slide(_source(root, "generic.tif")) as s:
    assert s.vendor == "generic-tiff"
  with open_slide(_source(root, "dicom_slide")) as s:
    assert s.vendor == "dicom"
    assert s.identifiers["PatientID"] == td.FAKE_IDENTIFIERS["PatientID"]
    assert s.identifiers["AccessionNumber"] == td.FAKE_IDENTIFIERS["AccessionNumber"]


def test_slide_without_resolution_has_no_mpp(slides):
  root, _ = slides
  with open_slide(_source(root, "nompp.tiff")) as s:
    assert s.mpp is None


def test_unsupported_and_missing_files_raise_slide_error(slides, tmp_path):
  root, _ = slides
  with pytest.raises(SlideError) as e:
    open_slide(_source(root, "broken.svs"))
  assert e.value.reason == "unsupported_format"
  with pytest.raises(SlideError) as e:
    open_slide(SlideSource(SOURCE_DICOM, (), "empty"))
  assert e.value.reason == "unsupported_format"
  # A DICOM file cut short: it opens (pixels are read lazily); its lost tile does not read.
  folder = tmp_path / "cut"
  paths = td.write_dicom_wsi(str(folder), td.make_slide(width=256, height=192, num_levels=2))
  with open(paths[0], "r+b") as f:
    f.truncate(os.path.getsize(paths[0]) // 3)
  with open_slide(SlideSource(SOURCE_DICOM, (paths[0],), "cut")) as s:
    with pytest.raises(SlideError) as e:
      s.read_region(0, 0, 150, 100, 30)
  assert e.value.reason == "unreadable"


def test_listing_groups_dicom_folders_and_sets_labels_aside(slides):
  root, _ = slides
  listing = slide_inputs.list_slides(str(root))
  assert [s.name for s in listing.slides] == [
    "aperio.svs",
    "broken.svs",
    "dicom_slide",
    "generic.tif",
    "nompp.tiff",
  ]
  dicom = listing.slides[2]
  assert dicom.kind == SOURCE_DICOM and len(dicom.paths) == 3  # the 3 levels, no label/overview
  assert all(os.path.basename(p).startswith("level") for p in dicom.paths)
  assert listing.non_volume_instances == 2 and listing.ignored_files == 1
  assert listing.slides[0].kind == SOURCE_OPENSLIDE
  single = slide_inputs.list_slides(str(root / "aperio.svs"))
  assert [s.name for s in single.slides] == ["aperio.svs"]
  with pytest.raises(FileNotFoundError):
    slide_inputs.list_slides(str(root / "missing"))


def test_mrxs_data_folder_is_not_searched(tmp_path):
  (tmp_path / "s1.mrxs").write_bytes(b"")
  (tmp_path / "s1").mkdir()
  (tmp_path / "s1" / "Data0000.tif").write_bytes(b"")
  names = [s.name for s in slide_inputs.list_slides(str(tmp_path)).slides]
  assert names == ["s1.mrxs"]


def test_tcga_participant():
  assert slide_ids.tcga_participant("TCGA-A1-A0SB-01Z-00-DX1.1234-ABCD.svs") == "TCGA-A1-A0SB"
  assert slide_ids.tcga_participant("dir/tcga-a1-a0sb-11A-01-TS1.svs") == "TCGA-A1-A0SB"
  assert slide_ids.tcga_participant("TCGA-A1-A0SBX.svs") is None
  assert slide_ids.tcga_participant("slide_001.svs") is None


def test_ids_fall_back_from_csv_to_dicom_to_tcga_to_the_slide(tmp_path):
  salt = b"k"
  plain = slide_ids.resolve("site1/slide_9.svs", {}, None, salt)
  assert plain.case == plain.patient == plain.slide == "site1/slide_9.svs"
  tcga = slide_ids.resolve("TCGA-A1-A0SB-01Z-00-DX1.svs", {}, None, salt)
  assert tcga.case == tcga.patient == "TCGA-A1-A0SB"
  dicom = slide_ids.resolve("d", {"PatientID": "P7", "StudyInstanceUID": "1.2.3"}, None, salt)
  assert (dicom.case, dicom.patient) == ("1.2.3", "P7")
  from tfrecords_tools import hashing

  assert dicom.patient_hash == hashing.keyed_hash(salt, "P7")  # same as remedis-convert
  csv = tmp_path / "labels.csv"
  csv.write_text("slide_id,patient_id,case_id,grade\nTCGA-A1-A0SB-01Z-00-DX1,PX,CX,high\n")
  table = slide_labels.read_slide_labels(str(csv))
  mapped = slide_ids.resolve("TCGA-A1-A0SB-01Z-00-DX1.uuid.svs", {"PatientID": "P7"}, table, salt)
  assert (mapped.case, mapped.patient) == ("CX", "PX")


def test_slide_labels_keys_matching_and_errors(tmp_path):
  csv = tmp_path / "l.csv"
  csv.write_text(
    "slide_id,patient_id,site,grade\nTCGA-AA-0001-01Z-00-DX1,TCGA-AA-0001,s1,high\n"
    "b/two,P2,s2,low\nthree.svs,P3,,low\n"
  )
  table = slide_labels.read_slide_labels(str(csv))
  assert table.key_type == "slide" and table.label_names == ("high", "low")
  assert table.slide_key("x/TCGA-AA-0001-01Z-00-DX1.f00d-beef.svs") == "TCGA-AA-0001-01Z-00-DX1"
  assert table.slide_key("b/two.ndpi") == "b/two"
  assert table.slide_key("c/three.svs") == "three.svs"
  assert table.slide_key("four.svs") is None
  row = slide_labels.lookup(table, "b/two", "case", "patient")
  assert (row.label, row.site) == (1, "s2")
  assert table.patient_of == {
    "TCGA-AA-0001-01Z-00-DX1": "TCGA-AA-0001",
    "b/two": "P2",
    "three.svs": "P3",
  }

  by_patient = tmp_path / "p.csv"
  by_patient.write_text("patient_id,a,b\nTCGA-AA-0001,1,0\n")
  table = slide_labels.read_slide_labels(str(by_patient), label_mode="multilabel")
  assert table.key_type == "patient" and table.label_names == ("a", "b")
  assert slide_labels.lookup(table, None, "c", "TCGA-AA-0001").multi_label == (1.0, 0.0)

  bad = tmp_path / "bad.csv"
  bad.write_text("filename,grade\nx,1\n")
  with pytest.raises(LabelCsvError, match="slide_id, case_id or patient_id"):
    slide_labels.read_slide_labels(str(bad))
