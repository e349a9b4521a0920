"""Pixel policy against pydicom's monochrome LUT functions, NumPy float64 formulas and
known palettes (pydicom 3.0.2's apply_color_lut misreads big endian palettes, so it is
no reference for colour)."""

import convert_testdata as td
import numpy as np
import pytest
from pydicom.dataset import Dataset
from pydicom.pixels import apply_modality_lut

from tfrecords_tools import pixel_policy as pp

CASES = [
  # (dtype, bits, lo, hi, attrs)
  (np.uint16, 12, 0, 4095, dict(WindowCenter=2048, WindowWidth=4096)),
  (np.uint16, 16, 0, 65535, dict(WindowCenter=30000, WindowWidth=20000)),
  (np.uint8, 8, 0, 255, dict(WindowCenter=128, WindowWidth=200)),
  (
    np.int16,
    16,
    -2000,
    3000,
    dict(RescaleSlope=1, RescaleIntercept=-1024, WindowCenter=40, WindowWidth=400),
  ),
  (
    np.int16,
    12,
    -2048,
    2047,
    dict(RescaleSlope=2.5, RescaleIntercept=100, WindowCenter=[500, 1000], WindowWidth=[3000, 800]),
  ),
  (
    np.uint16,
    12,
    0,
    4095,
    dict(WindowCenter=2000, WindowWidth=1500, VOILUTFunction="LINEAR_EXACT"),
  ),
  (np.uint16, 12, 0, 4095, dict(WindowCenter=2000, WindowWidth=1500, VOILUTFunction="SIGMOID")),
  (
    np.uint16,
    10,
    0,
    1023,
    dict(RescaleSlope=0.5, RescaleIntercept=-3, WindowCenter=250, WindowWidth=1),
  ),
]


@pytest.mark.parametrize("photometric", ["MONOCHROME1", "MONOCHROME2"])
@pytest.mark.parametrize("case", range(len(CASES)))
def test_window_matches_pydicom(case, photometric):
  dtype, bits, lo, hi, attrs = CASES[case]
  stored = td.ramp(40, 30, lo, hi, seed=case, dtype=dtype)
  ds = td.make_dataset(stored, photometric=photometric, bits_stored=bits, **attrs)
  for index in (0, 1) if isinstance(attrs["WindowCenter"], list) else (0,):
    got, applied = pp.monochrome_to_uint16(stored, ds, pp.PixelPolicy(window_index=index))
    np.testing.assert_allclose(got.astype(np.int64), td.reference_uint16(ds, stored, index), atol=1)
    assert applied.method == "window"
    assert applied.inverted == (photometric == "MONOCHROME1")
    center = attrs["WindowCenter"]
    assert applied.center == pytest.approx(center[index] if isinstance(center, list) else center)
    assert got.dtype == np.uint16


def test_multivalued_window_picks_the_requested_item():
  stored = td.ramp(20, 20, 0, 4095)
  ds = td.make_dataset(stored, WindowCenter=[1000, 3000], WindowWidth=[500, 2000])
  a, _ = pp.monochrome_to_uint16(stored, ds, pp.PixelPolicy(window_index=0))
  b, applied = pp.monochrome_to_uint16(stored, ds, pp.PixelPolicy(window_index=1))
  c, _ = pp.monochrome_to_uint16(stored, ds, pp.PixelPolicy(window_index=7))  # clamped
  assert not np.array_equal(a, b)
  np.testing.assert_array_equal(b, c)
  assert (applied.center, applied.width) == (3000, 2000)


def _lut_item(first, bits, data):
  item = Dataset()
  item.LUTDescriptor = [len(data), first, bits]
  item.LUTData = list(int(v) for v in data)
  return item


@pytest.mark.parametrize("photometric", ["MONOCHROME1", "MONOCHROME2"])
def test_voi_lut_sequence_matches_pydicom(photometric):
  stored = td.ramp(30, 30, 100, 1100, seed=3)
  lut = np.rint(4095 * np.sqrt(np.linspace(0, 1, 800))).astype(int)
  ds = td.make_dataset(stored, photometric=photometric, WindowCenter=600, WindowWidth=100)
  ds.VOILUTSequence = [_lut_item(200, 12, lut)]
  got, applied = pp.monochrome_to_uint16(stored, ds, pp.PixelPolicy())
  assert applied.method == "voi_lut"
  np.testing.assert_allclose(got.astype(np.int64), td.reference_uint16(ds, stored), atol=1)
  # With prefer_voi_lut=False the window wins.
  got_w, applied_w = pp.monochrome_to_uint16(stored, ds, pp.PixelPolicy(prefer_voi_lut=False))
  assert applied_w.method == "window"
  np.testing.assert_allclose(
    got_w.astype(np.int64), td.reference_uint16(ds, stored, prefer_lut=False), atol=1
  )


def test_modality_lut_sequence_matches_pydicom():
  stored = td.ramp(30, 30, 0, 511, seed=4)
  ds = td.make_dataset(stored, bits_stored=9)
  mlut = np.rint(np.linspace(0, 1, 512) ** 2 * 65535).astype(int)
  ds.ModalityLUTSequence = [_lut_item(0, 16, mlut)]
  ds.WindowCenter, ds.WindowWidth = 20000, 30000
  np.testing.assert_allclose(pp.modality_lut(stored, ds), apply_modality_lut(stored, ds))
  got, _ = pp.monochrome_to_uint16(stored, ds, pp.PixelPolicy())
  np.testing.assert_allclose(got.astype(np.int64), td.reference_uint16(ds, stored), atol=1)


@pytest.mark.parametrize("photometric", ["MONOCHROME1", "MONOCHROME2"])
def test_minmax_fallback_formula(photometric):
  stored = td.ramp(25, 35, -300, 900, seed=5, dtype=np.int16)
  ds = td.make_dataset(stored, photometric=photometric, RescaleSlope=2, RescaleIntercept=7)
  got, applied = pp.monochrome_to_uint16(stored, ds, pp.PixelPolicy())
  values = stored.astype(np.float64) * 2 + 7
  expected = (values - values.min()) / (values.max() - values.min())
  if photometric == "MONOCHROME1":
    expected = 1 - expected
  np.testing.assert_allclose(got.astype(np.int64), np.rint(expected * 65535), atol=1)
  assert applied.method == "minmax" and got.min() == 0 and got.max() == 65535


def test_percentile_fallback_formula():
  stored = td.ramp(50, 50, 0, 4095, seed=6)
  ds = td.make_dataset(stored, WindowCenter=100, WindowWidth=10)
  policy = pp.PixelPolicy(
    use_dicom_voi=False, voi_fallback="percentile", percentile_low=2, percentile_high=98
  )
  got, applied = pp.monochrome_to_uint16(stored, ds, policy)
  lo, hi = np.percentile(stored.astype(np.float64), [2, 98])
  expected = np.clip((stored - lo) / (hi - lo), 0, 1)
  np.testing.assert_allclose(got.astype(np.int64), np.rint(expected * 65535), atol=1)
  assert applied.method == "percentile"
  assert applied.center == pytest.approx((lo + hi) / 2)


def test_window_outside_the_data_falls_back_instead_of_blank():
  stored = td.ramp(20, 20, 0, 1000)
  ds = td.make_dataset(stored, WindowCenter=60000, WindowWidth=10)
  got, applied = pp.monochrome_to_uint16(stored, ds, pp.PixelPolicy())
  assert applied.method == "minmax" and got.max() > got.min()


def test_invalid_window_width_falls_back():
  stored = td.ramp(20, 20, 0, 1000)
  ds = td.make_dataset(stored, WindowCenter=500, WindowWidth=0)
  _, applied = pp.monochrome_to_uint16(stored, ds, pp.PixelPolicy())
  assert applied.method == "minmax"


def test_constant_image_is_rejected():
  stored = np.full((8, 8), 77, np.uint16)
  ds = td.make_dataset(stored, WindowCenter=50, WindowWidth=100)
  with pytest.raises(pp.EmptyImageError):
    pp.monochrome_to_uint16(stored, ds, pp.PixelPolicy())


def test_functional_group_window_is_used():
  stored = td.ramp(20, 20, 0, 4095)
  ds = td.make_dataset(stored)
  voi = Dataset()
  voi.WindowCenter, voi.WindowWidth = 1000, 500
  group = Dataset()
  group.FrameVOILUTSequence = [voi]
  ds.SharedFunctionalGroupsSequence = [group]
  _, applied = pp.monochrome_to_uint16(stored, ds, pp.PixelPolicy())
  assert (applied.method, applied.center, applied.width) == ("window", 1000, 500)


@pytest.mark.parametrize("order", ["<", ">"])
@pytest.mark.parametrize("bits", [8, 16])
def test_palette_known_lut_in_both_byte_orders(bits, order):
  indices = td.ramp(16, 16, 0, 255, dtype=np.uint8)
  ramp = np.arange(256)
  top = 2**bits - 1
  luts = [ramp * top // 255, (255 - ramp) * top // 255, (ramp // 2) * top // 255]
  ds = td.palette_dataset(indices, luts, bits=bits, order=order)
  if order == ">":  # In memory, the file meta's transfer syntax gives the order.
    ds.file_meta.TransferSyntaxUID = td.BIG_ENDIAN_UID
  assert pp.byte_order(ds) == order
  got = pp.palette_to_uint8(indices, ds)
  # Each table maps i to a multiple of (2**bits - 1) / 255: exact in 8 bits.
  expected = np.stack([ramp[indices], 255 - ramp[indices], ramp[indices] // 2], -1)
  np.testing.assert_array_equal(got, expected)


def test_palette_byte_order_follows_the_read_encoding():
  indices = td.ramp(8, 8, 0, 255, dtype=np.uint8)
  luts = [np.arange(256) * 257] * 3
  ds = td.palette_dataset(indices, luts, bits=16, order=">")
  ds.file_meta.TransferSyntaxUID = td.BIG_ENDIAN_UID
  ds.set_original_encoding(False, False)  # what pydicom records when reading
  assert pp.byte_order(ds) == ">"
  ds.set_original_encoding(False, True)
  assert pp.byte_order(ds) == "<"  # the read encoding wins over the file meta


def test_segmented_lut_expansion_known_answer():
  # Discrete [10, 20]; linear to 0 in 4 steps: 15, 10, 5, 0; linear to 3 in 2
  # steps: 1.5 -> 2 (half up), 3. A trailing odd entry is padding.
  data = np.array([0, 2, 10, 20, 1, 4, 0, 1, 2, 3, 0])
  np.testing.assert_array_equal(pp.expand_segmented_lut(data), [10, 20, 15, 10, 5, 0, 2, 3])
  with pytest.raises(pp.UnsupportedImageError):
    pp.expand_segmented_lut(np.array([0, 1, 5, 2, 1, 0, 0]))  # indirect
  for bad in ([1, 2, 5], [0, 5, 1, 2], [7, 1, 1]):  # linear first, overrun, unknown opcode
    with pytest.raises(pp.InvalidAttributeError):
      pp.expand_segmented_lut(np.array(bad))


def test_palette_with_8_bit_descriptor_over_16_bit_values_is_scaled_as_16_bit():
  indices = td.ramp(8, 8, 0, 255, dtype=np.uint8)
  lut = np.arange(256) * 257  # 16-bit values under an 8-bit descriptor
  ds = td.palette_dataset(indices, [lut] * 3, bits=8, words_for_8_bit=True)
  got = pp.palette_to_uint8(indices, ds)
  np.testing.assert_array_equal(got, np.repeat(indices[..., None], 3, -1))


def test_missing_palette_is_invalid():
  indices = td.ramp(8, 8, 0, 255, dtype=np.uint8)
  ds = td.palette_dataset(indices, [np.arange(256)] * 3, bits=8)
  del ds.BluePaletteColorLookupTableData
  with pytest.raises(pp.InvalidAttributeError, match="Blue"):
    pp.palette_to_uint8(indices, ds)


def test_color_scaling_to_8_bit():
  rgb = td.ramp(10, 12, 0, 4095, seed=1)[..., None].repeat(3, -1)
  ds = td.make_dataset(rgb, photometric="RGB", bits_stored=12)
  np.testing.assert_array_equal(
    pp.color_to_uint8(rgb, ds), np.rint(rgb / 4095.0 * 255).astype(np.uint8)
  )


def test_resize_keeps_aspect_and_never_enlarges():
  img = td.ramp(100, 40, 0, 65535)
  small = pp.resize_long_side(img, 50)
  assert small.shape == (50, 20) and small.dtype == np.uint16
  # A smooth ramp stays a ramp (antialiased mean of a linear function).
  assert abs(float(small.mean()) - float(img.mean())) < 0.02 * 65535
  assert pp.resize_long_side(img, 500) is img
  rgb = np.zeros((30, 60, 3), np.uint8)
  assert pp.resize_long_side(rgb, 20).shape == (10, 20, 3)


def test_policy_validation():
  with pytest.raises(ValueError):
    pp.PixelPolicy(voi_fallback="magic")
  with pytest.raises(ValueError):
    pp.PixelPolicy(percentile_low=50, percentile_high=10)


def test_window_formulas_match_the_standard():
  x = np.linspace(-100, 300, 401)
  # LINEAR: c=100, w=101 -> 0 at x <= 49.5, 1 at x > 149.5.
  y = pp.window(x, 100, 101, "LINEAR")
  assert y[x <= 49.5].max() == 0 and y[x > 149.5].min() == 1
  np.testing.assert_allclose(pp.window(np.array([100.0]), 100, 101, "LINEAR"), [0.505])
  np.testing.assert_allclose(pp.window(np.array([100.0]), 100, 50, "LINEAR_EXACT"), [0.5])
  np.testing.assert_allclose(
    pp.window(np.array([100.0 + 25]), 100, 50, "SIGMOID"), [1 / (1 + np.exp(-2.0))]
  )
