"""Significance tests of one stated estimand, respecting the clustering of prompts in images.

Prompts of one image share the image (and its adversarial perturbation), so their IoUs
are strongly correlated; the unit of every test here is the **image**. See
docs/statistics.md for what is tested, why, and the simulated error rates.

The estimand of a comparison is the **mean over images of a per-image difference**:
for mIoU the per-image mean IoU, for ASR@k the per-image share of destroyed masks (%).
By default (``test="sign-flip+bootstrap-t"``) a difference counts only when two tests
of that mean both reject (an intersection-union test, p = the larger p):

- a **paired sign-flip permutation test** (under exchangeability the per-image
  differences are symmetric about 0, so flipping their signs leaves their distribution
  unchanged): exact over all 2^n sign patterns for n ≤ :data:`EXACT_MAX` images, Monte
  Carlo with a seeded generator otherwise. Exact under exchangeability, but its
  permutation distribution is symmetric, so with equal means and skewed per-image
  differences it rejects too often (0.074 at 15 images, docs/statistics.md);
- a **studentized cluster bootstrap** (bootstrap-t over images), whose distribution
  carries the skew. Studentizing the sign-flip statistic instead would change nothing:
  for the one-sample problem t = mean/SE is a monotone function of the mean over the
  sign-flip orbit (the sum of squares is invariant), so the "studentized permutation
  test" of Janssen (1997) / Chung & Romano (2013), built for two-sample problems, is
  here the same test.

The confidence interval is the set of shifts δ that the combined test does not reject
(the hull of the two tests' inverted intervals; the sign-flip end points are order
statistics of subset means, the bootstrap-t ones mean − t*·SE), so the interval, the
p-value and the direction always agree: the interval excludes 0 exactly when the
p-value is below its level, and it always holds the estimate. ``test="sign-flip"``
keeps the permutation test alone.

Family-wise error: every line one call shows is one family (Bonferroni by default, so
the printed interval is simultaneous; or Holm, whose interval is at the level Holm used
for that line). Each line also carries the smallest adjusted p its n can reach and the
minimum detectable effect at 80% power, so that "n.s." with a handful of images is never
read as "no difference".

Sign convention of :func:`compare`: ``delta`` > 0 means **attack a is stronger** than b
(mIoU: image-mean mIoU(b) − mIoU(a); ASR: ASR(a) − ASR(b), percentage points).

The Wilcoxon signed-rank test with the Hodges–Lehmann estimate is kept as an explicitly
named alternative (``test="wilcoxon"``): it tests symmetry about 0 (not the mean) and
estimates the pseudo-median, so its label says so.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats as sps

from ..errors import UadbenchError
from .leaderboard import METRICS, parse_metrics

log = logging.getLogger(__name__)
IMAGE_KEYS = ["dataset", "sample_id"]
#: up to this many images the sign-flip test enumerates all 2^n sign patterns
EXACT_MAX = 16
#: Monte Carlo sign patterns beyond EXACT_MAX images (more when the family needs them)
N_PERM = 9999
CORRECTIONS = ("bonferroni", "holm")
#: the default: sign-flip AND bootstrap-t must both reject (see :func:`family_tests`)
BOTH = "sign-flip+bootstrap-t"
TESTS = (BOTH, "sign-flip", "wilcoxon")
POWER = 0.8


def holm(pvalues: Sequence[float]) -> np.ndarray:
    """Holm step-down adjusted p-values (NaNs stay NaN and are not counted)."""
    p = np.asarray(pvalues, dtype=np.float64)
    out = np.full(p.shape, np.nan)
    ok = ~np.isnan(p)
    q = p[ok]
    m = q.size
    if m:
        order = np.argsort(q, kind="stable")
        adj = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * q[order]))
        res = np.empty(m)
        res[order] = adj
        out[ok] = res
    return out


def bonferroni(pvalues: Sequence[float]) -> np.ndarray:
    """Bonferroni adjusted p-values (NaNs stay NaN and are not counted)."""
    p = np.asarray(pvalues, dtype=np.float64)
    m = int((~np.isnan(p)).sum())
    return np.minimum(1.0, p * m)


def adjust(pvalues: Sequence[float], correction: str) -> np.ndarray:
    if correction not in CORRECTIONS:
        raise UadbenchError(
            f"unknown correction {correction!r}; choose from {', '.join(CORRECTIONS)}"
        )
    return holm(pvalues) if correction == "holm" else bonferroni(pvalues)


def destroyed(iou: np.ndarray | pd.Series, threshold: float) -> np.ndarray:
    """1.0 where a mask counts as destroyed for ASR@threshold (IoU ≤ threshold), else 0.0,
    as :func:`uadbench.eval.metrics.asr` counts."""
    return (np.asarray(iou, dtype=np.float64) <= threshold).astype(np.float64)


def metric_values(iou: np.ndarray | pd.Series, metric: str) -> np.ndarray:
    """Per-prompt contribution of ``metric``: IoU for mIoU, 100·destroyed for ASR@k,
    so that the mean over prompts is the metric in %."""
    thr = METRICS[metric][1]
    iou = np.asarray(iou, dtype=np.float64)
    return iou if thr is None else 100.0 * destroyed(iou, thr)


def per_image(rows: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Sum of the metric's per-prompt values and prompt count per image.

    Returns a frame indexed by (dataset, sample_id) with columns ``sum``, ``n`` and
    ``mean`` (the per-image metric, %).
    """
    vals = pd.Series(metric_values(rows["iou"], metric), index=rows.index)
    g = vals.groupby([rows["dataset"], rows["sample_id"]], sort=True)
    out = pd.DataFrame({"sum": g.sum(), "n": g.size().astype(np.float64)})
    out["mean"] = out["sum"] / out["n"]
    return out


def bootstrap_weights(n: int, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """(n_boot, n) resampling counts: each row is one bootstrap draw of n of n clusters."""
    idx = rng.integers(0, n, size=(n_boot, n)) + (np.arange(n_boot) * n)[:, None]
    return np.bincount(idx.ravel(), minlength=n_boot * n).reshape(n_boot, n).astype(np.float64)


# ----------------------------------------------------------------------------- sign flip
def sign_patterns(n: int, n_perm: int, rng: np.random.Generator) -> tuple[np.ndarray, bool]:
    """Boolean (N, n) matrix of flipped positions: all 2^n patterns for n ≤ EXACT_MAX
    (exact), else the identity plus ``n_perm`` uniform draws (Monte Carlo)."""
    if n <= EXACT_MAX:
        return ((np.arange(2**n)[:, None] >> np.arange(n)[None, :]) & 1).astype(bool), True
    draws = rng.random((n_perm, n)) < 0.5
    return np.vstack([np.zeros((1, n), dtype=bool), draws]), False


@dataclass
class SignFlip:
    """Sign-flip permutation distribution of the mean of differences ``d``.

    For a sign pattern s with flipped set F, the permuted mean of ``d − δ`` is at least
    the observed one exactly when δ ≥ t_s = mean(d[F]) (the subset mean). So every
    p-value and every interval end point below is a count over the sorted ``t``.
    """

    estimate: float
    n: int
    exact: bool
    draws: int  # N: sign patterns, identity included
    always: int  # patterns that flip nothing (count towards every p)
    t: np.ndarray  # sorted subset means of the patterns that flip something
    eps: float

    def p_greater(self, delta: float = 0.0) -> float:
        """p of H1 "mean > delta"."""
        k = np.searchsorted(self.t, delta + self.eps, side="right")
        return float((self.always + k) / self.draws)

    def p_less(self, delta: float = 0.0) -> float:
        """p of H1 "mean < delta"."""
        k = self.t.size - np.searchsorted(self.t, delta - self.eps, side="left")
        return float((self.always + k) / self.draws)

    def p_two_sided(self, delta: float = 0.0) -> float:
        return min(1.0, 2.0 * min(self.p_greater(delta), self.p_less(delta)))

    def _order(self, a: float) -> int:
        """Smallest k with (always + k)/N > a (0-based index k−1 into ``t``), or 0."""
        return max(0, int(np.floor(a * self.draws - self.always + 1e-9)) + 1)

    def lower(self, a: float) -> float:
        """Smallest δ that the one-sided test of H1 "mean > δ" at level a keeps."""
        k = self._order(a)
        return -np.inf if k < 1 or k > self.t.size else float(self.t[k - 1] - self.eps)

    def upper(self, a: float) -> float:
        """Largest δ that the one-sided test of H1 "mean < δ" at level a keeps."""
        k = self._order(a)
        return np.inf if k < 1 or k > self.t.size else float(self.t[-k] + self.eps)

    @property
    def min_p(self) -> float:
        """Smallest attainable two-sided p for this n and these patterns."""
        return min(1.0, 2.0 * self.always / self.draws)


def sign_flip(
    d: np.ndarray,
    *,
    n_perm: int = N_PERM,
    rng: np.random.Generator | None = None,
    cache: dict | None = None,
) -> SignFlip:
    """The :class:`SignFlip` distribution of the differences ``d`` (one per image).

    ``cache``: a dict shared by the tests of one family, so that lines with the same n
    reuse one set of sign patterns (each test stays exact or Monte Carlo-valid)."""
    d = np.asarray(d, dtype=np.float64)
    n = d.size
    if n == 0:
        return SignFlip(np.nan, 0, True, 1, 1, np.empty(0), 0.0)
    cache = {} if cache is None else cache
    if n not in cache:
        rng = rng if rng is not None else np.random.default_rng(0)
        flips, exact = sign_patterns(n, n_perm, rng)
        k = flips.sum(1)
        hit = k > 0
        flips = np.ascontiguousarray(flips[hit], dtype=np.float64)
        cache[n] = (flips, k[hit].astype(np.float64), exact, flips.shape[0] + int((~hit).sum()))
    flips, k, exact, draws = cache[n]
    # einsum, not BLAS gemv: steadily fast on a busy machine
    t = np.sort(np.einsum("ij,j->i", flips, d) / k)
    eps = 1e-9 * (float(np.abs(d).max()) + 1.0)  # subset means closer than this are ties
    return SignFlip(float(d.mean()), n, exact, int(draws), int(draws - k.size), t, eps)


# ----------------------------------------------------------------------------- bootstrap-t
@dataclass
class BootT:
    """Studentized cluster bootstrap (bootstrap-t) of the mean of differences ``d``.

    ``t`` holds the sorted resampled statistics t* = (mean* − mean) / se*, se the
    standard error sd(d, ddof=1)/√n (a resample with se* = 0 gives ±inf, or 0 when its
    mean equals the observed one). The test of H1 "mean > δ" rejects at level a when
    (1 + #{t* ≥ t(δ)}) / (B + 1) ≤ a with t(δ) = (mean − δ) / se; t(δ) falls as δ rises,
    so the δ it keeps form a half-line whose end is mean − t*·se for one order statistic
    t* (:meth:`lower`, :meth:`upper`). Unlike the sign-flip distribution, which is
    symmetric, the bootstrap distribution of t* carries the skew of the differences
    (second-order accurate for the mean, Hall 1992).
    """

    estimate: float
    se: float
    draws: int  # B
    t: np.ndarray  # sorted t*

    def _t(self, delta: float) -> float:
        diff = self.estimate - delta
        if self.se > 0:
            return diff / self.se
        return 0.0 if diff == 0 else float(np.copysign(np.inf, diff))

    def p_greater(self, delta: float = 0.0) -> float:
        """p of H1 "mean > delta"."""
        if self.draws == 0:
            return 1.0
        k = self.t.size - np.searchsorted(self.t, self._t(delta), side="left")
        return float((1 + k) / (self.draws + 1))

    def p_less(self, delta: float = 0.0) -> float:
        """p of H1 "mean < delta"."""
        if self.draws == 0:
            return 1.0
        k = np.searchsorted(self.t, self._t(delta), side="right")
        return float((1 + k) / (self.draws + 1))

    def _k(self, a: float) -> int:
        """Largest count K of resamples with (1 + K)/(B + 1) ≤ a (−1: none)."""
        return int(np.floor(a * (self.draws + 1) - 1 + 1e-9))

    def lower(self, a: float) -> float:
        """Smallest δ that the one-sided test of H1 "mean > δ" at level a keeps."""
        k = self._k(a)
        if self.draws == 0 or k < 0:
            return -np.inf
        if self.se == 0:
            return self.estimate
        return float(self.estimate - self.t[self.draws - 1 - k] * self.se)

    def upper(self, a: float) -> float:
        """Largest δ that the one-sided test of H1 "mean < δ" at level a keeps."""
        k = self._k(a)
        if self.draws == 0 or k < 0:
            return np.inf
        if self.se == 0:
            return self.estimate
        return float(self.estimate - self.t[k] * self.se)

    @property
    def min_p(self) -> float:
        """Smallest attainable two-sided p."""
        return min(1.0, 2.0 / (self.draws + 1)) if self.draws else 1.0


def bootstrap_t(
    d: np.ndarray,
    *,
    n_boot: int = N_PERM,
    rng: np.random.Generator | None = None,
    cache: dict | None = None,
) -> BootT:
    """The :class:`BootT` distribution of the differences ``d`` (one per image, resampled
    with replacement). ``cache``: shared by the lines of one family, so lines with the
    same n reuse one set of resampling counts. Fewer than 2 values: no resamples (every
    p is 1, the interval unbounded)."""
    d = np.asarray(d, dtype=np.float64)
    n = d.size
    if n < 2:
        return BootT(float(d.mean()) if n else np.nan, np.nan, 0, np.empty(0))
    cache = {} if cache is None else cache
    key = ("boot", n)
    if key not in cache:
        rng = rng if rng is not None else np.random.default_rng(0)
        cache[key] = bootstrap_weights(n, n_boot, rng)
    w = cache[key]
    est = float(d.mean())
    se = float(np.std(d, ddof=1) / np.sqrt(n))
    m1 = np.einsum("ij,j->i", w, d) / n
    m2 = np.einsum("ij,j->i", w, d * d) / n
    se_b = np.sqrt(np.maximum(m2 - m1 * m1, 0.0) * (n / (n - 1)) / n)
    num = m1 - est
    tol = 1e-9 * (float(np.abs(d).max()) + 1.0)
    num = np.where(np.abs(num) <= tol, 0.0, num)  # resamples whose mean is the observed one
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.where(se_b > tol, num / np.where(se_b > tol, se_b, 1.0), np.sign(num) * np.inf)
    t = np.nan_to_num(t, nan=0.0, posinf=np.inf, neginf=-np.inf)
    return BootT(est, se, int(w.shape[0]), np.sort(t))


@dataclass
class Both:
    """Intersection-union of the sign-flip test and the bootstrap-t: a one-sided
    hypothesis is rejected only when both reject it, so each one-sided p is the larger
    of the two, and the interval of kept δ is the hull of the two intervals (the
    sign-flip one always holds the estimate). Exact or conservative under
    exchangeability (as the sign-flip test is), and near its level for a skewed null
    with equal means (as the bootstrap-t is)."""

    flip: SignFlip
    boot: BootT

    @property
    def estimate(self) -> float:
        return self.flip.estimate

    def p_greater(self, delta: float = 0.0) -> float:
        return max(self.flip.p_greater(delta), self.boot.p_greater(delta))

    def p_less(self, delta: float = 0.0) -> float:
        return max(self.flip.p_less(delta), self.boot.p_less(delta))

    def p_two_sided(self, delta: float = 0.0) -> float:
        return min(1.0, 2.0 * min(self.p_greater(delta), self.p_less(delta)))

    def lower(self, a: float) -> float:
        return min(self.flip.lower(a), self.boot.lower(a))

    def upper(self, a: float) -> float:
        return max(self.flip.upper(a), self.boot.upper(a))

    @property
    def min_p(self) -> float:
        return max(self.flip.min_p, self.boot.min_p)


def hodges_lehmann(d: np.ndarray, alpha: float) -> tuple[float, float, float]:
    """(pseudo-median, lo, hi): Hodges–Lehmann estimate and the (1 − alpha) interval of
    the Wilcoxon signed-rank test from order statistics of the Walsh averages (normal
    approximation to the critical value)."""
    d = np.asarray(d, dtype=np.float64)
    n = d.size
    if n == 0:
        return np.nan, np.nan, np.nan
    i, j = np.triu_indices(n)
    walsh = np.sort((d[i] + d[j]) / 2)
    z = sps.norm.ppf(1 - alpha / 2)
    k = int(np.floor(n * (n + 1) / 4 - z * np.sqrt(n * (n + 1) * (2 * n + 1) / 24)))
    lo = walsh[k] if 0 <= k < walsh.size else -np.inf
    hi = walsh[walsh.size - 1 - k] if 0 <= k < walsh.size else np.inf
    return float(np.median(walsh)), float(lo), float(hi)


def signed_rank_p(d: np.ndarray, alternative: str = "two-sided") -> float:
    """Wilcoxon signed-rank p-value of differences ``d`` (zeros dropped; 1.0 if all are
    zero). Small samples with ties or zeros get the exact null distribution by
    enumerating all 2^n sign patterns; otherwise scipy (exact without ties up to 50
    values, normal approximation beyond)."""
    d = np.asarray(d, dtype=np.float64)
    if d.size == 0:
        return float("nan")
    nz = d[np.abs(d) >= 1e-12]
    if nz.size == 0:
        return 1.0
    if nz.size <= 13 and (nz.size < d.size or np.unique(np.abs(nz)).size < nz.size):
        return _signed_rank_enumerated(nz, alternative)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(sps.wilcoxon(d, alternative=alternative).pvalue)


def _signed_rank_enumerated(d: np.ndarray, alternative: str) -> float:
    """Exact signed-rank p-value of non-zero ``d`` (n ≤ 13) with mid-ranks for ties."""
    ranks = sps.rankdata(np.abs(d))
    t_obs = ranks[d > 0].sum()
    n = d.size
    signs = (np.arange(2**n)[:, None] >> np.arange(n)[None, :]) & 1  # (2^n, n)
    t_all = signs @ ranks
    eps = 1e-9
    p_ge, p_le = np.mean(t_all >= t_obs - eps), np.mean(t_all <= t_obs + eps)
    if alternative == "greater":
        return float(p_ge)
    if alternative == "less":
        return float(p_le)
    return float(min(1.0, 2 * min(p_ge, p_le)))


# ----------------------------------------------------------------------------- families
def family_tests(
    diffs: Sequence[np.ndarray],
    *,
    alpha: float = 0.05,
    alternative: str | Sequence[str] = "two-sided",
    null: Sequence[float] | float = 0.0,
    correction: str = "bonferroni",
    n_perm: int = N_PERM,
    seed: int = 0,
    test: str = BOTH,
    equivalence: float | None = None,
) -> pd.DataFrame:
    """One family of tests, one per array of per-image differences in ``diffs``.

    ``alternative``: ``two-sided`` (H1 mean ≠ null), ``greater`` or ``less``; ``null``
    the tested value per line (e.g. a margin). Returns one line per array with
    ``n, estimate, ci_low, ci_high, ci_level, p, p_adj, significant, min_p_adj, mde``
    (and ``p_tost, equivalent`` with ``equivalence``): the interval is the inversion of
    the same test at the level the correction used for that line (Bonferroni: 1 −
    alpha/m, simultaneous; Holm: 1 − alpha·p/p_adj), two-sided or one-sided as the test,
    so ``significant`` ⟺ the interval excludes ``null``. ``mde``: the smallest true
    effect (same units, beyond ``null``) detected with 80% power at that level, from
    the observed SD of the differences (t approximation); ``inf`` when the smallest
    attainable adjusted p ``min_p_adj`` is above ``alpha`` (nothing could be
    significant). Monte Carlo draws grow with the family so that ``min_p_adj`` stays
    below alpha/10 where n allows it. ``test``: ``sign-flip+bootstrap-t`` (default; both
    must reject, bootstrap resamples = sign-flip draws), ``sign-flip`` or ``wilcoxon``.
    """
    m = len(diffs)
    alts = [alternative] * m if isinstance(alternative, str) else list(alternative)
    if len(alts) != m or any(a not in ("two-sided", "greater", "less") for a in alts):
        raise UadbenchError(f"unknown alternative {alternative!r}")
    if test not in TESTS:
        raise UadbenchError(f"unknown test {test!r}; choose from {', '.join(TESTS)}")
    if not 0 < alpha < 1:
        raise UadbenchError(f"--alpha {alpha} must be between 0 and 1")
    if n_perm < 99:
        raise UadbenchError(f"--n-perm {n_perm} is too small; use at least 999")
    nulls = np.broadcast_to(np.asarray(null, dtype=np.float64), (m,))
    rng = np.random.default_rng(seed)
    two = any(a == "two-sided" for a in alts)
    # enough Monte Carlo draws that the smallest p times m stays well below alpha
    draws = max(n_perm, int(np.ceil(20 * (1 + two) * max(m, 1) / alpha)))
    dists, p, cache = [], np.full(m, np.nan), {}
    for i, d in enumerate(diffs):
        d = np.asarray(d, dtype=np.float64)
        dist = sign_flip(d, n_perm=draws, rng=rng, cache=cache) if d.size else None
        if dist is not None and test == BOTH:
            dist = Both(dist, bootstrap_t(d, n_boot=draws, rng=rng, cache=cache))
        dists.append(dist)
        if dist is None:
            continue
        if test == "wilcoxon":
            p[i] = signed_rank_p(d - nulls[i], alts[i])
        elif alts[i] == "two-sided":
            p[i] = dist.p_two_sided(nulls[i])
        elif alts[i] == "greater":
            p[i] = dist.p_greater(nulls[i])
        else:
            p[i] = dist.p_less(nulls[i])
    p_adj = adjust(p, correction)
    m_eff = int((~np.isnan(p)).sum())
    out = []
    for i, (d, dist) in enumerate(zip(diffs, dists)):
        d = np.asarray(d, dtype=np.float64)
        rec = {
            "n": int(d.size),
            "estimate": np.nan,
            "ci_low": np.nan,
            "ci_high": np.nan,
            "ci_level": np.nan,
            "p": p[i],
            "p_adj": p_adj[i],
            "significant": False,
            "min_p_adj": np.nan,
            "mde": np.nan,
        }
        if dist is None:
            out.append(rec)
            continue
        if correction == "bonferroni" or not p_adj[i] < 1:
            a_eff = alpha / max(m_eff, 1)
        else:
            a_eff = alpha * p[i] / p_adj[i]
        alternative = alts[i]
        sides = alternative == "two-sided"
        a_side = a_eff / 2 if sides else a_eff
        min_p = dist.min_p if sides else dist.min_p / 2
        rec["min_p_adj"] = min(1.0, min_p * max(m_eff, 1))
        if test == "wilcoxon":
            est, lo, hi = hodges_lehmann(d, 2 * a_side)
            if alternative == "greater":
                hi = np.inf
            elif alternative == "less":
                lo = -np.inf
        else:
            est = dist.estimate
            lo = dist.lower(a_side) if alternative != "less" else -np.inf
            hi = dist.upper(a_side) if alternative != "greater" else np.inf
        rec.update(
            estimate=est,
            ci_low=lo,
            ci_high=hi,
            ci_level=1 - a_eff,
            significant=bool(p_adj[i] <= alpha),
        )
        n = d.size
        if rec["min_p_adj"] > alpha:
            rec["mde"] = np.inf
        elif n >= 2 and np.std(d, ddof=1) > 0:
            a_line = alpha / max(m_eff, 1)
            q = sps.t.ppf(1 - (a_line / 2 if sides else a_line), n - 1) + sps.t.ppf(POWER, n - 1)
            rec["mde"] = float(q * np.std(d, ddof=1) / np.sqrt(n))
        if equivalence is not None:
            pt = max(dist.p_greater(-equivalence), dist.p_less(equivalence))
            rec["p_tost"] = pt
        out.append(rec)
    table = pd.DataFrame(out)
    if equivalence is not None and len(table):
        table["p_tost_adj"] = adjust(table["p_tost"].to_numpy(), correction)
        table["equivalent"] = table["p_tost_adj"] <= alpha
    table.attrs.update(
        family=m_eff,
        correction=correction,
        alpha=alpha,
        alternative=alts[0] if len(set(alts)) == 1 else "one-sided" if not two else "mixed",
        test=test,
        draws=draws,
        seed=seed,
        exact_max=EXACT_MAX,
    )
    return table


def describe(
    attrs: dict, n_images: Sequence[int], *, estimand: str, unit: str = "image"
) -> list[str]:
    """Lines that name the test, sidedness, unit of pairing, n, family, correction and the
    interval's method, for the foot of every table that shows :func:`family_tests`."""
    ns = sorted({int(n) for n in n_images if n})
    n_txt = "–" if not ns else (f"{ns[0]}" if len(ns) == 1 else f"{ns[0]}–{ns[-1]}")
    exact = ns and ns[-1] <= EXACT_MAX
    mixed = ns and ns[0] <= EXACT_MAX < ns[-1]
    how = (
        "exact (all 2^n sign patterns)"
        if exact
        else f"Monte Carlo, {attrs['draws']} sign patterns, seed {attrs['seed']}"
        + (f"; exact up to {EXACT_MAX} images" if mixed else "")
    )
    side = {"two-sided": "two-sided", "greater": "one-sided", "less": "one-sided"}
    side.update({"one-sided": "one-sided", "mixed": "two- and one-sided"})
    if attrs["test"] == "wilcoxon":
        test = (
            "Wilcoxon signed-rank test of symmetry about 0 of the per-"
            f"{unit} differences (NOT a test of the mean); estimate: Hodges–Lehmann pseudo-median"
        )
        ci = "CI: Walsh-average order statistics (normal approximation)"
    elif attrs["test"] == BOTH:
        test = (
            f"paired sign-flip permutation test of the {estimand}, {how}, AND studentized "
            f"bootstrap (bootstrap-t, {attrs['draws']} resamples of {unit}s, seed "
            f"{attrs['seed']}): a difference counts only when both reject (p = the larger)"
        )
        ci = "CI: union of the two tests' inverted intervals"
    else:
        test = f"paired sign-flip permutation test of the {estimand}, {how}"
        ci = "CI: inversion of the same test (same sign patterns)"
    corr = attrs["correction"]
    level = (
        f"at level 1 − alpha/{attrs['family']} (simultaneous {100 * (1 - attrs['alpha']):g}%)"
        if corr == "bonferroni"
        else "at the level Holm used for each line"
    )
    return [
        f"test: {test}; {side[attrs['alternative']]}; unit of pairing: {unit}, n = {n_txt} {unit}s",
        f"family: {attrs['family']} test(s) shown here, {corr} correction, "
        f"alpha = {attrs['alpha']:g}; {ci} {level}",
    ]


def small_n_warning(table: pd.DataFrame, alpha: float, unit: str = "image") -> str | None:
    """A warning when no line of ``table`` (from :func:`family_tests`) could be
    significant for its n and family, else None."""
    if table.empty or "min_p_adj" not in table:
        return None
    mp = table["min_p_adj"].dropna()
    if len(mp) and (mp > alpha).all():
        n = int(table["n"].max())
        return (
            f"WARNING: with {n} {unit}s and a family of {table.attrs.get('family', len(table))} "
            f"tests nothing can be significant (smallest attainable adjusted p = "
            f"{mp.min():.3g} > alpha = {alpha:g}); 'n.s.' here says nothing about the size "
            "of a difference: use more images or fewer comparisons"
        )
    return None


# ----------------------------------------------------------------------------- compare
COMPARE_COLUMNS = [
    "victim",
    "metric",
    "a",
    "b",
    "value_a",
    "value_b",
    "delta",
    "ci_low",
    "ci_high",
    "ci_level",
    "p",
    "p_adj",
    "n_images",
    "stronger",
    "min_p_adj",
    "mde",
]


def _check_attacks(rows: pd.DataFrame, names: Sequence[str]) -> None:
    known = set(rows["attack"].unique())
    for name in names:
        if name not in known:
            raise UadbenchError(
                f"attack {name!r} is not in the run; it has: {', '.join(sorted(known))}"
            )


def compare_pairs(
    rows: pd.DataFrame,
    pairs: Sequence[tuple[str, str]],
    *,
    victims: Sequence[str] | None = None,
    metrics: Sequence[str] | str = ("miou", "asr50"),
    n_perm: int = N_PERM,
    seed: int = 0,
    alpha: float = 0.05,
    correction: str = "bonferroni",
    test: str = BOTH,
    equivalence: float | None = None,
    unit: str = "image",
    pairing: str = "prompt",
    n_boot: int | None = None,
) -> pd.DataFrame:
    """:func:`compare` for several (a, b) pairs at once, all lines one family."""
    del n_boot  # accepted for callers of the former bootstrap API; the CI is test inversion
    metrics = parse_metrics(metrics)
    if unit not in ("image", "prompt"):
        raise UadbenchError(f"unknown unit {unit!r}; choose 'image' (default) or 'prompt'")
    if unit == "prompt" and pairing == "image":
        raise UadbenchError(
            "per-prompt pairing is impossible for this run: its prompts differ between attacks "
            "(manifest pairing 'image', e.g. imported logs); use the default --unit image"
        )
    lines, diffs = [], []
    for a, b in pairs:
        _check_attacks(rows, (a, b))
        if a == b:
            raise UadbenchError("--a and --b name the same attack; pick two different attacks")
        ra, rb = rows[rows["attack"] == a], rows[rows["attack"] == b]
        both = set(ra["victim"].unique()) & set(rb["victim"].unique())
        vics = list(victims) if victims else [v for v in rows["victim"].unique() if v in both]
        missing = [v for v in vics if v not in both]
        if missing:
            raise UadbenchError(
                f"victim(s) {', '.join(missing)} lack rows for {a!r} or {b!r} in this run"
            )
        for v in vics:
            va_rows, vb_rows = ra[ra["victim"] == v], rb[rb["victim"] == v]
            for m in metrics:
                if unit == "image":
                    pa_, pb_ = per_image(va_rows, m), per_image(vb_rows, m)
                else:
                    pa_, pb_ = _per_prompt(va_rows, m), _per_prompt(vb_rows, m)
                common = pa_.index.intersection(pb_.index)
                dropped = len(pa_) + len(pb_) - 2 * len(common)
                if dropped:
                    log.warning(
                        "%s: %d %s(s) present under only one of %s, %s; left out",
                        v,
                        dropped,
                        unit,
                        a,
                        b,
                    )
                ma = pa_.loc[common, "mean"].to_numpy()
                mb = pb_.loc[common, "mean"].to_numpy()
                sign = 1.0 if METRICS[m][2] else -1.0  # mIoU: b − a; ASR: a − b
                diffs.append(sign * (mb - ma))
                lines.append(
                    {
                        "victim": v,
                        "metric": m,
                        "a": a,
                        "b": b,
                        "value_a": float(ma.mean()) if ma.size else np.nan,
                        "value_b": float(mb.mean()) if mb.size else np.nan,
                    }
                )
    fam = family_tests(
        diffs,
        alpha=alpha,
        correction=correction,
        n_perm=n_perm,
        seed=seed,
        test=test,
        equivalence=equivalence,
    )
    table = pd.DataFrame(lines)
    if not len(table):
        table = pd.DataFrame(columns=COMPARE_COLUMNS)
        table.attrs.update(fam.attrs)
        return table
    table["delta"] = fam["estimate"].to_numpy()
    for c in ("ci_low", "ci_high", "ci_level", "p", "p_adj", "min_p_adj", "mde"):
        table[c] = fam[c].to_numpy()
    table["n_images"] = fam["n"].to_numpy()
    sig = fam["significant"].to_numpy()
    table["stronger"] = np.where(
        sig & (table["delta"] > 0),
        table["a"],
        np.where(sig & (table["delta"] < 0), table["b"], "n.s."),
    )
    if equivalence is not None:
        table["p_tost_adj"] = fam["p_tost_adj"].to_numpy()
        table["equivalent"] = fam["equivalent"].to_numpy()
    table = table[[*COMPARE_COLUMNS, *[c for c in table.columns if c not in COMPARE_COLUMNS]]]
    if unit == "prompt":
        table = table.rename(columns={"n_images": "n_prompts"})
    table.attrs.update(fam.attrs, unit=unit, equivalence=equivalence)
    return table


def compare(rows: pd.DataFrame, a: str, b: str, **kw) -> pd.DataFrame:
    """Compare attack ``a`` with attack ``b`` on each victim.

    ``rows``: result rows with both attack labels. Images are paired on (dataset,
    sample_id); images present under only one attack are left out (``n_images``
    counts the pairs). One line per (victim, metric) with columns ``victim, metric, a,
    b, value_a, value_b`` (mean over images of the per-image metric), ``delta`` (+ =
    a stronger: mIoU value_b − value_a, ASR value_a − value_b), ``ci_low, ci_high,
    ci_level`` (test-inversion interval, see :func:`family_tests`), ``p`` (two-sided
    sign-flip permutation test of delta = 0), ``p_adj`` (``correction`` over all lines),
    ``n_images, stronger`` (a or b where ``p_adj ≤ alpha``, else ``n.s.``),
    ``min_p_adj, mde``; with ``equivalence=M`` also ``p_tost_adj, equivalent`` (TOST of
    |delta| < M). ``table.attrs`` holds the family's description (see :func:`describe`).

    ``unit="prompt"`` treats every prompt as an independent pair (joined on the prompt
    index): anti-conservative, for showing how misleading that is; it is refused when
    the run's ``pairing`` is ``"image"`` (prompts differ between attacks).
    """
    return compare_pairs(rows, [(a, b)], **kw)


def all_pairs(rows: pd.DataFrame) -> list[tuple[str, str]]:
    """Every unordered pair of non-clean attacks of ``rows`` (order of appearance)."""
    from ..store.schema import CLEAN

    labels = [x for x in dict.fromkeys(rows["attack"]) if x != CLEAN]
    return [(x, y) for i, x in enumerate(labels) for y in labels[i + 1 :]]


def _per_prompt(rows: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Like :func:`per_image` with every prompt its own cluster (naive analysis)."""
    vals = metric_values(rows["iou"], metric)
    idx = pd.MultiIndex.from_arrays([rows["dataset"], rows["sample_id"], rows["prompt_index"]])
    df = pd.DataFrame({"sum": vals, "n": 1.0, "mean": vals}, index=idx)
    return df[~df.index.duplicated()].sort_index()


def _ci_text(lo: float, hi: float) -> str:
    def f(x: float) -> str:
        return (
            "–" if x != x else ("-inf" if x == -np.inf else "+inf" if x == np.inf else f"{x:+.2f}")
        )

    return f"[{f(lo)}, {f(hi)}]"


def _mde_text(x: float) -> str:
    return "–" if x != x else ("none" if x == np.inf else f"{x:.2f}")


def render_compare(table: pd.DataFrame, fmt: str = "terminal", alpha: float = 0.05) -> str:
    """Text of a :func:`compare` table (terminal, markdown, latex, csv or html), with the
    foot that names the test, the family and the interval, and a small-n warning."""
    fmt = fmt.lower()
    if fmt == "csv":
        return table.to_csv(index=False, lineterminator="\n")
    if table.empty:
        return "(no comparisons)\n"
    attrs = table.attrs or {}
    unit = attrs.get("unit", "image")
    nname = "n_images" if "n_images" in table else "n_prompts"
    show = pd.DataFrame(
        {
            "victim": table["victim"],
            "metric": table["metric"].map(lambda m: METRICS[m][0]),
            "a": table["a"],
            "b": table["b"],
            "value a": table["value_a"].map(lambda x: f"{x:.2f}"),
            "value b": table["value_b"].map(lambda x: f"{x:.2f}"),
            "delta (+ = a stronger)": table["delta"].map(lambda x: f"{x:+.2f}"),
            "CI": [_ci_text(lo, hi) for lo, hi in zip(table["ci_low"], table["ci_high"])],
            "CI level": table["ci_level"].map(lambda x: "–" if x != x else f"{100 * x:.2f}%"),
            "p": table["p"].map(_pfmt),
            "p adj": table["p_adj"].map(_pfmt),
            "n": table[nname].astype(int).astype(str),
            "stronger": table["stronger"],
            "min p adj": table["min_p_adj"].map(_pfmt),
            "MDE (80%)": table["mde"].map(_mde_text),
        }
    )
    single = table[["a", "b"]].drop_duplicates().shape[0] == 1
    if single:
        show = show.drop(columns=["a", "b"])
    const_min = table["min_p_adj"].nunique(dropna=True) <= 1
    if const_min:
        show = show.drop(columns=["min p adj"])
    if "equivalent" in table:
        show["equivalent"] = [
            f"{'yes' if e else 'no'} (p={_pfmt(p)})"
            for e, p in zip(table["equivalent"], table["p_tost_adj"])
        ]
    if single:
        title = (
            f"{table['a'].iloc[0]} (a) vs {table['b'].iloc[0]} (b): delta > 0 means a is stronger"
        )
    else:
        title = "attack a vs attack b: delta > 0 means a is stronger"
    kind = "per-image" if unit == "image" else "per-prompt"
    foot = []
    if attrs:
        foot = describe(
            attrs,
            table[nname],
            estimand=f"mean over {unit}s of the {kind} difference "
            "(mIoU: mean IoU; ASR: % of masks with IoU ≤ k)",
            unit=unit,
        )
        if const_min and table["min_p_adj"].notna().any():
            foot.append(
                "smallest attainable adjusted p for this n and family: "
                + _pfmt(float(table["min_p_adj"].dropna().iloc[0]))
            )
        foot.append(
            "value a/b: mean over images of the per-image metric (%), the quantity tested "
            "(the leaderboard's mIoU weighs images by their prompts); MDE: smallest true "
            "delta detected with 80% power at that level, from the observed SD"
        )
        if attrs.get("equivalence") is not None:
            foot.append(
                f"equivalent: TOST of |delta| < {attrs['equivalence']:g} at the same "
                "correction; 'n.s.' alone never means equal"
            )
        warn = small_n_warning(table.rename(columns={nname: "n"}), alpha, unit)
        if warn:
            foot.append(warn)
    return render_frame(show, fmt, title=title, foot=foot)


def _pfmt(p: float) -> str:
    if p != p:
        return "–"
    return f"{p:.2g}" if p < 0.001 else f"{p:.3f}"


def render_frame(
    df: pd.DataFrame, fmt: str, title: str | None = None, foot: Sequence[str] = ()
) -> str:
    """Render a frame of preformatted strings in a human format (or CSV); ``foot``: notes
    printed under the table (LaTeX: comments; HTML: a paragraph)."""
    import html as _html

    from tabulate import tabulate

    fmt = fmt.lower()
    if fmt == "csv":
        return df.to_csv(index=False, lineterminator="\n")
    if fmt == "terminal":
        return (
            (f"{title}\n\n" if title else "")
            + tabulate(
                df.values.tolist(),
                headers=list(df.columns),
                tablefmt="simple",
                disable_numparse=True,
            )
            + "\n"
            + "".join(f"{line}\n" for line in foot)
        )
    if fmt == "markdown":
        return (
            (f"### {title}\n\n" if title else "")
            + tabulate(
                df.values.tolist(), headers=list(df.columns), tablefmt="pipe", disable_numparse=True
            )
            + "\n"
            + "".join(f"\n{line}\n" for line in foot)
        )
    if fmt == "latex":
        from .leaderboard import _latex_escape

        lines = ([f"% {title}"] if title else []) + [
            r"\begin{tabular}{" + "l" * len(df.columns) + "}",
            r"\toprule",
            " & ".join(_latex_escape(c) for c in df.columns) + r" \\",
            r"\midrule",
        ]
        lines += [" & ".join(_latex_escape(x) for x in row) + r" \\" for row in df.values.tolist()]
        lines += [r"\bottomrule", r"\end{tabular}"] + [f"% {line}" for line in foot]
        return "\n".join(lines) + "\n"
    if fmt == "html":
        e = _html.escape
        out = ['<table class="compare">'] + ([f"<caption>{e(title)}</caption>"] if title else [])
        out.append(
            "<thead><tr>"
            + "".join(f"<th>{e(str(c))}</th>" for c in df.columns)
            + "</tr></thead><tbody>"
        )
        out += [
            "<tr>" + "".join(f"<td>{e(str(x))}</td>" for x in row) + "</tr>"
            for row in df.values.tolist()
        ]
        out.append("</tbody></table>")
        out += [f"<p class='note'>{e(line)}</p>" for line in foot]
        return "\n".join(out) + "\n"
    raise UadbenchError(f"unknown format {fmt!r}; choose from terminal, markdown, latex, csv, html")
