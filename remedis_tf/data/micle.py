"""MICLe positive pairs: two different images of one patient (or study).

Multi-Instance Contrastive Learning (Azizi et al., "Big self-supervised
models advance medical image classification", ICCV 2021) pairs two
*different* images of the same patient, each augmented, instead of two
augmentations of one image. An image whose group holds no other image falls
back to two views of itself.

How groups are found across shards: `build_index` makes one pass over the
parsed records of every shard (nothing is decoded; the split/site filters of
the training pipeline apply) and sorts them by (group, example key). The
result, a `MicleIndex`, maps every image to its group and position; the input
pipeline then reads each anchor as usual and draws its partner with graph ops:

  row    = lookup(group, anchor key)              # StaticHashTable
  u      ~ uniform{0, ..., n - 2}                 # stateless, seeded by
                                                  # (seed, anchor key, epoch)
  partner = start + u + (u >= position)           # one of the n - 1 others

so the partner depends only on (seed, anchor key, epoch) and the set of
records: it is the same whatever the worker, sharding, parallelism or
resume point.

Where the partner's bytes come from (the "store"):

* "memory": the encoded images of every group with two or more images are
  loaded into a hash table (a second pass over the files, done only when the
  store is chosen). Memory: the sum of those PNGs' sizes, bounded by
  `memory_limit_bytes` (default 4 GiB). Reading a partner is a table lookup.
* "disk": nothing is kept; the partner is read from its shard as
  `TFRecordDataset(shard).skip(record).take(1)`. TFRecords have no index
  and TensorFlow has no graph op that reads a byte range at an offset
  (FixedLengthRecordDataset reads through its header bytes), so this walks
  the record headers before it (2-5 us each, measured here): the cost grows
  with the records per shard, not with the archive.
* "auto" (default) takes memory while the partner images fit the limit,
  else disk. E.g. 100k images of 100 KB (10 GB) use disk by default.

Either way an example decodes two images instead of one. Measured here
(shared machine, CPU time, 224 px 16-bit PNGs, 1000 per shard, 64 px
views): MICLe from memory ran at about 0.8x the examples per CPU-second of
"augment", from disk about 0.45x.

The index itself holds, per distinct image, five int64 values and an int64
-> int64 hash table entry: 28 MB of resident memory per 100k images
(measured), whatever the image sizes; building it briefly needs about 50 MB
more per 100k records (the group ids as strings, the sort). Building it
reads every shard once, parsing but not decoding (measured here: about
20 us per record plus the I/O, about as long as a plain read of the files);
the memory store then reads the files a second time.
"""

from __future__ import annotations

import collections
import dataclasses
import time
from collections.abc import Mapping, Sequence

import numpy as np
import tensorflow as tf
from absl import logging

from remedis_tf.data import input_pipeline, seeds
from remedis_tf.errors import ConfigError, InputDataError
from tfrecords_tools import schema

GROUPS = ("patient", "study")
STORES = ("auto", "memory", "disk")
DEFAULT_MEMORY_LIMIT_BYTES = 4 << 30

# Folded into an example's seed (after the views' ids 1 and 2) to draw its partner.
PARTNER_SEED_TAG = 0x4D49434C  # "MICL"
_LOOKUP_BUCKETS = 2**63 - 1
_POSITION_BASE = 2**40  # a record's position: file index * 2^40 + record within the file
_GROUP_FEATURE = {"patient": schema.PATIENT_ID_HASH, "study": schema.STUDY_ID_HASH}
_SCAN_BATCH = 256
_PROGRESS_SECONDS = 30.0


def group_id(group_hash: tf.Tensor, key: tf.Tensor) -> tf.Tensor:
  """The MICLe group of records: their group hash, or their own key when empty.

  Args:
    group_hash: string tensor (the records' patient or study id hash).
    key: int64 tensor of the same shape (input_pipeline.record_key).

  Returns:
    String tensor of the same shape. A record without a group id forms its
    own group ("#<key>", which no hex hash can equal).
  """
  own = tf.strings.join(["#", tf.strings.as_string(key)])
  return tf.where(tf.strings.length(group_hash) > 0, group_hash, own)


def lookup_key(group: tf.Tensor, key: tf.Tensor) -> tf.Tensor:
  """An int64 hash of (group, key), the key of the index's lookup table."""
  text = tf.strings.join([group, tf.strings.as_string(key)], "|")
  return tf.strings.to_hash_bucket_fast(text, _LOOKUP_BUCKETS)


def as_tuple(value: str | Sequence[str] | None) -> tuple[str, ...] | None:
  """A split/site filter as a tuple (None: keep all)."""
  if value is None:
    return None
  return (value,) if isinstance(value, str) else tuple(value)


def _check_group(group: str) -> str:
  if group not in GROUPS:
    raise ConfigError(f"micle_group must be one of {GROUPS}, got {group!r}")
  return group


def _membership(values: tf.Tensor, allowed: tuple[str, ...] | None) -> tf.Tensor:
  if allowed is None:
    return tf.ones_like(values, tf.bool)
  return tf.reduce_any(tf.equal(values[:, None], tf.constant(allowed)[None, :]), axis=1)


def _numbered_records(paths: Sequence[str]) -> tf.data.Dataset:
  """(file index, record index within the file, serialized record), any order."""

  def records(file_index, path):
    ds = tf.data.TFRecordDataset(path, buffer_size=8 << 20).enumerate()
    return ds.map(lambda record, serialized: (file_index, record, serialized))

  files = tf.data.Dataset.from_tensor_slices(tf.constant(list(paths))).enumerate()
  return files.interleave(
    records,
    cycle_length=max(1, min(len(paths), 8)),
    block_length=16,
    num_parallel_calls=tf.data.AUTOTUNE,
    deterministic=False,  # the index is sorted afterwards
  )


def _scan(
  paths: Sequence[str],
  group: str,
  splits: tuple[str, ...] | None,
  sites: tuple[str, ...] | None,
) -> dict[str, np.ndarray]:
  """One pass over the records: key, group, position and size of each kept one."""
  full_spec = schema.feature_spec()
  feature_keys = (
    schema.IMAGE_ENCODED,
    schema.IMAGE_SOURCE_ID,
    schema.IMAGE_FRAME_INDEX,
    schema.SPLIT,
    schema.SITE,
    _GROUP_FEATURE[group],
  )
  spec = {k: full_spec[k] for k in feature_keys}

  def parse(file_index, record, serialized):
    ex = tf.io.parse_example(serialized, spec)
    key = input_pipeline.record_key(
      ex[schema.IMAGE_SOURCE_ID], ex[schema.IMAGE_FRAME_INDEX], ex[schema.IMAGE_ENCODED]
    )
    gid = group_id(ex[_GROUP_FEATURE[group]], key)
    keep = tf.logical_and(
      _membership(ex[schema.SPLIT], splits), _membership(ex[schema.SITE], sites)
    )
    return {
      "file": file_index,
      "record": record,
      "key": key,
      "group": gid,
      "lookup": lookup_key(gid, key),
      "bytes": tf.cast(tf.strings.length(ex[schema.IMAGE_ENCODED]), tf.int64),
      "keep": keep,
    }

  ds = _numbered_records(paths).batch(_SCAN_BATCH)
  ds = ds.map(parse, num_parallel_calls=tf.data.AUTOTUNE, deterministic=False)
  ds = ds.prefetch(2)
  chunks = collections.defaultdict(list)
  seen, last_report = 0, time.monotonic()
  for batch in ds:
    keep = batch["keep"].numpy()
    for name in ("file", "record", "key", "group", "lookup", "bytes"):
      chunks[name].append(batch[name].numpy()[keep])
    seen += len(keep)
    if time.monotonic() - last_report > _PROGRESS_SECONDS:
      logging.info("MICLe index: %d records read from %d file(s) ...", seen, len(paths))
      last_report = time.monotonic()
  out = {name: np.concatenate(parts) for name, parts in chunks.items()}
  if not chunks or not len(out["key"]):
    raise InputDataError(
      f"no records of {list(paths)} pass the filters split={splits}, site={sites}"
    )
  out["group"] = out["group"].astype(bytes)  # object array of bytes -> fixed-width "S"
  return out


@dataclasses.dataclass(frozen=True)
class MicleStats:
  """What the index found, for logging.

  Attributes:
    num_records: records kept by the split/site filters (each is an anchor
      once per epoch).
    num_images: distinct images (records with the same group and example key
      count once: a duplicated record is not a different image).
    num_groups: groups (patients or studies; a record without an id is its
      own group).
    num_fallback: records whose group has a single distinct image; their
      pair is two views of themselves.
    fallback_fraction: num_fallback / num_records, the share of fallback
      pairs in every epoch (0 for an empty index).
    group_sizes: {distinct images in a group: number of such groups}.
    store: "memory" or "disk", where partner images are read from.
    store_bytes: encoded bytes of the images that can be partners (the
      memory the "memory" store holds).
  """

  num_records: int
  num_images: int
  num_groups: int
  num_fallback: int
  fallback_fraction: float
  group_sizes: Mapping[int, int]
  store: str
  store_bytes: int


class MicleIndex:
  """Group -> images index over a set of TFRecord shards; see the module doc.

  Build with `build_index`. One index serves any number of pipelines in the
  process (e.g. one per worker or replica); the trainer logs `stats`.
  """

  def __init__(
    self,
    *,
    paths: tuple[str, ...],
    group: str,
    split: tuple[str, ...] | None,
    site: tuple[str, ...] | None,
    scan: Mapping[str, np.ndarray],
    store: str,
    memory_limit_bytes: int,
  ):
    """Sorts the scanned records into groups and sets up the lookups.

    Use `build_index` rather than this constructor.
    """
    self.paths, self.group, self.split, self.site = paths, group, split, site
    num_records = len(scan["key"])
    # Sort by (group, key, position): a duplicated image's first copy represents it.
    order = np.lexsort((scan["record"], scan["file"], scan["key"], scan["group"]))
    group_ids, keys = scan["group"][order], scan["key"][order]
    first = np.ones(num_records, bool)
    first[1:] = (group_ids[1:] != group_ids[:-1]) | (keys[1:] != keys[:-1])
    rows = order[first]  # one record per distinct image, in (group, key) order
    row_of_record = np.empty(num_records, np.int64)
    row_of_record[order] = np.cumsum(first) - 1

    row_group = scan["group"][rows]
    new_group = np.ones(len(rows), bool)
    new_group[1:] = row_group[1:] != row_group[:-1]
    group_index = np.cumsum(new_group) - 1
    group_start = np.flatnonzero(new_group)
    group_size = np.diff(np.append(group_start, len(rows)))

    lookup = scan["lookup"][rows]
    if len(np.unique(lookup)) != len(rows):
      raise RuntimeError(
        "two distinct images of the MICLe index share a 63-bit lookup hash (chance about "
        f"n^2 / 2^64 for n = {len(rows)}); please report this"
      )

    files = scan["file"][rows].astype(np.int64)
    records = scan["record"][rows].astype(np.int64)
    size = group_size[group_index].astype(np.int64)
    # Per distinct image (row): its key, position in the files, group start and size.
    with tf.device("/cpu:0"):
      self._keys = tf.constant(scan["key"][rows].astype(np.int64))
      self._file_of_row = tf.constant(files)
      self._record_of_row = tf.constant(records)
      self._start = tf.constant(group_start[group_index].astype(np.int64))
      self._size = tf.constant(size)
      self._paths = tf.constant(list(paths))
    self._table = tf.lookup.StaticHashTable(
      tf.lookup.KeyValueTensorInitializer(
        tf.constant(lookup, tf.int64), tf.range(len(rows), dtype=tf.int64)
      ),
      default_value=-1,
    )

    partner_rows = np.flatnonzero(size > 1)
    store_bytes = int(scan["bytes"][rows][partner_rows].sum())
    if store == "auto":
      store = "memory" if store_bytes <= memory_limit_bytes else "disk"
    elif store == "memory" and store_bytes > memory_limit_bytes:
      raise ConfigError(
        f"the MICLe memory store needs {store_bytes} bytes of encoded images, more than "
        f"memory_limit_bytes={memory_limit_bytes}; raise the limit or use store='disk'"
      )
    self._bytes = None
    if store == "memory":
      self._bytes = self._load(files, records, partner_rows)

    fallback = int(np.count_nonzero(size[row_of_record] == 1))
    self.stats = MicleStats(
      num_records=num_records,
      num_images=len(rows),
      num_groups=len(group_start),
      num_fallback=fallback,
      fallback_fraction=fallback / num_records if num_records else 0.0,
      group_sizes=dict(sorted(collections.Counter(group_size.tolist()).items())),
      store=store,
      store_bytes=store_bytes,
    )

  @property
  def fallback_fraction(self) -> float:
    """Share of records (anchors per epoch) whose pair is two views of themselves."""
    return self.stats.fallback_fraction

  def summary(self) -> str:
    """A one-line description for logs."""
    s = self.stats
    return (
      f"MICLe by {self.group}: {s.num_records} records, {s.num_images} distinct images in "
      f"{s.num_groups} groups; {s.num_fallback} fallback pairs per epoch "
      f"({100.0 * s.fallback_fraction:.1f}%, single-image groups); partners from "
      f"{s.store} ({s.store_bytes / 2**20:.1f} MiB of PNGs)"
    )

  def _load(
    self, files: np.ndarray, records: np.ndarray, partner_rows: np.ndarray
  ) -> tf.lookup.experimental.MutableHashTable:
    """Reads the encoded images of `partner_rows` into a row -> bytes table.

    Args:
      files, records: (rows,) int64 file and record index of every row.
      partner_rows: the rows to load.
    """
    positions = files[partner_rows] * _POSITION_BASE + records[partner_rows]
    wanted = tf.lookup.StaticHashTable(
      tf.lookup.KeyValueTensorInitializer(
        tf.constant(positions, tf.int64), tf.constant(partner_rows, tf.int64)
      ),
      default_value=-1,
    )
    spec = {schema.IMAGE_ENCODED: schema.feature_spec()[schema.IMAGE_ENCODED]}

    def with_row(file_index, record, serialized):
      return wanted.lookup(file_index * _POSITION_BASE + record), serialized

    def encoded(row, serialized):
      return row, tf.io.parse_single_example(serialized, spec)[schema.IMAGE_ENCODED]

    ds = _numbered_records(self.paths).map(with_row).filter(lambda row, _: row >= 0)
    ds = ds.map(encoded, num_parallel_calls=tf.data.AUTOTUNE, deterministic=False).batch(64)
    table = tf.lookup.experimental.MutableHashTable(tf.int64, tf.string, default_value=b"")
    for batch_rows, batch_bytes in ds:
      table.insert(batch_rows, batch_bytes)
    if int(table.size()) != len(partner_rows):
      raise InputDataError(
        f"MICLe index: read {int(table.size())} of {len(partner_rows)} partner images; "
        f"the files {list(self.paths)} changed while the index was built"
      )
    return table

  def check_matches(
    self,
    paths: Sequence[str],
    group: str,
    split: tuple[str, ...] | None,
    site: tuple[str, ...] | None,
  ) -> None:
    """Raises ConfigError (a ValueError) unless the index was built for these files and filters."""
    want = (tuple(paths), group, split, site)
    have = (self.paths, self.group, self.split, self.site)
    if want != have:
      raise ConfigError(
        "the MICLe index was built for (files, group, split, site) = "
        f"{have}, not {want}; build it with the pipeline's arguments"
      )

  def _read(self, row: tf.Tensor) -> tf.Tensor:
    """The encoded image of an index row (scalar int64), from the store."""
    if self._bytes is not None:
      return self._bytes.lookup(row)
    path = tf.gather(self._paths, tf.gather(self._file_of_row, row))
    serialized = (
      tf.data.TFRecordDataset(path, buffer_size=4096)
      .skip(tf.gather(self._record_of_row, row))
      .take(1)
      .get_single_element()
    )
    spec = schema.feature_spec()
    ex = tf.io.parse_single_example(
      serialized,
      {
        k: spec[k] for k in (schema.IMAGE_ENCODED, schema.IMAGE_SOURCE_ID, schema.IMAGE_FRAME_INDEX)
      },
    )
    key = input_pipeline.record_key(
      ex[schema.IMAGE_SOURCE_ID], ex[schema.IMAGE_FRAME_INDEX], ex[schema.IMAGE_ENCODED]
    )
    check = tf.debugging.Assert(
      tf.equal(key, tf.gather(self._keys, row)),
      [
        "MICLe: the record read from",
        path,
        "is not the indexed image; the TFRecords changed after build_index",
      ],
    )
    with tf.control_dependencies([check]):
      return tf.identity(ex[schema.IMAGE_ENCODED])

  def partner(self, example: Mapping[str, tf.Tensor], example_seed: tf.Tensor) -> dict:
    """Chooses an anchor's partner and returns its encoded image (graph mode).

    Args:
      example: a parsed record of input_pipeline with scalar 'key' (int64),
        'encoded', 'patient_id_hash' and 'study_id_hash' (strings).
      example_seed: shape (2,) seed of the anchor (seed, key, epoch folded
        in); the partner is drawn from `fold_in(example_seed, PARTNER_SEED_TAG)`.

    Returns:
      {'encoded': scalar string, the partner's PNG (the anchor's own when it
      falls back), 'key': int64 partner key, 'fallback': bool}.
    """
    key = example["key"]
    gid = group_id(example[f"{self.group}_id_hash"], key)
    row = self._table.lookup(lookup_key(gid, key))
    found = tf.debugging.Assert(
      row >= 0,
      ["MICLe: a record is missing from the index (built from other files or filters); key", key],
    )
    with tf.control_dependencies([found]):
      row = tf.identity(row)
    start, size = tf.gather(self._start, row), tf.gather(self._size, row)
    fallback = size < 2
    draw = tf.random.stateless_uniform(
      [],
      seeds.fold_in(example_seed, PARTNER_SEED_TAG),
      minval=0,
      maxval=tf.maximum(size - 1, 1),
      dtype=tf.int64,
    )
    other = start + draw + tf.cast(draw >= row - start, tf.int64)  # skips the anchor itself
    partner_row = tf.where(fallback, row, other)
    encoded = tf.cond(fallback, lambda: example["encoded"], lambda: self._read(partner_row))
    return {"encoded": encoded, "key": tf.gather(self._keys, partner_row), "fallback": fallback}


def build_index(
  files: str | Sequence[str],
  *,
  group: str = "patient",
  split: str | Sequence[str] | None = None,
  site: str | Sequence[str] | None = None,
  store: str = "auto",
  memory_limit_bytes: int = DEFAULT_MEMORY_LIMIT_BYTES,
) -> MicleIndex:
  """Indexes the records of `files` by patient or study for MICLe pairs.

  Args:
    files: glob pattern(s) or paths of TFRecord shards (all of them, not a
      worker's share: groups span shards).
    group: "patient" (`patient/id_hash`) or "study" (`study/id_hash`).
    split: keep only these splits, as the training pipeline does.
    site: keep only these sites.
    store: "auto", "memory" or "disk" (see the module doc).
    memory_limit_bytes: most encoded bytes the memory store may hold.

  Returns:
    The index; `index.stats` and `index.summary()` say what it found.

  Raises:
    ConfigError (a ValueError): unknown group or store, or a memory store
      over the limit.
    InputDataError (a ValueError): no record passes the filters.
    InputNotFoundError (a FileNotFoundError): no file matches.
  """
  _check_group(group)
  if store not in STORES:
    raise ConfigError(f"store must be one of {STORES}, got {store!r}")
  if memory_limit_bytes < 0:
    raise ConfigError(f"memory_limit_bytes must be >= 0, got {memory_limit_bytes}")
  paths = tuple(input_pipeline.list_files(files))
  splits, sites = as_tuple(split), as_tuple(site)
  start = time.monotonic()
  scan = _scan(paths, group, splits, sites)
  index = MicleIndex(
    paths=paths,
    group=group,
    split=splits,
    site=sites,
    scan=scan,
    store=store,
    memory_limit_bytes=memory_limit_bytes,
  )
  logging.info("%s (built in %.1f s)", index.summary(), time.monotonic() - start)
  return index
