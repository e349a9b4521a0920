"""Float32 error bounds for the objectives' losses, metrics and gradients.

Each function replays, on `float32_bounds.Bounded` values, the operations
that the float32 code in `remedis_tf/objectives/` performs (same formulas,
same order: L2 normalisation, matmuls, max-shifted log-softmax, means, the
`local mean / R` split over R replicas), and the gradient that TensorFlow's
autodiff computes for them. The result is an exact float64 value with a
first-order bound on the float32 error, computed from the test's own data, so
a tolerance is `SAFETY * bound` instead of a constant. The values themselves
are not used as references (the tests have independent NumPy references); only
the error bounds are.

Inputs are the arrays the test hands to TensorFlow: float32 arrays are exact,
float64 ones are rounded once by the cast (`rounded=True`).
"""

from __future__ import annotations

import numpy as np
from float32_bounds import (
  Bounded,
  all_reduce_mean,
  concat,
  l2_normalize,
  log_softmax,
  matmul,
  softmax_from_log,
  split_mean,
)


def _input(x: np.ndarray, rounded: bool) -> Bounded:
  return Bounded.rounded(x) if rounded else Bounded.exact(np.asarray(x, np.float32))


def _split_rows(m: int, replicas: int) -> list[np.ndarray]:
  return np.split(np.arange(m), replicas)


def _local_means(per_example: Bounded, replicas: int) -> list[Bounded]:
  return [per_example[idx].mean(axis=0) for idx in _split_rows(per_example.v.shape[0], replicas)]


def _normalize_backward(x: Bounded, dy: Bounded, epsilon: float = 1e-12) -> Bounded:
  """Autodiff of y = x * rsqrt(max(sum(x^2), eps)): dx = dy r + 2 x sum(dy x) (-r^3 / 2)."""
  r = x.square().sum(axis=-1, keepdims=True).maximum(epsilon).rsqrt()
  dss = (dy * x).sum(axis=-1, keepdims=True) * (r * r * r * -0.5)
  return dy * r + x * 2.0 * dss


def _maybe_normalize(x: Bounded, normalize: bool) -> Bounded:
  return l2_normalize(x) if normalize else x


def nt_xent(
  z1: np.ndarray,
  z2: np.ndarray,
  temperature: float,
  replicas: int = 1,
  normalize: bool = True,
  rounded: bool = False,
) -> dict[str, Bounded]:
  """`nt_xent_loss` replayed: loss, metrics and the gradient w.r.t. z1 and z2.

  Args:
    z1, z2: (M, d) the global batch's projections (replica r holds rows r*n..).
    temperature: tau.
    replicas: R; each replica holds n = M / R rows.
    normalize: as in nt_xent_loss.
    rounded: the inputs are float64 and TensorFlow casts them to float32.

  Returns:
    {'loss': sum over replicas of loss_r, 'metric_loss', 'contrast_entropy',
     'grad_z1', 'grad_z2' (M, d): gradient of the summed loss}.
  """
  m = z1.shape[0]
  a = _maybe_normalize(_input(z1, rounded), normalize)
  b = _maybe_normalize(_input(z2, rounded), normalize)
  inv_t = Bounded.rounded(1.0 / temperature)
  eye = np.eye(m, dtype=bool)
  no_mask = np.zeros((m, m), bool)
  ab, aa = matmul(a, b.T) * inv_t, matmul(a, a.T) * inv_t
  ba, bb = matmul(b, a.T) * inv_t, matmul(b, b.T) * inv_t
  mask = np.concatenate([no_mask, eye], axis=1)
  log_pa = log_softmax(concat([ab, aa], axis=1), mask)
  log_pb = log_softmax(concat([ba, bb], axis=1), mask)
  rows = np.arange(m)
  per = -log_pa[rows, rows] + -log_pb[rows, rows]
  out = {"loss": split_mean(per, replicas)}
  out["metric_loss"] = all_reduce_mean(_local_means(per, replicas))
  log_q = log_softmax(ab)
  entropy = -(
    softmax_from_log(log_q) * Bounded(np.where(np.isfinite(log_q.v), log_q.v, 0), log_q.e)
  )
  out["contrast_entropy"] = all_reduce_mean(_local_means(entropy.sum(axis=1), replicas))
  # Gradient of sum_r loss_r = (1/M) sum_i per_i: softmax - onehot per row, then the matmuls.
  onehot = np.concatenate([np.eye(m), np.zeros((m, m))], axis=1)
  scale = 1.0 / m
  da = (softmax_from_log(log_pa) - onehot) * scale * inv_t
  db = (softmax_from_log(log_pb) - onehot) * scale * inv_t
  d_ab, d_aa = da[:, :m], da[:, m:]
  d_ba, d_bb = db[:, :m], db[:, m:]
  # Every term that reaches a row of `a` (or `b`), summed in any order (all-gather grads included).
  ga = matmul(concat([d_ab, d_aa, d_aa.T, d_ba.T], axis=1), concat([b, a, a, b], axis=0))
  gb = matmul(concat([d_ba, d_bb, d_bb.T, d_ab.T], axis=1), concat([a, b, b, a], axis=0))
  if normalize:
    ga = _normalize_backward(_input(z1, rounded), ga)
    gb = _normalize_backward(_input(z2, rounded), gb)
  out["grad_z1"], out["grad_z2"] = ga, gb
  return out


def barlow_twins(
  z1: np.ndarray,
  z2: np.ndarray,
  lambda_offdiag: float,
  replicas: int = 1,
  rounded: bool = False,
  epsilon: float = 1e-5,
) -> dict[str, Bounded]:
  """`barlow_twins_loss` replayed (sums/all-reduces over the global batch, var = E[z^2] - mean^2).

  Returns:
    {'loss' (sum of the R shares loss / R), 'metric_loss' (the global loss),
     'grad_z1', 'grad_z2'}.
  """
  m = z1.shape[0]
  x1, x2 = _input(z1, rounded), _input(z2, rounded)
  total = float(m)

  def standardize(z: Bounded) -> tuple[Bounded, Bounded, Bounded]:
    mean = z.sum(axis=0) / total
    var = (z.square().sum(axis=0) / total - mean.square()).maximum(0.0)
    r = (var + epsilon).rsqrt()
    return (z - mean) * r, mean, r

  n1, mean1, r1 = standardize(x1)
  n2, mean2, r2 = standardize(x2)
  c = matmul(n1.T, n2) / total
  d = c.v.shape[0]
  eye = np.eye(d, dtype=bool)
  diag = Bounded(np.diag(c.v), np.diag(c.e))
  lam = Bounded.rounded(lambda_offdiag)
  loss = (1.0 - diag).square().sum() + lam * (c.square().sum() - diag.square().sum())
  share = loss / float(replicas)
  summed = share
  for _ in range(replicas - 1):
    summed = summed + share
  out = {"loss": summed, "metric_loss": loss}
  # Autodiff, in TensorFlow's order of operations.
  dc = c * (2.0 * lam)
  dc_diag = (1.0 - diag) * -2.0 + diag * (-2.0 * lam)
  on_diag = dc + Bounded(np.where(eye, dc_diag.v, 0.0), np.where(eye, dc_diag.e, 0.0))
  dc = Bounded(np.where(eye, on_diag.v, dc.v), np.where(eye, on_diag.e, dc.e)) / total
  dn1, dn2 = matmul(n2, dc.T), matmul(n1, dc)

  def standardize_backward(z, zn, mean, r, dzn):
    centred = z - mean
    dr = (dzn * centred).sum(axis=0)
    dvar = dr * (r * r * r * -0.5)
    dmean = -(dzn * r).sum(axis=0) + dvar * (mean * -2.0)
    return (dzn * r + dmean / total) + z * 2.0 * (dvar / total)

  out["grad_z1"] = standardize_backward(x1, n1, mean1, r1, dn1)
  out["grad_z2"] = standardize_backward(x2, n2, mean2, r2, dn2)
  return out


def relic(
  z1: np.ndarray,
  z2: np.ndarray,
  temperature: float,
  alpha: float,
  replicas: int = 1,
  rounded: bool = False,
) -> dict[str, Bounded]:
  """`relic_loss` replayed.

  Returns:
    {'loss', 'metric_loss', 'contrastive', 'invariance' (metric means),
     'grad_z1', 'grad_z2'}.
  """
  m = z1.shape[0]
  x1, x2 = _input(z1, rounded), _input(z2, rounded)
  u, v = l2_normalize(x1), l2_normalize(x2)
  t = Bounded.rounded(temperature)
  lab = log_softmax(matmul(u, v.T) / t)
  lba = log_softmax(matmul(v, u.T) / t)
  rows = np.arange(m)
  contrastive = -lab[rows, rows] - lba[rows, rows]
  pab, pba = softmax_from_log(lab), softmax_from_log(lba)
  invariance = (pab * (lab - lba) + pba * (lba - lab)).sum(axis=1)
  a = Bounded.rounded(alpha)
  per = contrastive + a * invariance
  out = {
    "loss": split_mean(per, replicas),
    "metric_loss": all_reduce_mean(_local_means(per, replicas)),
    "contrastive": all_reduce_mean(_local_means(contrastive, replicas)),
    "invariance": all_reduce_mean(_local_means(invariance, replicas)),
  }
  dper = 1.0 / m
  dinv = a * dper
  dpab, dpba = (lab - lba) * dinv, (lba - lab) * dinv
  eye = np.eye(m)
  dlab = pab * dinv - pba * dinv + dpab * pab - eye * dper
  dlba = pba * dinv - pab * dinv + dpba * pba - eye * dper

  def log_softmax_backward(log_p, p, dl):
    return dl - p * dl.sum(axis=1, keepdims=True)

  dm_ab = log_softmax_backward(lab, pab, dlab) / t
  dm_ba = log_softmax_backward(lba, pba, dlba) / t
  du = matmul(concat([dm_ab, dm_ba.T], axis=1), concat([v, v], axis=0))
  dv = matmul(concat([dm_ab.T, dm_ba], axis=1), concat([u, u], axis=0))
  out["grad_z1"] = _normalize_backward(x1, du)
  out["grad_z2"] = _normalize_backward(x2, dv)
  return out


def byol(
  p1: np.ndarray,
  p2: np.ndarray,
  t1: np.ndarray,
  t2: np.ndarray,
  replicas: int = 1,
  rounded: bool = False,
) -> dict[str, Bounded]:
  """`byol_loss` replayed: mean_i (2 - 2 cos(p1, t2)) + (2 - 2 cos(p2, t1)), split over R."""

  def regression(p, t):
    cos = (l2_normalize(_input(p, rounded)) * l2_normalize(_input(t, rounded))).sum(axis=1)
    return 2.0 - cos * 2.0

  per = regression(p1, t2) + regression(p2, t1)
  return {
    "loss": split_mean(per, replicas),
    "metric_loss": all_reduce_mean(_local_means(per, replicas)),
  }


def moco(
  q: np.ndarray,
  k: np.ndarray,
  queue: np.ndarray,
  temperature: float,
  replicas: int = 1,
  rounded: bool = False,
  normalize: bool = False,
) -> dict[str, Bounded]:
  """`moco_loss` replayed (optionally with MoCoV2.compute_loss's L2 normalisation of q, k).

  Args:
    q, k: (M, d) queries and keys of the global batch.
    queue: (K, d) negatives, a float32 variable (exact).
    temperature: t.
    replicas: R.
    rounded: q, k are float64 and cast to float32.
    normalize: q and k go through tf.math.l2_normalize first (as in MoCoV2).

  Returns:
    {'loss' (sum of the shares), 'metric_loss', 'single' (moco_loss's mean on
     one device)}.
  """
  qb = _maybe_normalize(_input(q, rounded), normalize)
  kb = _maybe_normalize(_input(k, rounded), normalize)
  neg = Bounded.exact(np.asarray(queue, np.float32))
  t = Bounded.rounded(temperature)
  l_pos = (qb * kb).sum(axis=1, keepdims=True)
  logits = concat([l_pos, matmul(qb, neg.T)], axis=1) / t
  per = -log_softmax(logits)[:, 0]
  return {
    "loss": split_mean(per, replicas),
    "metric_loss": all_reduce_mean(_local_means(per, replicas)),
    "single": per.mean(axis=0),
  }


def supervised(
  logits: np.ndarray,
  labels: np.ndarray,
  multi_label: bool,
  global_batch_size: int,
  class_weights: np.ndarray | None = None,
) -> Bounded:
  """`finetune.supervised_loss` replayed: the summed loss over the global batch.

  Multi-class: sparse softmax cross-entropy (max-shifted log-softmax), times
  the label's class weight, summed, / B. Multi-label: TF's
  sigmoid_cross_entropy_with_logits, relu(x) - x z + log(1 + exp(-|x|)) (its
  log1p is at least as accurate as the log replayed here), masked where the
  label is unknown (-1), times the weight of positive entries, summed, / (B K).

  Args:
    logits: (B, K) float32 logits.
    labels: (B,) class indices, or (B, K) in {-1, 0, 1}.
    multi_label: which of the two.
    global_batch_size: B.
    class_weights: (K,) float32 weights (multi-class: of the label's class;
      multi-label: of each positive entry), or None.

  Returns:
    The loss summed over replicas (any split of the batch), with its bound.
  """
  x = Bounded.exact(np.asarray(logits, np.float32))
  rows = np.arange(x.v.shape[0])
  if not multi_label:
    ce = -log_softmax(x)[rows, labels]
    if class_weights is not None:
      ce = ce * Bounded.exact(np.asarray(class_weights, np.float32)[labels])
    return ce.sum() / float(global_batch_size)
  known = (labels >= 0).astype(np.float64)
  target = np.clip(labels, 0, 1).astype(np.float64)
  positive = Bounded(np.maximum(x.v, 0.0), np.zeros_like(x.v))
  absolute = Bounded(np.abs(x.v), np.zeros_like(x.v))
  bce = (positive - x * target + (1.0 + (-absolute).exp()).log()) * known
  if class_weights is not None:
    weights = np.asarray(class_weights, np.float32).astype(np.float64)
    bce = bce * Bounded.exact(np.where(target > 0, weights[None, :], 1.0))
  return bce.sum() / (float(global_batch_size) * x.v.shape[1])
