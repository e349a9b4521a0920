"""Convert a SavedModel in the PhysioNet convention to ONNX (via tf2onnx).

Works on our exports (hub_export.export) and on any SavedModel in the calling
convention of the "Medical AI Research Foundations" release. The graph is
taken from, in this order:

  * the `serving_default` signature, when it takes `images` and returns
    'feature_map' (ours: {'embedding', 'feature_map'}), plus the `classify`
    signature when present ({'logits', 'probabilities'});
  * otherwise `obj(images)` (`training=False` when traced), which returns the
    feature map; the embedding is its spatial mean, as in the release's colab.

The ONNX graph (opset DEFAULT_OPSET = 17 unless asked otherwise):

  input  images         float32 (batch, height, width, 3), NHWC, values in [0, 1]
  output feature_map    float32 (batch, height/32, width/32, C)
  output embedding      float32 (batch, C)
  output logits         float32 (batch, K)  with a `classify` signature
  output probabilities  float32 (batch, K)  softmax or sigmoid of the logits

The batch is dynamic; height and width are too unless `image_size` fixes them.
The doc string and metadata_props name the opset, the source and the converter;
a source `assets/remedis.json` is copied into metadata_props['remedis.json'].
Every file is checked by onnx's checker and, by default, run once through
onnxruntime against the SavedModel before it is written.

Needs the `onnx` extra (`pip install '.[onnx]'`: tf2onnx 1.17, onnx, onnxruntime).
One protobuf file holds at most 2 GiB: every released size fits (R152x2: ~0.9 GiB).
"""

from __future__ import annotations

import contextlib
import enum
import hashlib
import os
import tempfile
from collections.abc import Callable, Iterator
from typing import Any

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from hub_export import export, load
from hub_export import metadata as metadata_lib
from remedis_tf.models.outputs import EMBEDDING, FEATURE_MAP, LOGITS, PROBABILITIES

# Opset 17: inside tf2onnx 1.17's range (<= 18) and run by current runtimes
# (onnxruntime >= 1.12, TensorRT >= 8.6, OpenVINO >= 2023.0).
DEFAULT_OPSET = 17
IMAGES = export.IMAGES_ARG
OUTPUT_ORDER = (FEATURE_MAP, EMBEDDING, LOGITS, PROBABILITIES)
# Names of the dynamic dimensions of the graph's inputs and outputs.
DIM_NAMES = {
  IMAGES: ("batch", "height", "width", None),
  FEATURE_MAP: ("batch", "height_32", "width_32", None),
  EMBEDDING: ("batch", None),
  LOGITS: ("batch", None),
  PROBABILITIES: ("batch", None),
}
# Self-check of each written file: max |onnx - savedmodel| / max |savedmodel|
# per output, on 2 random images of VERIFY_SIZE px. The bar of issue 18.
# TF and onnxruntime order float32 sums differently; through BiT-R50x1 (53
# convolutions, GroupNorm means over up to 12544 values) that measured 4.5e-5
# at 448 px, while TF's own float32 result is 2.8e-5 from a float64 run.
VERIFY_RTOL = 1e-4
VERIFY_SIZE = 64
_ONNX_SUFFIX = ".onnx"
OutputsFn = Callable[[tf.Tensor], dict[str, tf.Tensor]]


class ExportFormat(enum.StrEnum):
  """What remedis-export writes."""

  SAVEDMODEL = "savedmodel"
  ONNX = "onnx"
  BOTH = "both"


def _import_converters() -> tuple[Any, Any]:
  """Returns (tf2onnx, onnx); a clear error when the `onnx` extra is missing."""
  try:
    import onnx
    import tf2onnx
  except ImportError as e:
    raise ImportError(
      "ONNX export needs the 'onnx' extra (tf2onnx, onnx, onnxruntime): "
      f"pip install '.[onnx]' or pip install -r requirements-onnx.lock ({e})."
    ) from e
  return tf2onnx, onnx


def default_onnx_path(saved_model_dir: str) -> str:
  """'exports/cxr-50x1-remedis-m' -> 'exports/cxr-50x1-remedis-m.onnx' (beside it)."""
  return os.path.normpath(saved_model_dir) + _ONNX_SUFFIX


def _signature_outputs(obj: Any) -> OutputsFn | None:
  """The outputs function from our serving signatures, or None if they do not fit."""
  signatures = getattr(obj, "signatures", {})
  serving = signatures.get(export.SERVING_SIGNATURE)
  if serving is None or FEATURE_MAP not in serving.structured_outputs:
    return None
  if list(serving.structured_input_signature[1]) != [IMAGES]:
    return None
  classify = signatures.get(export.CLASSIFY_SIGNATURE)

  def outputs(images: tf.Tensor) -> dict[str, tf.Tensor]:
    served = serving(images=images)
    result = {FEATURE_MAP: served[FEATURE_MAP]}
    if EMBEDDING in served:
      result[EMBEDDING] = served[EMBEDDING]
    else:
      result[EMBEDDING] = tf.reduce_mean(served[FEATURE_MAP], axis=[1, 2])
    if classify is not None:
      classified = classify(images=images)
      result[LOGITS] = classified[LOGITS]
      result[PROBABILITIES] = classified[PROBABILITIES]
    return result

  return outputs


def outputs_function(saved_model_dir: str) -> OutputsFn:
  """What the ONNX graph computes, run by TensorFlow from the SavedModel.

  Args:
    saved_model_dir: SavedModel directory.

  Returns:
    images (N, H, W, 3) float32 in [0, 1] -> {'feature_map': (N, H/32, W/32, C),
    'embedding': (N, C)[, 'logits': (N, K), 'probabilities': (N, K)]}.

  Raises:
    ValueError: neither a fitting `serving_default` nor a callable object.
  """
  obj = tf.saved_model.load(saved_model_dir)
  from_signatures = _signature_outputs(obj)
  if from_signatures is not None:
    # The restored signatures hold only a weak reference to `obj`: keep it alive.
    return lambda images, _obj=obj: from_signatures(images)
  # The release's convention; SavedModelEncoder picks the training=False trace
  # and the feature map of a dict output.
  encoder = load.SavedModelEncoder(saved_model_dir, trainable=False)

  def outputs(images: tf.Tensor) -> dict[str, tf.Tensor]:
    feature_map = encoder(images, training=False)
    return {FEATURE_MAP: feature_map, EMBEDDING: tf.reduce_mean(feature_map, axis=[1, 2])}

  return outputs


def relative_errors(outputs_fn: OutputsFn, onnx_path: str, images: np.ndarray) -> dict[str, float]:
  """Runs `images` through onnxruntime (CPU) and `outputs_fn`; compares each output.

  Args:
    outputs_fn: the reference, e.g. `outputs_function(saved_model_dir)`.
    onnx_path: the ONNX file.
    images: float32 (N, H, W, 3) in [0, 1].

  Returns:
    {output name: max |onnx - reference| / max |reference|}.

  Raises:
    ValueError: the ONNX graph and the reference have different outputs.
  """
  import onnxruntime

  want = {k: v.numpy() for k, v in outputs_fn(tf.constant(images, tf.float32)).items()}
  session = onnxruntime.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
  names = [o.name for o in session.get_outputs()]
  got = dict(zip(names, session.run(None, {IMAGES: images.astype(np.float32)}), strict=True))
  if set(got) != set(want):
    raise ValueError(f"{onnx_path}: outputs {sorted(got)}, the reference gives {sorted(want)}.")
  return {
    k: float(np.max(np.abs(got[k] - want[k])) / max(float(np.max(np.abs(want[k]))), 1e-30))
    for k in want
  }


@contextlib.contextmanager
def _optimizer_errors_raised() -> Iterator[None]:
  """Makes tf2onnx raise when one of its graph optimizers fails.

  By default tf2onnx deep-copies the whole graph, weights included, before each
  of its ~36 optimizer passes so that it can skip a failing pass silently;
  with its switch TF2ONNX_CATCH_ERRORS=FALSE a failure surfaces and the
  copies (about a tenth of an R50x1 conversion) are saved.
  """
  key = "TF2ONNX_CATCH_ERRORS"
  previous = os.environ.get(key)
  os.environ[key] = "FALSE"
  try:
    yield
  finally:
    if previous is None:
      del os.environ[key]
    else:
      os.environ[key] = previous


class _SharedSubgraphs:
  """A tf2onnx rewriter that keeps one copy of each repeated computation.

  The graph handed to tf2onnx runs the `serving_default` and `classify`
  signatures, and each holds the whole encoder: two identical copies.
  tf2onnx's own `merge_duplication` pass merges them one layer per sweep of
  the graph, so its time grows with depth times size: converting a BiT-R50x1
  classifier took 137 s against 38-46 s for the encoder alone. This rewriter
  merges them in one pass before the TensorFlow ops are mapped to ONNX: in
  topological order, a node whose op type, attributes (constants: dtype,
  shape and bytes) and already-merged inputs equal an earlier node's is
  replaced by that node. Merging equal deterministic ops does not change any
  value. Nodes that produce a graph output, placeholders and random ops are
  left as they are, and a graph with control-flow subgraphs (whose bodies may
  name outer tensors) is left whole.

  `merged` counts the nodes removed (for the log and the tests).
  """

  def __init__(self) -> None:
    self.merged = 0

  @staticmethod
  def _attributes_key(node: Any) -> bytes:
    digest = hashlib.sha256()
    for name in sorted(node.attr):
      attribute = node.attr[name]
      if node.is_const() and name == "value":
        # A constant's TensorProto carries its node's name; the values decide.
        tensor = type(attribute.t)()
        tensor.CopyFrom(attribute.t)
        tensor.name = ""
        data = tensor.SerializeToString(deterministic=True)
      else:
        data = attribute.SerializeToString(deterministic=True)
      digest.update(name.encode() + b"\0" + hashlib.sha256(data).digest())
    return digest.digest()

  def __call__(self, graph: Any, nodes: list[Any]) -> list[Any]:
    if graph.contained_graphs:
      return nodes
    producer = {out: node for node in nodes for out in node.output}
    consumers: dict[str, list[Any]] = {node.name: [] for node in nodes}
    pending = {}
    for node in nodes:
      sources = {producer[i].name for i in node.input if i in producer}
      pending[node.name] = len(sources)
      for source in sources:
        consumers[source].append(node)
    ready = [node for node in nodes if pending[node.name] == 0]
    graph_outputs = set(graph.outputs)
    canonical: dict[str, str] = {}
    first: dict[tuple, Any] = {}
    removed = set()
    while ready:
      node = ready.pop()
      node.input = [canonical.get(i, i) for i in node.input]
      mergeable = not (
        node.is_graph_input()
        or not node.output
        or graph_outputs.intersection(node.output)
        or ("Random" in node.type and not node.type.startswith("Stateless"))
      )
      if mergeable:
        key = (node.type, node.domain, tuple(node.input), self._attributes_key(node))
        twin = first.setdefault(key, node)
        if twin is not node:  # Equal op and attributes: as many outputs.
          canonical.update(zip(node.output, twin.output, strict=True))
          removed.add(node.name)
      for consumer in consumers[node.name]:
        pending[consumer.name] -= 1
        if pending[consumer.name] == 0:
          ready.append(consumer)
    if any(pending.values()):
      # A cycle (not expected in an inference graph): remove nothing. The inputs
      # rewired so far point at kept nodes that compute the same values.
      return nodes
    self.merged += len(removed)
    return [node for node in nodes if node.name not in removed]


def _split_global_average_pools(model: Any, opset: int) -> int:
  """Replaces each 4-D GlobalAveragePool by a mean over W, then over H.

  tf2onnx turns GroupNorm's spatial means into GlobalAveragePool. With its
  default graph optimizations onnxruntime runs them in its NCHWc layout,
  whose kernel sums all H*W values (12544 at 448 px) in one float32 running
  sum: on BiT-R50x1 at 448 px (random weights) the feature map then strayed
  1.3e-4 of its max from the SavedModel. ReduceMean over W, then over H (the
  same mean, shorter float32 sums) brings it to 4.5e-5.

  tf2onnx emits GlobalAveragePool only below opset 18 (from 18 on, ReduceMean
  takes its axes as an input and tf2onnx leaves it alone), so from 18 on
  nothing is replaced.

  Args:
    model: ONNX ModelProto, changed in place.
    opset: its default-domain opset.

  Returns:
    The number of nodes replaced.
  """
  if opset >= 18:
    return 0
  onnx = _import_converters()[1]
  inferred = onnx.shape_inference.infer_shapes(model)
  ranks = {
    v.name: len(v.type.tensor_type.shape.dim)
    for v in list(inferred.graph.value_info) + list(inferred.graph.input)
    if v.type.tensor_type.HasField("shape")
  }
  graph, nodes, replaced = model.graph, [], 0
  for node in graph.node:
    if node.op_type != "GlobalAveragePool" or ranks.get(node.input[0]) != 4:
      nodes.append(node)
      continue
    width_mean = f"{node.output[0]}__width_mean"
    for axis, inp, out in ((3, node.input[0], width_mean), (2, width_mean, node.output[0])):
      nodes.append(
        onnx.helper.make_node(
          "ReduceMean", [inp], [out], name=f"{node.name}__mean_axis{axis}", axes=[axis], keepdims=1
        )
      )
    replaced += 1
  del graph.node[:]
  graph.node.extend(nodes)
  return replaced


def _finish_graph(model: Any) -> None:
  """Outputs in OUTPUT_ORDER; dynamic dimensions named ('batch', 'height', ...)."""
  graph = model.graph
  by_name = {o.name: o for o in graph.output}
  ordered = [by_name[n] for n in OUTPUT_ORDER if n in by_name]
  del graph.output[:]
  graph.output.extend(ordered)
  for value in list(graph.input) + list(graph.output):
    names = DIM_NAMES.get(value.name, ())
    for dim, name in zip(value.type.tensor_type.shape.dim, names, strict=False):
      if name and not dim.HasField("dim_value"):
        dim.dim_param = name


def export_onnx(
  saved_model_dir: str,
  onnx_path: str,
  *,
  opset: int = DEFAULT_OPSET,
  image_size: int | None = None,
  verify: bool = True,
) -> str:
  """Converts a SavedModel in the PhysioNet convention to an ONNX file.

  Args:
    saved_model_dir: SavedModel directory (ours or the release's).
    onnx_path: the .onnx file to write (parent directories are created).
    opset: ONNX opset of the default domain (tf2onnx 1.17: 13 to 18).
    image_size: fixes height = width = image_size in the graph; None keeps
      them dynamic (multiples of 32). The batch is dynamic either way.
    verify: before writing, run 2 random images (image_size, else VERIFY_SIZE
      px) through onnxruntime and the SavedModel and raise if an output
      differs by more than VERIFY_RTOL of its max abs value.

  Returns:
    `onnx_path`.

  Raises:
    FileNotFoundError: no saved_model.pb in `saved_model_dir`.
    ValueError: the SavedModel gives no rank-4 feature map, the converted
      graph fails onnx's checker, or the verification fails (nothing written).
    ImportError: the `onnx` extra is not installed.
  """
  if not tf.io.gfile.exists(os.path.join(saved_model_dir, "saved_model.pb")):
    raise FileNotFoundError(f"No SavedModel at {saved_model_dir!r} (no saved_model.pb).")
  tf2onnx, onnx = _import_converters()
  source = os.path.basename(os.path.normpath(saved_model_dir))
  logging.info("Converting the SavedModel %s to ONNX (opset %d).", saved_model_dir, opset)
  outputs_fn = outputs_function(saved_model_dir)
  spec = tf.TensorSpec([None, image_size, image_size, 3], tf.float32, name=IMAGES)

  @tf.function(input_signature=[spec])
  def serve(images: tf.Tensor) -> dict[str, tf.Tensor]:
    # Distinct output tensors, so that tf2onnx can give each its name.
    return {k: tf.identity(v, name=k) for k, v in outputs_fn(images).items()}

  feature_shape = serve.get_concrete_function().structured_outputs[FEATURE_MAP].shape
  if feature_shape.rank != 4:
    raise ValueError(
      f"{saved_model_dir}: the feature map has shape {feature_shape}, not (N, H/32, W/32, C)."
    )
  shared = _SharedSubgraphs()
  with _optimizer_errors_raised():
    model, _ = tf2onnx.convert.from_function(
      serve, input_signature=[spec], opset=opset, custom_rewriter=[shared]
    )
  logging.info("Merged %d repeated TensorFlow ops before the conversion.", shared.merged)
  _split_global_average_pools(model, opset)
  _finish_graph(model)
  outputs = ", ".join(o.name for o in model.graph.output)
  model.doc_string = (
    f"remedis-tf ONNX export of the SavedModel {source}, opset {opset}. Input images: "
    "float32 (batch, height, width, 3), NHWC, values in [0, 1]. Outputs: "
    f"{outputs}; feature_map is (batch, height/32, width/32, C), embedding its "
    "spatial mean (batch, C)."
  )
  props = {
    "opset": str(opset),
    "source_saved_model": source,
    "converter": f"tf2onnx {tf2onnx.__version__}; tensorflow {tf.__version__}",
    "input": "images: float32 (batch, height, width, 3), NHWC, in [0, 1]",
  }
  metadata_path = os.path.join(saved_model_dir, "assets", metadata_lib.METADATA_FILENAME)
  if tf.io.gfile.exists(metadata_path):
    with tf.io.gfile.GFile(metadata_path) as f:
      props["remedis.json"] = f.read()
  onnx.helper.set_model_props(model, props)
  try:
    onnx.checker.check_model(model, full_check=True)
  except onnx.checker.ValidationError as e:
    raise ValueError(f"tf2onnx produced an invalid graph from {saved_model_dir}: {e}") from e
  os.makedirs(os.path.dirname(os.path.abspath(onnx_path)), exist_ok=True)
  # Written under a temporary name first: a failed check leaves no .onnx file.
  partial = f"{onnx_path}.partial"
  with open(partial, "wb") as f:
    f.write(model.SerializeToString())
  try:
    if verify:
      size = image_size or VERIFY_SIZE
      images = np.random.default_rng(0).random((2, size, size, 3), dtype=np.float32)
      errors = relative_errors(outputs_fn, partial, images)
      logging.info("ONNX vs SavedModel, max error relative to each output's max: %s", errors)
      bad = {k: e for k, e in errors.items() if not e <= VERIFY_RTOL}
      if bad:
        raise ValueError(
          f"{onnx_path}: the ONNX outputs differ from the SavedModel {saved_model_dir} by "
          f"{bad} of their max (allowed {VERIFY_RTOL}); nothing written."
        )
    os.replace(partial, onnx_path)
  finally:
    if os.path.exists(partial):
      os.remove(partial)
  logging.info("Wrote %s (outputs %s).", onnx_path, outputs)
  return onnx_path


def save_model(
  model: keras.Model,
  export_dir: str,
  metadata: metadata_lib.ExportMetadata,
  export_format: ExportFormat | str = ExportFormat.SAVEDMODEL,
  *,
  onnx_path: str | None = None,
  opset: int = DEFAULT_OPSET,
  custom_gradients: bool = False,
) -> list[str]:
  """Writes `model` as a SavedModel, an ONNX file, or both.

  The ONNX file is always converted from the SavedModel (written to a
  temporary directory for ExportFormat.ONNX), so both hold the same graph.

  Args:
    model: as for `export.export_encoder`.
    export_dir: the SavedModel directory (also names the ONNX source).
    metadata: as for `export.export_encoder`.
    export_format: savedmodel, onnx or both.
    onnx_path: the .onnx file; default `default_onnx_path(export_dir)`.
    opset: ONNX opset.
    custom_gradients: as for `export.export_encoder` (the ONNX graph holds
      forward ops only either way).

  Returns:
    The paths written (SavedModel directory and/or .onnx file).
  """
  export_format = ExportFormat(export_format)
  onnx_path = onnx_path or default_onnx_path(export_dir)
  if export_format == ExportFormat.SAVEDMODEL:
    return [export.export_encoder(model, export_dir, metadata, custom_gradients)]
  if export_format == ExportFormat.BOTH:
    export.export_encoder(model, export_dir, metadata, custom_gradients)
    return [export_dir, export_onnx(export_dir, onnx_path, opset=opset)]
  with tempfile.TemporaryDirectory() as tmp:
    saved_model = os.path.join(tmp, os.path.basename(os.path.normpath(export_dir)))
    export.export_encoder(model, saved_model, metadata, custom_gradients)
    return [export_onnx(saved_model, onnx_path, opset=opset)]
