"""WarmupCosine against closed-form values.

Tolerances: the float32 arithmetic of the schedule, replayed on
`float32_bounds.Bounded` (constants rounded to float32, a cos kernel of 2 ulp),
times SAFETY; where that arithmetic is exact (0 at step 0) the test demands
exact equality.
"""

import math

import keras
import numpy as np
import pytest
from float32_bounds import SAFETY, Bounded, assert_within

from remedis_tf.optim import WarmupCosine, scaled_learning_rate


def _float32_schedule(peak: float, warmup: int, total: int, step: int) -> Bounded:
  """WarmupCosine.__call__'s float32 operations on exact inputs (value and error bound)."""
  k = Bounded.exact(float(step))
  if step < warmup:
    return Bounded.rounded(peak) * k / float(warmup)
  progress = (k - float(warmup)) / float(total - warmup)
  if step >= total:
    progress = Bounded.exact(1.0)  # clipped
  return Bounded.rounded(peak * 0.5) * (1.0 + (Bounded.rounded(math.pi) * progress).cos())


@pytest.mark.parametrize(
  "scaling,peak",
  [("linear", 0.3 * 1024 / 256), ("sqrt", 0.3 * math.sqrt(1024)), ("none", 0.3)],
)
def test_closed_form(scaling, peak):
  s = WarmupCosine(0.3, batch_size=1024, warmup_steps=100, total_steps=1100, scaling=scaling)
  assert scaled_learning_rate(0.3, 1024, scaling) == peak  # the same float64 expression
  closed_form = {
    0: 0.0,
    50: peak / 2,
    100: peak,  # warmup end
    350: peak * 0.5 * (1 + math.cos(math.pi / 4)),
    600: peak / 2,  # cosine mid-way
    1100: 0.0,  # end
    2000: 0.0,  # stays at zero
  }
  for step, want in closed_form.items():
    bound = SAFETY * _float32_schedule(peak, 100, 1100, step).e
    assert_within(float(s(step)), want, bound, f"step {step}")


def test_no_warmup_and_validation():
  s = WarmupCosine(0.1, 256, 0, 10)
  # fl(0.1 / 2) * (1 + cos(fl(pi) * 0)) = fl(0.05) * 2: exactly the float32 nearest 0.1.
  assert float(s(0)) == float(np.float32(0.1))
  with pytest.raises(ValueError):
    WarmupCosine(0.1, 256, 10, 10)
  with pytest.raises(ValueError):
    WarmupCosine(0.1, 256, 1, 10, scaling="cubic")


def test_serializable():
  s = WarmupCosine(0.3, 512, 10, 100, "sqrt")
  restored = keras.optimizers.schedules.deserialize(keras.optimizers.schedules.serialize(s))
  assert isinstance(restored, WarmupCosine)
  assert restored.get_config() == s.get_config()
  assert float(restored(37)) == float(s(37))  # the same float32 operations on the same config
