"""remedis-tile end to end on generated slides: records against the slides' known truth.

Input folder: two TCGA-named slides of one participant (a generic TIFF and an
Aperio SVS whose ImageDescription carries fake identifiers), a DICOM WSI in a
folder named by a fake identifier, a TIFF without resolution tags and a file
that is no slide. Patches are 64 px at 1.0 um/px, read exactly from level 1
(0.5 um/px slides), so every stored pixel can be compared with the generated
level array.
"""

import dataclasses
import glob
import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import slide_testdata as td
import tensorflow as tf
from PIL import Image

from tfrecords_tools import hashing, schema, slide_survey, tile, tiling

SALT = "tile-test-salt"
NAMES = {
  "tif": "TCGA-AB-1234-01Z-00-DX1.tif",
  "svs": "TCGA-AB-1234-01Z-00-DX2.svs",
  "dicom": "FAKEPHI-FOLDER-0042",
  "nompp": "nompp.tiff",
  "broken": "broken.svs",
}
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
  root = tmp_path_factory.mktemp("tile")
  src = root / "slides"
  src.mkdir()
  slides = {key: td.make_slide(seed=i) for i, key in enumerate(("tif", "svs", "dicom"))}
  slides["nompp"] = slides["tif"]
  td.write_generic_tiff(str(src / NAMES["tif"]), slides["tif"])
  td.write_aperio_svs(str(src / NAMES["svs"]), slides["svs"])
  dicom_paths = td.write_dicom_wsi(str(src / NAMES["dicom"]), slides["dicom"])
  td.write_generic_tiff(str(src / NAMES["nompp"]), slides["nompp"], resolution=False)
  (src / NAMES["broken"]).write_bytes(b"not a slide " * 50)
  labels = root / "labels.csv"
  labels.write_text(
    "slide_id,diagnosis\nTCGA-AB-1234-01Z-00-DX1,tumor\nTCGA-AB-1234-01Z-00-DX2,normal\n"
    f"{NAMES['dicom']},tumor\nnompp,normal\nghost-slide,tumor\n"
  )
  uids = set()
  for path in dicom_paths:
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"):
      uids.add(td.read_dicom_attribute(path, keyword))
  return {"root": root, "src": src, "slides": slides, "labels": labels, "uids": uids}


def _config(data, out, **kw):
  base = dict(
    input_path=str(data["src"]),
    output_dir=str(out),
    policy=tiling.PatchPolicy(patch_size=64, target_mpp=1.0),
    labels_csv=str(data["labels"]),
    salt=SALT,
    patches_per_shard=16,
    thumbnail_max_side=512,
  )
  base.update(kw)
  return tile.TileConfig(**base)


@pytest.fixture(scope="module")
def run(data):
  out = data["root"] / "out"
  return out, tile.tile(_config(data, out))


def _records(out):
  found = []
  for path in sorted(glob.glob(os.path.join(str(out), "*.tfrecord"))):
    for raw in tf.data.TFRecordDataset(path):
      ex = tf.train.Example.FromString(raw.numpy()).features.feature
      found.append((os.path.basename(path), ex))
  return found


def _value(ex, key):
  f = ex[key]
  kind = f.WhichOneof("kind")
  values = getattr(f, kind).value
  return values[0] if len(values) == 1 else list(values)


def _shard_bytes(out):
  return {
    os.path.relpath(p, str(out)): open(p, "rb").read()
    for p in sorted(glob.glob(os.path.join(str(out), "*.tfrecord")))
    + sorted(glob.glob(os.path.join(str(out), "thumbnails", "*.png")))
  }


def _chunk_order(manifest):
  """Chunk index of each shard, in the order of manifest["shards"]."""
  return [int(s["file"].split("-")[1]) for split in manifest["shards"].values() for s in split]


def test_manifest_counts_and_errors(run):
  out, manifest = run
  counts = manifest["counts"]
  assert counts["slides"] == 5 and counts["slides_tiled"] == 3 and counts["slides_failed"] == 2
  assert counts["records"] == sum(counts["records_by_split"].values()) > 60
  assert manifest["label_mode"] == "multiclass" and manifest["label_names"] == ["normal", "tumor"]
  errors = json.load(open(out / "errors.json"))
  by_reason = {e["reason"]: e for e in errors}
  assert set(by_reason) == {"no_mpp", "unsupported_format", "label_without_slide"}
  assert "--assume_mpp" in by_reason["no_mpp"]["detail"]
  names = sorted(NAMES.values())
  assert by_reason["no_mpp"]["slide_index"] == names.index(NAMES["nompp"])
  assert by_reason["no_mpp"]["slide_id_hash"] == hashing.keyed_hash(SALT.encode(), NAMES["nompp"])
  ghosts = [e for e in errors if e["reason"] == "label_without_slide"]
  assert len(ghosts) == 2  # ghost-slide, and the row of the slide without mpp
  assert not os.path.exists(out / "_work")
  total = sum(s["records"] for split in manifest["shards"].values() for s in split)
  assert total == counts["records"] == len(_records(out))


def test_records_hold_the_slide_pixels_at_their_coordinates(data, run):
  out, _ = run
  by_hash = {hashing.keyed_hash(SALT.encode(), NAMES[k]): k for k in ("tif", "svs", "dicom")}
  seen = {k: [] for k in by_hash.values()}
  for _, ex in _records(out):
    key = by_hash[_value(ex, schema.SLIDE_ID_HASH).decode()]
    slide = data["slides"][key]
    x, y = _value(ex, schema.PATCH_X), _value(ex, schema.PATCH_Y)
    assert _value(ex, schema.PATCH_LEVEL) == 1 and _value(ex, schema.PATCH_RESIZE) == b"none"
    assert _value(ex, schema.PATCH_MPP) == pytest.approx(1.0) == _value(ex, schema.PATCH_LEVEL_MPP)
    assert x % 128 == 0 and y % 128 == 0 and x + 128 <= 2048 and y + 128 <= 1536  # level-0 grid
    image = np.asarray(Image.open(io.BytesIO(_value(ex, schema.IMAGE_ENCODED))))
    np.testing.assert_array_equal(
      image, slide.levels[1][y // 2 : y // 2 + 64, x // 2 : x // 2 + 64]
    )
    assert _value(ex, schema.IMAGE_FORMAT) == b"png" and _value(ex, schema.IMAGE_CHANNELS) == 3
    assert _value(ex, schema.IMAGE_SOURCE_ID).decode().endswith(f":{x}:{y}")
    assert _value(ex, schema.PATCH_TISSUE_FRACTION) >= 0.5
    seen[key].append((x, y))
  for key, coords in seen.items():
    slide = data["slides"][key]
    assert len(coords) == len(set(coords)) > 15
    truth = {(x, y): slide.tissue[y : y + 128, x : x + 128].mean() for x, y in coords}
    # Zero patches from background: the mask's edge error (one 8 um mask pixel
    # on a 64 um patch side, 1/8 per side) cannot take a kept patch below 0.5 - 2/8.
    assert min(truth.values()) >= 0.25
    bx, by, bw, bh = slide.blank
    for x, y in coords:
      assert not slide.pen[y : y + 128, x : x + 128].any()
      assert x + 128 <= bx or x >= bx + bw or y + 128 <= by or y >= by + bh
    # And every patch that is nearly all tissue was kept.
    grid = [(x, y) for y in range(0, 1536 - 127, 128) for x in range(0, 2048 - 127, 128)]
    full = {p for p in grid if slide.tissue[p[1] : p[1] + 128, p[0] : p[0] + 128].mean() >= 0.9}
    assert full <= set(coords)


def test_ids_labels_and_splits(data, run):
  out, _ = run
  salt = SALT.encode()
  info = {}
  for _, ex in _records(out):
    info[_value(ex, schema.SLIDE_ID_HASH).decode()] = (
      _value(ex, schema.PATIENT_ID_HASH).decode(),
      _value(ex, schema.SPLIT).decode(),
      _value(ex, schema.LABEL),
    )
  tif, svs, dicom = (hashing.keyed_hash(salt, NAMES[k]) for k in ("tif", "svs", "dicom"))
  tcga = hashing.keyed_hash(salt, "TCGA-AB-1234")
  assert info[tif][0] == info[svs][0] == tcga and info[tif][1] == info[svs][1]
  assert info[dicom][0] == hashing.keyed_hash(salt, td.FAKE_IDENTIFIERS["PatientID"])
  assert (info[tif][2], info[svs][2], info[dicom][2]) == (1, 0, 1)  # normal=0, tumor=1


def test_no_identifier_reaches_any_output(data, run):
  out, _ = run
  secrets = [v.encode() for v in td.FAKE_IDENTIFIERS.values()]
  secrets += [
    b"fakephi",
    b"Image Library",
    b"AppMag",
    b"ScanScope",
    b"TCGA-AB",
    b"nompp",
    b"broken",
  ]
  secrets += [str(data["src"]).encode()] + [uid.encode() for uid in data["uids"]]
  files = [
    p for p in glob.glob(os.path.join(str(out), "**", "*"), recursive=True) if os.path.isfile(p)
  ]
  assert len(files) >= 3 + 3 + 2
  for path in files:
    blob = open(path, "rb").read().lower()  # case-insensitive scan of every byte
    for secret in secrets:
      assert secret.lower() not in blob, (os.path.relpath(path, str(out)), secret)
  # No pixel of a label or macro image: their colour appears in no patch or thumbnail.
  images = [Image.open(p) for p in glob.glob(os.path.join(str(out), "thumbnails", "*.png"))]
  images += [Image.open(io.BytesIO(_value(ex, schema.IMAGE_ENCODED))) for _, ex in _records(out)]
  for image in images:
    assert not (np.asarray(image.convert("RGB")) == td.LABEL_COLOR).all(axis=-1).any()


def test_thumbnails_outline_the_kept_patches(run):
  out, manifest = run
  for slide in manifest["slides"]:
    assert slide["thumbnail"] == f"thumbnails/{slide['slide_id_hash']}.png"
    image = np.asarray(Image.open(out / slide["thumbnail"]))
    assert image.shape == (96, 128, 3)  # 8 um/px mask image of a 1024 x 768 um slide
    outlined = (image == (0, 160, 0)).all(axis=-1)
    # Each kept 64 um patch is an 8 x 8 pixel square: its outline has 28 pixels.
    assert outlined.sum() >= 0.5 * 28 * slide["patches"]


def test_assumed_mpp_tiles_the_slide_without_metadata(data):
  out = data["root"] / "assumed"
  manifest = tile.tile(
    _config(
      data, out, input_path=str(data["src"] / NAMES["nompp"]), assume_mpp=0.5, labels_csv=None
    )
  )
  (slide,) = manifest["slides"]
  assert slide["mpp_source"] == "assumed" and slide["mpp"] == [0.5, 0.5]
  assert manifest["counts"]["records"] > 15
  wrong = tile.tile(
    _config(
      data,
      data["root"] / "assumed4",
      input_path=str(data["src"] / NAMES["nompp"]),
      assume_mpp=4.0,
      labels_csv=None,
    )
  )
  errors = json.load(open(data["root"] / "assumed4" / "errors.json"))
  assert wrong["counts"]["records"] == 0 and errors[0]["reason"] == "resolution_too_low"


def test_rerun_is_a_no_op_and_other_settings_are_refused(data, run):
  out, manifest = run
  assert tile.tile(_config(data, out)) == manifest
  with pytest.raises(tile.UserError, match="different run"):
    tile.tile(_config(data, out, policy=tiling.PatchPolicy(patch_size=32, target_mpp=1.0)))


@pytest.mark.slow
@pytest.mark.integration
def test_two_workers_write_the_same_bytes(data, run):
  out, manifest = run
  other = data["root"] / "two"
  result = tile.tile(_config(data, other, num_workers=2))
  assert _shard_bytes(other) == _shard_bytes(out)
  assert result["counts"] == manifest["counts"] and result["shards"] == manifest["shards"]


@pytest.mark.slow
@pytest.mark.integration
def test_resume_after_kill_writes_every_patch_once(data, run):
  out, manifest = run
  killed = data["root"] / "killed"
  code = (
    "import sys; sys.path.insert(0, sys.argv[1]); "
    "from tfrecords_tools import tile, tiling; "
    f"tile.tile(tile.TileConfig(input_path={str(data['src'])!r}, output_dir={str(killed)!r}, "
    "policy=tiling.PatchPolicy(patch_size=64, target_mpp=1.0), "
    f"labels_csv={str(data['labels'])!r}, salt={SALT!r}, patches_per_shard=16, "
    "thumbnail_max_side=512, num_workers=2, kill_after_records=40))"
  )
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
  log = data["root"] / "killed.log"
  with open(log, "wb") as f:  # a file, not a pipe: nothing waits on the workers' handles
    proc = subprocess.run(
      [sys.executable, "-c", code, ROOT], env=env, stdout=f, stderr=f, timeout=300
    )
  assert proc.returncode == -9, log.read_text()[-2000:]
  # The worker writing the 40th record (in chunk order) killed the run and itself
  # with that chunk's shard half written under a temporary name. Each worker takes
  # whole chunks in order, so the other one was on the chunk before or after it:
  # at least all but one earlier chunk are complete, and every complete shard
  # already holds its final bytes.
  shards_in_order = sorted(
    zip(
      _chunk_order(manifest),
      [s for split in manifest["shards"].values() for s in split],
      strict=True,
    ),
    key=lambda pair: pair[0],
  )
  sizes = [s["records"] for _, s in shards_in_order]
  killer = int(np.searchsorted(np.cumsum(sizes), 40, side="left"))
  assert 0 < killer and sum(sizes[:killer]) < 40 <= sum(sizes[: killer + 1])
  complete = _shard_bytes(killed)
  complete = {k: v for k, v in complete.items() if k.endswith(".tfrecord")}
  reference = _shard_bytes(out)
  assert shards_in_order[killer][1]["file"] not in complete
  assert len(complete) >= killer - 1
  assert all(reference[name] == blob for name, blob in complete.items())
  assert glob.glob(str(killed / "*.tfrecord.tmp-*")) and not (killed / "manifest.json").exists()
  # Even the interrupted state (work folder, markers, partial shards) names no slide.
  for path in glob.glob(str(killed / "**" / "*"), recursive=True):
    if os.path.isfile(path):
      blob = open(path, "rb").read().lower()
      assert b"tcga-ab" not in blob and b"fakephi" not in blob, path
  resumed = tile.tile(_config(data, killed))
  assert _shard_bytes(killed) == _shard_bytes(out)
  assert resumed["counts"] == manifest["counts"]
  ids = [_value(ex, schema.IMAGE_SOURCE_ID) for _, ex in _records(killed)]
  assert len(ids) == len(set(ids)) == manifest["counts"]["records"]
  assert not glob.glob(str(killed / "*tmp*"))


def test_jpeg_patches(data):
  out = data["root"] / "jpeg"
  tile.tile(
    _config(
      data, out, input_path=str(data["src"] / NAMES["tif"]), patch_format="jpeg", labels_csv=None
    )
  )
  slide = data["slides"]["tif"]
  records = _records(out)
  assert records
  for _, ex in records[:10]:
    assert _value(ex, schema.IMAGE_FORMAT) == b"jpeg"
    encoded = _value(ex, schema.IMAGE_ENCODED)
    assert encoded[:3] == b"\xff\xd8\xff"
    x, y = _value(ex, schema.PATCH_X), _value(ex, schema.PATCH_Y)
    got = schema.decode_image(tf.constant(encoded), channels=3).numpy() * 255.0
    want = slide.levels[1][y // 2 : y // 2 + 64, x // 2 : x // 2 + 64].astype(np.float64)
    psnr = 10 * np.log10(255.0**2 / np.mean((got - want) ** 2))
    # Quality-90 4:4:4 JPEG of this texture keeps PSNR near 40 dB; a patch from a
    # wrong place scores below 15 dB. 30 dB separates the two with margin.
    assert psnr > 30.0, psnr


def _cli(*args, cwd=ROOT):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", REMEDIS_CONVERT_SALT="")
  return subprocess.run(
    [sys.executable, "-m", "tfrecords_tools.tile", *args],
    cwd=cwd,
    env=env,
    capture_output=True,
    text=True,
    timeout=300,
  )


def test_cli_lists_slides_and_rejects_bad_flags(data):
  listed = _cli("--input", str(data["src"]), "--list_slides", "--salt", SALT)
  assert listed.returncode == 0, listed.stderr
  lines = [line.split("\t") for line in listed.stdout.strip().splitlines()]
  assert [line[3] for line in lines] == sorted(NAMES.values())
  assert lines[0][1] == hashing.keyed_hash(SALT.encode(), lines[0][3])
  bad = _cli(
    "--input", str(data["src"]), "--output_dir", str(data["root"] / "x"), "--split_fractions", "1,1"
  )
  assert bad.returncode == 2 and "--split_fractions" in bad.stderr
  missing = _cli("--input", str(data["root"] / "nothing"), "--output_dir", str(data["root"] / "y"))
  assert missing.returncode == 2 and "input not found" in missing.stderr


@pytest.mark.slow
@pytest.mark.integration
def test_cli_tiles_a_slide(data):
  out = data["root"] / "cli"
  args = ["--input", str(data["src"] / NAMES["nompp"]), "--output_dir", str(out)]
  args += ["--assume_mpp", "0.5", "--target_mpp", "1.0", "--patch_size", "64", "--salt", SALT]
  done = _cli(*args)
  assert done.returncode == 0, done.stderr[-2000:]
  assert "slides 1: tiled 1" in done.stdout
  manifest = json.load(open(out / "manifest.json"))
  assert manifest["counts"]["records"] > 15 and manifest["slides"][0]["mpp_source"] == "assumed"
  refused = _cli(*args[:-2])  # no salt given: a different run
  assert refused.returncode == 2 and "different run" in refused.stderr


def test_error_texts_are_scrubbed_of_paths_and_names():
  from tfrecords_tools.slide_reader import SOURCE_OPENSLIDE, SlideSource

  source = SlideSource(SOURCE_OPENSLIDE, ("/data/site7/FAKEPHI-DOE.svs",), "site7/FAKEPHI-DOE.svs")
  text = slide_survey.scrub(
    "cannot open /data/site7/FAKEPHI-DOE.svs (FAKEPHI-DOE.svs, FAKEPHI-DOE) in /data/site7", source
  )
  assert "FAKEPHI" not in text and "/data" not in text and text.count("<slide>") == 4


def test_max_patches_per_slide_draws_the_same_subset(data, run):
  out, _ = run
  full = {
    (_value(ex, schema.PATCH_X), _value(ex, schema.PATCH_Y))
    for _, ex in _records(out)
    if _value(ex, schema.SLIDE_ID_HASH).decode() == hashing.keyed_hash(SALT.encode(), NAMES["tif"])
  }
  subsets = []
  for name, seed in (("max_a", 0), ("max_b", 0), ("max_c", 1)):
    policy = tiling.PatchPolicy(patch_size=64, target_mpp=1.0, max_patches_per_slide=10, seed=seed)
    config = _config(data, data["root"] / name, input_path=str(data["src"] / NAMES["tif"]))
    tile.tile(dataclasses.replace(config, policy=policy, labels_csv=None))
    records = _records(data["root"] / name)
    subsets.append({(_value(ex, schema.PATCH_X), _value(ex, schema.PATCH_Y)) for _, ex in records})
  assert len(subsets[0]) == 10 and subsets[0] <= full
  assert subsets[0] == subsets[1] and subsets[2] != subsets[0]


def test_unlabeled_slides_are_reported_and_can_be_dropped(data):
  labels = data["root"] / "one_label.csv"
  labels.write_text("slide_id,diagnosis\nTCGA-AB-1234-01Z-00-DX1,tumor\n")
  src = data["root"] / "two_slides"
  src.mkdir()
  for key in ("tif", "svs"):
    os.symlink(data["src"] / NAMES[key], src / NAMES[key])
  kept = tile.tile(
    _config(data, data["root"] / "unl_keep", input_path=str(src), labels_csv=str(labels))
  )
  dropped = tile.tile(
    _config(
      data,
      data["root"] / "unl_drop",
      input_path=str(src),
      labels_csv=str(labels),
      drop_unlabeled=True,
    )
  )
  assert kept["counts"]["slides_tiled"] == 2 and dropped["counts"]["slides_tiled"] == 1
  assert dropped["counts"]["slides_dropped"] == 1
  assert kept["errors"]["by_reason"] == dropped["errors"]["by_reason"] == {"unlabeled_slide": 1}
  assert kept["counts"]["records_by_split_and_label"][kept["slides"][1]["split"]]["unlabeled"] > 0
