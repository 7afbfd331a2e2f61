"""Regression check for CI: a fresh run against a committed baseline run.

``what="attack"`` (default): for each (attack, victim) of the baseline (clean rows
excepted), did the attack get *weaker*? Strength is the **damage relative to clean**,
per image: clean mIoU − attacked mIoU, and attacked ASR@50 − clean ASR@50 (percentage
points), so a victim that merely got better or worse on clean images is not blamed on
the attack. ``what="robustness"``: did the victim get *worse*? For the ``clean`` line
its clean mIoU fell (or its clean ASR@50, the share of clean masks already wrong, rose);
for every attack its damage rose.

Each line pairs the two runs on the images common to both (the dropped ones are named)
and tests the mean over those images of the per-image change, one-sided, with the
paired sign-flip permutation test of :mod:`uadbench.report.stats`; ``margin``
(percentage points) is the tolerated change **of the displayed delta**: the null
hypothesis is "the change in the worse direction is at most ``margin``". The printed
bound is the inverted one-sided test at the level the correction used, so a line is a
regression exactly when the bound passes the margin. p-values are adjusted over the
whole family (every tested line); a regression is a line whose adjusted p is at most
``alpha``. A pair of the baseline missing from the run fails the check (unless
``allow_missing``); pairs only in the run are listed as new. A baseline whose dataset,
prompt protocol or reference masks differ is refused.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import UadbenchError
from ..store.rundir import load_manifest, load_unit_rows
from ..store.schema import CLEAN
from .leaderboard import METRICS
from .stats import N_PERM, _pfmt, describe, family_tests, per_image, render_frame, small_n_warning

log = logging.getLogger(__name__)
CHECK_METRICS = ("miou", "asr50")
WHATS = ("attack", "robustness")
#: identity keys a baseline may differ in (a rerun with another seed is the point)
IDENTITY_FREE = ("seed", "surrogate")
CHECK_COLUMNS = [
    "attack",
    "victim",
    "metric",
    "quantity",
    "worse_if",
    "baseline",
    "current",
    "delta",
    "bound",
    "bound_level",
    "n_images",
    "n_dropped",
    "p",
    "p_adj",
    "min_p_adj",
    "mde",
    "verdict",
    "dropped",
]


def _strength(rows: pd.DataFrame, victim_clean: pd.DataFrame | None, metric: str):
    """(per-image quantity, label): the damage relative to clean when clean rows exist
    (clean − attacked for mIoU, attacked − clean for ASR), else the attacked metric with
    its sign such that higher = stronger."""
    lower_is_stronger = METRICS[metric][2]
    adv = per_image(rows, metric)["mean"]
    label = METRICS[metric][0]
    if victim_clean is not None and len(victim_clean):
        cl = per_image(victim_clean, metric)["mean"]
        common = adv.index.intersection(cl.index)
        s = (cl.loc[common] - adv.loc[common]) if lower_is_stronger else (adv - cl).loc[common]
        how = "clean − attacked" if lower_is_stronger else "attacked − clean"
        return s, f"damage {label} ({how})"
    return (-adv if lower_is_stronger else adv), f"attacked {label} (no clean rows)"


def _line_values(rows: pd.DataFrame, attack: str, victim: str, metric: str, what: str):
    """(per-image series, quantity label, worse_if) of one (attack, victim, metric)."""
    sel = rows[rows["victim"] == victim]
    if attack == CLEAN:
        s = per_image(sel[sel["attack"] == CLEAN], metric)["mean"]
        lower_better = not METRICS[metric][2]  # clean mIoU: lower is worse
        return s, f"clean {METRICS[metric][0]}", ("lower" if not lower_better else "higher")
    clean = sel[sel["attack"] == CLEAN]
    s, label = _strength(sel[sel["attack"] == attack], clean, metric)
    if label.startswith("attacked mIoU"):  # absolute basis shown in its own units
        s, label = -s, f"attacked {METRICS[metric][0]} (no clean rows)"
        worse_attack, worse_robust = "higher", "lower"
    else:
        worse_attack, worse_robust = "lower", "higher"
    return s, label, (worse_attack if what == "attack" else worse_robust)


def _pairs(rows: pd.DataFrame, what: str) -> set[tuple[str, str]]:
    keys = set(map(tuple, rows[["attack", "victim"]].drop_duplicates().itertuples(index=False)))
    return {k for k in keys if k[0] != CLEAN} if what == "attack" else keys


def check_rows(
    current: pd.DataFrame,
    baseline: pd.DataFrame,
    *,
    alpha: float = 0.05,
    what: str = "attack",
    margin: float = 0.0,
    strict: bool = True,
    allow_missing: bool = False,
    correction: str = "bonferroni",
    n_perm: int = N_PERM,
    seed: int = 0,
) -> tuple[bool, pd.DataFrame]:
    """:func:`check` on row frames. Returns ``(ok, table)``.

    ``ok`` is False when some line is a significant regression, some baseline pair is
    missing from the current run (unless ``allow_missing``; ``strict`` is the former
    name of the default and is ignored) or some pair has no image in common. ``table``
    has one line per (attack, victim, metric) with ``CHECK_COLUMNS``: ``baseline`` /
    ``current`` the mean over the common images of the per-image ``quantity``, ``delta``
    = current − baseline, ``bound`` the one-sided confidence bound of delta on the side
    of ``worse_if`` (at ``bound_level``), ``verdict`` one of ``REGRESSION``, ``ok``,
    ``MISSING``, ``NO COMMON IMAGES``, ``new (not in baseline)``; ``dropped`` names
    images present in only one run. ``table.attrs`` describes the family."""
    del strict
    if what not in WHATS:
        raise UadbenchError(f"unknown --what {what!r}; choose attack or robustness")
    if margin < 0:
        raise UadbenchError(f"--margin {margin} must be >= 0 (percentage points tolerated)")
    keys_b, keys_c = _pairs(baseline, what), _pairs(current, what)
    both = sorted(keys_b & keys_c)
    if not both:
        raise UadbenchError(
            "the run and the baseline share no (attack, victim) pair to check; "
            "was the baseline made with the same attacks and victims?"
        )
    lines, diffs, alts, nulls = [], [], [], []
    for attack, victim in both:
        for m in CHECK_METRICS:
            sb, label, worse = _line_values(baseline, attack, victim, m, what)
            sc, _, _ = _line_values(current, attack, victim, m, what)
            common = sb.index.intersection(sc.index)
            dropped = sorted(set(sb.index) ^ set(sc.index))
            d = (sc.loc[common] - sb.loc[common]).to_numpy()
            rec = {
                "attack": attack,
                "victim": victim,
                "metric": m,
                "quantity": label,
                "worse_if": worse,
                "baseline": float(sb.loc[common].mean()) if len(common) else np.nan,
                "current": float(sc.loc[common].mean()) if len(common) else np.nan,
                "n_images": len(common),
                "n_dropped": len(dropped),
                "dropped": ", ".join(
                    f"{sid} ({'baseline' if k in sb.index else 'run'} only)"
                    for k in dropped
                    for sid in [k[1]]
                ),
            }
            if dropped:
                log.warning(
                    "check: %s on %s: %d image(s) in only one run, left out: %s",
                    attack,
                    victim,
                    len(dropped),
                    rec["dropped"],
                )
            if len(common):
                diffs.append(d)
                alts.append("less" if worse == "lower" else "greater")
                nulls.append(-margin if worse == "lower" else margin)
                rec["_i"] = len(diffs) - 1
            lines.append(rec)
    fam = family_tests(
        diffs,
        alpha=alpha,
        alternative=alts,
        null=nulls,
        correction=correction,
        n_perm=n_perm,
        seed=seed,
    )
    for rec in lines:
        i = rec.pop("_i", None)
        if i is None:
            rec.update(
                delta=np.nan,
                bound=np.nan,
                bound_level=np.nan,
                p=np.nan,
                p_adj=np.nan,
                min_p_adj=np.nan,
                mde=np.nan,
                verdict="NO COMMON IMAGES",
            )
            continue
        r = fam.iloc[i]
        worse_low = rec["worse_if"] == "lower"
        rec.update(
            delta=r["estimate"],
            bound=r["ci_high"] if worse_low else r["ci_low"],
            bound_level=r["ci_level"],
            p=r["p"],
            p_adj=r["p_adj"],
            min_p_adj=r["min_p_adj"],
            mde=r["mde"],
            verdict="REGRESSION" if r["significant"] else "ok",
        )
    for attack, victim in sorted(keys_b - keys_c):
        log.warning("check: %s on %s is in the baseline but not in the current run", attack, victim)
        for m in CHECK_METRICS:
            lines.append({"attack": attack, "victim": victim, "metric": m, "verdict": "MISSING"})
    for attack, victim in sorted(keys_c - keys_b):
        for m in CHECK_METRICS:
            lines.append(
                {
                    "attack": attack,
                    "victim": victim,
                    "metric": m,
                    "verdict": "new (not in baseline)",
                }
            )
    table = pd.DataFrame(lines).reindex(columns=CHECK_COLUMNS)
    table["n_images"] = table["n_images"].fillna(0).astype(int)
    table["n_dropped"] = table["n_dropped"].fillna(0).astype(int)
    table["dropped"] = table["dropped"].fillna("")
    table.attrs.update(fam.attrs, what=what, margin=margin, allow_missing=allow_missing)
    fail = table["verdict"].isin(["REGRESSION", "NO COMMON IMAGES"])
    if not allow_missing:
        fail |= table["verdict"] == "MISSING"
    return not bool(fail.any()), table


def comparable(man_base: dict, man_cur: dict, base: pd.DataFrame, cur: pd.DataFrame) -> list[str]:
    """Why a baseline cannot be compared with a run (empty when it can): the manifests'
    identities differ beyond seed and surrogate (dataset, prompt protocol …), or the rows'
    reference masks differ."""
    why = []
    ib, ic = man_base.get("identity"), man_cur.get("identity")
    if isinstance(ib, dict) and isinstance(ic, dict):
        for k in sorted(set(ib) | set(ic)):
            if k not in IDENTITY_FREE and ib.get(k) != ic.get(k):
                why.append(f"{k}: baseline {ib.get(k)!r}, run {ic.get(k)!r}")
    rb = sorted(base["reference"].dropna().unique()) if "reference" in base else []
    rc = sorted(cur["reference"].dropna().unique()) if "reference" in cur else []
    if rb != rc:
        why.append(f"reference masks: baseline {rb}, run {rc}")
    return why


def check(
    run_dir: str | Path,
    baseline_dir: str | Path,
    **kw,
) -> tuple[bool, pd.DataFrame]:
    """Compare the run in ``run_dir`` with the baseline run in ``baseline_dir``.

    Refuses (:class:`UadbenchError`) a baseline whose dataset, prompt protocol or
    reference masks differ from the run's. Returns ``(ok, table)`` (see
    :func:`check_rows`, whose keyword arguments it takes)."""
    cur, base = load_unit_rows(run_dir), load_unit_rows(baseline_dir)
    why = comparable(load_manifest(baseline_dir), load_manifest(run_dir), base, cur)
    if why:
        raise UadbenchError(
            f"{baseline_dir} is not a baseline for {run_dir}: " + "; ".join(why) + " — make the "
            "baseline with the run's dataset, prompts and reference (or rerun the run like it)"
        )
    ok, table = check_rows(cur, base, **kw)
    ib = load_manifest(baseline_dir).get("identity", {}) or {}
    ic = load_manifest(run_dir).get("identity", {}) or {}
    if ib.get("surrogate") != ic.get("surrogate"):
        table.attrs["note"] = (
            f"the surrogate differs (baseline {ib.get('surrogate')}, run {ic.get('surrogate')}): "
            "transfer changes are then expected"
        )
    return ok, table


def render_check(table: pd.DataFrame, fmt: str = "terminal") -> str:
    """Human text (or CSV) of a check table, with the foot naming the test and family."""
    if fmt == "csv":
        return table.to_csv(index=False, lineterminator="\n")

    def f(x: float, signed: bool = False) -> str:
        if x != x:
            return "–"
        if x in (np.inf, -np.inf):
            return "+inf" if x > 0 else "-inf"
        return f"{round(x, 2) + 0.0:+.2f}" if signed else f"{x:.2f}"

    bound = [
        "–" if lvl != lvl else (f"≤ {f(b, True)}" if w == "lower" else f"≥ {f(b, True)}")
        for b, w, lvl in zip(table["bound"], table["worse_if"], table["bound_level"])
    ]
    show = pd.DataFrame(
        {
            "attack": table["attack"],
            "victim": table["victim"],
            "quantity": table["quantity"].fillna(table["metric"].map(lambda m: METRICS[m][0])),
            "worse if": table["worse_if"].fillna("–"),
            "baseline": table["baseline"].map(f),
            "current": table["current"].map(f),
            "delta": table["delta"].map(lambda x: f(x, True)),
            "bound": bound,
            "n": [
                f"{n}" + (f" (-{k})" if k else "")
                for n, k in zip(table["n_images"], table["n_dropped"])
            ],
            "p": table["p"].map(_pfmt),
            "p adj": table["p_adj"].map(_pfmt),
            "MDE (80%)": table["mde"].map(
                lambda x: "–" if x != x else ("none" if x == np.inf else f"{x:.2f}")
            ),
            "verdict": table["verdict"],
        }
    )
    attrs = table.attrs or {}
    foot = []
    if attrs.get("family"):
        tested = table[table["p"].notna()]
        foot = describe(
            attrs,
            tested["n_images"],
            estimand="mean over common images of the per-image change (run − baseline)",
        )
        foot[0] = foot[0].replace("; one-sided;", "; one-sided (towards 'worse if');")
        lvl = tested["bound_level"].dropna()
        if len(lvl):
            foot.append(
                f"bound: one-sided {100 * lvl.min():.2f}% confidence bound of delta (the "
                f"inverted test); a line is a regression when the bound is past the margin "
                f"({attrs.get('margin', 0):g} pp) on the 'worse' side"
            )
        mp = tested["min_p_adj"].dropna()
        if len(mp):
            foot.append(f"smallest attainable adjusted p: {_pfmt(float(mp.min()))}")
        warn = small_n_warning(tested.rename(columns={"n_images": "n"}), attrs.get("alpha", 0.05))
        if warn:
            foot.append(warn + " — this check cannot fail on a regression")
        drops = table[table["n_dropped"] > 0]
        for r in drops.drop_duplicates(["attack", "victim"]).itertuples():
            foot.append(f"images left out of {r.attack} on {r.victim}: {r.dropped}")
        if attrs.get("note"):
            foot.append("note: " + attrs["note"])
    return render_frame(show, fmt, foot=foot)
