"""LARS: layer-wise adaptive rate scaling (You, Gitman & Ginsburg, 2017), Keras 3.

The update SimCLR and REMEDIS use ("classic momentum"): for a parameter w with
gradient g, learning rate lr, momentum mu, trust coefficient eeta and weight
decay wd,

  g'    = g + wd * w                          (unless w is excluded from decay)
  ratio = eeta * ||w|| / ||g'||               (1 if either norm is 0, or if w is
                                               excluded from layer adaptation)
  v     = mu * v + lr * ratio * g'
  w     = w - v                               (Nesterov: w - (mu * v + lr * ratio * g'))

Weight decay is part of the gradient before the trust ratio, not decoupled.
Variables are excluded by role, never by name: pass the variables themselves
(or a predicate on them); `remedis_tf.models.norm_and_bias_variables(*models)`
collects the variables of normalisation layers and layers' biases.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import keras
from keras import ops

VariablePredicate = Callable[[Any], bool]
VariableSelection = Sequence[Any] | VariablePredicate | None


def _selector(selection: VariableSelection) -> VariablePredicate:
  """Turns a list of variables or a predicate into a predicate (by identity)."""
  if selection is None:
    return lambda v: False
  if callable(selection):
    return selection
  ids = set()
  for v in selection:
    ids.add(id(v))
    if isinstance(v, keras.Variable):
      ids.add(id(v.value))
  return lambda v: id(v) in ids or (isinstance(v, keras.Variable) and id(v.value) in ids)


@keras.saving.register_keras_serializable(package="remedis_tf")
class LARS(keras.optimizers.Optimizer):
  """LARS with classic momentum, as in SimCLR; see the module docstring.

  Under tf.distribute the per-replica gradients are summed by Keras before
  `update_step` (so losses follow the "sum over replicas" convention), and the
  update runs on every replica's copy identically. Works in `tf.function`,
  with `jit_compile=True` and under mixed precision (wrap in
  `keras.optimizers.LossScaleOptimizer`).

  Exclusions are not part of `get_config` (they are variables or callables);
  pass them again when re-creating an optimizer from its config.
  """

  def __init__(
    self,
    learning_rate: float | keras.optimizers.schedules.LearningRateSchedule = 0.1,
    momentum: float = 0.9,
    weight_decay: float = 0.0,
    eeta: float = 1e-3,
    nesterov: bool = False,
    exclude_from_weight_decay: VariableSelection = None,
    exclude_from_layer_adaptation: VariableSelection = None,
    name: str = "lars",
    **kwargs: Any,
  ) -> None:
    """Creates the optimizer.

    Args:
      learning_rate: float or LearningRateSchedule (e.g. `WarmupCosine`).
      momentum: momentum mu in [0, 1).
      weight_decay: L2 coefficient added to the gradient before the trust ratio.
      eeta: LARS trust coefficient.
      nesterov: use Nesterov momentum.
      exclude_from_weight_decay: variables (list) or a predicate on a variable;
        selected variables get no weight decay.
      exclude_from_layer_adaptation: same for the trust ratio (ratio = 1).
        If None, the weight-decay exclusion is used (SimCLR's behaviour).
      name: optimizer name.
      **kwargs: base Optimizer arguments (clipnorm, global_clipnorm, ema...).
        Keras' own decoupled `weight_decay` is not used.
    """
    super().__init__(learning_rate=learning_rate, name=name, weight_decay=None, **kwargs)
    if not 0.0 <= momentum < 1.0:
      raise ValueError(f"momentum must be in [0, 1), got {momentum}.")
    self.momentum = float(momentum)
    self.lars_weight_decay = float(weight_decay)
    self.eeta = float(eeta)
    self.nesterov = bool(nesterov)
    self._exclude_decay = _selector(exclude_from_weight_decay)
    self._exclude_adaptation = (
      self._exclude_decay
      if exclude_from_layer_adaptation is None
      else _selector(exclude_from_layer_adaptation)
    )

  def build(self, variables: list[keras.Variable]) -> None:
    """Creates momentum slots and fixes each variable's exclusion flags."""
    if self.built:
      return
    super().build(variables)
    self.momentums = [self.add_variable_from_reference(v, "momentum") for v in variables]
    self._use_decay = [not self._exclude_decay(v) for v in variables]
    self._use_adaptation = [not self._exclude_adaptation(v) for v in variables]

  def update_step(self, gradient: Any, variable: Any, learning_rate: Any) -> None:
    """Applies one LARS step to `variable` (see the module docstring)."""
    # Keras' own optimizers locate slots this way; it resolves distributed
    # per-device copies to the variable given to `build`.
    index = self._get_variable_index(variable)
    dtype = variable.dtype
    lr = ops.cast(learning_rate, dtype)
    grad = ops.cast(gradient, dtype)
    if self._use_decay[index] and self.lars_weight_decay:
      grad = grad + ops.cast(self.lars_weight_decay, dtype) * variable
    if self._use_adaptation[index]:
      w_norm = ops.sqrt(ops.sum(ops.square(variable)))
      g_norm = ops.sqrt(ops.sum(ops.square(grad)))
      safe_g_norm = ops.where(g_norm > 0, g_norm, ops.ones_like(g_norm))
      ratio = ops.where(
        ops.logical_and(w_norm > 0, g_norm > 0),
        ops.cast(self.eeta, dtype) * w_norm / safe_g_norm,
        ops.ones_like(w_norm),
      )
      scaled_lr = lr * ratio
    else:
      scaled_lr = lr
    velocity = self.momentums[index]
    new_velocity = ops.cast(self.momentum, dtype) * velocity + scaled_lr * grad
    self.assign(velocity, new_velocity)
    if self.nesterov:
      update = ops.cast(self.momentum, dtype) * new_velocity + scaled_lr * grad
    else:
      update = new_velocity
    self.assign_sub(variable, update)

  def get_config(self) -> dict[str, Any]:
    config = super().get_config()
    config.update(
      momentum=self.momentum,
      weight_decay=self.lars_weight_decay,
      eeta=self.eeta,
      nesterov=self.nesterov,
    )
    return config
