"""tf.distribute strategies from a name, and the chief/worker conventions.

Names: 'default' (no distribution, one device), 'mirrored' (all local
GPUs/devices), 'multi_worker' (MultiWorkerMirroredStrategy; the cluster comes
from the TF_CONFIG environment variable), 'tpu' (TPUStrategy).

Multi-worker convention (as in the TF multi-worker tutorials): every worker
runs the same program; only the chief writes to `model_dir`; other workers
write checkpoints and summaries into a per-worker scratch directory that is
removed afterwards (they must still *call* save, because saving a distributed
checkpoint is a collective operation).
"""

from __future__ import annotations

import json
import os

import tensorflow as tf

from remedis_tf.errors import UserError

STRATEGIES = ("default", "mirrored", "multi_worker", "tpu")


class StrategyError(UserError, ValueError):
  """A strategy cannot be created from the given name / environment."""


def parse_tf_config() -> dict | None:
  """Returns TF_CONFIG as a dict, None when unset; raises StrategyError when malformed."""
  raw = os.environ.get("TF_CONFIG")
  if not raw:
    return None
  try:
    config = json.loads(raw)
  except json.JSONDecodeError as e:
    raise StrategyError(f"TF_CONFIG is not valid JSON ({e}): {raw[:200]!r}") from e
  cluster = config.get("cluster")
  task = config.get("task")
  if not isinstance(cluster, dict) or not isinstance(task, dict):
    raise StrategyError(
      'TF_CONFIG needs {"cluster": {"worker": ["host:port", ...]}, '
      f'"task": {{"type": "worker", "index": i}}}}; got {raw[:200]!r}'
    )
  task_type, index = task.get("type"), task.get("index")
  if task_type not in cluster or not isinstance(index, int):
    raise StrategyError(f"TF_CONFIG task {task!r} is not in cluster {sorted(cluster)}.")
  if not 0 <= index < len(cluster[task_type]):
    raise StrategyError(
      f"TF_CONFIG task index {index} out of range for {len(cluster[task_type])} "
      f"{task_type!r} addresses."
    )
  return config


def create_strategy(name: str, tpu_address: str | None = None) -> tf.distribute.Strategy:
  """Creates a strategy by name.

  Args:
    name: one of STRATEGIES.
    tpu_address: TPU name or grpc address for 'tpu' ('' or None = local TPU).

  Returns:
    The strategy. Must be called before any other TensorFlow op for
    'multi_worker' and 'tpu'.

  Raises:
    StrategyError: unknown name, missing or malformed TF_CONFIG, no TPU.
  """
  if name == "default":
    return tf.distribute.get_strategy()
  if name == "mirrored":
    return tf.distribute.MirroredStrategy()
  if name == "multi_worker":
    if parse_tf_config() is None:
      raise StrategyError(
        "--strategy=multi_worker needs the TF_CONFIG environment variable, e.g. "
        'TF_CONFIG=\'{"cluster": {"worker": ["host1:12345", "host2:12345"]}, '
        '"task": {"type": "worker", "index": 0}}\' on the first machine.'
      )
    options = tf.distribute.experimental.CommunicationOptions(
      implementation=tf.distribute.experimental.CommunicationImplementation.AUTO
    )
    return tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
  if name == "tpu":
    try:
      resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu_address or "")
      tf.config.experimental_connect_to_cluster(resolver)
      tf.tpu.experimental.initialize_tpu_system(resolver)
    except (ValueError, tf.errors.OpError, RuntimeError) as e:
      raise StrategyError(f"--strategy=tpu: no TPU found at {tpu_address!r}: {e}") from e
    return tf.distribute.TPUStrategy(resolver)
  raise StrategyError(f"Unknown strategy {name!r}; expected one of {', '.join(STRATEGIES)}.")


def task_info(strategy: tf.distribute.Strategy) -> tuple[str | None, int | None]:
  """(task_type, task_id) of this process; (None, None) without a cluster."""
  resolver = getattr(strategy, "cluster_resolver", None)
  if resolver is None:
    return None, None
  return resolver.task_type, resolver.task_id


def is_chief(strategy: tf.distribute.Strategy) -> bool:
  """True for the process that writes checkpoints, summaries and results."""
  task_type, task_id = task_info(strategy)
  if task_type is None:
    return True
  if task_type == "chief":
    return True
  cluster = strategy.cluster_resolver.cluster_spec().as_dict()
  return task_type == "worker" and task_id == 0 and "chief" not in cluster


def write_dir(model_dir: str, strategy: tf.distribute.Strategy) -> str:
  """Where this process writes: model_dir for the chief, a scratch dir otherwise."""
  if is_chief(strategy):
    return model_dir
  task_type, task_id = task_info(strategy)
  return os.path.join(model_dir, ".workers", f"{task_type}_{task_id}")


def num_workers(strategy: tf.distribute.Strategy) -> int:
  """Worker processes in the cluster (1 without a cluster)."""
  resolver = getattr(strategy, "cluster_resolver", None)
  if resolver is None:
    return 1
  cluster = resolver.cluster_spec().as_dict()
  return max(1, len(cluster.get("worker", [])) + len(cluster.get("chief", [])))


def jit_scope(strategy: tf.distribute.Strategy, jit_compile: bool) -> str:
  """What `--jit_compile` XLA-compiles under `strategy`.

  Returns:
    'none' without jit_compile; 'step' (the whole per-replica step) on one
    worker; 'encoder' (the encoder's forward and backward pass only) when
    replicas span several worker processes: XLA cannot compile the
    cross-worker collectives inside a step (synchronized BatchNorm, the
    gathered negatives) on CPU hosts, so those stay outside the compiled
    part. BiT encoders use GroupNorm and hold no collective.
  """
  if not jit_compile:
    return "none"
  if isinstance(strategy, tf.distribute.TPUStrategy):
    return "step"
  return "encoder" if num_workers(strategy) > 1 else "step"


def per_replica_batch_size(global_batch_size: int, strategy: tf.distribute.Strategy) -> int:
  """global / replicas, or StrategyError when it does not divide evenly."""
  replicas = strategy.num_replicas_in_sync
  if global_batch_size <= 0 or global_batch_size % replicas:
    raise StrategyError(
      f"global_batch_size={global_batch_size} must be a positive multiple of the "
      f"{replicas} replicas in sync."
    )
  return global_batch_size // replicas


def consumed_examples(ctx: tf.distribute.InputContext, global_batch_size: int, steps: int) -> int:
  """Examples one input pipeline has delivered after `steps` training steps.

  Each step takes one per-replica batch per replica fed by the pipeline
  (num_replicas_in_sync / num_input_pipelines of them).
  """
  replicas_per_pipeline = max(1, ctx.num_replicas_in_sync // ctx.num_input_pipelines)
  return int(steps) * ctx.get_per_replica_batch_size(global_batch_size) * replicas_per_pipeline
