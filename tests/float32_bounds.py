"""Float32 rounding-error bounds that the numeric tests' tolerances rest on.

A tolerance is a bound on how far float32 arithmetic can carry a result from
the exact one, not a number picked until a test passes. This module derives
such bounds by running error analysis (Wilkinson; Higham, *Accuracy and
Stability of Numerical Algorithms*, 2nd ed., ch. 2-4): a computation is
replayed in float64 on `Bounded` values, each carrying the value and a
first-order bound on the absolute error that float32 arithmetic, done in the
same order of operations, accumulates on it. With u = 2^-24 (float32's unit
roundoff, half of its machine epsilon 2^-23):

* a rounded +, -, *, / adds u |result|;
* a sum of n terms, in *any* order or split (so also across replicas), adds
  gamma(n - 1) * sum |term|, gamma(k) = k u / (1 - k u) (Higham, eq. 4.4);
* exp, log and rsqrt kernels add KERNEL_ULPS * u |result| (Eigen's float
  kernels are accurate to about one ulp; two are allowed);
* errors already on the inputs propagate through the derivative.

Two float32 evaluations of the same exact quantity (e.g. one replica and two)
differ by at most the sum of their two bounds. Tests multiply a bound by
SAFETY, which covers the dropped second-order terms (O(u^2), here below 1e-10
relative) and small differences between this replay and the kernels' exact
sequence of operations (fused or re-associated sums, which the gamma(n - 1)
term already allows for).

Worst-case bounds suit small computations (a loss on a few projections, an
optimizer step). For deep networks and long sums they are orders of
magnitude above what float32 does; the second part of this module gives the
statistical bounds (Higham & Mary, 2019) that the network-level tests use.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

U32 = 2.0**-24  # float32 unit roundoff u: |fl(x) - x| <= u |x|
KERNEL_ULPS = 2.0  # exp, log, rsqrt, sqrt, cos: at most 2 u relative error
SAFETY = 2.0  # the factor every test applies to a bound derived here


def gamma(n: int, u: float = U32) -> float:
  """Higham's gamma_n = n u / (1 - n u): the relative error of n chained roundings."""
  return n * u / (1.0 - n * u)


@dataclasses.dataclass(frozen=True)
class Bounded:
  """A float64 value and a first-order bound on a float32 computation's error on it.

  Attributes:
    v: the exact (float64) value, any shape.
    e: same shape, >= 0: |float32 result - v| <= e (to first order in u).
  """

  v: np.ndarray
  e: np.ndarray

  @staticmethod
  def exact(x: np.ndarray | float) -> Bounded:
    """An input that float32 holds exactly (e.g. a float32 array given to the op)."""
    x = np.asarray(x, np.float64)
    return Bounded(x, np.zeros_like(x))

  @staticmethod
  def rounded(x: np.ndarray | float) -> Bounded:
    """A constant rounded to float32 once (e.g. 1 / temperature)."""
    x = np.asarray(x, np.float64)
    return Bounded(x, U32 * np.abs(x))

  def _op(self, v: np.ndarray, e: np.ndarray) -> Bounded:
    return Bounded(v, e + U32 * np.abs(v))

  def __add__(self, o: Bounded | float) -> Bounded:
    o = _as_bounded(o)
    return self._op(self.v + o.v, self.e + o.e)

  __radd__ = __add__

  def __sub__(self, o: Bounded | float) -> Bounded:
    o = _as_bounded(o)
    return self._op(self.v - o.v, self.e + o.e)

  def __rsub__(self, o: Bounded | float) -> Bounded:
    return _as_bounded(o) - self

  def __rtruediv__(self, o: Bounded | float) -> Bounded:
    return _as_bounded(o) / self

  def __neg__(self) -> Bounded:
    return Bounded(-self.v, self.e)

  def __mul__(self, o: Bounded | float) -> Bounded:
    o = _as_bounded(o)
    return self._op(self.v * o.v, np.abs(self.v) * o.e + np.abs(o.v) * self.e + self.e * o.e)

  __rmul__ = __mul__

  def __truediv__(self, o: Bounded | float) -> Bounded:
    o = _as_bounded(o)
    v = self.v / o.v
    return self._op(v, (self.e + np.abs(v) * o.e) / (np.abs(o.v) - o.e))

  def __getitem__(self, idx) -> Bounded:
    return Bounded(self.v[idx], self.e[idx])

  @property
  def T(self) -> Bounded:  # noqa: N802  (mirrors ndarray.T)
    return Bounded(self.v.T, self.e.T)

  def sum(self, axis: int | None = None, keepdims: bool = False) -> Bounded:
    """A float32 sum in any order: gamma(n - 1) * sum |terms| on top of the terms' errors."""
    n = self.v.size if axis is None else self.v.shape[axis]
    v = self.v.sum(axis=axis, keepdims=keepdims)
    e = self.e.sum(axis=axis, keepdims=keepdims)
    return Bounded(v, e + gamma(max(n - 1, 0)) * np.abs(self.v).sum(axis=axis, keepdims=keepdims))

  def mean(self, axis: int | None = None, keepdims: bool = False) -> Bounded:
    n = self.v.size if axis is None else self.v.shape[axis]
    return self.sum(axis, keepdims) / float(n)

  def square(self) -> Bounded:
    return self * self

  def max(self, axis: int, keepdims: bool = False) -> Bounded:
    """Exact: the maximum picks one of the (already rounded) values."""
    i = np.expand_dims(np.argmax(self.v, axis=axis), axis)
    out = Bounded(np.take_along_axis(self.v, i, axis), np.take_along_axis(self.e, i, axis))
    return out if keepdims else Bounded(out.v.squeeze(axis), out.e.squeeze(axis))

  def maximum(self, floor: float) -> Bounded:
    """Exact: max(x, floor) picks x or the constant."""
    return Bounded(np.maximum(self.v, floor), np.where(self.v > floor, self.e, 0.0))

  def exp(self) -> Bounded:
    v = np.exp(self.v)
    return Bounded(v, v * self.e + KERNEL_ULPS * U32 * v)

  def log(self) -> Bounded:
    v = np.log(self.v)
    return Bounded(v, self.e / (self.v - self.e) + KERNEL_ULPS * U32 * np.abs(v))

  def rsqrt(self) -> Bounded:
    v = 1.0 / np.sqrt(self.v)
    return Bounded(v, 0.5 * v * self.e / (self.v - self.e) + KERNEL_ULPS * U32 * v)

  def sqrt(self) -> Bounded:
    v = np.sqrt(self.v)
    return Bounded(v, 0.5 * self.e / np.maximum(v, 1e-300) + KERNEL_ULPS * U32 * v)

  def cos(self) -> Bounded:
    v = np.cos(self.v)
    return Bounded(v, np.abs(np.sin(self.v)) * self.e + KERNEL_ULPS * U32 * np.abs(v))


def _as_bounded(x: Bounded | float | np.ndarray) -> Bounded:
  return x if isinstance(x, Bounded) else Bounded.exact(x)


def matmul(a: Bounded, b: Bounded) -> Bounded:
  """a @ b in float32: each entry a length-k dot product (products, then any-order sum)."""
  k = a.v.shape[-1]
  v = a.v @ b.v
  e = np.abs(a.v) @ b.e + a.e @ np.abs(b.v) + a.e @ b.e
  return Bounded(v, e + gamma(k) * (np.abs(a.v) @ np.abs(b.v)))


def concat(parts: list[Bounded], axis: int) -> Bounded:
  return Bounded(
    np.concatenate([p.v for p in parts], axis), np.concatenate([p.e for p in parts], axis)
  )


def l2_normalize(z: Bounded, epsilon: float = 1e-12) -> Bounded:
  """tf.math.l2_normalize(z, axis=-1) = z * rsqrt(max(sum(z^2), epsilon))."""
  return z * z.square().sum(axis=-1, keepdims=True).maximum(epsilon).rsqrt()


def log_softmax(logits: Bounded, mask: np.ndarray | None = None) -> Bounded:
  """Row-wise log-softmax as TF computes it: s - max - log(sum(exp(s - max))).

  Args:
    logits: (m, k).
    mask: optional (m, k) bool; True entries are excluded (TF subtracts 1e9,
      so their exp is exactly 0 in float32 and they add nothing).

  Returns:
    (m, k) log-probabilities; masked entries hold -inf with error 0.
  """
  keep = np.ones(logits.v.shape, bool) if mask is None else ~mask
  s = Bounded(np.where(keep, logits.v, -np.inf), np.where(keep, logits.e, 0.0))
  shifted = s - s.max(axis=1, keepdims=True)
  ex = Bounded(np.where(keep, shifted.v, 0.0), np.where(keep, shifted.e, 0.0)).exp()
  ex = Bounded(np.where(keep, ex.v, 0.0), np.where(keep, ex.e, 0.0))
  lse = ex.sum(axis=1, keepdims=True).log()
  out = Bounded(np.where(keep, shifted.v, 0.0), np.where(keep, shifted.e, 0.0)) - lse
  return Bounded(np.where(keep, out.v, -np.inf), np.where(keep, out.e, 0.0))


def softmax_from_log(log_p: Bounded) -> Bounded:
  """exp(log_softmax), with masked (-inf) entries exactly 0."""
  finite = np.isfinite(log_p.v)
  safe = Bounded(np.where(finite, log_p.v, 0.0), log_p.e).exp()
  return Bounded(np.where(finite, safe.v, 0.0), np.where(finite, safe.e, 0.0))


def split_mean(x: Bounded, replicas: int) -> Bounded:
  """sum over replicas of (local mean / R): how every objective forms its loss."""
  parts = np.split(np.arange(x.v.shape[0]), replicas)
  total = None
  for idx in parts:
    share = x[idx].mean(axis=0) / float(replicas)
    total = share if total is None else total + share
  return total


def all_reduce_mean(locals_: list[Bounded]) -> Bounded:
  """ReduceOp.MEAN over replicas: a sum of R values, then / R."""
  total = locals_[0]
  for x in locals_[1:]:
    total = total + x
  return total / float(len(locals_))


def relu(x: Bounded) -> Bounded:
  """max(x, 0), exact."""
  return Bounded(np.maximum(x.v, 0.0), np.where(x.v > 0, x.e, 0.0))


def softmax(logits: Bounded) -> Bounded:
  """tf.nn.softmax over the last axis: exp(x - max) / sum, replayed."""
  ex = (logits - logits.max(axis=-1, keepdims=True)).exp()
  return ex / ex.sum(axis=-1, keepdims=True)


def sigmoid(logits: Bounded) -> Bounded:
  """1 / (1 + exp(-x)), replayed."""
  return 1.0 / (1.0 + (-logits).exp())


def probability_tolerance(logits: np.ndarray, logit_error: float, multilabel: bool) -> np.ndarray:
  """Bound on |p - p_ref| when the logits err by at most `logit_error` each.

  Softmax: |dp_j| <= p_j (|dl_j| + sum_k p_k |dl_k|) <= 2 p_j max|dl|; sigmoid:
  |dp| <= p (1 - p) |dl|. Plus SAFETY times the float32 rounding of computing p
  itself from the logits (replayed).

  Args:
    logits: (N, C) float64 logits.
    logit_error: max |error| of each logit (0 when both sides use the same logits).
    multilabel: sigmoid instead of softmax.

  Returns:
    (N, C) elementwise tolerance.
  """
  x = Bounded.exact(np.asarray(logits, np.float32))
  p = sigmoid(x) if multilabel else softmax(x)
  spread = p.v * (1 - p.v) if multilabel else 2 * p.v
  return spread * logit_error + SAFETY * p.e


def assert_within(
  actual: np.ndarray | float,
  desired: np.ndarray | float,
  bound: np.ndarray | float,
  err_msg: str = "",
) -> None:
  """Asserts |actual - desired| <= bound elementwise (the bound already carries SAFETY).

  Args:
    actual: what the code under test computed.
    desired: the independent reference.
    bound: scalar or array broadcastable to the values: the tolerance.
    err_msg: prefix of the failure message.

  Raises:
    AssertionError: naming the worst entry, its difference and its bound.
  """
  a = np.asarray(actual, np.float64)
  d = np.asarray(desired, np.float64)
  shape = np.broadcast_shapes(a.shape, d.shape, np.shape(bound))
  a, d = np.broadcast_to(a, shape), np.broadcast_to(d, shape)
  b = np.broadcast_to(np.asarray(bound, np.float64), shape)
  diff = np.abs(a - d)
  ok = diff <= b
  if not np.all(ok):
    ratio = np.where(b > 0, diff / np.where(b > 0, b, 1.0), np.inf)
    ratio = np.where(ok, 0.0, ratio)
    i = np.unravel_index(int(np.nanargmax(ratio)), shape) if shape else ()
    raise AssertionError(
      f"{err_msg}: {int(np.sum(~ok))} of {ok.size} entries outside the float32 bound; "
      f"worst at {i}: actual {a[i]!r}, desired {d[i]!r}, |diff| {diff[i]:.3g} > bound {b[i]:.3g}"
    )


# ---------------------------------------------------------------------------
# Deep networks: a statistical bound.
# ---------------------------------------------------------------------------
#
# Running error analysis of a whole network gives worst-case bounds (n u per
# length-n reduction, compounded over layers) that are orders of magnitude
# above what float32 arithmetic does, because rounding errors are not
# correlated. For network outputs the tests therefore rely on the
# probabilistic model of Higham & Mary (SIAM J. Sci. Comput. 41(5), 2019):
# rounding errors are independent and mean zero, so a length-n reduction of
# random-sign terms errs by about u sqrt(n / 2) relative to its result, and a
# network whose layers re-normalise (GroupNorm) adds its layers' independent
# errors in quadrature: relative error ~ u sqrt(sum_l n_l / 2). A tolerance
# allows SIGMAS standard deviations of that (one-sided tail 1e-9 per value).

SIGMAS = 6.0
BF16_U = 2.0**-9  # bfloat16 unit roundoff (8 significant bits)


def statistical_relative_bound(reduction_sizes: list[int], u: float = U32) -> float:
  """SIGMAS * u * sqrt(sum(n) / 2): the relative error of a chain of float32 reductions."""
  return SIGMAS * u * math.sqrt(sum(reduction_sizes) / 2.0)


def bit_reduction_sizes(
  block_units: tuple[int, ...] = (1, 1, 1, 1),
  width: int = 1,
  height: int = 32,
  width_px: int = 32,
) -> list[int]:
  """The reductions on a BiT ResNetV2's main path, for one (height, width_px) image.

  Each weight-standardised convolution counts twice (its dot products over
  k*k*C_in terms and the standardisation's moments over the same terms),
  each GroupNorm once (moments over H*W*C/32 values), and the final global
  average pool once. Strides follow remedis_tf.models.bit_resnet: root conv
  and max-pool stride 2 each, block 1 stride 1, blocks 2-4 stride 2.

  Returns:
    The list of reduction lengths n_l.
  """
  up = lambda n, s: (n - 1) // s + 1  # noqa: E731
  h, w = up(up(height, 2), 2), up(up(width_px, 2), 2)
  sizes = [7 * 7 * 3] * 2
  cin = 64 * width
  for i, units in enumerate(block_units):
    mid = 64 * width * 2**i
    for unit in range(units):
      stride = 2 if (i > 0 and unit == 0) else 1
      sizes += [h * w * cin // 32, cin, cin, h * w * mid // 32, 9 * mid, 9 * mid]
      h, w = up(h, stride), up(w, stride)
      sizes += [h * w * mid // 32, mid, mid]
      cin = 4 * mid
  return sizes + [h * w * cin // 32, h * w]


def bit_tiny_bound(height: int = 32, width_px: int = 32) -> float:
  """Relative float32 error of bit-tiny (block_units 1, 1, 1, 1) at this image size."""
  return statistical_relative_bound(bit_reduction_sizes((1, 1, 1, 1), 1, height, width_px))


def assert_network_close(
  got: np.ndarray,
  want: np.ndarray,
  relative_bound: float,
  evaluations: int = 2,
  err_msg: str = "",
) -> None:
  """|got - want| <= evaluations * relative_bound * rms(want), elementwise.

  An output's rounding error scales with the magnitude of the terms its last
  reductions add, i.e. with the layer's typical (rms) value, not with the
  element itself (a near-zero element is not more exact).

  Args:
    got, want: network outputs; `want` is a float64 reference (evaluations=1)
      or another float32 evaluation of the same network (evaluations=2).
    relative_bound: from `statistical_relative_bound` / `bit_tiny_bound`.
    evaluations: how many float32 evaluations the two sides carry.
    err_msg: prefix of the failure message.
  """
  want = np.asarray(want, np.float64)
  rms = float(np.sqrt(np.mean(np.square(want))))
  assert_within(got, want, evaluations * relative_bound * rms, err_msg)


def random_walk_sum_error(sum_of_squares: np.ndarray | float, n: int) -> np.ndarray | float:
  """SIGMAS standard deviations of a float32 sum of n random-sign terms (Higham & Mary).

  The partial sums of terms with rms s grow like s sqrt(k); each addition errs
  by a uniform fraction (std u / sqrt(3)) of its partial sum, so the error has
  std u s sqrt(sum_k k / 3) = u s n / sqrt(6).

  Args:
    sum_of_squares: sum of the squared terms (n s^2), any shape.
    n: the number of terms.

  Returns:
    SIGMAS * u * sqrt(sum_of_squares * n / 6), elementwise.
  """
  return SIGMAS * U32 * np.sqrt(np.asarray(sum_of_squares) * n / 6.0)


def random_walk_positive_sum_error(total: float, n: int) -> float:
  """SIGMAS standard deviations of a float32 sum of n non-negative terms adding to `total`.

  The partial sums grow like total * k / n; each addition errs by a uniform
  fraction (std u / sqrt(3)) of its partial sum, so the error has std
  u / sqrt(3) * total * sqrt(sum_k k^2) / n ~ u * total * sqrt(n) / 3.
  """
  return SIGMAS * U32 * total * math.sqrt(n) / 3.0
