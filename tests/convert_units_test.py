"""Unit tests of the converter's small pieces: hashing, splits, labels, PNG, tf.Example."""

import hashlib
import hmac
import io
import os

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from tfrecords_tools import archive_io, example_builder, hashing, labels, shards, splits
from tfrecords_tools.png_encode import encode_png


def test_keyed_hash_is_hmac_sha256():
  assert hashing.keyed_hash(b"k", " 123 ") == hmac.new(b"k", b"123", hashlib.sha256).hexdigest()
  assert hashing.keyed_hash(b"k", "1") != hashing.keyed_hash(b"j", "1")
  with pytest.raises(ValueError):
    hashing.keyed_hash(b"", "1")


def test_split_fractions_and_determinism():
  fr = splits.parse_fractions("0.7, 0.2,0.1")
  assert fr == (0.7, 0.2, 0.1)
  for bad in ("0.5,0.5", "0.5,0.6,0.1", "-0.1,0.6,0.5", "a,b,c"):
    with pytest.raises(ValueError):
      splits.parse_fractions(bad)
  hashes = [hashing.keyed_hash(b"s", str(i)) for i in range(20000)]
  assigned = [splits.assign_split(h, fr) for h in hashes]
  assert assigned == [splits.assign_split(h, fr) for h in hashes]
  counts = {s: assigned.count(s) / len(assigned) for s in splits.SPLIT_NAMES}
  # Binomial sd with n=20000 is < 0.0033; 5 sd.
  for name, want in zip(splits.SPLIT_NAMES, fr, strict=True):
    assert abs(counts[name] - want) < 0.017
  assert {splits.assign_split(h, (1, 0, 0)) for h in hashes[:100]} == {"train"}
  assert {splits.assign_split(h, (0, 0, 1)) for h in hashes[:100]} == {"test"}


def _csv(tmp_path, text):
  path = tmp_path / "labels.csv"
  path.write_text(text)
  return str(path)


def test_labels_multiclass_names_and_site(tmp_path):
  table = labels.read_labels(
    _csv(
      tmp_path,
      "SOPInstanceUID,finding,site\n1.2.3,normal,A\n1.2.4,pneumonia,B\n1.2.5,,A\n1.2.3,normal,A\n",
    )
  )
  assert table.key_type == "sop_instance_uid" and table.label_names == ("normal", "pneumonia")
  assert table.lookup("1.2.4").label == 1 and table.lookup("1.2.4").site == "B"
  assert table.lookup("1.2.4").multi_label == (0.0, 1.0)
  reasons = sorted(e["reason"] for e in table.row_errors)
  assert reasons == ["duplicate_label_key", "label_error"]
  assert table.num_rows == 4


def test_labels_integer_classes_and_multilabel(tmp_path):
  table = labels.read_labels(_csv(tmp_path, "path,y\n./a/b.dcm,2\nc.dcm,0\n"))
  assert table.key_type == "path" and table.label_names == ("0", "1", "2")
  assert table.lookup("a/b.dcm").label == 2
  multi = labels.read_labels(
    _csv(tmp_path, "PatientID,effusion,edema,site\np1,1,0,X\np2,,1,Y\np3,2,0,X\n"),
    label_mode="multilabel",
  )
  assert multi.label_names == ("effusion", "edema")
  assert multi.lookup("p2").multi_label == (-1.0, 1.0) and multi.lookup("p2").label == -1
  assert [e["reason"] for e in multi.row_errors] == ["label_error"]
  onehot = labels.read_labels(_csv(tmp_path, "StudyInstanceUID,a,b\n1,0,1\n2,1,1\n"))
  assert onehot.lookup("1").label == 1 and onehot.lookup("2") is None


@pytest.mark.parametrize(
  "text,kwargs",
  [
    ("", {}),
    ("foo,bar\n1,2\n", {}),
    ("SOPInstanceUID,site\n1,A\n", {}),
    ("SOPInstanceUID,y\n1,a\n", {"label_columns": ("z",)}),
    ("SOPInstanceUID,y\n,a\n", {}),
  ],
)
def test_bad_csv_is_a_user_error(tmp_path, text, kwargs):
  with pytest.raises(labels.LabelCsvError):
    labels.read_labels(_csv(tmp_path, text), **kwargs)
  with pytest.raises(labels.LabelCsvError):
    labels.read_labels(str(tmp_path / "missing.csv"))


@pytest.mark.parametrize("level", [0, 1, 6])
@pytest.mark.parametrize("dtype,channels", [(np.uint16, 1), (np.uint8, 1), (np.uint8, 3)])
def test_png_round_trip_with_tf_and_pillow(dtype, channels, level):
  rng = np.random.default_rng(0)
  shape = (37, 23) if channels == 1 else (37, 23, 3)
  image = rng.integers(0, np.iinfo(dtype).max, size=shape, endpoint=True).astype(dtype)
  data = encode_png(image, compression_level=level)
  decoded = tf.io.decode_png(data, dtype=tf.uint16 if dtype == np.uint16 else tf.uint8).numpy()
  np.testing.assert_array_equal(decoded.reshape(shape), image)
  np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(data))).astype(dtype), image)


def test_example_builder_matches_tf_train_example():
  serialized = example_builder.serialize_example(
    {
      "b": example_builder.bytes_feature([b"\x00\xff", "ü"]),
      "i": example_builder.int64_feature([-1, 0, 2**40]),
      "f": example_builder.float_feature([0.25, -3.0]),
      "empty": example_builder.float_feature([]),
    }
  )
  ex = tf.train.Example.FromString(serialized)
  f = ex.features.feature
  assert list(f["b"].bytes_list.value) == [b"\x00\xff", "ü".encode()]
  assert list(f["i"].int64_list.value) == [-1, 0, 2**40]
  assert list(f["f"].float_list.value) == [0.25, -3.0]
  assert len(f["empty"].float_list.value) == 0
  # Deterministic: key order does not matter.
  again = example_builder.serialize_example(
    {
      "f": example_builder.float_feature([0.25, -3.0]),
      "empty": example_builder.float_feature([]),
      "i": example_builder.int64_feature([-1, 0, 2**40]),
      "b": example_builder.bytes_feature([b"\x00\xff", "ü"]),
    }
  )
  assert again == serialized


def test_chunk_plan_is_deterministic_and_complete():
  members = [archive_io.Member(f"f{i:03d}", 10 + i) for i in range(50)]
  chunks = shards.plan_chunks(members, 100)
  assert [p for c in chunks for p in c.files] == [m.path for m in members]
  assert chunks == shards.plan_chunks(members, 100)
  assert all(sum(10 + int(p[1:]) for p in c.files) >= 100 for c in chunks[:-1])
  assert shards.shard_name("train", 3, 12) == "train-00003-of-00012.tfrecord"


def test_archive_listing_dir_zip_tar(tmp_path):
  import tarfile
  import zipfile

  src = tmp_path / "src"
  for rel in ("b/2", "a/1.dcm", "c", "__MACOSX/x"):
    os.makedirs(os.path.dirname(src / rel), exist_ok=True)
    (src / rel).write_bytes(rel.encode())
  _, members = archive_io.open_source(str(src))
  assert [m.path for m in members] == ["a/1.dcm", "b/2", "c"]
  with zipfile.ZipFile(tmp_path / "in.zip", "w") as zf:
    for m in members:
      zf.write(src / m.path, m.path)
  with tarfile.open(tmp_path / "in.tar", "w") as tar:
    for m in members:
      tar.add(src / m.path, m.path)
  for archive in ("in.zip", "in.tar"):
    source, listed = archive_io.open_source(str(tmp_path / archive))
    reader = archive_io.Reader(source)
    assert [m.path for m in listed] == [m.path for m in members]
    assert [reader.read(m.path) for m in listed] == [m.path.encode() for m in members]
    reader.close()
  with pytest.raises(FileNotFoundError):
    archive_io.open_source(str(tmp_path / "nope"))
