"""TFRecord files written without TensorFlow (the pool and Beam workers of remedis-tile).

A tiling worker imports OpenSlide, NumPy and Pillow only; importing TensorFlow
would cost each worker seconds of CPU. This writer produces the bytes that
`tf.io.TFRecordWriter` writes (uncompressed). Each record is framed as in
TensorFlow's `record_writer.cc`:

  uint64  length of the data, little-endian
  uint32  masked CRC-32C of those 8 bytes, little-endian
  bytes   the data
  uint32  masked CRC-32C of the data, little-endian

with mask(c) = ((c >> 15) | (c << 17)) + 0xA282EAD8 (mod 2**32). CRC-32C
(Castagnoli) comes from `google_crc32c`, which uses the CPU's CRC instructions.
"""

from __future__ import annotations

import struct

import google_crc32c

_MASK_DELTA = 0xA282EAD8
_U64 = struct.Struct("<Q")
_U32 = struct.Struct("<I")


def masked_crc32c(data: bytes) -> int:
  """TFRecord's masked CRC-32C of `data`."""
  crc = google_crc32c.value(data)
  return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + _MASK_DELTA) & 0xFFFFFFFF


def frame(data: bytes) -> bytes:
  """The framing of one record before its data: length and the length's masked CRC."""
  length = _U64.pack(len(data))
  return length + _U32.pack(masked_crc32c(length))


class RecordFileWriter:
  """Writes serialized records to one uncompressed TFRecord file.

  Usable as a context manager; `close` flushes and closes the file.
  """

  def __init__(self, path: str) -> None:
    self.path = path
    self._file = open(path, "wb")  # noqa: SIM115 - closed by close()

  def write(self, data: bytes) -> None:
    """Appends one record."""
    self._file.write(frame(data))
    self._file.write(data)
    self._file.write(_U32.pack(masked_crc32c(data)))

  def close(self) -> None:
    """Flushes and closes the file."""
    self._file.close()

  def __enter__(self) -> RecordFileWriter:
    return self

  def __exit__(self, *exc: object) -> None:
    self.close()
