"""End-to-end conversion: bad inputs, archives, splits, identifiers, resume, CLI."""

import glob
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import zipfile

import convert_testdata as td
import numpy as np
import pytest
import tensorflow as tf

from tfrecords_tools import archive_io, convert, file_converter, schema, shards

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SALT = "unit-test-salt"

pytestmark = pytest.mark.integration


def _good_dataset(i: int):
  patient = f"PAT-{i % 4:04d}"
  pixels = td.ramp(32, 32, 0, 4095, seed=i)
  if i % 3 == 0:
    pixels = np.stack([pixels, pixels[::-1]])  # two frames
  return td.make_dataset(
    pixels,
    patient_id=patient,
    photometric="MONOCHROME1" if i % 2 else "MONOCHROME2",
    WindowCenter=2048,
    WindowWidth=4096,
  )


def _build_inputs(root: str) -> dict:
  """A folder of good and bad inputs plus a labels CSV. Returns what to expect."""
  syntaxes = ["explicit", "implicit", "big_endian", "deflate", "rle", "explicit"]
  rows = ["SOPInstanceUID,finding,site"]
  uids = []
  for i, syntax in enumerate(syntaxes):
    ds = _good_dataset(i)
    uids.append(ds.SOPInstanceUID)
    # No .dcm suffix, nested folders.
    td.write(os.path.join(root, f"series{i % 2}", f"img{i:02d}"), td.encode(ds, syntax))
    if i != 5:  # img05 is an image with no label.
      rows.append(f"{ds.SOPInstanceUID},{['normal', 'effusion'][i % 2]},site{i % 2}")
  rows.append("1.2.3.4.5.6.7.8.9,normal,site0")  # a label row with no image
  rows.append(f"{uids[1]}x,,site0")  # a row with an empty label
  bad = {}
  td.write(os.path.join(root, "notes.txt"), b"free text, not DICOM")
  bad["notes.txt"] = "not_dicom"
  shutil.copy(td.pydicom_test_file("test-SR.dcm"), os.path.join(root, "sr"))
  bad["sr"] = "no_pixel_data"
  full = td.encode(_good_dataset(7))
  td.write(os.path.join(root, "series1", "truncated"), full[:-500])
  bad["series1/truncated"] = "corrupt"
  td.write(
    os.path.join(root, "flat"),
    td.encode(td.make_dataset(np.full((16, 16), 100, np.uint16), WindowCenter=50, WindowWidth=100)),
  )
  bad["flat"] = "empty_image"
  ds = td.make_dataset(td.ramp(8, 8))
  ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.100"  # MPEG2: no decoder
  import pydicom.encaps

  ds.PixelData = pydicom.encaps.encapsulate([b"\x00" * 64])
  ds["PixelData"].VR = "OB"
  import io

  buf = io.BytesIO()
  ds.save_as(buf, enforce_file_format=True)
  td.write(os.path.join(root, "mpeg"), buf.getvalue())
  bad["mpeg"] = "unsupported_transfer_syntax"
  td.write(os.path.join(root, "garbage.dcm"), b"\x00" * 128 + b"DICM" + os.urandom(300))
  bad["garbage.dcm"] = "corrupt"
  shutil.copy(td.pydicom_test_file("JPEG-lossy.dcm"), os.path.join(root, "broken_jpeg"))
  bad["broken_jpeg"] = "corrupt"
  td.write(os.path.join(root, "DICOMDIR"), b"\x00" * 128 + b"DICM")
  labels_csv = os.path.join(os.path.dirname(root), "labels.csv")
  with open(labels_csv, "w") as f:
    f.write("\n".join(rows) + "\n")
  return {
    "bad": bad,
    "labels_csv": labels_csv,
    "good_files": len(syntaxes),
    "good_records": sum(2 if i % 3 == 0 else 1 for i in range(len(syntaxes))),
  }


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
  base = tmp_path_factory.mktemp("inputs")
  root = str(base / "archive")
  expected = _build_inputs(root)
  with zipfile.ZipFile(base / "archive.zip", "w") as zf:
    for path in sorted(glob.glob(os.path.join(root, "**"), recursive=True)):
      if os.path.isfile(path):
        zf.write(path, os.path.relpath(path, root))
  with tarfile.open(base / "archive.tar.gz", "w:gz") as tar:
    tar.add(root, arcname=".")
  expected.update(root=root, zip=str(base / "archive.zip"), tgz=str(base / "archive.tar.gz"))
  return expected


def _config(input_path, output_dir, labels_csv=None, **kw):
  return convert.ConvertConfig(
    input_path=input_path, output_dir=str(output_dir), labels_csv=labels_csv, salt=SALT, **kw
  )


def _read_records(output_dir) -> list[bytes]:
  files = sorted(glob.glob(os.path.join(str(output_dir), "*.tfrecord")))
  return [r.numpy() for r in tf.data.TFRecordDataset(files)]


def _shard_bytes(output_dir) -> dict[str, bytes]:
  out = {}
  for path in sorted(glob.glob(os.path.join(str(output_dir), "*.tfrecord"))):
    with open(path, "rb") as f:
      out[os.path.basename(path)] = f.read()
  return out


@pytest.fixture(scope="module")
def zip_run(inputs, tmp_path_factory):
  out = tmp_path_factory.mktemp("zip_out")
  manifest = convert.convert(_config(inputs["zip"], out, inputs["labels_csv"], shard_size_mb=0.005))
  return out, manifest


def test_bad_inputs_are_reported_and_counts_add_up(inputs, zip_run):
  out, manifest = zip_run
  counts = manifest["counts"]
  assert counts["files_converted"] == inputs["good_files"]
  assert counts["files_failed"] == len(inputs["bad"])
  assert counts["files_skipped"] == 1  # DICOMDIR
  assert counts["inputs"] == (
    counts["files_converted"]
    + counts["files_failed"]
    + counts["files_dropped"]
    + counts["files_skipped"]
  )
  assert counts["records"] == inputs["good_records"] == sum(counts["records_by_split"].values())
  by_label = counts["records_by_split_and_label"]
  assert sum(sum(c.values()) for c in by_label.values()) == counts["records"]
  by_site = counts["records_by_split_and_site"]
  assert sum(sum(c.values()) for c in by_site.values()) == counts["records"]
  with open(os.path.join(out, "errors.json")) as f:
    errors = json.load(f)
  reported = {e["path"]: e["reason"] for e in errors if e["path"]}
  for path, reason in inputs["bad"].items():
    assert reported.get(path) == reason, (path, reported.get(path))
  assert reported["DICOMDIR"] == "dicomdir"
  assert reported["series1/img05"] == "unlabeled_image"
  row_reasons = sorted(e["reason"] for e in errors if not e["path"])
  assert row_reasons == ["label_error", "label_without_image"]
  assert manifest["errors"]["total"] == len(errors)
  assert sum(manifest["errors"]["by_reason"].values()) == len(errors)
  assert manifest["label_names"] == ["effusion", "normal"]
  assert manifest["label_mode"] == "multiclass"
  assert not os.path.exists(os.path.join(out, "_work"))


def test_records_parse_and_shards_match_manifest(zip_run):
  out, manifest = zip_run
  records = _read_records(out)
  assert len(records) == manifest["counts"]["records"]
  patients: dict[str, set] = {}
  for split, shard_list in manifest["shards"].items():
    for shard in shard_list:
      path = os.path.join(out, shard["file"])
      with open(path, "rb") as f:
        assert hashlib.sha256(f.read()).hexdigest() == shard["sha256"]
      split_records = [r.numpy() for r in tf.data.TFRecordDataset(path)]
      assert len(split_records) == shard["records"]
      for r in split_records:
        parsed = schema.parse_example(tf.constant(r), num_multi_labels=2)
        assert parsed[schema.SPLIT].numpy().decode() == split
        patients.setdefault(parsed[schema.PATIENT_ID_HASH].numpy(), set()).add(split)
        image = schema.decode_image(parsed[schema.IMAGE_ENCODED]).numpy()
        assert image.max() > image.min()  # never blank
        if int(parsed[schema.HAS_LABEL]):
          assert int(parsed[schema.LABEL]) in (0, 1)
          assert parsed[schema.SITE].numpy() in (b"site0", b"site1")
  assert len(patients) == 4 and all(len(s) == 1 for s in patients.values())


def test_no_identifier_reaches_the_output(inputs, zip_run):
  out, _ = zip_run
  import pydicom

  secrets = set(td.IDENTIFIERS.values())
  for path in glob.glob(os.path.join(inputs["root"], "series*", "img*")):
    ds = pydicom.dcmread(path)
    secrets.update(
      {
        ds.PatientID,
        ds.SOPInstanceUID,
        ds.StudyInstanceUID,
        ds.SeriesInstanceUID,
        ds.PatientName.family_name,
      }
    )
  blob = b""
  for path in glob.glob(os.path.join(out, "**"), recursive=True):
    if os.path.isfile(path):
      with open(path, "rb") as f:
        blob += f.read()
  for secret in secrets:
    assert secret.encode() not in blob, secret
    assert secret.encode("utf-16-le") not in blob, secret
  assert SALT.encode() not in blob


def test_directory_and_tar_gz_give_the_same_records(inputs, zip_run, tmp_path):
  zip_out, _ = zip_run
  for source in ("root", "tgz"):
    out = tmp_path / source
    convert.convert(_config(inputs[source], out, inputs["labels_csv"], shard_size_mb=0.005))
    assert _shard_bytes(out) == _shard_bytes(zip_out)


def test_two_workers_equal_one_and_rerun_is_a_no_op(inputs, zip_run, tmp_path):
  zip_out, zip_manifest = zip_run
  out = tmp_path / "mp"
  manifest = convert.convert(
    _config(inputs["zip"], out, inputs["labels_csv"], shard_size_mb=0.005, num_workers=2)
  )
  assert _shard_bytes(out) == _shard_bytes(zip_out)
  assert manifest["counts"] == zip_manifest["counts"]
  mtimes = {p: os.stat(p).st_mtime_ns for p in glob.glob(os.path.join(out, "*"))}
  again = convert.convert(
    _config(inputs["zip"], out, inputs["labels_csv"], shard_size_mb=0.005, num_workers=2)
  )
  assert again == manifest
  assert {p: os.stat(p).st_mtime_ns for p in glob.glob(os.path.join(out, "*"))} == mtimes
  with pytest.raises(convert.UserError):  # a different conversion in the same folder
    convert.convert(_config(inputs["zip"], out, inputs["labels_csv"], shard_size_mb=1))


def test_a_damaged_zip_member_is_reported_and_the_run_goes_on(tmp_path):
  archive = tmp_path / "in.zip"
  with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
    for i in range(3):
      zf.writestr(f"f{i}", td.encode(td.make_dataset(td.ramp(24, 24, seed=i))))
    damaged = zf.getinfo("f1")
  data = bytearray(archive.read_bytes())
  # Overwrite the middle of f1's compressed bytes: its CRC (or inflate) fails.
  start = damaged.header_offset + 30 + len("f1")
  middle = start + damaged.compress_size // 2
  data[middle : middle + 16] = bytes(16)
  archive.write_bytes(bytes(data))
  manifest = convert.convert(_config(str(archive), tmp_path / "out"))
  assert manifest["counts"]["files_converted"] == 2
  assert manifest["counts"]["files_failed"] == 1
  with open(tmp_path / "out" / "errors.json") as f:
    errors = json.load(f)
  assert [(e["path"], e["reason"]) for e in errors] == [("f1", "corrupt")]
  assert errors[0]["detail"].startswith("cannot read")


def test_every_input_error_reason_is_listed_in_the_readme():
  with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
    readme = f.read()
  listed = re.search(r"with a `reason`: ([a-z_, \n]+)\)", readme)
  assert listed, "README no longer lists the error reasons"
  reasons = {r.strip() for r in listed.group(1).replace("\n", " ").split(",")}
  assert set(file_converter.INPUT_ERROR_REASONS) <= reasons


def _cli(*args, timeout=300, extra_env=None):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=ROOT, **(extra_env or {}))
  return subprocess.run(
    [sys.executable, "-m", "tfrecords_tools.convert", *args],
    cwd=ROOT,
    env=env,
    capture_output=True,
    text=True,
    timeout=timeout,
  )


def test_cli_help_and_exit_codes(inputs, tmp_path):
  helped = _cli("--help")
  assert "Exit status" in helped.stdout
  for flag in (
    "--input",
    "--output_dir",
    "--labels_csv",
    "--salt",
    "--num_workers",
    "--split_fractions",
    "--voi_fallback",
    "--frame",
    "--max_size",
    "--runner",
  ):
    assert flag in helped.stdout
  assert (
    _cli("--input", str(tmp_path / "missing"), "--output_dir", str(tmp_path / "o1")).returncode == 2
  )
  bad_csv = tmp_path / "bad.csv"
  bad_csv.write_text("nothing,useful\n1,2\n")
  assert (
    _cli(
      "--input", inputs["root"], "--output_dir", str(tmp_path / "o2"), "--labels_csv", str(bad_csv)
    ).returncode
    == 2
  )
  assert (
    _cli(
      "--input",
      inputs["root"],
      "--output_dir",
      str(tmp_path / "o3"),
      "--split_fractions",
      "0.5,0.6",
    ).returncode
    == 2
  )
  junk = tmp_path / "junk"
  td.write(str(junk / "a.txt"), b"hello")
  nothing = _cli("--input", str(junk), "--output_dir", str(tmp_path / "o4"))
  assert nothing.returncode == 1
  assert json.load(open(tmp_path / "o4" / "manifest.json"))["counts"]["files_failed"] == 1


@pytest.mark.slow
def test_kill_9_then_resume_gives_every_record_once(tmp_path):
  src = tmp_path / "src"
  for i in range(14):
    pixels = td.ramp(40, 40, 0, 4095, seed=i)
    ds = td.make_dataset(pixels, patient_id=f"P{i}", WindowCenter=2048, WindowWidth=4096)
    td.write(str(src / f"f{i:02d}"), td.encode(ds, "rle"))
  shard_mb = 0.01
  chunks = shards.plan_chunks(archive_io.open_source(str(src))[1], int(shard_mb * (1 << 20)))
  assert len(chunks) >= 4 and len(chunks[2].files) >= 2, [len(c.files) for c in chunks]
  # The converter SIGKILLs itself (its testing aid) after the first file of
  # the third chunk: two chunks committed, the third half written, the rest
  # not started. Deterministic: no race between the job and the test.
  kill_after = len(chunks[0].files) + len(chunks[1].files) + 1
  args = ["--input", str(src), "--salt", SALT, "--shard_size_mb", str(shard_mb), "--noprogress"]
  reference = tmp_path / "reference"  # converted in-process: TF is already loaded here
  convert.convert(_config(str(src), reference, shard_size_mb=shard_mb))
  out = tmp_path / "killed"
  killed = _cli(
    *args, "--output_dir", str(out), extra_env={convert.KILL_AFTER_FILES_ENV: str(kill_after)}
  )
  assert killed.returncode == -signal.SIGKILL, killed.stderr
  assert not (out / "manifest.json").exists()
  assert sorted(os.listdir(out / "_work" / "chunks")) == ["00000.json", "00001.json"]
  assert glob.glob(os.path.join(out, "*.tmp-*")), "the third chunk's partial shard is missing"
  committed = {}
  for index in (0, 1):
    with open(shards.marker_path(str(out), index)) as f:
      for shard in json.load(f)["shards"]:
        stat = os.stat(out / shard["file"])
        committed[shard["file"]] = (stat.st_ino, stat.st_mtime_ns)
  assert committed

  resumed = _cli(*args, "--output_dir", str(out))
  assert resumed.returncode == 0, resumed.stderr
  # Committed chunks were kept, not redone; the rest matches an uninterrupted run.
  for name, (inode, mtime) in committed.items():
    stat = os.stat(out / name)
    assert (stat.st_ino, stat.st_mtime_ns) == (inode, mtime), name
  assert _shard_bytes(out) == _shard_bytes(reference)
  assert not glob.glob(os.path.join(out, "*.tmp-*"))
  records = _read_records(out)
  assert len(records) == len(set(records)) == 14
  ref_manifest = json.load(open(reference / "manifest.json"))
  manifest = json.load(open(out / "manifest.json"))
  assert manifest["shards"] == ref_manifest["shards"]
  assert manifest["counts"] == ref_manifest["counts"]
