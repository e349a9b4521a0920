"""tfrecords_tools.record_file against TensorFlow's writer and a bit-by-bit CRC-32C."""

from __future__ import annotations

import struct

import google_crc32c
import numpy as np
import pytest
import tensorflow as tf

from tfrecords_tools import record_file


def _crc32c_bitwise(data: bytes) -> int:
  """CRC-32C, one bit at a time (reflected polynomial 0x82F63B78; RFC 3720 B.4)."""
  crc = 0xFFFFFFFF
  for byte in data:
    crc ^= byte
    for _ in range(8):
      crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
  return crc ^ 0xFFFFFFFF


def _masked(crc: int) -> int:
  rotated = ((crc >> 15) | (crc << 17)) & 0xFFFFFFFF
  return (rotated + 0xA282EAD8) & 0xFFFFFFFF


def _records() -> list[bytes]:
  rng = np.random.default_rng(0)
  return [
    b"",
    b"a",
    rng.integers(0, 256, 1000, dtype=np.uint8).tobytes(),
    rng.integers(0, 256, 300_000, dtype=np.uint8).tobytes(),  # a patch-sized PNG
  ]


def test_bitwise_reference_gives_the_published_check_value():
  # The CRC-32C check value of "123456789" (RFC 3720, B.4): the reference is right.
  assert _crc32c_bitwise(b"123456789") == 0xE3069283


def test_crc_is_the_compiled_implementation():
  # The pure-Python fallback of google_crc32c would make tiling workers slow.
  assert google_crc32c.implementation == "c"


def test_frames_match_the_bitwise_reference():
  for data in _records()[:3]:
    length = struct.pack("<Q", len(data))
    assert record_file.frame(data) == length + struct.pack("<I", _masked(_crc32c_bitwise(length)))
    assert record_file.masked_crc32c(data) == _masked(_crc32c_bitwise(data))


def test_file_equals_tensorflows_and_reads_back(tmp_path):
  ours, theirs = tmp_path / "ours.tfrecord", tmp_path / "tf.tfrecord"
  records = _records()
  with record_file.RecordFileWriter(str(ours)) as writer:
    for data in records:
      writer.write(data)
  with tf.io.TFRecordWriter(str(theirs)) as writer:
    for data in records:
      writer.write(data)
  assert ours.read_bytes() == theirs.read_bytes()
  read = [r.numpy() for r in tf.data.TFRecordDataset(str(ours))]
  assert read == records


def test_a_flipped_data_byte_is_caught_by_tensorflows_reader(tmp_path):
  # The data CRC is really checked on reading: a damaged file is not read silently.
  path = tmp_path / "bad.tfrecord"
  with record_file.RecordFileWriter(str(path)) as writer:
    writer.write(b"x" * 100)
  blob = bytearray(path.read_bytes())
  blob[12 + 50] ^= 1
  path.write_bytes(bytes(blob))
  with pytest.raises(tf.errors.DataLossError):
    list(tf.data.TFRecordDataset(str(path)))
