"""Regression check for CI: a fresh run against a committed baseline run.

``what="attack"`` (default): for each (attack, victim) in both runs (clean rows
excepted), did the attack get *weaker* — mIoU rose or ASR@50 fell? ``what=
"robustness"``: for each (attack including ``clean``, victim), did the victim get
*worse* — mIoU fell or ASR@50 rose?

Each question is a one-sided test at the image level: if both runs hold exactly the
same images, a Wilcoxon signed-rank test on the per-image paired differences;
otherwise a Mann–Whitney U test on per-image means. ``margin`` (percentage points)
is a tolerated change: the null hypothesis is "the change is at most ``margin``".
p-values are Holm-adjusted over the whole family (every pair × metric); a
regression is a line whose adjusted p is below ``alpha``.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats as sps

from ..errors import UadbenchError
from ..store.rundir import load_rows
from ..store.schema import CLEAN
from .leaderboard import METRICS
from .stats import holm, per_image, signed_rank_p

log = logging.getLogger(__name__)
CHECK_METRICS = ("miou", "asr50")
WHATS = ("attack", "robustness")


def _one_sided(
    base: pd.DataFrame, cur: pd.DataFrame, worse_sign: float, margin: float
) -> tuple[float, str]:
    """p-value of H1 "current is worse than baseline by more than ``margin``".

    ``base``/``cur``: per-image frames (``sum``, ``n``); ``worse_sign`` = +1 when a
    higher per-image mean is worse, −1 when lower is worse.
    """
    mb, mc = base["sum"] / base["n"], cur["sum"] / cur["n"]
    same = len(mb) == len(mc) and mb.index.equals(mc.index)
    if not same and set(mb.index) == set(mc.index):
        mc = mc.loc[mb.index]
        same = True
    if same:
        w = worse_sign * (mc.to_numpy() - mb.to_numpy()) - margin
        return signed_rank_p(w, alternative="greater"), "paired wilcoxon"
    if len(mb) == 0 or len(mc) == 0:
        return float("nan"), "none"
    x = worse_sign * mc.to_numpy() - margin
    y = worse_sign * mb.to_numpy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        p = float(sps.mannwhitneyu(x, y, alternative="greater").pvalue)
    return p, "mann-whitney"


def check_rows(
    current: pd.DataFrame,
    baseline: pd.DataFrame,
    *,
    alpha: float = 0.05,
    what: str = "attack",
    margin: float = 0.0,
    strict: bool = False,
) -> tuple[bool, pd.DataFrame]:
    """:func:`check` on row frames. Returns ``(ok, table)``; ``ok`` is False only if some
    line is a significant regression (or, with ``strict``, some baseline pair is missing
    from the current run). ``table`` columns: ``attack, victim, metric,
    baseline, current, delta`` (current − baseline, %), ``n_base, n_current`` (images),
    ``test, p, p_adj, verdict`` (``REGRESSION``, ``ok`` or ``missing``)."""
    if what not in WHATS:
        raise UadbenchError(f"unknown --what {what!r}; choose attack or robustness")
    if margin < 0:
        raise UadbenchError(f"--margin {margin} must be >= 0 (percentage points tolerated)")
    pairs = ["attack", "victim"]
    keys_b = set(map(tuple, baseline[pairs].drop_duplicates().itertuples(index=False)))
    keys_c = set(map(tuple, current[pairs].drop_duplicates().itertuples(index=False)))
    if what == "attack":
        keys_b = {k for k in keys_b if k[0] != CLEAN}
        keys_c = {k for k in keys_c if k[0] != CLEAN}
    both = sorted(keys_b & keys_c)
    lines = []
    gb = dict(tuple(baseline.groupby(["attack", "victim"])))
    gc = dict(tuple(current.groupby(["attack", "victim"])))
    for attack, victim in both:
        rb, rc = gb[(attack, victim)], gc[(attack, victim)]
        for m in CHECK_METRICS:
            lower_is_stronger = METRICS[m][2]
            # attack check: weaker attack = higher mIoU / lower ASR;
            # robustness check: worse victim = lower mIoU / higher ASR.
            worse_sign = 1.0 if lower_is_stronger else -1.0
            if what == "robustness":
                worse_sign = -worse_sign
            pb, pc = per_image(rb, m), per_image(rc, m)
            p, test = _one_sided(pb, pc, worse_sign, margin)
            vb = float(pb["sum"].sum() / pb["n"].sum())
            vc = float(pc["sum"].sum() / pc["n"].sum())
            lines.append(
                {
                    "attack": attack,
                    "victim": victim,
                    "metric": m,
                    "baseline": vb,
                    "current": vc,
                    "delta": vc - vb,
                    "n_base": len(pb),
                    "n_current": len(pc),
                    "test": test,
                    "p": p,
                }
            )
    for attack, victim in sorted(keys_b - keys_c):
        log.warning("check: %s on %s is in the baseline but not in the current run", attack, victim)
        for m in CHECK_METRICS:
            lines.append(
                {
                    "attack": attack,
                    "victim": victim,
                    "metric": m,
                    "baseline": np.nan,
                    "current": np.nan,
                    "delta": np.nan,
                    "n_base": 0,
                    "n_current": 0,
                    "test": "none",
                    "p": np.nan,
                }
            )
    cols = [
        "attack",
        "victim",
        "metric",
        "baseline",
        "current",
        "delta",
        "n_base",
        "n_current",
        "test",
        "p",
    ]
    table = pd.DataFrame(lines, columns=cols)
    table["p_adj"] = holm(table["p"].to_numpy()) if len(table) else []
    reg = table["p_adj"] < alpha
    table["verdict"] = np.where(
        reg, "REGRESSION", np.where(table["test"] == "none", "missing", "ok")
    )
    if not both:
        raise UadbenchError(
            "the run and the baseline share no (attack, victim) pair to check; "
            "was the baseline made with the same attacks and victims?"
        )
    missing = table["verdict"] == "missing"
    return not bool(reg.any() or (strict and missing.any())), table


def check(
    run_dir: str | Path,
    baseline_dir: str | Path,
    *,
    alpha: float = 0.05,
    what: str = "attack",
    margin: float = 0.0,
    strict: bool = False,
) -> tuple[bool, pd.DataFrame]:
    """Compare the run in ``run_dir`` with the baseline run in ``baseline_dir``.

    Returns ``(ok, table)`` (see :func:`check_rows`); ``ok`` is False only when a
    drop in attack strength (``what="attack"``) or victim robustness
    (``what="robustness"``) is significant after Holm correction at ``alpha``, or, with
    ``strict``, when an (attack, victim) pair of the baseline is missing from the run.
    """
    return check_rows(
        load_rows(run_dir),
        load_rows(baseline_dir),
        alpha=alpha,
        what=what,
        margin=margin,
        strict=strict,
    )


def render_check(table: pd.DataFrame, fmt: str = "terminal") -> str:
    """Human text (or CSV) of a check table."""
    from .stats import _pfmt, render_frame

    if fmt == "csv":
        return table.to_csv(index=False, lineterminator="\n")

    def f(x: float, signed: bool = False) -> str:
        return "–" if x != x else (f"{x:+.2f}" if signed else f"{x:.2f}")

    show = pd.DataFrame(
        {
            "attack": table["attack"],
            "victim": table["victim"],
            "metric": table["metric"].map(lambda m: METRICS[m][0]),
            "baseline": table["baseline"].map(f),
            "current": table["current"].map(f),
            "delta": table["delta"].map(lambda x: f(x, True)),
            "images": [f"{b}/{c}" for b, c in zip(table["n_base"], table["n_current"])],
            "test": table["test"],
            "p_adj": table["p_adj"].map(_pfmt),
            "verdict": table["verdict"],
        }
    )
    return render_frame(show, fmt)
