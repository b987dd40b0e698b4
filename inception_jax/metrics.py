"""FID, sFID, KID and Inception Score from Inception features (numpy, float64).

The numbers of the reference implementations, computed on the host in float64
from the features that ``inception_jax.fid`` extracts (or from saved statistics):

* ``frechet_distance``: FID (Heusel et al. 2017) and sFID (Nash et al. 2021, the
  same distance on spatial features), ``|mu1 - mu2|^2 + tr(S1) + tr(S2) -
  2 tr sqrt(S1 S2)``.
* ``kernel_inception_distance``: KID (Binkowski et al. 2018), the unbiased MMD^2
  with the cubic polynomial kernel ``(x.y / d + 1)^3``, averaged over random
  subsets; the subsets are drawn as torch-fidelity draws them.
* ``inception_score``: IS (Salimans et al. 2016) ``exp(E_x KL(p(y|x) || p(y)))``
  over splits, optionally shuffled as torch-fidelity shuffles.

The matrix square root. pytorch-fid, clean-fid, TTUR and the ADM evaluator take
``scipy.linalg.sqrtm(S1 @ S2)`` (a Schur method on a non-symmetric product);
torch-fidelity sums ``sqrt(eigvals(S1 @ S2))``. Only the trace is needed, and for
any factors with ``S1 = F1 F1^T`` and ``S2 = F2 F2^T`` the eigenvalues of
``S1 S2`` are those of ``(F1^T F2)(F1^T F2)^T``, so

    tr sqrt(S1 S2) = sum of the singular values of F1^T F2   (nuclear norm).

Here ``F`` is ``V sqrt(L)`` from the symmetric eigendecomposition ``S = V L V^T``
with eigenvalues below ``d * eps * max(L)`` (rounding noise) dropped, or, when
the statistics come from ``n <= d`` features, exactly ``(X - mean)^T / sqrt(n-1)``.
Singular values come back with an absolute error of about ``eps * max``, so the
null space contributes nothing. That is what matters with fewer images than
feature dimensions (n < 2048, rank-deficient covariances): ``S1 S2`` then has
about ``d - n`` zero eigenvalues, which any eigen/Schur method returns as
``+-eps * |S1 S2|``; their square roots are ``~1e-8 * |S1 S2|^0.5`` each and are
summed ``d - n`` times (and the Schur recurrence divides by sums of such values,
which is where sqrtm's "singular product" and "imaginary component" failures come
from). Measured: 20-100 images of 2048-d features, pytorch-fid and torch-fidelity
are ~3e-7 relative away from the exact value (nuclear norm of the n1 x n2 Gram
matrix of centred features), this method within 1e-15. On full-rank statistics all
methods agree to rounding.
"""

from __future__ import annotations

import dataclasses
from typing import Iterable

import numpy as np

Array = np.ndarray


@dataclasses.dataclass(frozen=True)
class GaussianStats:
  """Mean and covariance of a feature set (what FID compares), in float64.

  Attributes:
    mu: mean ``[d]``.
    sigma: covariance ``[d, d]`` with the ``n - 1`` denominator (``np.cov``).
    count: number of feature vectors, when known (None for loaded files).
    factor: optional ``[d, r]`` with ``sigma == factor @ factor.T`` exactly: the
      centred features over ``sqrt(n - 1)``, kept when ``n <= d`` so that FID
      needs no eigendecomposition and is exact for rank-deficient ``sigma``.
  """
  mu: Array
  sigma: Array
  count: int | None = None
  factor: Array | None = None

  def __post_init__(self):
    mu, sigma = np.asarray(self.mu), np.asarray(self.sigma)
    if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
      raise ValueError(f'statistics need mu [d] and sigma [d, d], got shapes '
                       f'{mu.shape} and {sigma.shape}')
    if not (np.all(np.isfinite(mu)) and np.all(np.isfinite(sigma))):
      raise ValueError('statistics contain NaN or inf (non-finite features?)')

  @property
  def dim(self) -> int:
    return int(np.asarray(self.mu).shape[0])

  @classmethod
  def from_features(cls, features: Array) -> 'GaussianStats':
    """Statistics of ``[n, d]`` features (n >= 2), as ``np.mean`` / ``np.cov``."""
    acc = StatsAccumulator()
    acc.update(features)
    return acc.result()


class StatsAccumulator:
  """Streaming mean and covariance of feature batches, in float64.

  Sums are taken around a shift (the first batch's mean), so the one-pass
  covariance loses no precision to cancellation; the result equals ``np.cov`` to
  rounding. While at most ``d`` rows have been seen they are kept, so the result
  carries an exact factor of the covariance (see ``GaussianStats.factor``).
  """

  def __init__(self):
    self.count = 0
    self._shift = None
    self._sum = None
    self._outer = None
    self._rows = []

  def update(self, features: Array) -> None:
    """Adds a batch ``[b, d]`` (or ``[d]``) of feature vectors."""
    x = np.asarray(features, dtype=np.float64)
    if x.ndim == 1:
      x = x[None]
    if x.ndim != 2:
      raise ValueError(f'features must be [n, d], got shape {x.shape}')
    if not np.all(np.isfinite(x)):
      raise ValueError('features contain NaN or inf')
    if self._shift is None:
      self._shift = x.mean(axis=0)
      d = x.shape[1]
      self._sum = np.zeros(d)
      self._outer = np.zeros((d, d))
    elif x.shape[1] != self._shift.shape[0]:
      raise ValueError(f'feature width changed from {self._shift.shape[0]} to '
                       f'{x.shape[1]}')
    y = x - self._shift
    self._sum += y.sum(axis=0)
    self._outer += y.T @ y
    self.count += x.shape[0]
    if self._rows is not None:
      self._rows.append(x)
      if self.count > x.shape[1]:
        self._rows = None  # the factor would be larger than sigma: not kept

  def result(self) -> GaussianStats:
    """The statistics so far (needs at least 2 feature vectors)."""
    n = self.count
    if n < 2:
      raise ValueError(f'statistics need at least 2 feature vectors, got {n}')
    mean_y = self._sum / n
    sigma = (self._outer - n * np.outer(mean_y, mean_y)) / (n - 1)
    sigma = (sigma + sigma.T) / 2
    mu = self._shift + mean_y
    factor = None
    if self._rows is not None:
      x = np.concatenate(self._rows)
      factor = (x - x.mean(axis=0)).T / np.sqrt(n - 1)
    return GaussianStats(mu=mu, sigma=sigma, count=n, factor=factor)


def _factor(stats: GaussianStats) -> Array:
  """``F`` with ``F F^T = sigma`` (exact rows when kept, else from eigh)."""
  if stats.factor is not None:
    return np.asarray(stats.factor, np.float64)
  sigma = np.asarray(stats.sigma, np.float64)
  sigma = (sigma + sigma.T) / 2
  w, v = np.linalg.eigh(sigma)
  top = max(float(w[-1]), 0.0)
  keep = w > top * sigma.shape[0] * np.finfo(np.float64).eps
  return v[:, keep] * np.sqrt(w[keep])


def trace_sqrt_product(a: GaussianStats, b: GaussianStats) -> float:
  """``tr sqrt(sigma_a sigma_b)`` as the nuclear norm of ``F_a^T F_b`` (module doc)."""
  fa, fb = _factor(a), _factor(b)
  if fa.shape[1] == 0 or fb.shape[1] == 0:
    return 0.0
  return float(np.linalg.svd(fa.T @ fb, compute_uv=False).sum())


def _as_stats(x) -> GaussianStats:
  if isinstance(x, GaussianStats):
    return x
  if isinstance(x, (tuple, list)) and len(x) == 2:
    return GaussianStats(np.asarray(x[0], np.float64), np.asarray(x[1], np.float64))
  raise TypeError('pass GaussianStats or a (mu, sigma) pair')


def frechet_distance(a, b) -> float:
  """Frechet distance between two Gaussians: FID on ``pool_3``, sFID on spatial.

  Args:
    a: ``GaussianStats`` or a ``(mu, sigma)`` pair.
    b: the same for the other set.

  Returns:
    ``|mu_a - mu_b|^2 + tr(S_a) + tr(S_b) - 2 tr sqrt(S_a S_b)`` (float64).
  """
  a, b = _as_stats(a), _as_stats(b)
  if a.dim != b.dim:
    raise ValueError(f'the statistics have different feature sizes ({a.dim} vs '
                     f'{b.dim}): they come from different layers')
  diff = np.asarray(a.mu, np.float64) - np.asarray(b.mu, np.float64)
  return float(diff @ diff + np.trace(a.sigma) + np.trace(b.sigma)
               - 2.0 * trace_sqrt_product(a, b))


def _mmd2_unbiased(x: Array, y: Array) -> float:
  """Unbiased MMD^2 with the kernel ``(x.y / d + 1)^3`` (torch-fidelity's estimator)."""
  m, d = x.shape
  kxx = (x @ x.T / d + 1.0) ** 3
  kyy = (y @ y.T / d + 1.0) ** 3
  kxy = (x @ y.T / d + 1.0) ** 3
  off = (kxx.sum() - np.trace(kxx) + kyy.sum() - np.trace(kyy)) / (m * (m - 1))
  return float(off - 2.0 * kxy.sum() / (m * m))


def kernel_inception_distance(features_a: Array, features_b: Array, *,
                              subsets: int = 100, subset_size: int = 1000,
                              seed: int = 2020) -> tuple[float, float]:
  """KID: mean and standard deviation of the unbiased MMD^2 over random subsets.

  The subsets are ``np.random.RandomState(seed).choice(n, subset_size,
  replace=False)``, first of ``a`` then of ``b``, per subset: torch-fidelity's
  draws (its defaults: 100 subsets of 1000, seed 2020), so the same features give
  its numbers (computed here in float64, it uses float32). clean-fid draws from
  numpy's global RNG; with ``subset_size`` equal to the set sizes every draw is a
  permutation and all implementations agree.

  Args:
    features_a: ``[n_a, d]`` pool_3 features.
    features_b: ``[n_b, d]``.
    subsets: number of subsets.
    subset_size: rows per subset; at most ``min(n_a, n_b)``.
    seed: RNG seed of the subset draws.

  Returns:
    ``(mean, std)`` of the subset estimates (std with ``ddof=0``, as torch-fidelity).
  """
  fa = np.asarray(features_a, np.float64)
  fb = np.asarray(features_b, np.float64)
  if fa.ndim != 2 or fb.ndim != 2 or fa.shape[1] != fb.shape[1]:
    raise ValueError(f'KID needs [n, d] features of equal d, got {fa.shape} and '
                     f'{fb.shape}')
  n = min(fa.shape[0], fb.shape[0])
  if not 2 <= subset_size <= n:
    raise ValueError(f'KID subset_size={subset_size} must be in [2, {n}] (the '
                     f'smaller set has {n} images); pass subset_size={n} or fewer')
  if subsets < 1:
    raise ValueError(f'KID needs subsets >= 1, got {subsets}')
  rng = np.random.RandomState(seed)
  values = np.zeros(subsets)
  for i in range(subsets):
    x = fa[rng.choice(fa.shape[0], subset_size, replace=False)]
    y = fb[rng.choice(fb.shape[0], subset_size, replace=False)]
    values[i] = _mmd2_unbiased(x, y)
  return float(values.mean()), float(values.std())


def inception_score(logits: Array, *, splits: int = 10, seed: int | None = 2020
                    ) -> tuple[float, float]:
  """Inception Score: ``exp(mean KL(p(y|x) || p(y)))`` per split; mean and std.

  Use the unbiased logits (``pool_3 @ W``, no bias: ``logits_unbiased`` of
  torch-fidelity, the ADM evaluator's ``softmax/logits/MatMul``), as the
  improved-gan code that defined IS did.

  Args:
    logits: ``[n, classes]``.
    splits: number of equal consecutive splits (rows ``i*n//splits`` to
      ``(i+1)*n//splits``).
    seed: shuffle the rows with ``np.random.RandomState(seed).permutation`` first
      (torch-fidelity: seed 2020); None keeps the order (improved-gan, the ADM
      evaluator, whose 5000-image splits of 50k samples are ``splits=10``).

  Returns:
    ``(mean, std)`` over the splits, float64 (std with ``ddof=0``).
  """
  x = np.asarray(logits, np.float64)
  if x.ndim != 2:
    raise ValueError(f'logits must be [n, classes], got shape {x.shape}')
  n = x.shape[0]
  if not 1 <= splits <= n:
    raise ValueError(f'inception_score splits={splits} must be in [1, {n}] (one '
                     'image per split at least)')
  if seed is not None:
    x = x[np.random.RandomState(seed).permutation(n)]
  log_p = x - x.max(axis=1, keepdims=True)
  log_p = log_p - np.log(np.exp(log_p).sum(axis=1, keepdims=True))
  p = np.exp(log_p)
  scores = []
  for i in range(splits):
    lo, hi = i * n // splits, (i + 1) * n // splits
    pc, lpc = p[lo:hi], log_p[lo:hi]
    q = pc.mean(axis=0, keepdims=True)
    kl = (pc * (lpc - np.log(q))).sum(axis=1).mean()
    scores.append(np.exp(kl))
  return float(np.mean(scores)), float(np.std(scores))


def stats_of(batches: Iterable[Array]) -> GaussianStats:
  """Statistics of an iterable of feature batches (see ``StatsAccumulator``)."""
  acc = StatsAccumulator()
  for b in batches:
    acc.update(b)
  return acc.result()
