"""A small, fast PNG encoder for 8/16-bit grayscale and 8-bit RGB arrays.

Written directly with zlib (no TensorFlow, so converter workers stay light):
one IDAT chunk, the PNG "Up" filter on every row (cheap in NumPy, and it
roughly halves the size of smooth medical images). Level 1 (the default) uses
zlib's run-length strategy: about twice as fast as plain level 1 on 16-bit
radiographs for ~3% larger files; levels 2..9 use zlib's default strategy.
Any PNG decoder reads the result; tests check it with tf.io.decode_png and
Pillow.
"""

from __future__ import annotations

import struct
import zlib

import numpy as np

_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _chunk(kind: bytes, payload: bytes) -> bytes:
  crc = zlib.crc32(payload, zlib.crc32(kind)) & 0xFFFFFFFF
  return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)


def encode_png(image: np.ndarray, compression_level: int = 1) -> bytes:
  """Encodes (H, W) uint8/uint16 or (H, W, 3) uint8 as PNG.

  Args:
    image: the pixels; uint16 is written as 16-bit grayscale.
    compression_level: zlib level 0..9 (1: fast run-length strategy).

  Returns:
    The PNG file bytes.
  """
  if image.ndim == 3 and image.shape[2] == 1:
    image = image[..., 0]
  if image.ndim == 2:
    color_type = 0
  elif image.ndim == 3 and image.shape[2] == 3:
    color_type = 2
  else:
    raise ValueError(f"unsupported image shape {image.shape}")
  if image.dtype == np.uint16:
    if color_type != 0:
      raise ValueError("16-bit PNG is only written for grayscale")
    bit_depth = 16
    raw = image.astype(">u2", copy=False)
  elif image.dtype == np.uint8:
    bit_depth = 8
    raw = image
  else:
    raise ValueError(f"unsupported dtype {image.dtype}")
  h, w = image.shape[:2]
  rows = np.ascontiguousarray(raw).view(np.uint8).reshape(h, -1)
  filtered = np.empty((h, rows.shape[1] + 1), dtype=np.uint8)
  filtered[:, 0] = 2  # "Up": each byte minus the byte above it (mod 256).
  filtered[0, 1:] = rows[0]
  np.subtract(rows[1:], rows[:-1], out=filtered[1:, 1:])
  ihdr = struct.pack(">IIBBBBB", w, h, bit_depth, color_type, 0, 0, 0)
  if compression_level == 1:
    compressor = zlib.compressobj(1, zlib.DEFLATED, 15, 9, zlib.Z_RLE)
  else:
    compressor = zlib.compressobj(compression_level)
  idat = compressor.compress(filtered.tobytes()) + compressor.flush()
  return _SIGNATURE + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")
