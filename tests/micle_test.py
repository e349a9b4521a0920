"""Tests of MICLe positive pairs (remedis_tf.data.micle and make_pretrain_dataset).

The fixture's images are constant, each with its own grey level, so a view
(crop, flip and resize of a constant image stay constant) tells which image
it came from without trusting anything the pipeline reports. Groups are
spread over several shards; their sizes are known: patients of 1, 2, 3 and 5
images, two records without ids, and studies that split the patients
differently.
"""

import hashlib

import numpy as np
import pytest
import tensorflow as tf

from remedis_tf.data import (
  AugmentConfig,
  augment,
  make_pretrain_dataset,
  micle,
  seeds,
  synthetic,
)
from remedis_tf.errors import ConfigError, InputDataError
from tfrecords_tools import schema

# (patient, study) of each image; image n has source id f"img-{n}".
_IMAGES = [
  ("solo", "s-solo"),
  ("pair", "s-pair"),
  ("pair", "s-pair"),
  ("trio", "s-trio-0"),
  ("trio", "s-trio-1"),
  ("trio", "s-trio-2"),
  ("five", "s-five-a"),
  ("five", "s-five-a"),
  ("five", "s-five-a"),
  ("five", "s-five-b"),
  ("five", "s-five-b"),
  ("", ""),  # no ids: its own group
  ("", ""),
]
_N = len(_IMAGES)
_STEP = 4096  # grey level step between images (16-bit)
# Crops, flips and a bicubic resize keep a constant image constant (to float32
# rounding, ~1e-7); no colour, blur or other intensity change.
_IDENTITY_COLOURS = AugmentConfig(
  name="ids", channels=1, color_prob=0.0, grayscale_prob=0.0, blur_prob=0.0, hflip_prob=0.5
)

# SimCLR's random crop, flip, colour jitter and blur on one channel: cheaper to
# trace than "cxr", and views still differ with every seed.
_RANDOM_VIEWS = AugmentConfig(name="random", channels=1)


def _sha(text):
  return hashlib.sha256(text.encode()).hexdigest() if text else ""


def _example(n, image, patient, study, split="train", source_id=None):
  ex = synthetic.make_example(
    image,
    source_id=f"img-{n}" if source_id is None else source_id,
    patient_id=patient,
    split=split,
  )
  ex.features.feature[schema.STUDY_ID_HASH].bytes_list.value.append(_sha(study).encode())
  return ex


def _write(path, examples):
  with tf.io.TFRecordWriter(str(path)) as writer:
    for ex in examples:
      writer.write(ex.SerializeToString())


def _write_fixture(folder, num_files=3, splits=None, noise=False):
  """Image n goes to shard n % num_files; returns the glob."""
  rng = np.random.default_rng(0)
  shards = [[] for _ in range(num_files)]
  for n, (patient, study) in enumerate(_IMAGES):
    if noise:
      image = rng.integers(0, 65536, (16, 16), dtype=np.uint16)
    else:
      image = np.full((8, 8), (n + 1) * _STEP, np.uint16)
    split = splits[n] if splits else "train"
    shards[n % num_files].append(_example(n, image, patient, study, split))
  for f, examples in enumerate(shards):
    _write(folder / f"data-{f:03d}.tfrecord", examples)
  return str(folder / "*.tfrecord")


def _group_of(n, group):
  patient, study = _IMAGES[n]
  gid = patient if group == "patient" else study
  return gid or f"own-{n}"


def _members(group):
  out = {}
  for n in range(_N):
    out.setdefault(_group_of(n, group), set()).add(n)
  return out


def _image_id(view):
  """Which fixture image a view shows (asserts the view is constant)."""
  view = np.asarray(view)
  assert view.max() - view.min() < 1e-4  # constant up to float32 resize rounding
  level = float(view.mean()) * 65535.0 / _STEP
  assert abs(level - round(level)) < 1e-3
  return int(round(level)) - 1


def _pairs(files, group="patient", epochs=2, seed=3, **kwargs):
  """[(epoch, anchor image, view2 image, partner_key, fallback)] from the pipeline."""
  ds = make_pretrain_dataset(
    files,
    batch_size=4,
    image_size=4,
    preset=_IDENTITY_COLOURS,
    seed=seed,
    repeat=epochs,
    drop_remainder=False,
    shuffle_buffer=64,
    positive_pairs="micle",
    micle_group=group,
    **kwargs,
  )
  out = []
  for b in ds:
    for i in range(len(b["epoch"])):
      out.append(
        (
          int(b["epoch"][i]),
          _image_id(b["view1"][i]),
          _image_id(b["view2"][i]),
          int(b["partner_key"][i]),
          bool(b["fallback"][i]),
        )
      )
  return out


def _key(n):
  # Independent of the pipeline: the documented key of a record with a source
  # id is the 62-bit fast hash of "<source_id>#<frame index>".
  return int(tf.strings.to_hash_bucket_fast(f"img-{n}#0", 2**62))


@pytest.mark.parametrize("group", ["patient", "study"])
def test_pairs_share_the_group_and_differ_when_the_group_allows(tmp_path, group):
  files = _write_fixture(tmp_path)
  members = _members(group)
  pairs = _pairs(files, group=group, epochs=2)
  for epoch in (0, 1):
    anchors = [a for e, a, *_ in pairs if e == epoch]
    assert sorted(anchors) == list(range(_N))  # every record is the anchor once per epoch
  for _, anchor, other, partner_key, fallback in pairs:
    same = members[_group_of(anchor, group)]
    assert other in same
    assert fallback == (len(same) == 1)
    assert (other != anchor) == (len(same) > 1)
    assert partner_key == _key(other)
  if group == "study":
    # Patient "five" has two studies: a study pair never crosses them.
    assert all(_IMAGES[a][1] == _IMAGES[b][1] for _, a, b, *_ in pairs)
    assert any(_IMAGES[a][0] == "trio" and a == b for _, a, b, *_ in pairs)


def test_partners_cover_every_other_member_of_the_group(tmp_path):
  files = _write_fixture(tmp_path)
  seen = {}
  for _, anchor, other, *_ in _pairs(files, epochs=40, seed=1):
    seen.setdefault(anchor, set()).add(other)
  members = _members("patient")
  for n in range(_N):
    same = members[_group_of(n, "patient")]
    # 40 draws miss one of at most 4 others with chance < 4 * (3/4)^40 ~ 4e-5.
    assert seen[n] == (same - {n} if len(same) > 1 else {n})
  # The draw depends on the seed (not only the order of the anchors does).
  partners = lambda seed: {(e, a): b for e, a, b, *_ in _pairs(files, epochs=2, seed=seed)}
  assert partners(2) != partners(1)


def test_index_stats_on_known_group_sizes(tmp_path):
  files = _write_fixture(tmp_path)
  by_patient = micle.build_index(files, group="patient")
  s = by_patient.stats
  assert (s.num_records, s.num_images, s.num_groups) == (13, 13, 6)
  assert dict(s.group_sizes) == {1: 3, 2: 1, 3: 1, 5: 1}
  assert s.num_fallback == 3 and by_patient.fallback_fraction == pytest.approx(3 / 13)
  # Partners can be any image of a group of >= 2: every PNG but the 3 singles.
  pngs = [synthetic.encode_png(np.full((8, 8), (n + 1) * _STEP, np.uint16)) for n in range(_N)]
  assert s.store == "memory" and s.store_bytes == sum(len(p) for p in pngs[1:11])
  assert "3 fallback pairs per epoch (23.1%" in by_patient.summary()

  by_study = micle.build_index(files, group="study").stats
  assert (by_study.num_groups, by_study.num_fallback) == (9, 6)
  assert dict(by_study.group_sizes) == {1: 6, 2: 2, 3: 1}


def test_split_filter_applies_to_anchors_and_partners(tmp_path):
  splits = ["validation" if p == "pair" else "train" for p, _ in _IMAGES]
  files = _write_fixture(tmp_path, splits=splits)
  stats = micle.build_index(files, split="train").stats
  assert (stats.num_records, stats.num_groups, stats.num_fallback) == (11, 5, 3)
  pairs = _pairs(files, epochs=1, split="train")
  used = {a for _, a, *_ in pairs} | {b for _, _, b, *_ in pairs}
  assert used == set(range(_N)) - {1, 2}


def test_duplicated_records_are_one_image(tmp_path):
  # "dup" holds one image written twice (two shards); "dup2" one duplicated
  # image and one other.
  images = {n: np.full((8, 8), (n + 1) * _STEP, np.uint16) for n in range(3)}
  _write(
    tmp_path / "a.tfrecord", [_example(0, images[0], "dup", ""), _example(1, images[1], "dup2", "")]
  )
  _write(
    tmp_path / "b.tfrecord",
    [
      _example(0, images[0], "dup", ""),
      _example(1, images[1], "dup2", ""),
      _example(2, images[2], "dup2", ""),
    ],
  )
  files = str(tmp_path / "*.tfrecord")
  s = micle.build_index(files).stats
  assert (s.num_records, s.num_images, s.num_groups, s.num_fallback) == (5, 3, 2, 2)
  pairs = _pairs(files, epochs=1)
  assert sorted((a, b) for _, a, b, *_ in pairs) == [(0, 0), (0, 0), (1, 2), (1, 2), (2, 1)]


@pytest.mark.parametrize("num_files", [3, 1])  # file sharding, record sharding
def test_two_workers_see_every_anchor_once_with_the_same_partners(tmp_path, num_files):
  files = _write_fixture(tmp_path, num_files=num_files)
  index = micle.build_index(files)
  single = {a: b for _, a, b, *_ in _pairs(files, epochs=1, micle_index=index)}
  anchors = []
  for worker in range(2):
    ctx = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=worker)
    pairs = _pairs(files, epochs=1, input_context=ctx, micle_index=index)
    assert pairs  # both workers get work
    for _, a, b, *_ in pairs:
      assert single[a] == b  # partners do not depend on the sharding
    anchors += [a for _, a, *_ in pairs]
  assert sorted(anchors) == list(range(_N))


def test_skip_resumes_the_exact_micle_stream(tmp_path):
  # Two workers, so the skipped stream is a shard's; tests/input_pipeline_test.py
  # covers one worker for the shared skip logic.
  num_workers = 2
  files = _write_fixture(tmp_path, noise=True)
  memory = micle.build_index(files, store="memory")
  disk = micle.build_index(files, store="disk")
  assert (memory.stats.store, disk.stats.store) == ("memory", "disk")

  def batches(worker, skip, n, index):
    ctx = tf.distribute.InputContext(num_workers, worker, num_workers)
    ds = make_pretrain_dataset(
      files,
      batch_size=2,
      image_size=8,
      preset=_RANDOM_VIEWS,
      seed=4,
      input_context=ctx,
      shuffle_buffer=64,
      deterministic=True,
      skip_examples=skip,
      positive_pairs="micle",
      micle_index=index,
    )
    return [
      np.concatenate(
        [b["view1"].numpy().ravel(), b["view2"].numpy().ravel(), b["partner_key"].numpy()]
      )
      for b in ds.take(n)
    ]

  for worker in range(num_workers):
    steps = 5  # 10 examples; a worker has 6 or 7 per epoch: past the epoch boundary
    full = batches(worker, 0, steps, memory)
    resumed = batches(worker, 2 * 3, steps - 3, memory)  # interrupted after 3 steps
    for a, b in zip(full[3:], resumed, strict=True):
      np.testing.assert_array_equal(a, b)
    # Partners read from the shards are the same bytes as from memory.
    np.testing.assert_array_equal(np.stack(full), np.stack(batches(worker, 0, steps, disk)))


def test_default_augment_stream_is_unchanged(tmp_path):
  # The pre-MICLe formula: records in file order (one shard, no shuffle), view v
  # of record k in epoch e = augment_view(decode(png), cfg, fold_in(seed, key_k, e, v)).
  files = _write_fixture(tmp_path, num_files=1, noise=True)
  kwargs = dict(
    batch_size=4,
    image_size=8,
    preset=_RANDOM_VIEWS,
    seed=9,
    repeat=1,
    shuffle_buffer=0,
    deterministic=True,
  )
  ds = make_pretrain_dataset(files, **kwargs)
  assert set(ds.element_spec) == {"view1", "view2", "label", "epoch"}
  batch = next(iter(ds))
  explicit = next(iter(make_pretrain_dataset(files, positive_pairs="augment", **kwargs)))
  config = _RANDOM_VIEWS
  base = seeds.make_seed(9)
  records = tf.data.TFRecordDataset(files.replace("*", "data-000")).take(4)
  for i, record in enumerate(records):
    image = schema.decode_image(schema.parse_example(record)[schema.IMAGE_ENCODED], channels=1)
    for v in (1, 2):
      want = augment.augment_view(image, config, seeds.fold_in(base, _key(i), 0, v), 8)
      np.testing.assert_array_equal(batch[f"view{v}"][i].numpy(), want.numpy())
      np.testing.assert_array_equal(explicit[f"view{v}"][i].numpy(), want.numpy())


def test_bad_arguments_get_clear_errors(tmp_path):
  files = _write_fixture(tmp_path)
  make = lambda **kw: make_pretrain_dataset(files, batch_size=2, image_size=4, **kw)
  with pytest.raises(ConfigError, match="positive_pairs"):
    make(positive_pairs="simclr")
  with pytest.raises(ConfigError, match="micle_group"):
    make(positive_pairs="micle", micle_group="series")
  study = micle.build_index(files, group="study")
  with pytest.raises(ConfigError, match="MICLe index was built for"):
    make(positive_pairs="micle", micle_group="patient", micle_index=study)
  with pytest.raises(ConfigError, match="store"):
    micle.build_index(files, store="ssd")
  with pytest.raises(ConfigError, match="memory_limit_bytes=100"):
    micle.build_index(files, store="memory", memory_limit_bytes=100)
  assert micle.build_index(files, memory_limit_bytes=100).stats.store == "disk"
  with pytest.raises(InputDataError, match="no records"):
    micle.build_index(files, split="test")


def test_shards_rewritten_after_the_index_are_detected(tmp_path):
  files = _write_fixture(tmp_path, num_files=1)
  index = micle.build_index(files, store="disk")
  # Same records, reversed order: the indexed positions now hold other images.
  path = tmp_path / "data-000.tfrecord"
  records = [r.numpy() for r in tf.data.TFRecordDataset(str(path))]
  with tf.io.TFRecordWriter(str(path)) as writer:
    for r in reversed(records):
      writer.write(r)
  with pytest.raises(tf.errors.InvalidArgumentError, match="changed after build_index"):
    _pairs(files, epochs=1, micle_index=index)
