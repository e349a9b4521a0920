"""The interface every self-supervised objective implements.

The training loop is written once against `Objective`; SimCLR, MoCo-v2,
Barlow Twins, ReLIC and BYOL are interchangeable by name
(`remedis_tf.objectives.get(name, **overrides)`).

Life cycle, as the training loop drives it::

  strategy = tf.distribute.MirroredStrategy()  # or any strategy, or none
  with strategy.scope():
    encoder = build_bit_encoder(...)
    objective = objectives.get("simclr", temperature=0.1)
    objective.build(encoder, embedding_dim=encoder.output["embedding"].shape[-1])
    variables = encoder.trainable_variables + [
        v for net in objective.trainable_networks for v in net.trainable_variables]
    opt.build(variables)  # Keras optimizers must be built before the first strategy.run
    ckpt = tf.train.Checkpoint(encoder=encoder, optimizer=opt,
                               objective=tf.train.Checkpoint(**objective.checkpoint_items()))

  @tf.function
  def train_step(view1, view2):           # per-replica batches
    def step_fn(v1, v2):
      with tf.GradientTape() as tape:
        loss, metrics, _ = objective.compute_loss(encoder, v1, v2, training=True)
      grads = tape.gradient(loss, variables)
      opt.apply_gradients(zip(grads, variables))  # Keras all-reduces with SUM
      objective.after_step()
      return metrics
    per_replica = strategy.run(step_fn, args=(view1, view2))
    return {k: strategy.reduce("MEAN", v, axis=None) for k, v in per_replica.items()}

Loss convention (exact). `compute_loss` runs in a replica context (inside
`strategy.run`, or the default replica context when there is no strategy).
It returns a float32 scalar `loss_r` for replica r such that

  sum over replicas r of loss_r == the objective's loss on the global batch,

i.e. for a loss that is a mean over examples, `loss_r = local_mean / R` with
`R = num_replicas_in_sync` (per-replica batches are equal in size); for a loss
defined on whole-batch statistics (Barlow Twins), `loss_r = global_loss / R`.
Gradients flow through every cross-replica gather/all-reduce, so
`tape.gradient(loss_r, variables)` summed over replicas (what Keras 3
optimizers do in `apply_gradients` under a strategy) is exactly the gradient of
the global loss. Do not divide by R again and do not use a loss-reduction
wrapper. Mixed precision: the loss is always float32; a LossScaleOptimizer may
scale it as usual.

`after_step` must be called in the same replica function (same `strategy.run`
call) as the `compute_loss` of that step: MoCo enqueues the keys it computed.

Output: `compute_loss` returns a `LossOutput(loss, metrics, embedding)`;
`embedding` is the online encoder's embedding of view 1 (n, C), computed
anyway by every objective, so a caller can train a linear probe on it
(under `tf.stop_gradient`) without a second encoder pass.

Metrics convention: `metrics` maps names to float32 scalars that are already
averaged over the global batch (identical on every replica), so reducing them
with `ReduceOp.MEAN` (or reading any replica) is correct. Every objective
reports `metrics["loss"]`, the unscaled global loss.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Mapping
from typing import NamedTuple

import keras
import tensorflow as tf

from remedis_tf.models import heads
from remedis_tf.models.outputs import EMBEDDING, PROJECTION

EncoderFactory = Callable[[], keras.Model]


class LossOutput(NamedTuple):
  """What `Objective.compute_loss` returns.

  Attributes:
    loss: float32 scalar, this replica's share of the global loss (see the
      module's loss convention).
    metrics: float32 scalars already averaged over the global batch.
    embedding: (n, C) the online encoder's embedding of view 1 of the local
      batch, with its gradient path (callers that only read it stop it).
  """

  loss: tf.Tensor
  metrics: dict[str, tf.Tensor]
  embedding: tf.Tensor


class Objective(abc.ABC):
  """A self-supervised objective on two augmented views.

  Subclasses hold a frozen config dataclass (`self.config`) and create their
  networks in `build`.

  Attributes:
    name: registry name ('simclr', 'moco_v2', 'barlow_twins', 'relic', 'byol').
  """

  name: str = ""

  def __init__(self) -> None:
    self._built = False

  @property
  def built(self) -> bool:
    return self._built

  @abc.abstractmethod
  def build(
    self,
    encoder: keras.Model,
    embedding_dim: int,
    encoder_factory: EncoderFactory | None = None,
  ) -> None:
    """Creates the objective's networks and state; call inside `strategy.scope()`.

    Args:
      encoder: the online encoder; a built keras.Model mapping float32 images
        (N, H, W, 3) in [0, 1] to {'feature_map': (N, h, w, C),
        'embedding': (N, C)}. Objectives use `encoder(x)['embedding']`.
      embedding_dim: C, the width of `encoder(x)['embedding']`.
      encoder_factory: only used by objectives with a momentum/target encoder
        (MoCo-v2, BYOL). A zero-argument callable returning a fresh, built
        encoder with the same architecture. If None, the target encoder is
        `keras.models.clone_model(encoder)` (works for functional and
        serialisable models). Either way its weights are then copied from
        `encoder`.
    """

  @property
  def trainable_networks(self) -> list[keras.Model]:
    """Extra networks the optimizer updates together with the encoder.

    E.g. the projection head (SimCLR, MoCo, Barlow Twins, ReLIC) or projector
    and predictor (BYOL). Target/momentum networks are NOT included.
    """
    return []

  @property
  def projection_head(self) -> keras.Model | None:
    """The online projection head, or None. Used for export / fine-tuning.

    Heads from `remedis_tf.models.heads` return {'projection': z,
    'finetune_features': h_sel}, where h_sel is the layer picked by the
    config's `ft_proj_selector` (0 = the encoder embedding itself).
    """
    return None

  def checkpoint_items(self) -> dict[str, tf.Module | tf.Variable | keras.Model]:
    """Objective state to save in a `tf.train.Checkpoint` (keyword -> trackable).

    Includes the trainable networks and any non-trainable state (momentum
    encoder, queue, queue pointer, step counter). Keys are stable names.
    """
    return {}

  @abc.abstractmethod
  def compute_loss(
    self,
    encoder: keras.Model,
    view1: tf.Tensor,
    view2: tf.Tensor,
    training: bool,
  ) -> LossOutput:
    """The per-replica loss on two views of the local batch (replica context).

    Args:
      encoder: the online encoder (same object as given to `build`).
      view1: float32 (n, H, W, 3) in [0, 1], first view of the local batch.
      view2: float32 (n, H, W, 3), second view; row i pairs with view1 row i.
      training: passed to every network call (BatchNorm mode etc.).

    Returns:
      LossOutput(loss_r, metrics, embedding): loss_r a float32 scalar
      following the module's loss convention (sum over replicas = global
      loss); metrics a dict of float32 scalars already averaged over the
      global batch; embedding the encoder's (n, C) embedding of `view1`.
    """

  def after_step(self) -> None:
    """Post-update state changes (EMA of target networks, queue update).

    Called inside `strategy.run` after `optimizer.apply_gradients`, once per
    step, in the same replica context as `compute_loss`. Objectives without
    such state do nothing.
    """
    return None  # A docstring-only body trips AutoGraph's converter.


class ProjectionHeadObjective(Objective):
  """An objective whose only extra network is one projection head, `self.head`.

  SimCLR, Barlow Twins and ReLIC share this shape: both views go through the
  encoder as one batch, then through the head; only the loss and the head's
  BatchNorm placement differ. Subclasses set `head_name` and `head_options`
  (`use_bn`, `final_bn` of `heads.build_projection_head`); their config has
  `proj_num_layers`, `proj_output_dim`, `proj_hidden_dim` and optionally
  `ft_proj_selector`.
  """

  head_name: str = "projection_head"
  head_options: Mapping[str, bool] = {}

  def __init__(self) -> None:
    super().__init__()
    self.head: keras.Model | None = None

  def build(
    self,
    encoder: keras.Model,
    embedding_dim: int,
    encoder_factory: EncoderFactory | None = None,
  ) -> None:
    """Creates the projection head (there is no target encoder)."""
    del encoder, encoder_factory
    c = self.config
    self.head = heads.build_projection_head(
      embedding_dim,
      num_layers=c.proj_num_layers,
      output_dim=c.proj_output_dim,
      hidden_dim=c.proj_hidden_dim,
      ft_proj_selector=getattr(c, "ft_proj_selector", 0),
      name=self.head_name,
      **self.head_options,
    )
    self._built = True

  @property
  def trainable_networks(self) -> list[keras.Model]:
    return [self.head]

  @property
  def projection_head(self) -> keras.Model | None:
    return self.head

  def checkpoint_items(self) -> dict[str, tf.Module | tf.Variable | keras.Model]:
    return {"projection_head": self.head}

  def project_views(
    self, encoder: keras.Model, view1: tf.Tensor, view2: tf.Tensor, training: bool
  ) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """Projections (n, d) of both views, computed in one encoder/head call.

    Args:
      encoder: the online encoder.
      view1: float32 (n, H, W, 3) first views.
      view2: float32 (n, H, W, 3) second views.
      training: passed to the encoder and head.

    Returns:
      (z1, z2, h1): z1, z2 (n, d) the head's `projection` output for each
      view; h1 (n, C) the encoder embedding of view 1.
    """
    x = tf.concat([view1, view2], axis=0)
    h = encoder(x, training=training)[EMBEDDING]
    z = self.head(h, training=training)[PROJECTION]
    z1, z2 = tf.split(z, 2, axis=0)
    return z1, z2, h[: tf.shape(view1)[0]]


def resolve_replica_context(
  strategy_or_replica_context: tf.distribute.Strategy | tf.distribute.ReplicaContext | None,
) -> tf.distribute.ReplicaContext:
  """Returns the replica context to use for cross-replica communication.

  Args:
    strategy_or_replica_context: None (use the current replica context, which
      is the default one without a strategy), a ReplicaContext, or a Strategy
      (its current replica context; must be called inside `strategy.run`).

  Returns:
    A tf.distribute.ReplicaContext.

  Raises:
    ValueError: if called in a cross-replica context.
  """
  if isinstance(strategy_or_replica_context, tf.distribute.ReplicaContext):
    return strategy_or_replica_context
  ctx = tf.distribute.get_replica_context()
  if ctx is None:
    raise ValueError(
      "Cross-replica losses must run in a replica context; call them inside strategy.run."
    )
  return ctx


def assign_in_replica_context(pairs: list[tuple[tf.Variable, tf.Tensor]]) -> None:
  """Assigns new values to (possibly mirrored) variables from a replica context.

  The values must be identical on every replica (e.g. computed from mirrored
  variables and all-gathered tensors). Uses merge_call + extended.update, so
  it works for MirroredVariables of any aggregation and without a strategy.

  Args:
    pairs: (variable, new value) pairs.
  """
  if not pairs:
    return

  def merge_fn(strategy: tf.distribute.Strategy, values: list[tf.Tensor]) -> None:
    for (var, _), value in zip(pairs, values, strict=True):
      if isinstance(var, keras.Variable):
        var = var.value  # the backing (possibly mirrored) tf.Variable
      strategy.extended.update(var, lambda v, x: v.assign(x), args=(value,), group=False)

  tf.distribute.get_replica_context().merge_call(merge_fn, args=([value for _, value in pairs],))
