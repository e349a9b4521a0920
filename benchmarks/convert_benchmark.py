r"""Throughput of remedis-convert on radiograph-sized DICOMs.

Generates (once, cached in --data_dir) --num_files synthetic radiograph-like
2048x2048 12-bit MONOCHROME2 DICOMs with a window, half uncompressed (explicit
VR little endian) and half JPEG lossless (process 14, selection value 1,
encoded by the small NumPy encoder below and checked against pydicom's
decoder), then times in one run:
  * a plain single-process loop: pydicom -> apply_modality_lut ->
    apply_voi_lut -> 16-bit PNG (Pillow, compress_level=1) -> tf.train.Example
    -> tf.io.TFRecordWriter;
  * `tfrecords_tools.convert.convert` with 1 and with 2 worker processes,
and prints files/s, input MB/s and how the time splits between read, decode,
pixel policy, PNG encode (+ tf.Example serialization) and writing.

Usage:
  python benchmarks/convert_benchmark.py [--num_files 500] [--size 2048]
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import struct
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
from remedis_tf import cpu_setup  # noqa: E402, F401  (oneDNN default, before TensorFlow)

# --- A minimal JPEG lossless (SOF3, predictor 1) encoder. --------------------


def _huffman_lengths(freq: dict[int, int]) -> dict[int, int]:
  import heapq

  heap = [(f, i, (s,)) for i, (s, f) in enumerate(sorted(freq.items()))]
  heapq.heapify(heap)
  lengths = {s: 0 for s in freq}
  if len(heap) == 1:
    return {s: 1 for s in freq}
  counter = len(heap)
  while len(heap) > 1:
    f1, _, s1 = heapq.heappop(heap)
    f2, _, s2 = heapq.heappop(heap)
    for s in s1 + s2:
      lengths[s] += 1
    heapq.heappush(heap, (f1 + f2, counter, s1 + s2))
    counter += 1
  return lengths


def jpeg_lossless_encode(image: np.ndarray, precision: int) -> bytes:
  """Encodes (H, W) unsigned integers as a JPEG lossless (SOF3, SV1) stream."""
  h, w = image.shape
  x = image.astype(np.int32)
  pred = np.empty_like(x)
  pred[:, 1:] = x[:, :-1]  # Ra (left)
  pred[1:, 0] = x[:-1, 0]  # first column: Rb (above)
  pred[0, 0] = 1 << (precision - 1)
  diff = (x - pred).ravel()
  mag = np.abs(diff)
  cat = np.zeros(diff.shape, np.int64)
  nz = mag > 0
  cat[nz] = np.floor(np.log2(mag[nz])).astype(np.int64) + 1
  extra = np.where(diff >= 0, diff, diff + (1 << cat) - 1).astype(np.int64)
  counts = np.bincount(cat, minlength=17)
  freq = {int(s): int(c) for s, c in enumerate(counts) if c}
  freq[256] = 1  # reserves the all-ones code (JPEG K.2)
  lengths = _huffman_lengths(freq)
  order = sorted(freq, key=lambda s: (lengths[s], s))
  codes, code, prev = {}, 0, 0
  for s in order:
    code <<= lengths[s] - prev
    prev = lengths[s]
    codes[s] = code
    code += 1
  if max(lengths.values()) > 16:
    raise ValueError("Huffman code too long")
  symbols = [s for s in order if s != 256]
  bits_count = [sum(1 for s in symbols if lengths[s] == n) for n in range(1, 17)]
  hcode = np.zeros(17, np.int64)
  hlen = np.zeros(17, np.int64)
  for s in symbols:
    hcode[s], hlen[s] = codes[s], lengths[s]
  value = (hcode[cat] << cat) | (extra & ((1 << cat) - 1))
  length = hlen[cat] + cat
  ends = np.cumsum(length)
  starts = ends - length
  total = int(ends[-1])
  bits = np.ones(((total + 7) // 8) * 8, np.uint8)  # pad with 1-bits
  for j in range(int(length.max())):
    sel = length > j
    bits[starts[sel] + j] = (value[sel] >> (length[sel] - 1 - j)) & 1
  data = np.packbits(bits)
  ff = np.flatnonzero(data == 0xFF)
  data = np.insert(data, ff + 1, 0).tobytes()
  dht = bytes([0x00]) + bytes(bits_count) + bytes(symbols)
  out = b"\xff\xd8"
  out += b"\xff\xc3" + struct.pack(">HBHHB", 11, precision, h, w, 1) + bytes([1, 0x11, 0])
  out += b"\xff\xc4" + struct.pack(">H", 2 + len(dht)) + dht
  out += b"\xff\xda" + struct.pack(">HB", 8, 1) + bytes([1, 0x00, 1, 0, 0])
  return out + data + b"\xff\xd9"


# --- Data generation. --------------------------------------------------------


def _radiograph(size: int, seed: int) -> np.ndarray:
  rng = np.random.default_rng(seed)
  y, x = np.mgrid[:size, :size] / size
  body = np.exp(-(((x - 0.5) / 0.35) ** 4 + ((y - 0.5) / 0.45) ** 4))
  lungs = np.exp(-(((x - 0.33) / 0.12) ** 2 + ((y - 0.45) / 0.2) ** 2))
  lungs += np.exp(-(((x - 0.67) / 0.12) ** 2 + ((y - 0.45) / 0.2) ** 2))
  ribs = 0.08 * np.sin(y * 60 + np.sin(x * 6)) * body
  img = 600 + 2600 * body - 1200 * lungs + 300 * ribs
  img += rng.normal(0, 12, img.shape)
  return np.clip(np.rint(img), 0, 4095).astype(np.uint16)


def generate(data_dir: str, num_files: int, size: int, distinct: int = 4) -> list[str]:
  """Writes num_files DICOMs (half JPEG lossless) and returns their paths."""
  import pydicom
  from pydicom.dataset import Dataset, FileMetaDataset
  from pydicom.encaps import encapsulate
  from pydicom.uid import ExplicitVRLittleEndian, JPEGLosslessSV1, generate_uid

  os.makedirs(data_dir, exist_ok=True)
  stamp = data_dir.rstrip("/") + ".done"
  paths = [os.path.join(data_dir, f"img{i:05d}") for i in range(num_files)]
  if os.path.exists(stamp):
    return paths
  images = [_radiograph(size, s) for s in range(distinct)]
  jpegs = [jpeg_lossless_encode(im, 12) for im in images]
  for i, path in enumerate(paths):
    k = i % distinct
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    compressed = i % 2 == 1
    ds.file_meta.TransferSyntaxUID = JPEGLosslessSV1 if compressed else ExplicitVRLittleEndian
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.StudyInstanceUID = generate_uid()
    ds.PatientID = f"BENCH{i // 2:05d}"
    ds.Modality, ds.ViewPosition, ds.BodyPartExamined = "DX", "PA", "CHEST"
    ds.Rows = ds.Columns = size
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.WindowCenter, ds.WindowWidth = 2048, 3500
    if compressed:
      ds.PixelData = encapsulate([jpegs[k]])
      ds["PixelData"].VR = "OB"
    else:
      ds.PixelData = images[k].tobytes()
    ds.save_as(path, enforce_file_format=True)
    if i < 2 * distinct and compressed:  # The encoder must be exact.
      decoded = pydicom.dcmread(path).pixel_array
      if not np.array_equal(decoded, images[k]):
        raise AssertionError("JPEG lossless encoder is not lossless")
  open(stamp, "w").close()
  return paths


# --- The plain loop. ---------------------------------------------------------


def plain_loop(paths: list[str], output: str) -> dict[str, float]:
  """pydicom -> LUTs -> Pillow PNG -> tf.Example -> TFRecordWriter, timed."""
  import pydicom
  import tensorflow as tf
  from PIL import Image
  from pydicom.pixels import apply_modality_lut, apply_voi_lut

  t = {"decode": 0.0, "pixel_policy": 0.0, "png_encode": 0.0, "write": 0.0}
  with tf.io.TFRecordWriter(output) as writer:
    for path in paths:
      t0 = time.perf_counter()
      ds = pydicom.dcmread(path)
      arr = ds.pixel_array
      t1 = time.perf_counter()
      out = apply_voi_lut(apply_modality_lut(arr, ds), ds)
      lo, hi = 0.0, 2.0**ds.BitsStored - 1
      img = np.rint((out - lo) / (hi - lo) * 65535).astype(np.uint16)
      t2 = time.perf_counter()
      buf = io.BytesIO()
      Image.fromarray(img).save(buf, "PNG", compress_level=1)
      example = tf.train.Example(
        features=tf.train.Features(
          feature={
            "image/encoded": tf.train.Feature(
              bytes_list=tf.train.BytesList(value=[buf.getvalue()])
            ),
            "image/height": tf.train.Feature(int64_list=tf.train.Int64List(value=[img.shape[0]])),
            "image/width": tf.train.Feature(int64_list=tf.train.Int64List(value=[img.shape[1]])),
          }
        )
      ).SerializeToString()
      t3 = time.perf_counter()
      writer.write(example)
      t4 = time.perf_counter()
      for key, dt in zip(t, (t1 - t0, t2 - t1, t3 - t2, t4 - t3), strict=True):
        t[key] += dt
  return t


def _line(name: str, n: int, mb: float, wall: float, split: dict[str, float]) -> str:
  """One result line; `busy` = stage seconds / wall (processes kept busy)."""
  total = sum(split.values()) or 1.0
  parts = ", ".join(f"{k} {v:.1f}s ({100 * v / total:.0f}%)" for k, v in sorted(split.items()))
  return (
    f"{name:<24} {n / wall:7.2f} files/s {mb / wall:8.1f} MB/s  wall {wall:7.1f}s  "
    f"busy {total / wall:4.2f}  [{parts}]"
  )


def main() -> None:
  parser = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  parser.add_argument("--num_files", type=int, default=500, help="number of DICOMs (>= 2)")
  parser.add_argument("--size", type=int, default=2048, help="image side in pixels")
  parser.add_argument(
    "--data_dir",
    default="/tmp/remedis_convert_bench/data",
    help="where the generated DICOMs are cached",
  )
  parser.add_argument(
    "--out_dir",
    default="/tmp/remedis_convert_bench/out",
    help="scratch output folder (deleted and recreated)",
  )
  parser.add_argument("--workers", default="1,2", help="worker counts to time")
  args = parser.parse_args()

  from tfrecords_tools import convert

  t0 = time.time()
  data_dir = os.path.join(args.data_dir, f"n{args.num_files}_s{args.size}")
  paths = generate(data_dir, args.num_files, args.size)
  mb = sum(os.path.getsize(p) for p in paths) / 1e6
  print(
    f"{len(paths)} DICOMs {args.size}x{args.size} 12-bit (half JPEG lossless), "
    f"{mb:.0f} MB of input; data ready in {time.time() - t0:.0f}s; "
    f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}",
    flush=True,
  )
  shutil.rmtree(args.out_dir, ignore_errors=True)
  os.makedirs(args.out_dir)

  import tensorflow as tf  # noqa: F401 - imported before timing, as in a long-running job.

  t0 = time.perf_counter()
  split = plain_loop(paths, os.path.join(args.out_dir, "plain.tfrecord"))
  plain_wall = time.perf_counter() - t0
  print(_line("plain loop (1 process)", len(paths), mb, plain_wall, split), flush=True)

  walls = {}
  for workers in (int(w) for w in args.workers.split(",")):
    out = os.path.join(args.out_dir, f"convert_{workers}")
    config = convert.ConvertConfig(
      input_path=data_dir,
      output_dir=out,
      salt="benchmark",
      num_workers=workers,
      shard_size_mb=max(8.0, mb / 16),
    )
    t0 = time.perf_counter()
    manifest = convert.convert(config)
    walls[workers] = time.perf_counter() - t0
    split = {k: v for k, v in manifest["timings_s"].items()}
    n = manifest["counts"]["files_converted"]
    print(_line(f"remedis-convert {workers} worker(s)", n, mb, walls[workers], split), flush=True)
  if 1 in walls and 2 in walls:
    print(
      f"speed-up 1 -> 2 workers: {walls[1] / walls[2]:.2f}x; "
      f"remedis-convert(1) vs plain loop: {plain_wall / walls[1]:.2f}x"
    )
  print(
    "busy = summed stage seconds / wall: ~1 per process when every process works all the "
    "time; stage seconds that grow with more workers mean the cores are shared."
  )
  print(
    f"load average at the end {os.getloadavg()[0]:.1f} (shared machine: other jobs "
    "compete for the same cores)"
  )


if __name__ == "__main__":
  main()
