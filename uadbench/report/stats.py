"""Significance tests that respect the clustering of prompts within images.

Prompts of one image share the image (and its adversarial perturbation), so their
IoUs are strongly correlated; treating them as independent samples makes every
difference look significant. Every test here resamples or ranks **images**:

- paired cluster bootstrap: resample images with replacement; per resample, the
  metric of an attack is the mean over the prompts of the resampled images (a ratio
  of sums, so images with more prompts weigh more, exactly as in the leaderboard);
- Wilcoxon signed-rank test on per-image means (per-image mIoU or per-image ASR);
- Holm's step-down adjustment across the family of comparisons.

The Wilcoxon p-values are exactly calibrated under the null; the bootstrap CIs are
close (simulated 95% coverage of the mIoU difference ≈ 94–95% with 30 images) but
run slightly narrow for ASR when few images carry the difference (tests/
test_report_stats.py), so decisions (``stronger``, ``check``) use the p-values.

Sign convention of :func:`compare`: ``delta`` is oriented so that **positive means
attack a is stronger** than b: ``delta = mIoU(b) − mIoU(a)`` for mIoU and
``delta = ASR(a) − ASR(b)`` for ASR (percentage points).
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

    Returns a frame indexed by (dataset, sample_id) with columns ``sum`` and ``n``.
    """
    vals = pd.Series(metric_values(rows["iou"], metric), index=rows.index)
    g = vals.groupby([rows["dataset"], rows["sample_id"]], sort=True)
    return pd.DataFrame({"sum": g.sum(), "n": g.size().astype(np.float64)})


def bootstrap_weights(n: int, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """(n_boot, n) resampling counts: each row is one bootstrap draw of n of n clusters."""
    idx = rng.integers(0, n, size=(n_boot, n)) + (np.arange(n_boot) * n)[:, None]
    return np.bincount(idx.ravel(), minlength=n_boot * n).reshape(n_boot, n).astype(np.float64)


@dataclass
class PairedResult:
    """Result of :func:`paired_cluster_test` (values in the metric's units, %)."""

    value_a: float
    value_b: float
    diff: float  # value_b − value_a (prompt-weighted means)
    ci_low: float
    ci_high: float
    p: float  # two-sided Wilcoxon signed-rank on per-cluster means
    n: int


def paired_cluster_test(
    sum_a: np.ndarray,
    n_a: np.ndarray,
    sum_b: np.ndarray,
    n_b: np.ndarray,
    *,
    n_boot: int = 2000,
    alpha: float = 0.05,
    rng: np.random.Generator | None = None,
) -> PairedResult:
    """Paired comparison of two attacks over the same clusters (images).

    ``sum_a[i]``/``n_a[i]``: sum of per-prompt values and prompt count of cluster i
    under attack a (likewise b; counts may differ between a and b and between
    clusters). The statistic is ``Σ sum_b / Σ n_b − Σ sum_a / Σ n_a`` (difference of
    prompt-weighted means); its (1 − alpha) CI is the expanded percentile interval of
    ``n_boot`` cluster-bootstrap resamples (the same resampled clusters for a and b;
    spread widened by sqrt(k/(k−1))·t/z for k clusters, so that few images do not
    make it too narrow); the p-value
    is a two-sided Wilcoxon signed-rank test on the per-cluster mean differences.
    """
    rng = rng if rng is not None else np.random.default_rng(0)
    sa, na, sb, nb = (np.asarray(x, dtype=np.float64) for x in (sum_a, n_a, sum_b, n_b))
    k = sa.size
    if k == 0:
        nan = float("nan")
        return PairedResult(nan, nan, nan, nan, nan, nan, 0)
    va, vb = sa.sum() / na.sum(), sb.sum() / nb.sum()
    w = bootstrap_weights(k, n_boot, rng)
    agg = w @ np.stack([sa, na, sb, nb], axis=1)  # (n_boot, 4)
    boot = agg[:, 2] / agg[:, 3] - agg[:, 0] / agg[:, 1]
    diff = vb - va
    if k > 1:
        # expanded percentile interval (Hesterberg 2015): widen the bootstrap spread by
        # sqrt(k/(k-1)) · t_{k-1}/z, which corrects the percentile interval's
        # undercoverage when there are few images
        z = sps.norm.ppf(1 - alpha / 2)
        boot = diff + (boot - diff) * np.sqrt(k / (k - 1)) * sps.t.ppf(1 - alpha / 2, k - 1) / z
    lo, hi = np.quantile(boot, [alpha / 2, 1 - alpha / 2])
    return PairedResult(
        float(va),
        float(vb),
        float(diff),
        float(lo),
        float(hi),
        signed_rank_p(sb / nb - sa / na),
        int(k),
    )


def signed_rank_p(d: np.ndarray, alternative: str = "two-sided") -> float:
    """Wilcoxon signed-rank p-value of differences ``d`` (zeros dropped; 1.0 if all are
    zero). Small samples with ties or zeros get the exact null distribution by
    enumerating all 2^n sign patterns (vectorised); otherwise scipy (exact without ties
    up to 50 values, normal approximation beyond)."""
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


def compare(
    rows: pd.DataFrame,
    a: str,
    b: str,
    *,
    victims: Sequence[str] | None = None,
    metrics: Sequence[str] | str = ("miou", "asr50"),
    n_boot: int = 2000,
    seed: int = 0,
    alpha: float = 0.05,
    unit: str = "image",
    pairing: str = "prompt",
) -> pd.DataFrame:
    """Compare attack ``a`` with attack ``b`` on each victim.

    ``rows``: result rows with both attack labels. Images are paired on (dataset,
    sample_id); images present under only one attack are left out (``n_images``
    counts the pairs). One line per (victim, metric) with columns ``victim, metric,
    a, b, value_a, value_b, delta, ci_low, ci_high, p, p_holm, n_images, stronger``.
    ``delta`` > 0 means **a is stronger** (mIoU: value_b − value_a; ASR: value_a −
    value_b), with a paired cluster-bootstrap (1 − alpha) CI; ``p`` is a Wilcoxon
    signed-rank test on per-image means, ``p_holm`` its Holm adjustment over all
    lines; ``stronger`` names the stronger attack where ``p_holm < alpha``.

    ``unit="prompt"`` treats every prompt as an independent pair (joined on the prompt
    index): anti-conservative, for showing how misleading that is; it is refused when
    the run's ``pairing`` is ``"image"`` (prompts differ between attacks).
    """
    metrics = parse_metrics(metrics)
    if unit not in ("image", "prompt"):
        raise UadbenchError(f"unknown unit {unit!r}; choose 'image' (default) or 'prompt'")
    if unit == "prompt" and pairing == "image":
        raise UadbenchError(
            "per-prompt pairing is impossible for this run: its prompts differ between attacks "
            "(manifest pairing 'image', e.g. imported logs); use the default --unit image"
        )
    known = set(rows["attack"].unique())
    for name in (a, b):
        if name not in known:
            raise UadbenchError(
                f"attack {name!r} is not in the run; it has: {', '.join(sorted(known))}"
            )
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
    rng = np.random.default_rng(seed)
    out = []
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
            pa_, pb_ = pa_.loc[common], pb_.loc[common]
            r = paired_cluster_test(
                pa_["sum"], pa_["n"], pb_["sum"], pb_["n"], n_boot=n_boot, alpha=alpha, rng=rng
            )
            sign = 1.0 if METRICS[m][2] else -1.0  # mIoU: b − a; ASR: a − b
            lo, hi = sorted((sign * r.ci_low, sign * r.ci_high))
            out.append(
                {
                    "victim": v,
                    "metric": m,
                    "a": a,
                    "b": b,
                    "value_a": r.value_a,
                    "value_b": r.value_b,
                    "delta": sign * r.diff,
                    "ci_low": lo,
                    "ci_high": hi,
                    "p": r.p,
                    "n_images": r.n,
                }
            )
    table = pd.DataFrame(
        out,
        columns=[
            "victim",
            "metric",
            "a",
            "b",
            "value_a",
            "value_b",
            "delta",
            "ci_low",
            "ci_high",
            "p",
            "n_images",
        ],
    )
    if unit == "prompt":
        table = table.rename(columns={"n_images": "n_prompts"})
    table["p_holm"] = holm(table["p"].to_numpy()) if len(table) else []
    sig = table["p_holm"] < alpha
    table["stronger"] = np.where(
        sig & (table["delta"] > 0), a, np.where(sig & (table["delta"] < 0), b, "n.s.")
    )
    return table


def _per_prompt(rows: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Like :func:`per_image` with every prompt its own cluster (naive analysis)."""
    vals = metric_values(rows["iou"], metric)
    idx = pd.MultiIndex.from_arrays([rows["dataset"], rows["sample_id"], rows["prompt_index"]])
    df = pd.DataFrame({"sum": vals, "n": 1.0}, index=idx)
    return df[~df.index.duplicated()].sort_index()


def render_compare(table: pd.DataFrame, fmt: str = "terminal", alpha: float = 0.05) -> str:
    """Text of a :func:`compare` table (terminal, markdown, latex, csv or html)."""
    fmt = fmt.lower()
    if fmt == "csv":
        return table.to_csv(index=False, lineterminator="\n")
    if table.empty:
        return "(no comparisons)\n"
    a, b = table["a"].iloc[0], table["b"].iloc[0]
    show = pd.DataFrame(
        {
            "victim": table["victim"],
            "metric": table["metric"].map(lambda m: METRICS[m][0]),
            a: table["value_a"].map(lambda x: f"{x:.2f}"),
            b: table["value_b"].map(lambda x: f"{x:.2f}"),
            "delta (+ = a stronger)": table["delta"].map(lambda x: f"{x:+.2f}"),
            f"{100 * (1 - alpha):g}% CI": [
                f"[{lo:+.2f}, {hi:+.2f}]" for lo, hi in zip(table["ci_low"], table["ci_high"])
            ],
            "p": table["p"].map(_pfmt),
            "p (Holm)": table["p_holm"].map(_pfmt),
            "n": table.get("n_images", table.get("n_prompts")).astype(int).astype(str),
            "stronger": table["stronger"],
        }
    )
    return render_frame(show, fmt, title=f"{a} (a) vs {b} (b): delta > 0 means {a} is stronger")


def _pfmt(p: float) -> str:
    if p != p:
        return "–"
    return f"{p:.2g}" if p < 0.001 else f"{p:.3f}"


def render_frame(df: pd.DataFrame, fmt: str, title: str | None = None) -> str:
    """Render a frame of preformatted strings in a human format (or CSV)."""
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
        )
    if fmt == "markdown":
        return (
            (f"### {title}\n\n" if title else "")
            + tabulate(
                df.values.tolist(), headers=list(df.columns), tablefmt="pipe", disable_numparse=True
            )
            + "\n"
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
        return "\n".join([*lines, r"\bottomrule", r"\end{tabular}"]) + "\n"
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
        return "\n".join([*out, "</tbody></table>"]) + "\n"
    raise UadbenchError(f"unknown format {fmt!r}; choose from terminal, markdown, latex, csv, html")
