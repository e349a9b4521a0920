"""Tests of the TFRecord input pipeline on records written here with the schema keys."""

import hashlib
import json
import os

import numpy as np
import pytest
import tensorflow as tf

from remedis_tf.data import (
  input_pipeline,
  make_pretrain_dataset,
  make_supervised_dataset,
  read_records,
  select_label_fraction,
  synthetic,
)
from tfrecords_tools import schema


def _write(path, examples):
  with tf.io.TFRecordWriter(str(path)) as writer:
    for ex in examples:
      writer.write(ex.SerializeToString())
  return str(path)


def _tiny_shards(folder, num_files, per_file, size=12, **kwargs):
  paths, n = [], 0
  rng = np.random.default_rng(0)
  for f in range(num_files):
    examples = []
    for _ in range(per_file):
      image = rng.integers(0, 65536, (size, size), dtype=np.uint16)
      examples.append(
        synthetic.make_example(
          image,
          source_id=f"img-{n}",
          label=n % 3,
          patient_id=f"p{n // 2}",
          site=f"site-{n % 2}",
          split="test" if n % 4 == 3 else "train",
          **kwargs,
        )
      )
      n += 1
    paths.append(_write(folder / f"data-{f:03d}.tfrecord", examples))
  return paths


def _ids(ds):
  return [schema.parse_example(r)[schema.IMAGE_SOURCE_ID].numpy().decode() for r in ds]


@pytest.mark.parametrize("num_files,per_file", [(7, 3), (1, 9)])
def test_two_workers_see_every_example_exactly_once(tmp_path, num_files, per_file):
  _tiny_shards(tmp_path, num_files, per_file)
  seen = []
  for worker in range(2):
    ctx = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=worker)
    ids = _ids(read_records(str(tmp_path / "*.tfrecord"), ctx, shuffle_files=True, seed=worker))
    assert ids  # both workers get work
    seen += ids
  assert sorted(seen) == sorted(f"img-{n}" for n in range(num_files * per_file))


def test_two_workers_supervised_eval_partition(tmp_path):
  _tiny_shards(tmp_path, 1, 10)
  labels = []
  for worker in range(2):
    ctx = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=worker)
    ds = make_supervised_dataset(
      str(tmp_path / "*.tfrecord"),
      batch_size=3,
      image_size=8,
      training=False,
      preset="cxr",
      input_context=ctx,
      with_metadata=True,
    )
    labels += [s.decode() for b in ds for s in b["source_id"].numpy()]
  assert sorted(labels) == sorted(f"img-{n}" for n in range(10))


@pytest.mark.parametrize("bit_depth", [8, 16])
def test_decodes_png_to_unit_float_and_three_channels(tmp_path, bit_depth):
  rng = np.random.default_rng(bit_depth)
  top = 65535 if bit_depth == 16 else 255
  image = rng.integers(0, top + 1, (8, 8), dtype=np.uint16 if bit_depth == 16 else np.uint8)
  path = _write(tmp_path / "a.tfrecord", [synthetic.make_example(image, source_id="a", label=1)])
  ds = make_supervised_dataset(path, batch_size=1, image_size=8, training=False, preset="cxr")
  images, labels = next(iter(ds))
  assert images.shape == (1, 8, 8, 3) and images.dtype == tf.float32
  assert labels.dtype == tf.int32 and labels.numpy().tolist() == [1]
  for c in range(3):
    np.testing.assert_allclose(images[0, ..., c].numpy(), image / top, atol=1e-6)


def test_rgb_png_decodes_for_rgb_preset(tmp_path):
  image = np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8)
  path = _write(tmp_path / "a.tfrecord", [synthetic.make_example(image, source_id="a", label=0)])
  ds = make_supervised_dataset(path, batch_size=1, image_size=8, training=False, preset="pathology")
  images, _ = next(iter(ds))
  np.testing.assert_allclose(images[0].numpy(), image / 255.0, atol=1e-6)


@pytest.mark.slow
def test_pretrain_views_are_seeded_by_seed_example_and_epoch(tmp_path):
  _tiny_shards(tmp_path, 2, 3, size=16)
  files = str(tmp_path / "*.tfrecord")
  make = lambda seed: make_pretrain_dataset(
    files, batch_size=6, image_size=8, preset="cxr", seed=seed, repeat=2, shuffle_buffer=16
  )

  def by_example(ds):
    out = {}
    for batch in ds:
      for i in range(6):
        out.setdefault(int(batch["epoch"][i]), set()).add(batch["view1"][i].numpy().tobytes())
    return out

  a, b, c = by_example(make(1)), by_example(make(1)), by_example(make(2))
  assert set(a) == {0, 1}
  assert a == b  # same seed, same views (order may differ)
  assert a[0].isdisjoint(c[0])  # another seed, other views
  assert a[0].isdisjoint(a[1])  # another epoch, other views
  batch = next(iter(make(1)))
  assert batch["view1"].shape == (6, 8, 8, 3) and batch["view2"].dtype == tf.float32
  assert not np.allclose(batch["view1"].numpy(), batch["view2"].numpy())


def test_shuffled_pipeline_works_after_global_seed_zero(tmp_path):
  # Regression: a tensor-valued shuffle seed failed once tf.random.set_seed(0)
  # had been called anywhere in the process.
  _tiny_shards(tmp_path, 2, 3, size=16)
  files = str(tmp_path / "*.tfrecord")
  tf.random.set_seed(0)
  try:
    ds = make_pretrain_dataset(
      files, batch_size=3, image_size=8, preset="cxr", seed=5, repeat=2, shuffle_buffer=16
    )
    epochs = sorted(int(e) for batch in ds for e in batch["epoch"].numpy())
  finally:
    tf.random.set_seed(None)
  assert epochs == [0] * 6 + [1] * 6


def test_each_epoch_holds_every_example_once_in_a_new_order(tmp_path):
  # A shuffle buffer larger than the dataset must not mix epochs (which would
  # put one image twice in a batch of a small dataset).
  _tiny_shards(tmp_path, 2, 5, size=8)
  ds = make_supervised_dataset(
    str(tmp_path / "*.tfrecord"),
    batch_size=10,
    image_size=8,
    training=True,
    preset="cxr",
    seed=3,
    label_mode="multi_class",
    repeat=3,
    shuffle_buffer=1000,
    with_metadata=True,
    drop_remainder=False,
  )
  epochs = [[s.decode() for s in batch["source_id"].numpy()] for batch in ds]
  assert len(epochs) == 3
  for order in epochs:
    assert sorted(order) == sorted(f"img-{i}" for i in range(10))
  assert len({tuple(order) for order in epochs}) > 1


def test_multi_label_and_multi_class_labels(tmp_path):
  rng = np.random.default_rng(0)
  vectors = [[1.0, 0.0, -1.0], [-1.0, -1.0, -1.0], [0.0, 1.0, 1.0]]
  examples = [
    synthetic.make_example(
      rng.integers(0, 255, (8, 8), dtype=np.uint8), source_id=str(i), label=i - 1, multi_label=v
    )
    for i, v in enumerate(vectors)
  ]
  path = _write(tmp_path / "a.tfrecord", examples)
  ds = make_supervised_dataset(
    path,
    batch_size=4,
    image_size=8,
    training=False,
    preset="cxr",
    label_mode="multi_label",
    num_labels=3,
  )
  _, labels = next(iter(ds))
  assert labels.dtype == tf.float32
  np.testing.assert_array_equal(labels.numpy(), [vectors[0], vectors[2]])  # unlabelled dropped
  ds = make_supervised_dataset(path, batch_size=4, image_size=8, training=False, preset="cxr")
  _, labels = next(iter(ds))
  assert labels.dtype == tf.int32 and labels.numpy().tolist() == [0, 1]  # -1 dropped


def test_multi_label_size_from_manifest(tmp_path):
  rng = np.random.default_rng(0)
  path = _write(
    tmp_path / "a.tfrecord",
    [
      synthetic.make_example(
        rng.integers(0, 255, (8, 8), dtype=np.uint8), source_id="x", multi_label=[1.0, 0.0]
      )
    ],
  )
  (tmp_path / "manifest.json").write_text(
    json.dumps({"label_names": ["a", "b"], "label_mode": "multilabel"})
  )
  ds = make_supervised_dataset(path, batch_size=1, image_size=8, training=False, preset="cxr")
  assert next(iter(ds))[1].numpy().tolist() == [[1.0, 0.0]]


def test_split_and_site_filters(tmp_path):
  _tiny_shards(tmp_path, 2, 6)
  ds = make_supervised_dataset(
    str(tmp_path / "*.tfrecord"),
    batch_size=20,
    image_size=8,
    training=False,
    preset="cxr",
    split="train",
    site="site-0",
    with_metadata=True,
  )
  ids = sorted(int(s.decode().split("-")[1]) for b in ds for s in b["source_id"].numpy())
  assert ids == [n for n in range(12) if n % 2 == 0 and n % 4 != 3]


def test_select_label_fraction_is_deterministic_nested_and_near_fraction():
  patients = [hashlib.sha256(f"p{i}".encode()).hexdigest() for i in range(2000)]
  half = select_label_fraction(patients, 0.5, seed=3)
  assert half == select_label_fraction(patients, 0.5, seed=3)
  tenth = select_label_fraction(patients, 0.1, seed=3)
  assert tenth <= half
  assert abs(len(half) / 2000 - 0.5) < 4 * np.sqrt(0.25 / 2000)
  assert abs(len(tenth) / 2000 - 0.1) < 4 * np.sqrt(0.09 / 2000)
  other = select_label_fraction(patients, 0.5, seed=4)
  assert other != half and abs(len(other & half) / 2000 - 0.25) < 0.05


def test_label_fraction_keeps_whole_patients_matching_selection(tmp_path):
  _tiny_shards(tmp_path, 2, 20, size=8)
  files = str(tmp_path / "*.tfrecord")
  ds = make_supervised_dataset(
    files,
    batch_size=64,
    image_size=8,
    training=False,
    preset="cxr",
    label_fraction=0.5,
    seed=11,
    with_metadata=True,
  )
  kept = [p.decode() for b in ds for p in b["patient_id_hash"].numpy()]
  all_patients = {hashlib.sha256(f"p{n // 2}".encode()).hexdigest() for n in range(40)}
  expected = select_label_fraction(all_patients, 0.5, seed=11)
  assert set(kept) == expected
  assert 0 < len(expected) < len(all_patients)
  # p{k} has images 2k, 2k+1; unlabelled ones (none here) would be dropped.
  assert len(kept) == 2 * len(expected)


def test_cache_serves_later_epochs_without_the_files(tmp_path):
  paths = _tiny_shards(tmp_path, 1, 4)
  ds = make_pretrain_dataset(
    paths, batch_size=4, image_size=8, preset="cxr", cache=True, repeat=3, shuffle_buffer=0
  )
  it = iter(ds)
  first = next(it)
  os.remove(paths[0])
  epochs = [int(next(it)["epoch"][0]) for _ in range(2)]
  assert int(first["epoch"][0]) == 0 and epochs == [1, 2]


def test_list_files_sorted_and_missing_raises(tmp_path):
  paths = _tiny_shards(tmp_path, 3, 1)
  assert input_pipeline.list_files([paths[2], str(tmp_path / "*.tfrecord")]) == sorted(paths)
  with pytest.raises(FileNotFoundError):
    input_pipeline.list_files(str(tmp_path / "nothing-*.tfrecord"))


@pytest.mark.parametrize("num_workers", [1, 2])
def test_skip_resumes_the_exact_stream_views_included(tmp_path, num_workers):
  # What a resumed trainer does: same seed, skip what was consumed. The rest
  # of the stream (across an epoch boundary) must equal the uninterrupted one.
  _tiny_shards(tmp_path, 3, 3, size=16)
  files = str(tmp_path / "*.tfrecord")

  def batches(worker, skip, n):
    ctx = tf.distribute.InputContext(num_workers, worker, num_workers)
    ds = make_pretrain_dataset(
      files,
      batch_size=2,
      image_size=8,
      preset="cxr",
      seed=4,
      input_context=ctx,
      shuffle_buffer=64,
      deterministic=True,
      skip_examples=skip,
    )
    return [
      np.concatenate([b["view1"].numpy().ravel(), b["view2"].numpy().ravel()]) for b in ds.take(n)
    ]

  for worker in range(num_workers):
    full = batches(worker, 0, 8)  # 16 examples: past the first epoch boundary.
    resumed = batches(worker, 2 * 3, 5)  # Interrupted after 3 steps.
    for a, b in zip(full[3:], resumed, strict=True):
      np.testing.assert_array_equal(a, b)
    # A fresh pipeline repeats itself exactly (the precondition of skipping).
    np.testing.assert_array_equal(np.stack(full), np.stack(batches(worker, 0, 8)))


def test_skip_examples_must_not_be_negative(tmp_path):
  _tiny_shards(tmp_path, 1, 3, size=8)
  with pytest.raises(ValueError, match="skip_examples"):
    make_pretrain_dataset(
      str(tmp_path / "*.tfrecord"), batch_size=1, image_size=8, skip_examples=-1
    )


def test_cached_label_subset_of_one_file_gives_the_same_stream(tmp_path):
  # Fine-tuning caches a small label subset of a single file in memory
  # (FinetuneTask.cache_subset); the batches must be those of the uncached pipeline,
  # epoch after epoch. (With several files, the uncached pipeline reshuffles the file
  # order every epoch and a cache would replay the first epoch's, so it is not cached.)
  paths = _tiny_shards(tmp_path, 1, 24, size=8)

  def stream(cache):
    ds = make_supervised_dataset(
      paths,
      batch_size=4,
      image_size=8,
      training=True,
      preset="cxr",
      label_fraction=0.3,
      seed=5,
      cache=cache,
      with_metadata=True,
    )
    batches = list(ds.take(12))
    return (
      np.concatenate([b["image"].numpy() for b in batches]),
      [s for b in batches for s in b["source_id"].numpy()],
    )

  uncached, cached = stream(False), stream(True)
  assert len(set(uncached[1])) < len(uncached[1])  # several epochs of a small subset
  np.testing.assert_array_equal(cached[0], uncached[0])
  assert cached[1] == uncached[1]
