"""Pooled embeddings of every record of a TFRecord dataset.

Any SavedModel in the PhysioNet calling convention works (ours or the
released ones): images go through `load.SavedModelEncoder` in inference mode
and the feature map is averaged over space, exactly as in
`load.load_for_finetuning`. Each record's hashed ids, labels, split and site
are kept next to its embedding, in record order (files sorted by name).

Preprocessing: each image is decoded to 3 channels (grayscale repeated),
float32 in [0, 1]. With `central_crop_fraction` f < 1 (remedis-embed
--central_crop_fraction) only the central box of f times each side is kept
(`remedis_tf.data.crops.central_box`), then the image (or box) is resized
whole to image_size x image_size (`crops.resize_whole`: bilinear, no
antialiasing, left as is when already that size). f = 1 (default) keeps the
whole image.

Outputs:
  * `.npz`: arrays 'embedding' (N, C) float32 and one array per record field
    (RECORD_FIELDS), plus 'model', 'image_size' and 'central_crop_fraction'.
  * `.tfrecord` (for large sets, written while streaming): one tf.Example per
    record with 'embedding' (C floats) and the same fields under their schema
    keys.
"""

from __future__ import annotations

import io
import json
import os
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import tensorflow as tf
from absl import logging

from hub_export import metadata as metadata_lib
from remedis_tf.data import crops
from remedis_tf.data.input_pipeline import list_files
from remedis_tf.errors import ConfigError, InputDataError
from remedis_tf.models import SavedModelEncoder
from remedis_tf.models.outputs import EMBEDDING
from tfrecords_tools import schema

DEFAULT_IMAGE_SIZE = 224
EMBEDDING_KEY = EMBEDDING

# npz array name -> schema key, for the per-record fields carried along.
RECORD_FIELDS = {
  "source_id": schema.IMAGE_SOURCE_ID,
  "frame_index": schema.IMAGE_FRAME_INDEX,
  "patient_id_hash": schema.PATIENT_ID_HASH,
  "study_id_hash": schema.STUDY_ID_HASH,
  "sop_instance_hash": schema.SOP_INSTANCE_HASH,
  "split": schema.SPLIT,
  "site": schema.SITE,
  "label": schema.LABEL,
  "multi_label": schema.MULTI_LABEL,
  "has_label": schema.HAS_LABEL,
}
_STRING_FIELDS = (
  "source_id",
  "patient_id_hash",
  "study_id_hash",
  "sop_instance_hash",
  "split",
  "site",
  "slide_id_hash",
  "case_id_hash",
)
# Fields of remedis-tile's patch records, carried into slide bags.
PATCH_FIELDS = {
  "slide_id_hash": schema.SLIDE_ID_HASH,
  "case_id_hash": schema.CASE_ID_HASH,
  "patch_x": schema.PATCH_X,
  "patch_y": schema.PATCH_Y,
  "patch_level": schema.PATCH_LEVEL,
  "patch_mpp": schema.PATCH_MPP,
  "tissue_fraction": schema.PATCH_TISSUE_FRACTION,
}
# Per-slide values of a bag: every patch of a slide must agree on them.
BAG_ATTRIBUTES = ("patient_id_hash", "case_id_hash", "split", "site", "label", "multi_label")
BAG_SUFFIXES = (".h5", ".hdf5")


def default_image_size(model_path: str) -> int:
  """Image side for a SavedModel: its metadata, else its release name, else 224.

  Args:
    model_path: SavedModel directory; `assets/remedis.json` is read when
      present, else a basename like "cxr-50x1-remedis-m" gives 448 (chest
      X-ray) or 224 (pathology).
  """
  meta_path = os.path.join(model_path, "assets", metadata_lib.METADATA_FILENAME)
  if tf.io.gfile.exists(meta_path):
    with tf.io.gfile.GFile(meta_path) as f:
      return int(json.load(f).get("pretrain_image_size", DEFAULT_IMAGE_SIZE))
  parts = metadata_lib.parse_release_name(os.path.basename(os.path.normpath(model_path)))
  if parts is not None:
    return metadata_lib.MODALITY_IMAGE_SIZE[parts["modality_key"]]
  return DEFAULT_IMAGE_SIZE


check_central_crop_fraction = crops.check_fraction
central_crop = crops.central_box


def _num_multi_labels(files: list[str]) -> int:
  """K of `image/class/multi_label`, read from the first record."""
  for serialized in tf.data.TFRecordDataset(files[:1]).take(1):
    return int(schema.parse_example(serialized)[schema.MULTI_LABEL].shape[0])
  return 0


def make_dataset(
  files: list[str],
  image_size: int,
  batch_size: int,
  central_crop_fraction: float = 1.0,
  patch_fields: bool = False,
) -> tf.data.Dataset:
  """Batches of {'image': (B, S, S, 3) float32 in [0, 1], field: (B, ...)}.

  The fields are RECORD_FIELDS, plus PATCH_FIELDS when `patch_fields`.

  Images are decoded to 3 channels (grayscale repeated), cropped to their
  central `central_crop_fraction` of each side (`central_crop`; 1: no crop)
  and resized whole (bilinear) to S x S unless already that size. Order is
  the order of `files` and of records within them.

  Raises:
    ValueError: `central_crop_fraction` is not in (0, 1].
  """
  central_crop_fraction = check_central_crop_fraction(central_crop_fraction)
  k = _num_multi_labels(files)

  def prepare(serialized: tf.Tensor) -> dict[str, tf.Tensor]:
    ex = schema.parse_example(serialized, num_multi_labels=k)
    image = schema.decode_image(ex[schema.IMAGE_ENCODED], channels=3)
    image = crops.resize_whole(crops.central_box(image, central_crop_fraction), image_size)
    fields = {**RECORD_FIELDS, **(PATCH_FIELDS if patch_fields else {})}
    out = {name: ex[key] for name, key in fields.items()}
    out["image"] = image
    return out

  ds = tf.data.TFRecordDataset(files)
  ds = ds.map(prepare, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def make_embed_fn(model_path: str) -> Callable[[tf.Tensor], tf.Tensor]:
  """Returns images (B, H, W, 3) -> pooled embedding (B, C), as a tf.function."""
  encoder = SavedModelEncoder(model_path, trainable=False)

  @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32)])
  def embed(images: tf.Tensor) -> tf.Tensor:
    return tf.reduce_mean(encoder(images, training=False), axis=[1, 2])

  return embed


def iterate_embeddings(
  model_path: str,
  files: list[str],
  image_size: int,
  batch_size: int = 32,
  log_every: int = 10,
  central_crop_fraction: float = 1.0,
  patch_fields: bool = False,
) -> Iterator[dict[str, np.ndarray]]:
  """Yields batches {'embedding': (B, C), field: (B, ...)} as NumPy arrays.

  Images are prepared by `make_dataset`. Logs progress (records, images/s)
  every `log_every` batches.
  """
  embed = make_embed_fn(model_path)
  dataset = make_dataset(files, image_size, batch_size, central_crop_fraction, patch_fields)
  count, start = 0, time.perf_counter()
  for step, batch in enumerate(dataset, start=1):
    images = batch.pop("image")
    out = {name: value.numpy() for name, value in batch.items()}
    out[EMBEDDING_KEY] = embed(images).numpy()
    count += images.shape[0]
    if step % log_every == 0:
      rate = count / max(time.perf_counter() - start, 1e-9)
      logging.info("Embedded %d records (%.1f images/s).", count, rate)
    yield out
  logging.info("Embedded %d records in %.1f s.", count, time.perf_counter() - start)


def _decode_strings(values: np.ndarray) -> np.ndarray:
  return np.array([v.decode("utf-8") for v in values], dtype=str)


def write_npz(batches: Iterator[dict[str, np.ndarray]], output: str, **extra: Any) -> int:
  """Concatenates the batches into one `.npz`; returns the number of records."""
  parts: dict[str, list[np.ndarray]] = {}
  for batch in batches:
    for name, value in batch.items():
      parts.setdefault(name, []).append(value)
  if not parts:
    raise ValueError("No records to embed.")
  arrays = {name: np.concatenate(values) for name, values in parts.items()}
  for name in _STRING_FIELDS:
    if name in arrays:
      arrays[name] = _decode_strings(arrays[name])
  for name, value in extra.items():
    arrays[name] = np.asarray(value)
  buffer = io.BytesIO()  # np.savez needs a seekable file; GFile may not be.
  np.savez(buffer, **arrays)
  with tf.io.gfile.GFile(output, "wb") as f:
    f.write(buffer.getvalue())
  return int(arrays[EMBEDDING_KEY].shape[0])


def _example(row: dict[str, np.ndarray]) -> tf.train.Example:
  def floats(v: np.ndarray) -> tf.train.Feature:
    return tf.train.Feature(float_list=tf.train.FloatList(value=np.ravel(v).tolist()))

  def ints(v: np.ndarray) -> tf.train.Feature:
    return tf.train.Feature(int64_list=tf.train.Int64List(value=np.ravel(v).tolist()))

  def strings(v: bytes) -> tf.train.Feature:
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=[v]))

  feature = {EMBEDDING_KEY: floats(row[EMBEDDING_KEY])}
  for name, key in RECORD_FIELDS.items():
    value = row[name]
    if name in _STRING_FIELDS:
      feature[key] = strings(value)
    elif name == "multi_label":
      feature[key] = floats(value)
    else:
      feature[key] = ints(value)
  return tf.train.Example(features=tf.train.Features(feature=feature))


def write_tfrecord(batches: Iterator[dict[str, np.ndarray]], output: str) -> int:
  """Streams the batches to a TFRecord of tf.Examples; returns the record count."""
  count = 0
  with tf.io.TFRecordWriter(output) as writer:
    for batch in batches:
      for i in range(batch[EMBEDDING_KEY].shape[0]):
        writer.write(_example({k: v[i] for k, v in batch.items()}).SerializeToString())
        count += 1
  return count


def write_bags(batches: Iterator[dict[str, np.ndarray]], output: str, **extra: Any) -> int:
  """Streams patch embeddings into one HDF5 file with a bag (group) per slide.

  Layout, for multiple-instance learning (as CLAM's per-slide h5 files):
    /<slide_id_hash>/embedding  (n, C) float32, in record order
    /<slide_id_hash>/coords     (n, 2) int64: x, y of the patch at level 0
    /<slide_id_hash>/level, mpp, tissue_fraction   (n,) per patch
    group attributes: patient_id_hash, case_id_hash, split, site, label,
    multi_label (equal for every patch of the slide); file attributes:
    `extra` (model, image size, crop) and num_bags.
  Rows are appended as batches arrive, so memory stays one batch whatever the
  number of patches. Written under a temporary name, then renamed.

  Returns:
    The number of bags (slides).

  Raises:
    InputDataError: a record without a slide id (not a remedis-tile patch), or
      patches of one slide that disagree on a per-slide value.
  """
  import h5py  # Only slide bags need it.

  tmp = f"{output}.tmp-{os.getpid()}"
  with h5py.File(tmp, "w") as f:
    for batch in batches:
      slides = _decode_strings(batch["slide_id_hash"])
      if np.any(slides == ""):
        raise InputDataError(
          "Slide bags need patch records from remedis-tile (image/slide id); "
          f"found a record without one (source_id {_decode_strings(batch['source_id'][:1])[0]})."
        )
      for slide in dict.fromkeys(slides.tolist()):
        rows = slides == slide
        values = {
          "embedding": batch[EMBEDDING_KEY][rows].astype(np.float32),
          "coords": np.stack([batch["patch_x"][rows], batch["patch_y"][rows]], 1),
          "level": batch["patch_level"][rows],
          "mpp": batch["patch_mpp"][rows].astype(np.float32),
          "tissue_fraction": batch["tissue_fraction"][rows].astype(np.float32),
        }
        attributes = {}
        for name in BAG_ATTRIBUTES:
          column = batch[name][rows]
          if name in _STRING_FIELDS:
            column = _decode_strings(column)
          if np.any(column != column[:1]):
            raise InputDataError(f"Patches of slide {slide} disagree on {name}.")
          attributes[name] = str(column[0]) if name in _STRING_FIELDS else column[0]
        _append_bag(f, slide, values, attributes)
    f.attrs["num_bags"] = len(f)
    for name, value in extra.items():
      f.attrs[name] = value
    count = len(f)
  os.replace(tmp, output)
  return count


def _append_bag(f: Any, slide: str, values: dict[str, np.ndarray], attributes: dict) -> None:
  """Appends rows to the datasets of group `slide`, creating it at its first rows."""
  if slide not in f:
    group = f.create_group(slide)
    for name, value in values.items():
      group.create_dataset(name, data=value, maxshape=(None, *value.shape[1:]), chunks=True)
    for name, value in attributes.items():
      group.attrs[name] = value
    return
  group = f[slide]
  for name, value in values.items():
    dataset = group[name]
    start = dataset.shape[0]
    dataset.resize(start + value.shape[0], axis=0)
    dataset[start:] = value


def parse_embedding_example(
  serialized: tf.Tensor, dim: int, num_multi_labels: int
) -> dict[str, tf.Tensor]:
  """Parses one record written by `write_tfrecord`.

  Returns:
    {'embedding': (dim,), and each RECORD_FIELDS name: its value}.
  """
  spec = {EMBEDDING_KEY: tf.io.FixedLenFeature([dim], tf.float32)}
  for name, key in RECORD_FIELDS.items():
    if name in _STRING_FIELDS:
      spec[key] = tf.io.FixedLenFeature([], tf.string)
    elif name == "multi_label":
      spec[key] = tf.io.FixedLenFeature([num_multi_labels], tf.float32)
    else:
      spec[key] = tf.io.FixedLenFeature([], tf.int64)
  features = tf.io.parse_single_example(serialized, spec)
  parsed = {EMBEDDING_KEY: features[EMBEDDING_KEY]}
  parsed.update({name: features[key] for name, key in RECORD_FIELDS.items()})
  return parsed


def embed_dataset(
  model_path: str,
  data: str,
  output: str,
  image_size: int | None = None,
  batch_size: int = 32,
  log_every: int = 10,
  central_crop_fraction: float = 1.0,
) -> int:
  """Embeds every record matching `data` and writes them to `output`.

  Args:
    model_path: SavedModel directory in the PhysioNet calling convention.
    data: glob of TFRecord files (tfrecords_tools.schema records).
    output: ".npz"; ".tfrecord"/".tfrecords" to stream a TFRecord; ".h5" /
      ".hdf5" for one bag of patch embeddings per slide (`write_bags`;
      records from remedis-tile).
    image_size: side S images are resized to; None uses `default_image_size`.
    batch_size: images per forward pass.
    log_every: progress log period in batches.
    central_crop_fraction: keep the central box of this fraction of each
      side before resizing, in (0, 1]; 1 keeps the whole image.

  Returns:
    Number of records written (of bags, for an HDF5 output).

  Raises:
    InputNotFoundError: no files match `data`.
    ConfigError: an unknown output extension, or `central_crop_fraction`
      not in (0, 1].
  """
  central_crop_fraction = check_central_crop_fraction(central_crop_fraction)
  files = list_files(data)
  if image_size is None:
    image_size = default_image_size(model_path)
  logging.info(
    "Embedding %d file(s) with %s at %d px (central crop %g).",
    len(files),
    model_path,
    image_size,
    central_crop_fraction,
  )
  bags = output.endswith(BAG_SUFFIXES)
  batches = iterate_embeddings(
    model_path, files, image_size, batch_size, log_every, central_crop_fraction, patch_fields=bags
  )
  if bags:
    return write_bags(
      batches,
      output,
      model=model_path,
      image_size=image_size,
      central_crop_fraction=central_crop_fraction,
    )
  if output.endswith(".npz"):
    return write_npz(
      batches,
      output,
      model=model_path,
      image_size=image_size,
      central_crop_fraction=central_crop_fraction,
    )
  if output.endswith((".tfrecord", ".tfrecords")):
    return write_tfrecord(batches, output)
  raise ConfigError(f"--output must end with .npz, .tfrecord(s) or .h5/.hdf5: {output!r}")
