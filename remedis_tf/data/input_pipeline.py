"""tf.data input over the TFRecords written by tfrecords_tools.

Reading: sorted shards, sharded per worker (by file when every input
pipeline gets at least one file, else by record over a deterministic read
order), interleaved, parsed with `tfrecords_tools.schema`, filtered by split,
site and (for fine-tuning) a deterministic patient-level label fraction,
optionally cached. Each epoch is shuffled with its own seed and every random
augmentation is keyed by (seed, example, epoch, view), so the same seed gives
the same views whatever the parallelism.

The map functions are traced without AutoGraph (`do_not_convert`): they branch
on Python values only (random choices are `tf.cond`s on stateless draws), and
AutoGraph's conversion of the augmentation code took seconds of CPU per process.

Under tf.distribute, pass the InputContext and a per-replica batch size:

  strategy.distribute_datasets_from_function(lambda ctx: make_pretrain_dataset(
      files, batch_size=ctx.get_per_replica_batch_size(global_batch),
      image_size=224, preset="cxr", seed=0, input_context=ctx))
"""

from __future__ import annotations

import functools
import glob
import os
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np
import tensorflow as tf

from remedis_tf.data import augment, seeds
from remedis_tf.data.manifest import read_manifest
from remedis_tf.data.patients import patient_key
from remedis_tf.data.presets import AugmentConfig, get_preset
from remedis_tf.errors import ConfigError, InputNotFoundError
from tfrecords_tools import schema
from tfrecords_tools.schema import LabelMode

if TYPE_CHECKING:
  from remedis_tf.data import micle

POSITIVE_PAIRS = ("augment", "micle")
_FRACTION_KEY = 0x5F3759DF  # second half of the SipHash key for label fractions
_FRACTION_BUCKETS = 2**53


def list_files(files: str | Sequence[str]) -> list[str]:
  """Expands glob patterns / paths into a sorted, duplicate-free list of files.

  Args:
    files: a glob pattern, a path, or a sequence of them.

  Returns:
    Sorted list of paths (the same order on every worker).

  Raises:
    InputNotFoundError (a FileNotFoundError): nothing matches.
  """
  patterns = [files] if isinstance(files, str | os.PathLike) else list(files)
  found = set()
  for pattern in patterns:
    pattern = os.fspath(pattern)
    matches = tf.io.gfile.glob(pattern) if glob.has_magic(pattern) else [pattern]
    found.update(m for m in matches if tf.io.gfile.exists(m))
  if not found:
    raise InputNotFoundError(f"no TFRecord files match {files!r}")
  return sorted(found)


def read_records(
  files: str | Sequence[str],
  input_context: tf.distribute.InputContext | None = None,
  *,
  shuffle_files: bool = False,
  seed: int = 0,
  cycle_length: int | None = None,
) -> tf.data.Dataset:
  """Serialized records of this input pipeline's share of the files.

  With N input pipelines and at least N files, pipeline i reads files
  i, i + N, ... (interleaved, any order). With fewer files than pipelines,
  every pipeline reads all files in the same deterministic order and keeps
  records i, i + N, ... Either way, the pipelines together see every record
  exactly once per pass.

  Args:
    files: glob pattern(s) or paths.
    input_context: tf.distribute.InputContext, or None for one pipeline.
    shuffle_files: shuffle this pipeline's files (file-sharding mode only;
      order changes every pass, deterministically given `seed`).
    seed: file-shuffle seed.
    cycle_length: files read concurrently (default: min(files, 8)).

  Returns:
    Dataset of scalar tf.string records.
  """
  paths = list_files(files)
  num_pipelines = input_context.num_input_pipelines if input_context else 1
  pipeline_id = input_context.input_pipeline_id if input_context else 0
  by_file = len(paths) >= num_pipelines
  ds = tf.data.Dataset.from_tensor_slices(paths)
  if by_file and num_pipelines > 1:
    ds = ds.shard(num_pipelines, pipeline_id)
  num_local = -(-len(paths) // num_pipelines) if by_file else len(paths)
  cycle = cycle_length or max(1, min(num_local, 8))
  if by_file and shuffle_files and num_local > 1:
    ds = ds.shuffle(num_local, seed=seed, reshuffle_each_iteration=True)
  ds = ds.interleave(
    lambda path: tf.data.TFRecordDataset(path, buffer_size=8 << 20),
    cycle_length=cycle,
    block_length=1,
    num_parallel_calls=tf.data.AUTOTUNE,
    # Record sharding needs the same order on every worker.
    deterministic=None if by_file else True,
  )
  if not by_file and num_pipelines > 1:
    ds = ds.shard(num_pipelines, pipeline_id)
  return ds


def record_key(source_id: tf.Tensor, frame_index: tf.Tensor, encoded: tf.Tensor) -> tf.Tensor:
  """The int64 key of records, which seeds their augmentations (see seeds.example_key).

  Hashes `image/source_id` + "#" + frame index, or the encoded image when the
  record has no source id.

  Args:
    source_id: string tensor, the records' `image/source_id`.
    frame_index: int64 tensor of the same shape, `image/frame_index`.
    encoded: string tensor of the same shape, `image/encoded`.

  Returns:
    int64 tensor of the same shape.
  """
  source = tf.strings.join([source_id, tf.strings.as_string(frame_index)], "#")
  source = tf.where(tf.strings.length(source_id) > 0, source, "")
  return seeds.example_key(source, encoded)


def patient_scores(patient_hashes: tf.Tensor, seed: int) -> tf.Tensor:
  """Uniform [0, 1) scores of patient ids, keyed by `seed` (SipHash).

  Args:
    patient_hashes: string tensor of any shape.
    seed: integer seed (non-negative).

  Returns:
    float64 tensor of the same shape.
  """
  buckets = tf.strings.to_hash_bucket_strong(
    patient_hashes, _FRACTION_BUCKETS, key=[int(seed), _FRACTION_KEY]
  )
  return tf.cast(buckets, tf.float64) / float(_FRACTION_BUCKETS)


def select_label_fraction(
  patient_hashes: Sequence[str | bytes], fraction: float, seed: int
) -> set[str]:
  """The patients kept by a label fraction: those whose score is below `fraction`.

  Deterministic given (patient, seed); a patient's images are all kept or all
  dropped; the subsets are nested (fraction f keeps a subset of what
  fraction g > f keeps with the same seed). The kept share of patients is
  `fraction` in expectation.

  Args:
    patient_hashes: patient ids (the records' `patient/id_hash`).
    fraction: in [0, 1].
    seed: integer seed.

  Returns:
    Set of kept ids (as str).
  """
  ids = sorted({p.decode() if isinstance(p, bytes) else str(p) for p in patient_hashes})
  if not ids:
    return set()
  scores = patient_scores(tf.constant(ids), seed).numpy()
  return {p for p, s in zip(ids, scores, strict=True) if s < fraction}


def _as_tuple(value: str | Sequence[str] | None) -> tuple[str, ...] | None:
  if value is None:
    return None
  return (value,) if isinstance(value, str) else tuple(value)


def _in(value: tf.Tensor, allowed: tuple[str, ...]) -> tf.Tensor:
  return tf.reduce_any(tf.equal(value, tf.constant(allowed)))


def _parsed_records(
  files: str | Sequence[str],
  *,
  input_context: tf.distribute.InputContext | None,
  seed: int,
  split: str | Sequence[str] | None,
  site: str | Sequence[str] | None,
  label_mode: LabelMode,
  num_labels: int | None,
  labelled_only: bool,
  label_fraction: float,
  cache: bool | str,
  shuffle_files: bool = True,
) -> tf.data.Dataset:
  """Records parsed into small dicts, filtered and optionally cached.

  The label-fraction subset is keyed by `seed`.
  """
  multi_label = label_mode == LabelMode.MULTI_LABEL
  keys = [
    schema.IMAGE_ENCODED,
    schema.IMAGE_SOURCE_ID,
    schema.IMAGE_FRAME_INDEX,
    schema.LABEL,
    schema.PATIENT_ID_HASH,
    schema.STUDY_ID_HASH,
    schema.SITE,
    schema.SPLIT,
  ]
  if multi_label:
    keys.append(schema.MULTI_LABEL)
  full_spec = schema.feature_spec(num_labels if multi_label else None)
  spec = {k: full_spec[k] for k in keys}
  splits, sites = _as_tuple(split), _as_tuple(site)

  @tf.autograph.experimental.do_not_convert
  def parse(serialized):
    ex = tf.io.parse_single_example(serialized, spec)
    out = {
      "encoded": ex[schema.IMAGE_ENCODED],
      "key": record_key(
        ex[schema.IMAGE_SOURCE_ID], ex[schema.IMAGE_FRAME_INDEX], ex[schema.IMAGE_ENCODED]
      ),
      "label": tf.cast(ex[schema.LABEL], tf.int32),
      "patient_id_hash": ex[schema.PATIENT_ID_HASH],
      "study_id_hash": ex[schema.STUDY_ID_HASH],
      "site": ex[schema.SITE],
      "split": ex[schema.SPLIT],
      "source_id": ex[schema.IMAGE_SOURCE_ID],
    }
    if multi_label:
      out["multi_label"] = tf.cast(ex[schema.MULTI_LABEL], tf.float32)
    return out

  @tf.autograph.experimental.do_not_convert
  def keep(ex):
    ok = tf.constant(True)
    if splits is not None:
      ok = tf.logical_and(ok, _in(ex["split"], splits))
    if sites is not None:
      ok = tf.logical_and(ok, _in(ex["site"], sites))
    if labelled_only:
      if multi_label:
        ok = tf.logical_and(ok, tf.reduce_any(ex["multi_label"] >= 0))
      else:
        ok = tf.logical_and(ok, ex["label"] >= 0)
    if label_fraction < 1.0:
      pid = ex["patient_id_hash"]
      pid = patient_key(ex["patient_id_hash"], ex["source_id"])
      ok = tf.logical_and(ok, patient_scores(pid, seed) < label_fraction)
    return ok

  ds = read_records(files, input_context, shuffle_files=shuffle_files, seed=seed)
  ds = ds.map(parse, num_parallel_calls=tf.data.AUTOTUNE)
  ds = ds.filter(keep)
  if cache:
    ds = ds.cache(cache if isinstance(cache, str) else "")
  return ds


def _epochs(
  ds: tf.data.Dataset, *, repeat: bool | int, shuffle_buffer: int, seed: int, skip: int = 0
) -> tf.data.Dataset:
  """Repeats `ds` epoch by epoch, shuffling within each epoch, tagging 'epoch'.

  Every epoch holds each example exactly once (no mixing across epochs, so a
  small dataset never puts one image twice in a batch). The shuffle has a
  Python-int seed and reshuffles on each pass, so the order is deterministic
  for a seed and differs between epochs. (A tensor-valued seed is avoided: with
  a global seed of 0, `Dataset.shuffle` evaluates a symbolic seed as a Python
  bool and fails.)

  `skip` drops that many examples from the start of this stream (parsed
  records only: nothing is decoded or augmented), which resumes a
  deterministic pipeline at a saved position.
  """
  if skip < 0:
    raise ValueError(f"skip_examples must be >= 0, got {skip}")
  if repeat is True:
    epochs = tf.data.Dataset.counter()
  else:
    epochs = tf.data.Dataset.range(1 if repeat is False else int(repeat))
  if shuffle_buffer > 1:
    ds = ds.shuffle(shuffle_buffer, seed=int(seed) % (2**31 - 1), reshuffle_each_iteration=True)

  @tf.autograph.experimental.do_not_convert
  def tagged(epoch):
    return ds.map(tf.autograph.experimental.do_not_convert(lambda ex: {**ex, "epoch": epoch}))

  out = epochs.flat_map(tagged)
  return out.skip(skip) if skip else out


@functools.lru_cache(maxsize=16)
def _augment_function(config: AugmentConfig, image_size: int) -> Callable[..., tf.Tensor]:
  """`augment.augment_view(image, config, seed, image_size)` as a tf.function.

  A tf.data map traces its Python function again for every new dataset, and the
  augmentation is most of that graph. Called from the map functions, this one is
  traced once per image dtype and shape in a process and reused by every later
  pipeline (the demo's fine-tuning workers build one per run).
  """
  return tf.function(
    lambda image, seed: augment.augment_view(image, config, seed, image_size), autograph=False
  )


@functools.lru_cache(maxsize=16)
def _eval_function(config: AugmentConfig, image_size: int) -> Callable[..., tf.Tensor]:
  """`augment.preprocess_eval(image, config, image_size)` as a tf.function (see above)."""
  return tf.function(
    lambda image: augment.preprocess_eval(image, config, image_size), autograph=False
  )


def _options(deterministic: bool) -> tf.data.Options:
  options = tf.data.Options()
  options.deterministic = deterministic
  options.autotune.enabled = True
  options.experimental_optimization.map_parallelization = True
  options.experimental_optimization.parallel_batch = True
  return options


def _decode(encoded: tf.Tensor, channels: int) -> tf.Tensor:
  image = schema.decode_image(encoded, channels=channels)
  image.set_shape([None, None, channels])
  return image


def make_pretrain_dataset(
  files: str | Sequence[str],
  *,
  batch_size: int,
  image_size: int,
  preset: str | AugmentConfig = "natural",
  seed: int = 0,
  input_context: tf.distribute.InputContext | None = None,
  split: str | Sequence[str] | None = None,
  site: str | Sequence[str] | None = None,
  shuffle_buffer: int = 1024,
  cache: bool | str = False,
  repeat: bool | int = True,
  drop_remainder: bool = True,
  deterministic: bool = False,
  skip_examples: int = 0,
  positive_pairs: str = "augment",
  micle_group: str = "patient",
  micle_index: micle.MicleIndex | None = None,
) -> tf.data.Dataset:
  """Batches of two augmented views per example, for contrastive pretraining.

  Every record is the anchor once per epoch. With `positive_pairs="augment"`
  both views augment the anchor; with "micle" (see remedis_tf.data.micle)
  view2 augments another image of the anchor's patient or study, or the
  anchor itself when its group has no other image. Either way the views use
  the seeds of (seed, anchor key, epoch, view), and the anchor stream (order,
  sharding, skipping) is the same.

  Args:
    files: glob pattern(s) or paths of TFRecord shards.
    batch_size: examples per batch of this input pipeline (per replica under
      distribute_datasets_from_function).
    image_size: output side S.
    preset: preset name or AugmentConfig.
    seed: seeds the shuffles and every augmentation.
    input_context: tf.distribute.InputContext for multi-worker sharding.
    split: keep only these splits (e.g. "train"); None keeps all.
    site: keep only these sites; None keeps all.
    shuffle_buffer: examples in the per-epoch shuffle buffer (<= 1 disables).
    cache: True caches parsed records in memory, a path caches to files.
    repeat: True repeats forever, an int gives that many epochs, False one.
    drop_remainder: drop a last partial batch.
    deterministic: keep element order deterministic (slower).
    skip_examples: examples of this pipeline's stream to skip first. With
      `deterministic` and the same seed, files and sharding, the stream after
      skipping n equals the uninterrupted stream from its n-th example on,
      views included (the trainers resume this way).
    positive_pairs: "augment" (two views of one image) or "micle".
    micle_group: "patient" or "study": the group MICLe pairs come from.
    micle_index: a micle.build_index result for these files, group, split
      and site, so that several pipelines share one index; None builds it
      here (one pass over all the files).

  Returns:
    Dataset of dicts: 'view1', 'view2' (B, S, S, 3) float32 in [0, 1],
    'label' (B,) int32 (-1 when unlabelled), 'epoch' (B,) int64; with
    "micle" also 'partner_key' (B,) int64 (the example key of view2's image)
    and 'fallback' (B,) bool (view2 is of the anchor itself).

  Raises:
    ConfigError (a ValueError): an unknown `positive_pairs` or
      `micle_group`, or a `micle_index` built for other files or filters.
  """
  if positive_pairs not in POSITIVE_PAIRS:
    raise ConfigError(f"positive_pairs must be one of {POSITIVE_PAIRS}, got {positive_pairs!r}")
  config = get_preset(preset)
  base = seeds.make_seed(seed)
  augment_view = _augment_function(config, image_size)
  if positive_pairs == "micle":
    # Imported here: micle builds on this module (list_files, record_key).
    from remedis_tf.data import micle as micle_lib

    if micle_group not in micle_lib.GROUPS:
      raise ConfigError(f"micle_group must be one of {micle_lib.GROUPS}, got {micle_group!r}")
    if micle_index is None:
      micle_index = micle_lib.build_index(files, group=micle_group, split=split, site=site)
    micle_index.check_matches(
      list_files(files), micle_group, micle_lib.as_tuple(split), micle_lib.as_tuple(site)
    )
  ds = _parsed_records(
    files,
    input_context=input_context,
    seed=seed,
    split=split,
    site=site,
    label_mode=LabelMode.MULTI_CLASS,
    num_labels=None,
    labelled_only=False,
    label_fraction=1.0,
    cache=cache,
  )
  ds = _epochs(ds, repeat=repeat, shuffle_buffer=shuffle_buffer, seed=seed, skip=skip_examples)

  @tf.autograph.experimental.do_not_convert
  def two_views(ex):
    image = _decode(ex["encoded"], config.channels)
    example_seed = seeds.fold_in(base, ex["key"], ex["epoch"])
    out = {"label": ex["label"], "epoch": ex["epoch"]}
    if micle_index is None:
      image2 = image
    else:
      partner = micle_index.partner(ex, example_seed)
      image2 = tf.cond(
        partner["fallback"], lambda: image, lambda: _decode(partner["encoded"], config.channels)
      )
      out.update(partner_key=partner["key"], fallback=partner["fallback"])
    return {
      "view1": augment_view(image, seeds.fold_in(example_seed, 1)),
      "view2": augment_view(image2, seeds.fold_in(example_seed, 2)),
      **out,
    }

  ds = ds.map(two_views, num_parallel_calls=tf.data.AUTOTUNE)
  ds = ds.batch(batch_size, drop_remainder=drop_remainder)
  ds = ds.prefetch(tf.data.AUTOTUNE)
  return ds.with_options(_options(deterministic))


def make_supervised_dataset(
  files: str | Sequence[str],
  *,
  batch_size: int,
  image_size: int,
  training: bool,
  preset: str | AugmentConfig = "natural",
  seed: int = 0,
  label_mode: LabelMode | str | None = None,
  num_labels: int | None = None,
  label_fraction: float = 1.0,
  split: str | Sequence[str] | None = None,
  site: str | Sequence[str] | None = None,
  input_context: tf.distribute.InputContext | None = None,
  repeat: bool | int | None = None,
  shuffle_buffer: int = 1024,
  cache: bool | str = False,
  drop_remainder: bool | None = None,
  with_metadata: bool = False,
  deterministic: bool | None = None,
  skip_examples: int = 0,
) -> tf.data.Dataset:
  """Labelled batches for fine-tuning (augmented) or evaluation (centre crop).

  Unlabelled records are dropped (multi-class: label < 0; multi-label: every
  entry -1). Multi-label vectors keep -1 for unknown entries, so a loss can
  mask them.

  Args:
    files: glob pattern(s) or paths of TFRecord shards.
    batch_size: examples per batch of this input pipeline.
    image_size: output side S.
    training: augment with `preset` and shuffle (True) or centre-crop (False).
    preset: preset name or AugmentConfig (evaluation uses its channels,
      eval_crop_fraction and resize_method).
    seed: seeds shuffles, augmentations and the label-fraction subset.
    label_mode: a LabelMode (or a spelling of one); None reads the manifest
      next to the shards, defaulting to multi-class.
    num_labels: K for multi-label; None reads len(label_names) from the manifest.
    label_fraction: keep the patients whose keyed hash score is below this
      (see select_label_fraction); 1.0 keeps all.
    split: keep only these splits; None keeps all.
    site: keep only these sites; None keeps all.
    input_context: tf.distribute.InputContext for multi-worker sharding.
    repeat: True forever, an int that many epochs, False once; None means
      True when training, else False.
    shuffle_buffer: per-epoch shuffle buffer when training.
    cache: True caches parsed records in memory, a path caches to files.
    drop_remainder: None means True when training, else False.
    with_metadata: yield dicts with 'image', 'label', 'patient_id_hash',
      'site', 'source_id' instead of (image, label) tuples.
    deterministic: None means not training.
    skip_examples: examples to skip first (see make_pretrain_dataset).

  Returns:
    Dataset of (images (B, S, S, 3) float32 in [0, 1], labels) with labels
    (B,) int32 for multi-class and (B, K) float32 for multi-label, or dicts
    when `with_metadata`.
  """
  manifest = read_manifest(files) or {}
  if label_mode is None:
    label_mode = manifest.get("label_mode") or LabelMode.MULTI_CLASS
  try:
    label_mode = LabelMode.parse(label_mode)
  except ValueError as e:
    raise ConfigError(str(e)) from e
  if label_mode == LabelMode.MULTI_LABEL and num_labels is None:
    names = manifest.get("label_names")
    if not names:
      raise ValueError("multi_label needs num_labels (or a manifest with label_names)")
    num_labels = len(names)
  if not 0.0 < label_fraction <= 1.0:
    raise ValueError(f"label_fraction must be in (0, 1], got {label_fraction}")
  repeat = training if repeat is None else repeat
  drop_remainder = training if drop_remainder is None else drop_remainder
  deterministic = (not training) if deterministic is None else deterministic
  config = get_preset(preset)
  base = seeds.make_seed(seed)

  ds = _parsed_records(
    files,
    input_context=input_context,
    seed=seed,
    split=split,
    site=site,
    label_mode=label_mode,
    num_labels=num_labels,
    labelled_only=True,
    label_fraction=label_fraction,
    cache=cache,
    shuffle_files=training,
  )
  ds = _epochs(
    ds,
    repeat=repeat,
    shuffle_buffer=shuffle_buffer if training else 0,
    seed=seed,
    skip=skip_examples,
  )

  augment_view = _augment_function(config, image_size)
  preprocess_eval = _eval_function(config, image_size)

  @tf.autograph.experimental.do_not_convert
  def prepare(ex):
    image = _decode(ex["encoded"], config.channels)
    if training:
      image = augment_view(image, seeds.fold_in(base, ex["key"], ex["epoch"], 1))
    else:
      image = preprocess_eval(image)
    label = ex["multi_label"] if label_mode == LabelMode.MULTI_LABEL else ex["label"]
    if with_metadata:
      return {
        "image": image,
        "label": label,
        "patient_id_hash": ex["patient_id_hash"],
        "site": ex["site"],
        "source_id": ex["source_id"],
      }
    return image, label

  ds = ds.map(prepare, num_parallel_calls=tf.data.AUTOTUNE)
  ds = ds.batch(batch_size, drop_remainder=drop_remainder)
  ds = ds.prefetch(tf.data.AUTOTUNE)
  return ds.with_options(_options(deterministic))


def count_records(files: str | Sequence[str]) -> int:
  """Number of records in the files (one pass)."""
  ds = tf.data.TFRecordDataset(list_files(files))
  return int(ds.reduce(np.int64(0), lambda count, _: count + 1))
