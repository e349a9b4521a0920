"""WarmupCosine against closed-form values."""

import math

import keras
import numpy as np
import pytest

from remedis_tf.optim import WarmupCosine, scaled_learning_rate


@pytest.mark.parametrize(
  "scaling,peak",
  [("linear", 0.3 * 1024 / 256), ("sqrt", 0.3 * math.sqrt(1024)), ("none", 0.3)],
)
def test_closed_form(scaling, peak):
  s = WarmupCosine(0.3, batch_size=1024, warmup_steps=100, total_steps=1100, scaling=scaling)
  assert scaled_learning_rate(0.3, 1024, scaling) == pytest.approx(peak)
  np.testing.assert_allclose(float(s(0)), 0.0, atol=1e-7)
  np.testing.assert_allclose(float(s(50)), peak / 2, rtol=1e-6)
  np.testing.assert_allclose(float(s(100)), peak, rtol=1e-6)  # warmup end
  np.testing.assert_allclose(float(s(600)), peak / 2, rtol=1e-5)  # cosine mid-way
  np.testing.assert_allclose(float(s(350)), peak * 0.5 * (1 + math.cos(math.pi / 4)), rtol=1e-5)
  np.testing.assert_allclose(float(s(1100)), 0.0, atol=1e-6)  # end
  np.testing.assert_allclose(float(s(2000)), 0.0, atol=1e-6)  # stays at zero


def test_no_warmup_and_validation():
  s = WarmupCosine(0.1, 256, 0, 10)
  np.testing.assert_allclose(float(s(0)), 0.1, rtol=1e-6)
  with pytest.raises(ValueError):
    WarmupCosine(0.1, 256, 10, 10)
  with pytest.raises(ValueError):
    WarmupCosine(0.1, 256, 1, 10, scaling="cubic")


def test_serializable():
  s = WarmupCosine(0.3, 512, 10, 100, "sqrt")
  restored = keras.optimizers.schedules.deserialize(keras.optimizers.schedules.serialize(s))
  assert isinstance(restored, WarmupCosine)
  assert restored.get_config() == s.get_config()
  assert float(restored(37)) == pytest.approx(float(s(37)))
