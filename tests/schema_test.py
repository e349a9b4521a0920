"""Tests for tfrecords_tools.schema: round trip of a record through parse/decode."""

import numpy as np
import tensorflow as tf

from tfrecords_tools import schema


def _bytes(v: bytes) -> tf.train.Feature:
  return tf.train.Feature(bytes_list=tf.train.BytesList(value=[v]))


def _int(v: int) -> tf.train.Feature:
  return tf.train.Feature(int64_list=tf.train.Int64List(value=[v]))


def _png16(pixels: np.ndarray) -> bytes:
  return tf.io.encode_png(pixels[..., None].astype(np.uint16)).numpy()


def test_decode_16bit_png_is_exact_to_float64():
  rng = np.random.default_rng(0)
  pixels = rng.integers(0, 65536, size=(7, 5), dtype=np.uint16)
  decoded = schema.decode_image(tf.constant(_png16(pixels))).numpy()
  assert decoded.shape == (7, 5, 1)
  assert decoded.dtype == np.float32
  np.testing.assert_allclose(decoded[..., 0], pixels.astype(np.float64) / 65535.0, atol=1e-7)


def test_decode_8bit_rgb_png_scales_by_255():
  rng = np.random.default_rng(1)
  pixels = rng.integers(0, 256, size=(4, 6, 3), dtype=np.uint8)
  decoded = schema.decode_image(tf.io.encode_png(pixels)).numpy()
  np.testing.assert_allclose(decoded, pixels.astype(np.float64) / 255.0, atol=1e-7)


def test_parse_example_fills_defaults_for_unlabeled_record():
  pixels = np.arange(12, dtype=np.uint16).reshape(3, 4) * 1000
  example = tf.train.Example(
    features=tf.train.Features(
      feature={
        schema.IMAGE_ENCODED: _bytes(_png16(pixels)),
        schema.IMAGE_HEIGHT: _int(3),
        schema.IMAGE_WIDTH: _int(4),
        schema.PATIENT_ID_HASH: _bytes(b"ab12"),
      }
    )
  )
  parsed = schema.parse_example(tf.constant(example.SerializeToString()), num_multi_labels=2)
  assert int(parsed[schema.LABEL]) == -1
  assert int(parsed[schema.HAS_LABEL]) == 0
  np.testing.assert_array_equal(parsed[schema.MULTI_LABEL].numpy(), [-1.0, -1.0])
  assert parsed[schema.PATIENT_ID_HASH].numpy() == b"ab12"
  assert np.isnan(parsed[schema.WINDOW_CENTER].numpy())
  image = schema.decode_image(parsed[schema.IMAGE_ENCODED]).numpy()[..., 0]
  np.testing.assert_allclose(image * 65535.0, pixels, atol=1e-3)


def test_parse_example_variable_length_multi_label():
  example = tf.train.Example(
    features=tf.train.Features(
      feature={
        schema.IMAGE_ENCODED: _bytes(b""),
        schema.MULTI_LABEL: tf.train.Feature(float_list=tf.train.FloatList(value=[1.0, 0.0, 1.0])),
      }
    )
  )
  parsed = schema.parse_example(tf.constant(example.SerializeToString()))
  np.testing.assert_array_equal(parsed[schema.MULTI_LABEL].numpy(), [1.0, 0.0, 1.0])


def test_label_mode_parses_converter_and_reader_spellings():
  import pytest

  assert schema.LabelMode.parse("multilabel") is schema.LabelMode.MULTI_LABEL
  assert schema.LabelMode.parse("multi_label") is schema.LabelMode.MULTI_LABEL
  assert schema.LabelMode.parse("MultiClass") is schema.LabelMode.MULTI_CLASS
  assert schema.LabelMode.MULTI_CLASS == "multiclass"  # the manifest's own spelling
  with pytest.raises(ValueError, match="label_mode"):
    schema.LabelMode.parse("regression")
