"""The conversion as an Apache Beam pipeline (optional extra: apache-beam).

Each element is one deterministic chunk; a DoFn converts it with exactly the
code the local runner uses (`convert.convert_chunk`) and writes the chunk's
shards and marker through `shards.ChunkWriter`, so Beam output equals local
output record for record, and Beam runs resume the same way. The launching
process then builds the manifest from the markers (`convert.convert` with
runner="beam").

The output directory must be visible to every Beam worker (a local path for
the DirectRunner; a shared file system for a distributed runner).
"""

from __future__ import annotations

from collections.abc import Sequence

# How remedis-convert and remedis-tile run: local processes, or this Beam pipeline.
RUNNERS = ("local", "beam")

try:
  import apache_beam as beam
  from apache_beam.options.pipeline_options import PipelineOptions
except ImportError:  # The extra is optional; run_chunks explains how to add it.
  beam = None


def _require_beam() -> None:
  if beam is None:
    raise ImportError(
      "runner 'beam' needs Apache Beam: pip install apache-beam "
      "(it currently pins protobuf < 7; use a separate environment "
      "if your TensorFlow needs protobuf 7)"
    )


def run_chunks(job, chunks: Sequence, options: Sequence[str] = ()) -> None:
  """Converts `chunks` with a Beam pipeline (markers land in the work folder).

  Args:
    job: a `convert.Job`.
    chunks: the pending `shards.Chunk`s.
    options: Beam pipeline options (default: DirectRunner, in-memory).
  """
  _require_beam()
  from tfrecords_tools import convert  # Circular at import time; fine here.

  if not chunks:
    return
  argv = list(options) or ["--runner=DirectRunner"]
  with beam.Pipeline(options=PipelineOptions(argv)) as pipeline:
    _ = (
      pipeline
      | "Chunks" >> beam.Create(list(chunks))
      | "Spread" >> beam.Reshuffle()
      | "Convert" >> beam.Map(lambda chunk, job=job: convert.convert_chunk(job, chunk))
      | "Count" >> beam.combiners.Count.Globally()
    )


def run_each(fn, items: Sequence, options: Sequence[str] = ()) -> None:
  """Calls `fn(item)` for every item in a Beam pipeline, for its side effects.

  Used by `remedis-tile`, whose survey and tiling steps write their own
  markers and shards (the same functions its local runner calls).

  Args:
    fn: a picklable function of one item (e.g. a functools.partial of a
      module-level function).
    items: the items (picklable).
    options: Beam pipeline options (default: DirectRunner, in-memory).
  """
  _require_beam()
  if not items:
    return
  argv = list(options) or ["--runner=DirectRunner"]
  with beam.Pipeline(options=PipelineOptions(argv)) as pipeline:
    _ = (
      pipeline
      | "Items" >> beam.Create(list(items))
      | "Spread" >> beam.Reshuffle()
      | "Run" >> beam.Map(fn)
      | "Count" >> beam.combiners.Count.Globally()
    )
