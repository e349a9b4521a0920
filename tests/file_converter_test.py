"""Written pixels of every syntax / photometric / bit depth vs independent references.

Each input is converted by `file_converter.convert_bytes`; the serialized
tf.Example is parsed with `schema.parse_example` and its PNG decoded by
TensorFlow, then compared with an independent computation: pydicom's
`pixel_array`, `apply_modality_lut`, `apply_voi_lut` and explicit MONOCHROME1
inversion for monochrome; for palette colour, the LUTs decoded from the
file's own bytes (`convert_testdata.raw_palette_reference`), because pydicom
3.0.2's `apply_color_lut` misreads big endian palettes. Also: damaged inputs
are reported with a listed reason, never raised; a bug is raised, never
reported.
"""

import collections
import hashlib
import hmac
import os
import traceback
import warnings

import convert_testdata as td
import numpy as np
import pydicom
import pytest
import tensorflow as tf

from tfrecords_tools import file_converter, schema
from tfrecords_tools.pixel_policy import PixelPolicy

SALT = b"test-salt"


def _context(**kw):
  return file_converter.FileContext(
    policy=kw.pop("policy", PixelPolicy()), salt=SALT, split_fractions=(0.8, 0.1, 0.1), **kw
  )


def _records(data: bytes, **kw):
  result = file_converter.convert_bytes("some/file", data, _context(**kw))
  out = []
  for _, serialized, _ in result.records:
    parsed = schema.parse_example(tf.constant(serialized))
    depth = int(parsed[schema.IMAGE_BIT_DEPTH])
    image = tf.io.decode_png(
      parsed[schema.IMAGE_ENCODED], dtype=tf.uint16 if depth == 16 else tf.uint8
    ).numpy()
    out.append((parsed, image))
  return result, out


def _expected_monochrome(ds, stored, parsed):
  method = parsed[schema.VOI_METHOD].numpy().decode()
  if method in ("window", "voi_lut"):
    return td.reference_uint16(ds, stored)
  values = pydicom.pixels.apply_modality_lut(stored, ds).astype(np.float64)
  norm = (values - values.min()) / (values.max() - values.min())
  if ds.PhotometricInterpretation == "MONOCHROME1":
    norm = 1 - norm
  return np.rint(norm * 65535)


SYNTAXES = ["explicit", "implicit", "big_endian", "deflate", "rle", "j2k"]
SYNTAX_UIDS = {
  "explicit": "1.2.840.10008.1.2.1",
  "implicit": "1.2.840.10008.1.2",
  "big_endian": "1.2.840.10008.1.2.2",
  "deflate": "1.2.840.10008.1.2.1.99",
  "rle": "1.2.840.10008.1.2.5",
  "j2k": "1.2.840.10008.1.2.4.90",
}
VARIANTS = {
  "u12_mono2_window": (
    np.uint16,
    12,
    0,
    4095,
    "MONOCHROME2",
    dict(WindowCenter=2000, WindowWidth=3000),
  ),
  "u16_mono1_window": (
    np.uint16,
    16,
    0,
    65535,
    "MONOCHROME1",
    dict(WindowCenter=[30000, 10000], WindowWidth=[40000, 5000]),
  ),
  "s16_ct_rescale": (
    np.int16,
    16,
    -1024,
    2000,
    "MONOCHROME2",
    dict(RescaleSlope=1, RescaleIntercept=-1024, WindowCenter=40, WindowWidth=400),
  ),
  "u8_mono2_nowindow": (np.uint8, 8, 3, 250, "MONOCHROME2", {}),
  "s12_mono1_slope": (
    np.int16,
    12,
    -2000,
    2000,
    "MONOCHROME1",
    dict(RescaleSlope=0.5, RescaleIntercept=10),
  ),
}


@pytest.mark.parametrize("syntax", SYNTAXES)
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_generated_monochrome(syntax, variant):
  dtype, bits, lo, hi, photometric, attrs = VARIANTS[variant]
  stored = td.ramp(48, 40, lo, hi, seed=len(variant), dtype=dtype)
  ds = td.make_dataset(stored, photometric=photometric, bits_stored=bits, **attrs)
  data = td.encode(ds, syntax)
  result, records = _records(data)
  assert not result.errors and len(records) == 1
  parsed, image = records[0]
  assert image.shape == (48, 40, 1) and image.dtype == np.uint16
  np.testing.assert_allclose(
    image[..., 0].astype(np.int64), _expected_monochrome(ds, stored, parsed), atol=1
  )
  expected_method = "window" if "WindowCenter" in attrs else "minmax"
  assert parsed[schema.VOI_METHOD].numpy().decode() == expected_method
  assert int(parsed[schema.INVERTED]) == (photometric == "MONOCHROME1")
  assert parsed[schema.TRANSFER_SYNTAX].numpy().decode() == SYNTAX_UIDS[syntax]
  assert parsed[schema.PHOTOMETRIC].numpy().decode() == photometric
  assert int(parsed[schema.IMAGE_CHANNELS]) == 1 and int(parsed[schema.IMAGE_BIT_DEPTH]) == 16
  sop = hmac.new(SALT, ds.SOPInstanceUID.encode(), hashlib.sha256).hexdigest()
  assert parsed[schema.SOP_INSTANCE_HASH].numpy().decode() == sop
  patient = hmac.new(SALT, b"PAT-0001", hashlib.sha256).hexdigest()
  assert parsed[schema.PATIENT_ID_HASH].numpy().decode() == patient
  assert parsed[schema.MODALITY].numpy() == b"DX" and parsed[schema.VIEW_POSITION].numpy() == b"PA"
  assert parsed[schema.CONVERTER_VERSION].numpy().startswith(b"remedis-tf-convert/")


@pytest.mark.parametrize("syntax", ["explicit", "rle", "big_endian"])
def test_generated_multiframe_every_and_chosen_frame(syntax):
  frames = np.stack([td.ramp(16, 20, 0, 4095, seed=s) for s in range(3)])
  ds = td.make_dataset(frames, WindowCenter=2048, WindowWidth=4096)
  data = td.encode(ds, syntax)
  _, records = _records(data)
  assert [int(p[schema.IMAGE_FRAME_INDEX]) for p, _ in records] == [0, 1, 2]
  ids = {p[schema.IMAGE_SOURCE_ID].numpy() for p, _ in records}
  assert len(ids) == 3
  for i, (_, image) in enumerate(records):
    np.testing.assert_allclose(
      image[..., 0].astype(np.int64), td.reference_uint16(ds, frames[i]), atol=1
    )
  _, chosen = _records(data, policy=PixelPolicy(frame=1))
  assert len(chosen) == 1 and int(chosen[0][0][schema.IMAGE_FRAME_INDEX]) == 1
  np.testing.assert_array_equal(chosen[0][1], records[1][1])


@pytest.mark.parametrize("syntax", ["explicit", "rle", "j2k"])
def test_generated_rgb(syntax):
  rgb = np.stack([td.ramp(40, 36, 0, 255, seed=s, dtype=np.uint8) for s in range(3)], -1)
  ds = td.make_dataset(rgb, photometric="RGB", bits_stored=8, sop_class=td.SECONDARY_CAPTURE)
  _, records = _records(td.encode(ds, syntax))
  parsed, image = records[0]
  assert int(parsed[schema.IMAGE_CHANNELS]) == 3 and int(parsed[schema.IMAGE_BIT_DEPTH]) == 8
  np.testing.assert_array_equal(image, rgb)


def test_generated_ybr_full_is_converted_to_rgb():
  rgb = np.stack([td.ramp(20, 18, 20, 230, seed=s, dtype=np.uint8) for s in range(3)], -1)
  ybr = pydicom.pixels.convert_color_space(rgb, "RGB", "YBR_FULL")
  ds = td.make_dataset(ybr, photometric="YBR_FULL", bits_stored=8, sop_class=td.SECONDARY_CAPTURE)
  _, records = _records(td.encode(ds, "explicit"))
  np.testing.assert_allclose(records[0][1].astype(int), rgb.astype(int), atol=2)


def _palette_expected(indices, luts, first, bits):
  """The known answer: each channel's table at clip(index - first), in 8 bits.

  round(v * 255 / D), D = 2**bits - 1, in integers; never a tie (510 v is even,
  (2k + 1) D is odd), so any rounding rule agrees.
  """
  top = 2**bits - 1
  index = np.clip(indices.astype(np.int64) - first, 0, len(luts[0]) - 1)
  return np.stack(
    [(2 * np.asarray(lut)[index] * 255 + top) // (2 * top) for lut in luts], -1
  ).astype(np.uint8)


# name: (bits per entry, 8-bit entries one per word, index dtype, entries, first mapped)
PALETTE_LAYOUTS = {
  "16bit": (16, False, np.uint8, 256, 0),
  "8bit_packed": (8, False, np.uint8, 256, 0),
  "8bit_packed_odd_count_offset": (8, False, np.uint8, 251, 3),
  "8bit_one_per_word": (8, True, np.uint8, 256, 0),
  "16bit_16bit_indices_offset": (16, False, np.uint16, 3000, 100),
}


@pytest.mark.parametrize("syntax", ["explicit", "big_endian"])
@pytest.mark.parametrize("layout", sorted(PALETTE_LAYOUTS))
def test_generated_palette_in_both_byte_orders(layout, syntax):
  bits, one_per_word, dtype, n, first = PALETTE_LAYOUTS[layout]
  rng = np.random.default_rng(n)
  # Random (non-monotonic) tables: any byte or entry mix-up changes colours.
  luts = [rng.integers(0, 2**bits, n) for _ in range(3)]
  # Indices below, inside and past the mapped range; two frames.
  frame = td.ramp(12, 14, 0, first + n + 4, seed=n, dtype=dtype)
  indices = np.stack([frame, frame[::-1]])
  ds = td.palette_dataset(
    indices,
    luts,
    bits=bits,
    first=first,
    order=">" if syntax == "big_endian" else "<",
    words_for_8_bit=one_per_word,
  )
  result, records = _records(td.encode(ds, syntax))
  assert not result.errors and len(records) == 2
  for i, (parsed, image) in enumerate(records):
    assert int(parsed[schema.IMAGE_BIT_DEPTH]) == 8 and image.shape == (12, 14, 3)
    np.testing.assert_array_equal(image, _palette_expected(indices[i], luts, first, bits))


@pytest.mark.parametrize("syntax", ["explicit", "big_endian"])
@pytest.mark.parametrize("bits", [8, 16])
def test_generated_segmented_palette_in_both_byte_orders(bits, syntax):
  top = 2**bits - 1
  # Discrete, linear up, discrete, linear down (non-integer steps), linear flat.
  segments = [
    [0, 3, 0, top // 2, 7, 1, 40, top, 0, 2, 9, top // 3, 1, 200, 5, 1, 11, 5],
    [0, 1, top, 1, 100, 0, 0, 4, 1, 2, 3, 4, 1, 151, top],
    [0, 2, 17, 17, 1, 254, top // 7],
  ]
  luts = [td.expand_segments_reference(seg) for seg in segments]
  assert [len(lut) for lut in luts] == [256, 256, 256]
  indices = td.ramp(16, 16, 0, 255, seed=bits, dtype=np.uint8)
  order = ">" if syntax == "big_endian" else "<"
  ds = td.palette_dataset(indices, luts, bits=bits, order=order, segmented=segments)
  result, records = _records(td.encode(ds, syntax))
  assert not result.errors, result.errors
  np.testing.assert_array_equal(records[0][1], _palette_expected(indices, luts, 0, bits))


def test_indirect_palette_segment_is_reported_unsupported():
  segment = [0, 2, 10, 20, 2, 1, 0, 0, 1, 252, 300]  # copies the first segment
  indices = td.ramp(8, 8, 0, 255, dtype=np.uint8)
  ds = td.palette_dataset(indices, [range(256)] * 3, segmented=[segment] * 3)
  result, records = _records(td.encode(ds))
  assert records == []
  assert [e["reason"] for e in result.errors] == ["unsupported_image"]
  assert "indirect" in result.errors[0]["detail"]


@pytest.mark.parametrize("syntax", ["explicit", "implicit", "big_endian"])
def test_lut_sequence_data_in_words_read_in_the_file_byte_order(syntax):
  from pydicom.dataset import Dataset

  stored = td.ramp(20, 24, 0, 1023, seed=9)
  order = ">" if syntax == "big_endian" else "<"
  modality = np.arange(1024) * 3 + 1000  # stored -> 1000..4069
  voi = np.rint(4095 * np.sqrt(np.linspace(0, 1, 2000))).astype(np.int64)  # 1500..3499
  ds = td.make_dataset(stored, bits_stored=10)
  for keyword, lut, first in (("ModalityLUTSequence", modality, 0), ("VOILUTSequence", voi, 1500)):
    item = Dataset()
    item.LUTDescriptor = [len(lut), first, 16 if keyword == "ModalityLUTSequence" else 12]
    item.add_new(0x00283006, "OW", td.ow_bytes(lut, 16, order))  # LUTData as words
    setattr(ds, keyword, [item])
  result, records = _records(td.encode(ds, syntax))
  assert not result.errors, result.errors
  parsed, image = records[0]
  assert parsed[schema.VOI_METHOD].numpy() == b"voi_lut"
  # Known answer: both tables at clip(value - first); the VOI LUT's 12 bits
  # map to [0, 1], then 0..65535 rounded.
  values = modality[stored]
  expected = np.rint(voi[np.clip(values - 1500, 0, len(voi) - 1)] / 4095 * 65535)
  np.testing.assert_array_equal(image[..., 0].astype(np.int64), expected.astype(np.int64))


# Real files shipped with pydicom and pydicom-data: radiograph, CT, MR,
# ultrasound, JPEG baseline / extended / lossless, JPEG-LS, JPEG 2000, RLE,
# deflate, big endian, palette, YBR, multi-frame.
REAL_FILES = [
  "RG3_UNCI.dcm",
  "RG1_J2KR.dcm",
  "CT_small.dcm",
  "MR_small.dcm",
  "MR_small_bigendian.dcm",
  "MR_small_RLE.dcm",
  "MR_small_jpeg_ls_lossless.dcm",
  "MR_small_jp2klossless.dcm",
  "JPEG2000.dcm",
  "JPEG-LL.dcm",
  "JPGLosslessP14SV1_1s_1f_8b.dcm",
  "JPGExtended.dcm",
  "JPEGLSNearLossless_16.dcm",
  "SC_rgb_jpeg_dcmtk.dcm",
  "US1_J2KR.dcm",
  "US1_UNCR.dcm",
  "image_dfl.dcm",
  "examples_palette.dcm",
  "SC_ybr_full_422_uncompressed.dcm",
  "emri_small.dcm",
  "SC_rgb_rle_16bit.dcm",
  "693_J2KI.dcm",
]


@pytest.mark.slow
@pytest.mark.parametrize("name", REAL_FILES)
def test_real_files(name):
  path = td.pydicom_test_file(name)
  with open(path, "rb") as f:
    data = f.read()
  result, records = _records(data)
  assert not result.errors, result.errors
  ds = pydicom.dcmread(path)
  arr = ds.pixel_array
  frames = arr if int(ds.get("NumberOfFrames", 1) or 1) > 1 else arr[None]
  assert len(records) == len(frames)
  photometric = ds.PhotometricInterpretation
  for frame, (parsed, image) in zip(frames, records, strict=True):
    if photometric in ("MONOCHROME1", "MONOCHROME2"):
      has_voi = "WindowCenter" in ds or "VOILUTSequence" in ds
      method = parsed[schema.VOI_METHOD].numpy().decode()
      assert method in (("window", "voi_lut") if has_voi else ("minmax",)), method
      np.testing.assert_allclose(
        image[..., 0].astype(np.int64), _expected_monochrome(ds, frame, parsed), atol=1
      )
    elif photometric == "PALETTE COLOR":
      continue  # test_real_palette_files checks these against their raw LUT bytes.
    else:
      ref = np.rint(frame.astype(np.float64) / (2.0**ds.BitsStored - 1) * 255)
      np.testing.assert_allclose(image.astype(int), ref, atol=0)
    assert image.shape[:2] == frame.shape[:2]


# Every PALETTE COLOR file shipped with pydicom and pydicom-data, grouped by
# twins: the same image in other byte orders / transfer syntaxes.
PALETTE_TWINS = {
  "OBXXXX1A": ("OBXXXX1A.dcm", "OBXXXX1A_expb.dcm", "OBXXXX1A_rle.dcm"),
  "OBXXXX1A_2frame": (
    "OBXXXX1A_2frame.dcm",
    "OBXXXX1A_expb_2frame.dcm",  # big endian: wrong colours through apply_color_lut
    "OBXXXX1A_rle_2frame.dcm",
  ),
  "gdcm-US-ALOKA-16": ("gdcm-US-ALOKA-16.dcm", "gdcm-US-ALOKA-16_big.dcm"),  # segmented
  "OT-PAL-8-face": ("OT-PAL-8-face.dcm",),  # a bare dataset without file meta
  "examples_palette": ("examples_palette.dcm",),
}


@pytest.mark.parametrize("group", sorted(PALETTE_TWINS))
def test_real_palette_files_match_their_raw_lut_bytes(group):
  converted = []
  for name in PALETTE_TWINS[group]:
    path = td.shipped_file(name)
    with open(path, "rb") as f:
      result, records = _records(f.read())
    assert not result.errors, (name, result.errors)
    images = np.stack([image for _, image in records])
    # Exact: integer tables, 8-bit output, no rounding ties (see _palette_expected).
    np.testing.assert_array_equal(images, td.raw_palette_reference(path), err_msg=name)
    converted.append(images)
  for name, images in zip(PALETTE_TWINS[group][1:], converted[1:], strict=True):
    np.testing.assert_array_equal(images, converted[0], err_msg=f"{name} differs from its twin")


def test_every_shipped_palette_file_is_checked():
  found = set()
  for path in td.all_shipped_files():
    with warnings.catch_warnings():  # bare datasets: "found implicit VR"
      warnings.simplefilter("ignore")
      ds = pydicom.dcmread(
        path, stop_before_pixels=True, force=True, specific_tags=["PhotometricInterpretation"]
      )
    if str(ds.get("PhotometricInterpretation", "")).strip() == "PALETTE COLOR":
      found.add(os.path.basename(path))
  assert found == {name for names in PALETTE_TWINS.values() for name in names}


def test_schema_decode_image_reads_16_bit_records():
  stored = td.ramp(8, 8, 0, 4095)
  ds = td.make_dataset(stored, WindowCenter=2048, WindowWidth=4096)
  result, records = _records(td.encode(ds))
  parsed, image = records[0]
  decoded = schema.decode_image(parsed[schema.IMAGE_ENCODED]).numpy()
  np.testing.assert_allclose(decoded, image / 65535.0, atol=1e-7)
  assert result.timings["decode"] >= 0 and result.timings["png_encode"] > 0


def test_png_and_jpeg_inputs():
  from io import BytesIO

  from PIL import Image

  gray = td.ramp(12, 10, 0, 255, dtype=np.uint8)
  buf = BytesIO()
  Image.fromarray(gray).save(buf, "PNG")
  _, records = _records(buf.getvalue())
  np.testing.assert_array_equal(records[0][1][..., 0], gray)
  assert records[0][0][schema.SOURCE_FORMAT].numpy() == b"png"
  buf16 = BytesIO()
  g16 = td.ramp(12, 10, 0, 65535)
  Image.fromarray(g16).save(buf16, "PNG")
  _, records = _records(buf16.getvalue())
  np.testing.assert_array_equal(records[0][1][..., 0], g16)
  rgb = np.stack([gray, gray[::-1], gray.T[:12, :10] if False else gray], -1)
  jbuf = BytesIO()
  Image.fromarray(rgb).save(jbuf, "JPEG", quality=95)
  _, records = _records(jbuf.getvalue())
  ref = np.asarray(Image.open(BytesIO(jbuf.getvalue())).convert("RGB"))
  np.testing.assert_array_equal(records[0][1], ref)
  assert records[0][0][schema.SOURCE_FORMAT].numpy() == b"jpeg"


@pytest.mark.parametrize(
  "kind",
  [
    "not_dicom",
    "no_pixel_data",
    "corrupt",
    "empty_image",
    "unsupported_transfer_syntax",
    "unsupported_image",
    "corrupt_png",
    "missing_pixel_attribute",
    "non_numeric_window",
  ],
)
def test_bad_inputs_report_a_reason(kind):
  if kind == "not_dicom":
    data = b"just some text, not an image"
  elif kind == "no_pixel_data":
    with open(td.pydicom_test_file("test-SR.dcm"), "rb") as f:
      data = f.read()
  elif kind == "corrupt":
    full = td.encode(td.make_dataset(td.ramp(32, 32)))
    data = full[: len(full) - 300]
  elif kind == "empty_image":
    data = td.encode(td.make_dataset(np.full((8, 8), 9, np.uint16), WindowCenter=5, WindowWidth=10))
  elif kind == "unsupported_image":
    data = td.encode(td.make_dataset(td.ramp(8, 8), photometric="HSV"))
  elif kind == "corrupt_png":
    from io import BytesIO

    from PIL import Image

    buf = BytesIO()
    Image.fromarray(td.ramp(16, 16, 0, 255, dtype=np.uint8)).save(buf, "PNG")
    data = buf.getvalue()[:-40]
  elif kind == "missing_pixel_attribute":
    ds = td.make_dataset(td.ramp(8, 8))
    del ds.BitsStored
    data = td.encode(ds)
  elif kind == "non_numeric_window":
    # pydicom refuses to write an invalid DS: damage the written bytes.
    data = td.encode(td.make_dataset(td.ramp(8, 8), WindowCenter="1234.5678", WindowWidth=100))
    data = data.replace(b"1234.5678", b"1234.56X8")
  else:
    ds = td.make_dataset(td.ramp(8, 8))
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.100"  # MPEG2: no decoder.
    ds.PixelData = pydicom.encaps.encapsulate([b"\x00" * 64])
    ds["PixelData"].VR = "OB"
    import io

    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    data = buf.getvalue()
  result, records = _records(data)
  assert records == []
  expected = {"corrupt_png": "corrupt", "missing_pixel_attribute": "corrupt"}.get(kind, kind)
  expected = "corrupt" if kind == "non_numeric_window" else expected
  assert [e["reason"] for e in result.errors] == [expected], result.errors
  assert expected in file_converter.INPUT_ERROR_REASONS


def test_a_frame_past_the_last_is_unsupported_not_an_unlisted_reason():
  frames = np.stack([td.ramp(8, 8, seed=s) for s in range(2)])
  data = td.encode(td.make_dataset(frames))
  result, records = _records(data, policy=PixelPolicy(frame=2))
  assert records == []
  assert [e["reason"] for e in result.errors] == ["unsupported_image"]


# Real files of every pixel path (RLE, deflate, big endian, JPEG, JPEG-LS,
# palette, segmented palette, YBR, multi-frame) plus a PNG and a JPEG. JPEG 2000
# is left out: OpenJPEG can spend minutes on some damaged codestreams.
DAMAGED_SOURCES = (
  "MR_small_RLE.dcm",
  "SC_rgb_rle_16bit_2frame.dcm",
  "image_dfl.dcm",
  "MR_small_bigendian.dcm",
  "MR_small_implicit.dcm",
  "SC_rgb_expb_2frame.dcm",
  "examples_palette.dcm",
  "SC_ybr_full_422_uncompressed.dcm",
  "OBXXXX1A_expb.dcm",
  "gdcm-US-ALOKA-16_big.dcm",
  "JPEG-LL.dcm",
  "SC_rgb_jpeg_dcmtk.dcm",
  "JPEGLSNearLossless_16.dcm",
  "CT_small.dcm",
)


def _plain_images() -> dict[str, bytes]:
  from io import BytesIO

  from PIL import Image

  out = {}
  gray = td.ramp(24, 20, 0, 255, dtype=np.uint8)
  for fmt in ("PNG", "JPEG"):
    buf = BytesIO()
    Image.fromarray(np.stack([gray, gray[::-1], gray], -1)).save(buf, fmt)
    out[fmt] = buf.getvalue()
  return out


def test_damaged_files_are_reported_with_a_listed_reason_never_raised():
  sources = {name: open(td.shipped_file(name), "rb").read() for name in DAMAGED_SOURCES}
  sources.update(_plain_images())
  reasons = collections.Counter()
  for i, (name, data) in enumerate(sorted(sources.items())):
    for j, damaged in enumerate(td.damaged_copies(data, 20, seed=i)):
      result = file_converter.convert_bytes(f"{name}#{j}", damaged, _context())
      if result.records:
        assert not result.errors, (name, j, result.errors)
        reasons["converted"] += 1
      for error in result.errors:
        assert error["reason"] in file_converter.INPUT_ERROR_REASONS, (name, j, error)
        reasons[error["reason"]] += 1
  # The damage reaches every stage: parsing, decoding and the pixel policy.
  assert reasons["corrupt"] > 50 and reasons["converted"] > 50, reasons


def test_a_bug_raises_with_its_traceback_instead_of_an_error_entry():
  # An empty HMAC key is a programming error inside the converter (FileContext
  # is built by the library, never from user input): it must not be reported
  # as a property of the file.
  data = td.encode(td.make_dataset(td.ramp(8, 8)))
  broken = file_converter.FileContext(
    policy=PixelPolicy(), salt=b"", split_fractions=(0.8, 0.1, 0.1)
  )
  with pytest.raises(ValueError) as raised:
    file_converter.convert_bytes("dir/some file.dcm", data, broken)
  assert "dir/some file.dcm" in "".join(raised.value.__notes__)
  frames = traceback.extract_tb(raised.value.__traceback__)
  assert frames[-1].filename.endswith(os.path.join("tfrecords_tools", "hashing.py"))
