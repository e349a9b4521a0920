"""Written pixels of every syntax / photometric / bit depth vs pydicom references.

Each input is converted by `file_converter.convert_bytes`; the serialized
tf.Example is parsed with `schema.parse_example` and its PNG decoded by
TensorFlow, then compared with an independent computation: pydicom's
`pixel_array`, `apply_modality_lut`, `apply_voi_lut` (or `apply_color_lut`)
and explicit MONOCHROME1 inversion.
"""

import hashlib
import hmac

import convert_testdata as td
import numpy as np
import pydicom
import pytest
import tensorflow as tf
from pydicom.pixels import apply_color_lut

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


def test_generated_palette():
  indices = td.ramp(16, 16, 0, 255, dtype=np.uint8)
  ds = td.make_dataset(
    indices, photometric="PALETTE COLOR", bits_stored=8, sop_class=td.SECONDARY_CAPTURE
  )
  lut = np.arange(256)
  for color, values in zip(("Red", "Green", "Blue"), (lut, 255 - lut, lut // 2), strict=True):
    setattr(ds, f"{color}PaletteColorLookupTableDescriptor", [256, 0, 8])
    setattr(ds, f"{color}PaletteColorLookupTableData", values.astype(np.uint8).tobytes())
  _, records = _records(td.encode(ds, "explicit"))
  expected = np.stack([lut[indices], 255 - lut[indices], lut[indices] // 2], -1)
  np.testing.assert_array_equal(records[0][1], expected)


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
      ref = apply_color_lut(frame, ds)
      bits = 8 if ref.dtype == np.uint8 else ds.RedPaletteColorLookupTableDescriptor[2]
      np.testing.assert_allclose(image.astype(int), np.rint(ref / (2.0**bits - 1) * 255), atol=0)
    else:
      ref = np.rint(frame.astype(np.float64) / (2.0**ds.BitsStored - 1) * 255)
      np.testing.assert_allclose(image.astype(int), ref, atol=0)
    assert image.shape[:2] == frame.shape[:2]


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
  "kind", ["not_dicom", "no_pixel_data", "corrupt", "empty_image", "unsupported_transfer_syntax"]
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
  assert [e["reason"] for e in result.errors] == [kind]
