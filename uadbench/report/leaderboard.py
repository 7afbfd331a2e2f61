"""Leaderboards: rows = attacks (``clean`` first), columns = victims.

Every number is computed from stored result rows (never by rerunning a model), with
the metric functions of :mod:`uadbench.eval.metrics`: mIoU = mean IoU over prompts
(%), ASR@k = % of prompts with IoU ≤ k ("destroyed masks"), as papers report them
(every prompt weighs the same). ``ASR@50 clean-correct`` counts only the prompts whose
clean mask was right (clean IoU > 50), so that masks the victim never got right are not
credited to the attack; on the ``clean`` line, ASR@50 is the share of prompts whose
clean mask is already wrong, not an attack's success.

Two steps: :func:`leaderboard_table` summarises rows into a *tidy* table (one line
per attack × victim [× prompt kind | object size], columns ``attack, victim,
n_prompts, miou, asr50, asr10, …``), and :func:`render` turns that table into
terminal text, Markdown, LaTeX (booktabs), CSV or HTML.

**Best** is claimed only where it is shown: in each column the top attack (lowest
mIoU, highest ASR; ``clean`` never competes) is marked only when it is significantly
stronger than the runner-up — a paired sign-flip permutation test and a bootstrap-t
(both must reject) of the mean over images of the per-image difference (:mod:`uadbench.report.stats`), two-sided, with
Bonferroni (or Holm) over every column tested. The mark is bold in Markdown/LaTeX/HTML
and ``*`` in the terminal; CSV carries ``best_<metric>`` (the significant mark),
``top_<metric>`` (the top value, tested or not) and the test's p-values.
"""

from __future__ import annotations

import html as _html
import io
import json
import math
from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd
from tabulate import tabulate

from ..errors import UadbenchError
from ..eval import metrics as M
from ..store.schema import CLEAN

#: metric id -> (display label, threshold or None for mIoU, lower value = stronger attack)
METRICS: dict[str, tuple[str, float | None, bool]] = {
    "miou": ("mIoU", None, True),
    "asr50": ("ASR@50", 50.0, False),
    "asr10": ("ASR@10", 10.0, False),
}
#: the leaderboard's columns: the metrics, and ASR@50 among clean-correct prompts
LB_METRICS: dict[str, tuple[str, float | None, bool]] = {
    **METRICS,
    "asr50cc": ("ASR@50 clean-correct", 50.0, False),
}
FORMATS = ("terminal", "markdown", "latex", "csv", "html")
TIDY_COLUMNS = ["attack", "victim", "n_prompts", "miou", "asr50", "asr10"]
KIND_ORDER = ("all", "point", "box")
SIZE_ORDER = ("all", "small", "medium", "large", "unknown")
#: object size by mask area in pixels, as COCO: small < 32², medium < 96², large beyond
SIZE_THRESHOLDS = (32.0**2, 96.0**2)
PROMPT_KEYS = ["dataset", "sample_id", "victim", "prompt_index"]


def parse_metrics(text: str | Sequence[str] | None, allowed: dict | None = None) -> tuple[str, ...]:
    """``"miou,asr50"`` -> ("miou", "asr50"); unknown ids raise :class:`UadbenchError`.
    ``allowed``: the metric table (default :data:`METRICS`; the leaderboard also takes
    ``asr50cc``, see :data:`LB_METRICS`)."""
    allowed = METRICS if allowed is None else allowed
    if text is None:
        return ("miou", "asr50")
    items = [t.strip().lower() for t in (text.split(",") if isinstance(text, str) else text)]
    items = [t.replace("@", "").replace("-", "") for t in items if t]
    bad = [t for t in items if t not in allowed]
    if bad or not items:
        raise UadbenchError(
            f"unknown metric(s) {', '.join(bad) or '(none)'}; choose from {', '.join(allowed)} "
            "(e.g. --metrics miou,asr50,asr10)"
        )
    return tuple(dict.fromkeys(items))


def valid_prompts(rows: pd.DataFrame, threshold: float = 50.0) -> pd.Series:
    """Bool per row: was this prompt's mask right on the CLEAN image?

    A prompt (dataset, sample, victim, prompt index — and ``run`` when rows of several
    runs are pooled) is *valid* when the clean row of the same prompt has IoU >
    ``threshold``, i.e. its clean mask was not already "destroyed" in the sense of
    ASR@``threshold`` (which counts IoU ≤ threshold). Rows without a clean counterpart
    are not valid. Raises :class:`UadbenchError` when the rows have no clean rows at all
    (e.g. imported runs).
    """
    keys = PROMPT_KEYS + (["run"] if "run" in rows.columns else [])
    clean = rows.loc[rows["attack"] == CLEAN, [*keys, "iou"]]
    if clean.empty:
        raise UadbenchError(
            "valid-only ASR is unavailable: these rows have no clean rows (imported runs "
            "carry adversarial IoUs only); drop --valid-only"
        )
    clean = clean.drop_duplicates(keys).rename(columns={"iou": "_clean_iou"})
    joined = rows[keys].merge(clean, on=keys, how="left")
    return pd.Series((joined["_clean_iou"] > threshold).to_numpy(), index=rows.index)


def object_sizes(rows: pd.DataFrame) -> pd.Series:
    """``small`` / ``medium`` / ``large`` per row by the area of the prompt's object, with
    COCO's thresholds (:data:`SIZE_THRESHOLDS`, pixels). The area is the rows'
    ``mask_area`` when they carry one; otherwise the median area of the boxes prompted
    for the same mask (dataset, sample, mask index) — a bounding-box area, an upper
    bound of the mask's — and ``unknown`` where no box was prompted for that mask."""
    if "mask_area" in rows.columns:
        area = rows["mask_area"].astype(float)
    else:
        box = rows["prompt_kind"] == "box"
        a = ((rows["x1"] - rows["x0"]) * (rows["y1"] - rows["y0"])).where(box)
        keys = ["dataset", "sample_id", "mask_index"] + (["run"] if "run" in rows else [])
        area = a.groupby([rows[k] for k in keys]).transform("median")
    lo, hi = SIZE_THRESHOLDS
    out = np.where(area < lo, "small", np.where(area < hi, "medium", "large"))
    return pd.Series(np.where(area.isna(), "unknown", out), index=rows.index)


def order_attacks(
    labels: Iterable[str], rows: pd.DataFrame | None = None, preferred: Sequence[str] = ()
) -> list[str]:
    """``clean`` first, then ``preferred`` (e.g. the manifest's order), then the rest
    sorted by (attack name, ε, label) so that a sweep's budgets stay together."""
    labels = list(dict.fromkeys(labels))
    out = [CLEAN] if CLEAN in labels else []
    out += [p for p in preferred if p in labels and p not in out]
    rest = [lab for lab in labels if lab not in out]
    if rows is not None and not rows.empty and rest:
        info = rows.drop_duplicates("attack").set_index("attack")[["attack_name", "eps"]]
        rest.sort(
            key=lambda lab: (
                str(info.at[lab, "attack_name"]) if lab in info.index else lab,
                float(info.at[lab, "eps"]) if lab in info.index else 0.0,
                lab,
            )
        )
    else:
        rest.sort()
    return out + rest


def _metric_vals(rows: pd.DataFrame, metric: str) -> np.ndarray:
    thr = LB_METRICS[metric][1]
    iou = rows["iou"].to_numpy(dtype=np.float64)
    return iou if thr is None else 100.0 * (iou <= thr)


def _summary(group: pd.DataFrame) -> pd.Series:
    iou = group["iou"].to_numpy(dtype=np.float64)
    cc = group["_cc"].to_numpy(dtype=bool)
    return pd.Series(
        {
            "n_prompts": int(iou.size),
            "miou": M.miou(iou),
            "asr50": M.asr(iou, 50.0),
            "asr10": M.asr(iou, 10.0),
            "n_images": int(group[["dataset", "sample_id"]].drop_duplicates().shape[0]),
            "asr50cc": M.asr(iou[cc], 50.0) if cc.any() else np.nan,
            "n_cc": int(cc.sum()),
        }
    )


SPLIT_KEYS = ["prompt_kind", "object_size"]
CELL_KEYS = ["attack", "victim", *SPLIT_KEYS]


def _image_means(kept: pd.DataFrame, metric: str) -> pd.Series:
    """Per-image mean of ``metric`` per (attack, victim, kind, size, dataset, sample)."""
    sel = kept if metric != "asr50cc" else kept[kept["_cc"]]
    vals = pd.Series(_metric_vals(sel, metric), index=sel.index)
    keys = [*CELL_KEYS, "dataset", "sample_id"]
    return vals.groupby([sel[k] for k in keys]).mean().sort_index()


def _cell_cis(kept: pd.DataFrame, n_boot: int, seed: int, level: float) -> pd.DataFrame:
    """Percentile cluster-bootstrap CI (images resampled) of each cell's prompt-weighted
    value, per metric: columns ``<m>_ci_low, <m>_ci_high``."""
    from .stats import bootstrap_weights

    rng = np.random.default_rng(seed)
    q = [(1 - level) / 2, 1 - (1 - level) / 2]
    out: dict[tuple, dict] = {}
    for m in LB_METRICS:
        sel = kept if m != "asr50cc" else kept[kept["_cc"]]
        vals = pd.Series(_metric_vals(sel, m), index=sel.index)
        g = vals.groupby([sel[k] for k in [*CELL_KEYS, "dataset", "sample_id"]], sort=False)
        per = pd.DataFrame({"s": g.sum(), "n": g.size().astype(float)})
        for cell, part in per.groupby(level=list(range(len(CELL_KEYS))), sort=False):
            if m == "asr50cc" and cell[0] == CLEAN:
                continue
            w = bootstrap_weights(len(part), n_boot, rng)
            agg = w @ part[["s", "n"]].to_numpy()
            with np.errstate(invalid="ignore", divide="ignore"):
                boot = agg[:, 0] / agg[:, 1]
            boot = boot[np.isfinite(boot)]
            lo, hi = np.quantile(boot, q) if boot.size else (np.nan, np.nan)
            out.setdefault(cell, {})
            out[cell][f"{m}_ci_low"], out[cell][f"{m}_ci_high"] = float(lo), float(hi)
    frame = pd.DataFrame.from_dict(out, orient="index")
    frame.index = pd.MultiIndex.from_tuples(frame.index, names=CELL_KEYS)
    return frame.reset_index()


def _best_tests(table: pd.DataFrame, kept: pd.DataFrame, metrics: Sequence[str]):
    """Per (victim, kind, size) column and metric: the top attack's per-image
    differences against the runner-up (positive = top stronger). Sets ``top_<m>`` and
    returns [(table index of the top line, metric, differences)]."""
    competing = table["attack"] != CLEAN
    tests = []
    for m in LB_METRICS:
        lower = LB_METRICS[m][2]
        vals = table[m].where(competing)
        grouped = vals.groupby([table["victim"], table["prompt_kind"], table["object_size"]])
        best = grouped.transform("min" if lower else "max")
        table[f"top_{m}"] = competing & vals.notna() & np.isclose(vals, best, rtol=0, atol=1e-9)
    for m in metrics:
        if m not in LB_METRICS:
            continue
        means = None
        lower = LB_METRICS[m][2]
        cols = table[competing & table[m].notna()].groupby(
            ["victim", "prompt_kind", "object_size"], sort=False
        )
        for (victim, kind, size), col in cols:
            if len(col) < 2:
                continue
            order = col[m].sort_values(ascending=lower, kind="stable")
            top, runner = order.index[0], order.index[1]
            if np.isclose(order.iloc[0], order.iloc[1], rtol=0, atol=1e-9):
                continue  # a tie at the top: no attack can be the best, nothing to test
            if means is None:
                means = _image_means(kept, m)
            key = (victim, kind, size)
            a = means.loc[(table.at[top, "attack"], *key)]
            b = means.loc[(table.at[runner, "attack"], *key)]
            common = a.index.intersection(b.index)
            d = (b.loc[common] - a.loc[common]) if lower else (a.loc[common] - b.loc[common])
            tests.append((top, m, table.at[runner, "attack"], d.to_numpy()))
    return tests


def mark_best(
    table: pd.DataFrame,
    tests: list,
    *,
    alpha: float = 0.05,
    correction: str = "bonferroni",
    seed: int = 0,
) -> pd.DataFrame:
    """Run the best-vs-runner-up ``tests`` as one family and set ``best_<m>`` (top and
    significantly stronger), ``runner_up_<m>``, ``d_best_<m>`` (mean per-image
    difference, + = top stronger), ``p_best_<m>`` and ``p_best_adj_<m>`` on the top
    lines. ``table.attrs['best']`` describes the family."""
    from .stats import family_tests

    for m in LB_METRICS:
        table[f"best_{m}"] = False
        for c in ("d_best", "p_best", "p_best_adj"):
            table[f"{c}_{m}"] = np.nan
        table[f"runner_up_{m}"] = ""
    fam = family_tests([t[3] for t in tests], alpha=alpha, correction=correction, seed=seed)
    for (idx, m, runner, _), r in zip(tests, fam.itertuples()):
        table.at[idx, f"d_best_{m}"] = r.estimate
        table.at[idx, f"p_best_{m}"] = r.p
        table.at[idx, f"p_best_adj_{m}"] = r.p_adj
        table.at[idx, f"runner_up_{m}"] = runner
        table.at[idx, f"best_{m}"] = bool(r.significant and r.estimate > 0)
    table.attrs["best"] = dict(fam.attrs) | {
        "n_images": [int(n) for n in fam["n"]] if len(fam) else [],
        "min_p_adj": float(fam["min_p_adj"].min()) if len(fam) else float("nan"),
        "metrics": sorted({t[1] for t in tests}),
    }
    return table


def leaderboard_table(
    rows: pd.DataFrame,
    *,
    by_kind: bool = False,
    by_size: bool = False,
    valid_only: bool = False,
    attack_order: Sequence[str] = (),
    victim_order: Sequence[str] = (),
    metrics: Sequence[str] | str | None = ("miou", "asr50", "asr50cc"),
    alpha: float = 0.05,
    correction: str = "bonferroni",
    ci: bool = False,
    n_boot: int = 2000,
    seed: int = 0,
) -> pd.DataFrame:
    """Summarise result rows into a tidy leaderboard.

    ``rows``: result rows (:mod:`uadbench.store.schema`; a ``run`` column keeps pooled
    runs' prompts apart). Returns one line per (attack, victim) — and per prompt kind
    ``point``/``box`` with ``by_kind``, per object size ``small``/``medium``/``large``
    (:func:`object_sizes`) with ``by_size``, besides ``all`` — with columns ``attack,
    victim, n_prompts, miou, asr50, asr10, prompt_kind, object_size, n_images,
    attack_name, eps, asr50cc, n_cc`` and, per metric, ``top_<m>`` (top value of its
    column), ``best_<m>`` (top and significantly stronger than the runner-up, see
    :func:`mark_best`; tested for ``metrics`` only) and the test's columns. Metrics are
    in % (prompt-weighted, as papers report them). ``valid_only`` keeps only prompts
    whose clean mask was right (see :func:`valid_prompts`) before summarising; ``ci``
    adds ``<m>_ci_low, <m>_ci_high``: a 95% percentile cluster-bootstrap interval
    (images resampled, ``n_boot`` resamples, ``seed``) of each cell's value. Attacks are
    ordered by :func:`order_attacks`, victims by ``victim_order`` then name.
    """
    metrics = parse_metrics(metrics, LB_METRICS)
    base_cols = [
        *TIDY_COLUMNS,
        *SPLIT_KEYS,
        "n_images",
        "attack_name",
        "eps",
        "asr50cc",
        "n_cc",
    ]
    if rows.empty:
        return pd.DataFrame(columns=base_cols + [f"best_{m}" for m in LB_METRICS])
    has_clean = bool((rows["attack"] == CLEAN).any())
    keep = valid_prompts(rows) if valid_only else pd.Series(True, index=rows.index)
    cc = valid_prompts(rows) if has_clean else pd.Series(False, index=rows.index)
    cc = cc & (rows["attack"] != CLEAN)
    rows = rows.assign(_keep=keep, _cc=cc)
    parts = [rows.assign(prompt_kind="all", object_size="all")]
    if by_kind:
        parts += [
            rows[rows["prompt_kind"] == k].assign(prompt_kind=k, object_size="all")
            for k in ("point", "box")
        ]
    if by_size:
        size = object_sizes(rows)
        parts += [
            rows[size == s].assign(prompt_kind="all", object_size=s)
            for s in SIZE_ORDER[1:]
            if (size == s).any()
        ]
    data = pd.concat(parts, ignore_index=True)
    # every (attack, victim, split) keeps its line, with n_prompts 0 when none is valid
    table = data[CELL_KEYS].drop_duplicates().reset_index(drop=True)
    kept = data[data["_keep"].astype(bool)]
    if len(kept):
        summary = (
            kept.groupby(CELL_KEYS, sort=False)[["iou", "dataset", "sample_id", "_cc"]]
            .apply(_summary)
            .reset_index()
        )
        table = table.merge(summary, on=CELL_KEYS, how="left")
    else:
        table = table.assign(
            n_prompts=0, miou=np.nan, asr50=np.nan, asr10=np.nan, n_images=0, asr50cc=np.nan, n_cc=0
        )
    table[["n_prompts", "n_images", "n_cc"]] = table[["n_prompts", "n_images", "n_cc"]].fillna(0)
    info = rows.drop_duplicates("attack").set_index("attack")
    table["attack_name"] = table["attack"].map(info["attack_name"])
    table["eps"] = table["attack"].map(info["eps"]).astype(float)
    for c in ("n_prompts", "n_images", "n_cc"):
        table[c] = table[c].astype(int)
    table.loc[table["attack"] == CLEAN, "asr50cc"] = np.nan

    attacks = order_attacks(table["attack"], rows, attack_order)
    victims = [v for v in victim_order if v in set(table["victim"])]
    victims += sorted(set(table["victim"]) - set(victims))
    table["_a"] = table["attack"].map({a: i for i, a in enumerate(attacks)})
    table["_v"] = table["victim"].map({v: i for i, v in enumerate(victims)})
    table["_k"] = table["prompt_kind"].map({k: i for i, k in enumerate(KIND_ORDER)})
    table["_s"] = table["object_size"].map({k: i for i, k in enumerate(SIZE_ORDER)})
    table = table.sort_values(["_a", "_k", "_s", "_v"]).drop(columns=["_a", "_v", "_k", "_s"])
    table = table.reset_index(drop=True)
    if ci and len(kept):
        table = table.merge(_cell_cis(kept, n_boot, seed, 0.95), on=CELL_KEYS, how="left")
        table.attrs["ci"] = f"95% percentile cluster bootstrap over images, {n_boot} resamples"
    tests = _best_tests(table, kept, metrics)
    table = mark_best(table, tests, alpha=alpha, correction=correction, seed=seed)
    table.attrs.update(valid_only=valid_only)
    extra = [c for c in table.columns if c not in base_cols]
    attrs = dict(table.attrs)
    table = table[base_cols + extra]
    table.attrs = attrs
    return table


_LATEX_SPECIAL = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\^{}",
}


def _latex_escape(s: str) -> str:
    return "".join(_LATEX_SPECIAL.get(c, c) for c in str(s))


# ----------------------------------------------------------------------------- rendering
def _fmt(x: float) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.2f}"


def _wide(table: pd.DataFrame, metrics: Sequence[str], show_ci: bool, show_n: bool):
    """(lead column names, row labels, victims, cells) where a line's cells are
    (text, is_best) per victim × metric (and a victim's n when ``show_n``)."""
    by_kind = set(table["prompt_kind"]) != {"all"}
    by_size = "object_size" in table and set(table["object_size"]) != {"all"}
    victims = list(dict.fromkeys(table["victim"]))
    if "object_size" not in table:
        table = table.assign(object_size="all")
    keys = list(dict.fromkeys(zip(table["attack"], table["prompt_kind"], table["object_size"])))
    idx = table.set_index(["attack", "prompt_kind", "object_size", "victim"])
    lead = ["attack"] + (["prompts"] if by_kind else []) + (["object size"] if by_size else [])
    labels, cells = [], []
    for attack, kind, size in keys:
        labels.append((attack,) + ((kind,) if by_kind else ()) + ((size,) if by_size else ()))
        line = []
        for v in victims:
            rec = idx.loc[(attack, kind, size, v)] if (attack, kind, size, v) in idx.index else None
            for m in metrics:
                if rec is None:
                    line.append(("–", False))
                    continue
                text = _fmt(float(rec[m]))
                if f"{m}_seed_sd" in rec and text != "–":
                    text += f" ± {_fmt(float(rec[f'{m}_seed_sd']))}"
                if show_ci and f"{m}_ci_low" in rec and text != "–":
                    text += (
                        f" [{_fmt(float(rec[f'{m}_ci_low']))}, {_fmt(float(rec[f'{m}_ci_high']))}]"
                    )
                line.append((text, bool(rec.get(f"best_{m}", False))))
            if show_n:
                line.append(
                    (
                        "–" if rec is None else f"{int(rec['n_images'])}/{int(rec['n_prompts'])}",
                        False,
                    )
                )
        cells.append(line)
    return lead, labels, victims, cells


def _notes(table: pd.DataFrame, metrics: Sequence[str], show_n: bool) -> list[str]:
    """The foot of a rendered leaderboard: what the numbers are, what 'best' claims and
    how it was tested (plain text)."""
    notes = ["mIoU, ASR@k: over all prompts (%); ASR@k counts masks with IoU <= k as destroyed"]
    if "asr50cc" in metrics:
        notes.append(
            "ASR@50 clean-correct: among prompts whose clean mask was right (clean IoU > 50)"
        )
    if "asr50" in metrics and (table["attack"] == CLEAN).any():
        notes.append(
            "clean line: ASR = share of prompts whose clean mask is already wrong, "
            "not an attack's success"
        )
    if table.attrs.get("valid_only"):
        notes.append("valid prompts only: clean IoU > 50 (per run)")
    if show_n:
        notes.append("n: images/prompts of the cell")
    if table.attrs.get("seeds"):
        seeds = table.attrs["seeds"]
        notes.append(
            f"mean ± between-seed SD over {len(seeds)} runs (seeds {', '.join(map(str, seeds))}); "
            "no best is marked across seeds: see each seed's leaderboard"
        )
    if table.attrs.get("ci"):
        notes.append(f"[lo, hi]: {table.attrs['ci']} (per cell, not a comparison)")
    best = table.attrs.get("best") or {}
    tested = [m for m in metrics if m in best.get("metrics", [])]
    if tested:
        ns = sorted(set(best.get("n_images", [])))
        n_txt = f"{ns[0]}" if len(ns) == 1 else f"{ns[0]}-{ns[-1]}" if ns else "-"
        notes.append(
            "best (marked): the top attack of its column is significantly stronger than the "
            "runner-up: paired sign-flip permutation test and bootstrap-t (both must reject) "
            "of the mean over images of the per-image difference, two-sided, unit of pairing: "
            f"image, n = {n_txt} images; "
            f"family: {best.get('family', 0)} columns tested, {best.get('correction')} "
            f"correction, alpha = {best.get('alpha', 0.05):g}; unmarked columns: no attack is "
            "significantly stronger than the runner-up (clean never competes)"
        )
        mp = best.get("min_p_adj", float("nan"))
        if mp == mp and mp > best.get("alpha", 0.05):
            notes.append(
                f"WARNING: with {n_txt} images and {best.get('family')} columns no 'best' can "
                f"be significant (smallest attainable adjusted p = {mp:.3g}); use more images"
            )
    return notes


def render(
    table: pd.DataFrame,
    fmt: str = "terminal",
    metrics: Sequence[str] | str | None = None,
    title: str | None = None,
    *,
    show_n: bool = False,
    show_ci: bool = False,
) -> str:
    """Render a tidy leaderboard (from :func:`leaderboard_table`) as text.

    ``fmt``: ``terminal`` (tabulate, best marked ``*``), ``markdown`` (best in bold),
    ``latex`` (a booktabs tabular a paper can include, best in ``\\textbf``, notes as a
    table footer), ``csv`` (the tidy table itself, full precision) or ``html`` (a
    ``<table>``, best in ``<b>``). Human formats print 2 decimals and a foot that says
    what the numbers are and what "best" claims. ``metrics`` picks the columns shown per
    victim (default mIoU, ASR@50 and, when there are clean rows, ASR@50 clean-correct);
    ``show_n`` adds the images/prompts of each cell, ``show_ci`` its interval (needs a
    table made with ``ci=True``). A table of several pools (``pool`` column, see
    :func:`runs_table`) renders one table per pool.
    """
    fmt = fmt.lower()
    if fmt not in FORMATS:
        raise UadbenchError(f"unknown format {fmt!r}; choose from {', '.join(FORMATS)}")
    if metrics is None:
        metrics = ("miou", "asr50") + (
            ("asr50cc",) if "asr50cc" in table and table["asr50cc"].notna().any() else ()
        )
    metrics = parse_metrics(metrics, LB_METRICS)
    if fmt == "csv":
        buf = io.StringIO()
        table.to_csv(buf, index=False, float_format=None, lineterminator="\n")
        return buf.getvalue()
    if show_ci and "miou_ci_low" not in table:
        raise UadbenchError("this leaderboard was made without intervals; pass --ci")
    if "pool" in table and table["pool"].nunique() > 1:
        out = []
        for pool, part in table.groupby("pool", sort=False):
            part = part.copy()
            part.attrs = dict(table.attrs)
            sub = f"{title} — {pool}" if title else str(pool)
            out.append(render(part, fmt, metrics, sub, show_n=show_n, show_ci=show_ci))
        return "\n".join(out)
    lead, labels, victims, cells = _wide(table, metrics, show_ci, show_n)
    mlabel = [LB_METRICS[m][0] for m in metrics] + (["n"] if show_n else [])
    notes = _notes(table, metrics, show_n)
    k = len(mlabel)
    align = ["left"] * len(lead) + ["right"] * (len(victims) * k)
    if fmt == "terminal":
        headers = lead + [
            f"{v if i == 0 else ''}\n{ml}" for v in victims for i, ml in enumerate(mlabel)
        ]
        body = [
            list(lab) + [t + ("*" if b else "") for t, b in line]
            for lab, line in zip(labels, cells)
        ]
        text = tabulate(
            body, headers=headers, tablefmt="simple", disable_numparse=True, colalign=align
        )
        foot = "".join(
            ("* " if "best (marked)" in n else "") + n.replace("best (marked)", "best") + "\n"
            for n in notes
        )
        return (f"{title}\n\n" if title else "") + text + "\n" + foot
    if fmt == "markdown":
        headers = lead + [f"{v} {ml}" for v in victims for ml in mlabel]
        body = [
            list(lab) + [f"**{t}**" if b else t for t, b in line]
            for lab, line in zip(labels, cells)
        ]
        text = tabulate(
            body, headers=headers, tablefmt="pipe", disable_numparse=True, colalign=align
        )
        foot = "".join(f"\n{n.replace('best (marked)', '**bold**')}\n" for n in notes)
        return (f"### {title}\n\n" if title else "") + text + "\n" + foot
    if fmt == "latex":
        return _latex(title, lead, labels, victims, cells, mlabel, notes)
    e = _html.escape
    out = ['<table class="leaderboard">']
    if title:
        out.append(f"<caption>{e(title)}</caption>")
    out.append(
        "<thead><tr>"
        + "".join(f'<th rowspan="2">{e(c)}</th>' for c in lead)
        + "".join(f'<th colspan="{k}">{e(v)}</th>' for v in victims)
        + "</tr>"
    )
    out.append(
        "<tr>" + "".join(f"<th>{e(ml)}</th>" for _ in victims for ml in mlabel) + "</tr></thead>"
    )
    out.append("<tbody>")
    for lab, line in zip(labels, cells):
        tds = "".join(f"<td>{e(x)}</td>" for x in lab)
        tds += "".join(
            f'<td class="num">{"<b>" + e(t) + "</b>" if b else e(t)}</td>' for t, b in line
        )
        out.append(f"<tr>{tds}</tr>")
    out.append("</tbody></table>")
    out += [f"<p class='note'>{e(n.replace('best (marked)', 'best (bold)'))}</p>" for n in notes]
    return "\n".join(out) + "\n"


def _latex(title, lead, labels, victims, cells, mlabel, notes) -> str:
    """A booktabs tabular: victims as column groups, best in bold, the notes as a table
    footer row (small type) and as comments."""
    k = len(mlabel)
    spec = "l" * len(lead) + "r" * (k * len(victims))
    width = len(lead) + k * len(victims)
    out = [f"% {title}"] if title else []
    out += ["% needs \\usepackage{booktabs}", r"\begin{tabular}{" + spec + "}", r"\toprule"]
    out.append(
        " & " * (len(lead) - 1)
        + " & "
        + " & ".join(rf"\multicolumn{{{k}}}{{c}}{{{_latex_escape(v)}}}" for v in victims)
        + r" \\"
    )
    start = len(lead) + 1
    out.append(
        " ".join(
            rf"\cmidrule(lr){{{start + i * k}-{start + i * k + k - 1}}}"
            for i in range(len(victims))
        )
    )
    out.append(
        " & ".join(
            [
                *(_latex_escape(c) for c in lead),
                *(_latex_escape(ml) for _ in victims for ml in mlabel),
            ]
        )
        + r" \\"
    )
    out.append(r"\midrule")
    for i, (lab, line) in enumerate(zip(labels, cells)):
        vals = [rf"\textbf{{{_latex_escape(t)}}}" if b else _latex_escape(t) for t, b in line]
        out.append(" & ".join([*(_latex_escape(x) for x in lab), *vals]) + r" \\")
        if lab[0] == CLEAN and i + 1 < len(labels) and labels[i + 1][0] != CLEAN:
            out.append(r"\midrule")
    out.append(r"\bottomrule")
    for n in notes:
        text = _latex_escape(n.replace("best (marked)", "bold")).replace("<=", r"$\le$")
        text = text.replace("–", "--")
        out.append(rf"\multicolumn{{{width}}}{{p{{\linewidth}}}}{{\footnotesize {text}}} \\")
    out.append(r"\end{tabular}")
    return "\n".join(out) + "\n"


def manifest_orders(manifest: dict) -> tuple[list[str], list[str]]:
    """(attack labels, victim labels) in the manifest's order; with transforms, the
    victim labels are the (victim, transform) units (``victim``, ``victim | jpeg[q=75]``),
    each victim's transforms side by side in the manifest's transform order."""
    from ..store.schema import IDENTITY, unit_label

    attacks = [a["label"] if isinstance(a, dict) else str(a) for a in manifest.get("attacks", [])]
    victims = [
        (v.get("label") or v["name"]) if isinstance(v, dict) else str(v)
        for v in manifest.get("victims", [])
    ]
    transforms = [
        (t.get("label") or t["name"]) if isinstance(t, dict) else str(t)
        for t in manifest.get("transforms") or [IDENTITY]
    ]
    return attacks, [unit_label(v, t) for v in victims for t in transforms]


def _pool_key(man: dict, rows: pd.DataFrame) -> dict:
    """What must match for rows of two runs to share a leaderboard: the run's identity
    (dataset, prompt protocol, surrogate, seed) and its reference masks."""
    ident = man.get("identity")
    if not isinstance(ident, dict):
        ident = {"dataset": man.get("dataset"), "source": man.get("source")}
    return {"identity": ident, "reference": sorted(rows["reference"].dropna().unique())}


def runs_table(
    runs: Sequence,
    *,
    by_kind: bool = False,
    by_size: bool = False,
    valid_only: bool = False,
    split: bool = False,
    **kw,
) -> pd.DataFrame:
    """The tidy leaderboard of one or more run directories, attacks and victims in the
    order their manifests list them (``kw``: :func:`leaderboard_table`'s options).

    Runs are pooled only when they can be: same dataset, prompt protocol, surrogate, seed
    and reference masks (manifest ``identity`` and the rows' ``reference``), and no
    (attack, victim) in two of them. Otherwise :class:`UadbenchError`, or with ``split``
    one leaderboard per pool (a ``pool`` column names each), all best-marks one family.
    Valid-only prompts are judged by each pool's own clean rows."""
    from ..store.rundir import load_manifest, load_unit_rows

    pools: dict[str, dict] = {}
    for run in runs:
        man = load_manifest(run)
        rows = load_unit_rows(run)
        if rows.empty:
            raise UadbenchError(f"no result rows in {run}; has the run finished any job?")
        key = json.dumps(_pool_key(man, rows), sort_keys=True, default=str)
        pool = pools.setdefault(key, {"runs": [], "frames": [], "aorder": [], "vorder": []})
        clash = set(zip(rows["attack"], rows["victim"])) - {(CLEAN, v) for v in rows["victim"]}
        for other, frame in zip(pool["runs"], pool["frames"]):
            both = clash & set(zip(frame["attack"], frame["victim"]))
            if both:
                a, v = sorted(both)[0]
                raise UadbenchError(
                    f"{run} and {other} both hold {a} on {v}: pooling would mix two runs of "
                    "one cell; give one of them another attack label or leave one out"
                )
        pool["runs"].append(str(run))
        pool["frames"].append(rows)
        a, v = manifest_orders(man)
        pool["aorder"] += [x for x in a if x not in pool["aorder"]]
        pool["vorder"] += [x for x in v if x not in pool["vorder"]]
    if len(pools) > 1 and not split:
        keys = [json.loads(k) for k in pools]
        diff = sorted(
            {
                f
                for k in keys
                for f in k["identity"]
                if k["identity"].get(f) != keys[0]["identity"].get(f)
            }
            | (
                {"reference masks"}
                if any(k["reference"] != keys[0]["reference"] for k in keys)
                else set()
            )
        )
        groups = "; ".join(", ".join(p["runs"]) for p in pools.values())
        raise UadbenchError(
            f"these runs cannot share one leaderboard: they differ in {', '.join(diff)} "
            f"(pools: {groups}); show them side by side with --split, or one at a time"
        )
    tables = []
    for i, pool in enumerate(pools.values()):
        rows = pd.concat(pool["frames"], ignore_index=True)
        rows = rows[~(rows["attack"].eq(CLEAN) & rows.duplicated(PROMPT_KEYS + ["attack"]))]
        rows = rows.assign(run=f"pool{i}")
        t = leaderboard_table(
            rows,
            by_kind=by_kind,
            by_size=by_size,
            valid_only=valid_only,
            attack_order=pool["aorder"],
            victim_order=pool["vorder"],
            **kw,
        )
        if len(pools) > 1:
            t.insert(0, "pool", f"pool {i + 1}: " + ", ".join(pool["runs"]))
        tables.append(t)
    if len(tables) == 1:
        return tables[0]
    table = pd.concat(tables, ignore_index=True)
    table.attrs = dict(tables[0].attrs)
    # one family over every pool's best-vs-runner-up tests: Bonferroni over all of them
    fam = sum(t.attrs.get("best", {}).get("family", 0) for t in tables)
    alpha = kw.get("alpha", 0.05)
    for m in LB_METRICS:
        p = table[f"p_best_{m}"]
        table[f"p_best_adj_{m}"] = np.minimum(1.0, p * max(fam, 1))
        sig = (table[f"p_best_adj_{m}"] <= alpha) & (table[f"d_best_{m}"] > 0)
        table[f"best_{m}"] = sig.fillna(False).astype(bool)
    best = dict(table.attrs.get("best", {}))
    best.update(
        family=fam,
        correction="bonferroni",
        n_images=[n for t in tables for n in t.attrs.get("best", {}).get("n_images", [])],
        min_p_adj=min(
            (
                min(1.0, t.attrs["best"]["min_p_adj"] / max(t.attrs["best"]["family"], 1) * fam)
                for t in tables
                if t.attrs.get("best", {}).get("family")
            ),
            default=float("nan"),
        ),
    )
    table.attrs["best"] = best
    return table


def seeds_table(runs: Sequence, **kw) -> pd.DataFrame:
    """One leaderboard over runs that differ only in their seed (as ``run --seeds``
    makes): each cell is the mean over the runs of its value, with the between-seed SD
    (``<m>_seed_sd``, ddof 1) and ``n_seeds``. Runs that differ in anything else
    (dataset, prompts, surrogate, reference masks) are refused. Best marks are not made
    across seeds (each seed's run has its own, with ``leaderboard RUN``)."""
    from ..store.rundir import load_manifest, load_unit_rows

    if len(runs) < 2:
        raise UadbenchError("--seeds needs the runs of at least two seeds")
    keys, seeds, tables = [], [], []
    for run in runs:
        man = load_manifest(run)
        rows = load_unit_rows(run)
        if rows.empty:
            raise UadbenchError(f"no result rows in {run}; has the run finished any job?")
        key = _pool_key(man, rows)
        seeds.append(key["identity"].get("seed", man.get("seed")))
        key["identity"] = {k: v for k, v in key["identity"].items() if k != "seed"}
        keys.append(json.dumps(key, sort_keys=True, default=str))
        a, v = manifest_orders(man)
        tables.append(leaderboard_table(rows, attack_order=a, victim_order=v, **kw))
    if len(set(keys)) > 1:
        raise UadbenchError(
            "--seeds pools runs that differ only in their seed; these differ in more "
            "(dataset, prompts, surrogate or reference masks)"
        )
    if len(set(map(str, seeds))) < len(seeds):
        raise UadbenchError(f"--seeds: two runs have the same seed ({seeds}); give each its own")
    values = ["n_prompts", "n_images", *LB_METRICS]
    allt = pd.concat([t[[*CELL_KEYS, *values]] for t in tables], ignore_index=True)
    g = allt.groupby(CELL_KEYS, sort=False)
    out = g[values].mean()
    for m in LB_METRICS:
        out[f"{m}_seed_sd"] = g[m].std(ddof=1)
    out["n_seeds"] = g.size()
    out = out.reset_index()
    first = tables[0]
    out = out.merge(first[[*CELL_KEYS, "attack_name", "eps"]], on=CELL_KEYS, how="left")
    for m in LB_METRICS:
        out[f"best_{m}"] = False
    out["n_prompts"] = out["n_prompts"].round().astype(int)
    out["n_images"] = out["n_images"].round().astype(int)
    out.attrs["seeds"] = [s for s in seeds]
    return out
