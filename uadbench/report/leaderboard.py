"""Leaderboards: rows = attacks (``clean`` first), columns = victims.

Every number is computed from stored result rows (never by rerunning a model), with
the metric functions of :mod:`uadbench.eval.metrics`: mIoU = mean IoU over prompts
(%), ASR@k = % of prompts with IoU ≤ k ("destroyed masks").

Two steps: :func:`leaderboard_table` summarises rows into a *tidy* table (one line
per attack × victim [× prompt kind], columns ``attack, victim, n_prompts, miou,
asr50, asr10, …``), and :func:`render` turns that table into terminal text,
Markdown, LaTeX, CSV or HTML. The best attack of each column (lowest mIoU, highest
ASR; ``clean`` never competes) is marked: bold in Markdown/LaTeX/HTML, ``*`` in
the terminal; CSV carries ``best_<metric>`` flags instead.
"""

from __future__ import annotations

import html as _html
import io
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
FORMATS = ("terminal", "markdown", "latex", "csv", "html")
TIDY_COLUMNS = ["attack", "victim", "n_prompts", "miou", "asr50", "asr10"]
KIND_ORDER = ("all", "point", "box")
PROMPT_KEYS = ["dataset", "sample_id", "victim", "prompt_index"]


def parse_metrics(text: str | Sequence[str] | None) -> tuple[str, ...]:
    """``"miou,asr50"`` -> ("miou", "asr50"); unknown ids raise :class:`UadbenchError`."""
    if text is None:
        return ("miou", "asr50")
    items = [t.strip().lower() for t in (text.split(",") if isinstance(text, str) else text)]
    items = [t.replace("@", "").replace("-", "") for t in items if t]
    bad = [t for t in items if t not in METRICS]
    if bad or not items:
        raise UadbenchError(
            f"unknown metric(s) {', '.join(bad) or '(none)'}; choose from {', '.join(METRICS)} "
            "(e.g. --metrics miou,asr50,asr10)"
        )
    return tuple(dict.fromkeys(items))


def valid_prompts(rows: pd.DataFrame, threshold: float = 50.0) -> pd.Series:
    """Bool per row: was this prompt's mask right on the CLEAN image?

    A prompt (dataset, sample, victim, prompt index) is *valid* when the clean row of
    the same prompt has IoU > ``threshold``, i.e. its clean mask was not already
    "destroyed" in the sense of ASR@``threshold`` (which counts IoU ≤ threshold).
    Rows without a clean counterpart are not valid. Raises :class:`UadbenchError`
    when the rows have no clean rows at all (e.g. imported runs).
    """
    clean = rows.loc[rows["attack"] == CLEAN, [*PROMPT_KEYS, "iou"]]
    if clean.empty:
        raise UadbenchError(
            "valid-only ASR is unavailable: these rows have no clean rows (imported runs "
            "carry adversarial IoUs only); drop --valid-only"
        )
    clean = clean.drop_duplicates(PROMPT_KEYS).rename(columns={"iou": "_clean_iou"})
    joined = rows[PROMPT_KEYS].merge(clean, on=PROMPT_KEYS, how="left")
    return pd.Series((joined["_clean_iou"] > threshold).to_numpy(), index=rows.index)


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


def _summary(group: pd.DataFrame) -> pd.Series:
    iou = group["iou"].to_numpy(dtype=np.float64)
    return pd.Series(
        {
            "n_prompts": int(iou.size),
            "miou": M.miou(iou),
            "asr50": M.asr(iou, 50.0),
            "asr10": M.asr(iou, 10.0),
            "n_images": int(group[["dataset", "sample_id"]].drop_duplicates().shape[0]),
        }
    )


def leaderboard_table(
    rows: pd.DataFrame,
    *,
    by_kind: bool = False,
    valid_only: bool = False,
    attack_order: Sequence[str] = (),
    victim_order: Sequence[str] = (),
) -> pd.DataFrame:
    """Summarise result rows into a tidy leaderboard.

    ``rows``: result rows (:mod:`uadbench.store.schema`). Returns one line per
    (attack, victim) — and per prompt kind ``point``/``box`` besides ``all`` when
    ``by_kind`` — with columns ``attack, victim, n_prompts, miou, asr50, asr10,
    prompt_kind, n_images, attack_name, eps, best_miou, best_asr50, best_asr10``.
    Metrics are in % (mIoU 0–100, ASR 0–100). ``valid_only`` keeps only prompts whose
    clean mask was right (see :func:`valid_prompts`) before summarising.
    ``best_<m>`` marks, per victim (and kind), the non-clean attack(s) with the lowest
    mIoU / highest ASR. Attacks are ordered by :func:`order_attacks`, victims by
    ``victim_order`` then name.
    """
    cols = [
        *TIDY_COLUMNS,
        "prompt_kind",
        "n_images",
        "attack_name",
        "eps",
        *(f"best_{m}" for m in METRICS),
    ]
    if rows.empty:
        return pd.DataFrame(columns=cols)
    keep = valid_prompts(rows) if valid_only else pd.Series(True, index=rows.index)
    parts = [rows.assign(prompt_kind="all", _keep=keep)]
    if by_kind:
        parts += [
            rows[rows["prompt_kind"] == k].assign(prompt_kind=k, _keep=keep)
            for k in ("point", "box")
        ]
    data = pd.concat(parts, ignore_index=True)
    keys = ["attack", "victim", "prompt_kind"]
    # every (attack, victim, kind) keeps its line, with n_prompts 0 when none is valid
    table = data[keys].drop_duplicates().reset_index(drop=True)
    kept = data[data["_keep"].astype(bool)]
    if len(kept):
        summary = (
            kept.groupby(keys, sort=False)[["iou", "dataset", "sample_id"]]
            .apply(_summary)
            .reset_index()
        )
        table = table.merge(summary, on=keys, how="left")
    else:
        table = table.assign(n_prompts=0, miou=np.nan, asr50=np.nan, asr10=np.nan, n_images=0)
    table[["n_prompts", "n_images"]] = table[["n_prompts", "n_images"]].fillna(0)
    info = rows.drop_duplicates("attack").set_index("attack")
    table["attack_name"] = table["attack"].map(info["attack_name"])
    table["eps"] = table["attack"].map(info["eps"]).astype(float)
    table["n_prompts"] = table["n_prompts"].astype(int)
    table["n_images"] = table["n_images"].astype(int)

    attacks = order_attacks(table["attack"], rows, attack_order)
    victims = [v for v in victim_order if v in set(table["victim"])]
    victims += sorted(set(table["victim"]) - set(victims))
    table["_a"] = table["attack"].map({a: i for i, a in enumerate(attacks)})
    table["_v"] = table["victim"].map({v: i for i, v in enumerate(victims)})
    table["_k"] = table["prompt_kind"].map({k: i for i, k in enumerate(KIND_ORDER)})
    table = table.sort_values(["_a", "_k", "_v"]).drop(columns=["_a", "_v", "_k"])

    competing = table["attack"] != CLEAN
    for m, (_, _, lower) in METRICS.items():
        vals = table[m].where(competing)
        grouped = vals.groupby([table["victim"], table["prompt_kind"]])
        best = grouped.transform("min" if lower else "max")
        table[f"best_{m}"] = competing & vals.notna() & np.isclose(vals, best, rtol=0, atol=1e-9)
    return table[cols].reset_index(drop=True)


# ----------------------------------------------------------------------------- rendering
def _fmt(x: float) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.2f}"


def _wide(table: pd.DataFrame, metrics: Sequence[str]):
    """(row labels, victims, cells) where cells[i][j] = (text, is_best) for victim × metric."""
    by_kind = set(table["prompt_kind"]) != {"all"}
    victims = list(dict.fromkeys(table["victim"]))
    keys = list(dict.fromkeys(zip(table["attack"], table["prompt_kind"])))
    idx = table.set_index(["attack", "prompt_kind", "victim"])
    labels, cells = [], []
    for attack, kind in keys:
        labels.append((attack, kind) if by_kind else (attack,))
        line = []
        for v in victims:
            for m in metrics:
                if (attack, kind, v) in idx.index:
                    rec = idx.loc[(attack, kind, v)]
                    line.append((_fmt(float(rec[m])), bool(rec[f"best_{m}"])))
                else:
                    line.append(("–", False))
        cells.append(line)
    return by_kind, labels, victims, cells


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


def render(
    table: pd.DataFrame,
    fmt: str = "terminal",
    metrics: Sequence[str] | str | None = ("miou", "asr50"),
    title: str | None = None,
) -> str:
    """Render a tidy leaderboard (from :func:`leaderboard_table`) as text.

    ``fmt``: ``terminal`` (tabulate, best marked ``*``), ``markdown`` (best in bold),
    ``latex`` (booktabs tabular, best in ``\\textbf``), ``csv`` (the tidy table itself,
    full precision, one line per attack × victim [× kind]) or ``html`` (a ``<table>``,
    best in ``<b>``). Human formats print 2 decimals. ``metrics`` picks the columns
    shown per victim (CSV always has miou, asr50, asr10).
    """
    fmt = fmt.lower()
    if fmt not in FORMATS:
        raise UadbenchError(f"unknown format {fmt!r}; choose from {', '.join(FORMATS)}")
    metrics = parse_metrics(metrics)
    if fmt == "csv":
        buf = io.StringIO()
        table.to_csv(buf, index=False, float_format=None, lineterminator="\n")
        return buf.getvalue()
    by_kind, labels, victims, cells = _wide(table, metrics)
    mlabel = [METRICS[m][0] for m in metrics]
    lead = ["attack", "prompts"] if by_kind else ["attack"]
    if fmt in ("terminal", "markdown"):
        if fmt == "terminal":
            headers = lead + [
                f"{v if i == 0 else ''}\n{ml}" for v in victims for i, ml in enumerate(mlabel)
            ]
            body = [
                list(lab) + [t + ("*" if b else "") for t, b in line]
                for lab, line in zip(labels, cells)
            ]
            text = tabulate(
                body,
                headers=headers,
                tablefmt="simple",
                disable_numparse=True,
                colalign=["left"] * len(lead) + ["right"] * (len(headers) - len(lead)),
            )
            foot = "* best attack in its column (lowest mIoU, highest ASR; clean excluded)"
            return (f"{title}\n\n" if title else "") + text + "\n" + foot + "\n"
        headers = lead + [f"{v} {ml}" for v in victims for ml in mlabel]
        body = [
            list(lab) + [f"**{t}**" if b else t for t, b in line]
            for lab, line in zip(labels, cells)
        ]
        text = tabulate(
            body,
            headers=headers,
            tablefmt="pipe",
            disable_numparse=True,
            colalign=["left"] * len(lead) + ["right"] * (len(headers) - len(lead)),
        )
        return (f"### {title}\n\n" if title else "") + text + "\n"
    if fmt == "latex":
        k = len(metrics)
        spec = "l" * len(lead) + ("|" + "r" * k) * len(victims)
        spec = spec.replace("|", "")  # booktabs style: no vertical rules
        out = []
        if title:
            out.append(f"% {title}")
        out += [r"\begin{tabular}{" + spec + "}", r"\toprule"]
        head1 = (
            " & " * (len(lead) - 1)
            + " & "
            + " & ".join(rf"\multicolumn{{{k}}}{{c}}{{{_latex_escape(v)}}}" for v in victims)
            + r" \\"
        )
        out.append(head1)
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
            vals = [rf"\textbf{{{t}}}" if b else t for t, b in line]
            out.append(" & ".join([*(_latex_escape(x) for x in lab), *vals]) + r" \\")
            if lab[0] == CLEAN and i + 1 < len(labels) and labels[i + 1][0] != CLEAN:
                out.append(r"\midrule")
        out += [r"\bottomrule", r"\end{tabular}"]
        return "\n".join(out) + "\n"
    # html
    e = _html.escape
    k = len(metrics)
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
    return "\n".join(out) + "\n"


def manifest_orders(manifest: dict) -> tuple[list[str], list[str]]:
    """(attack labels, victim labels) in the manifest's order."""
    attacks = [a["label"] if isinstance(a, dict) else str(a) for a in manifest.get("attacks", [])]
    victims = [
        (v.get("label") or v["name"]) if isinstance(v, dict) else str(v)
        for v in manifest.get("victims", [])
    ]
    return attacks, victims


def runs_table(runs: Sequence, *, by_kind: bool = False, valid_only: bool = False) -> pd.DataFrame:
    """The tidy leaderboard of one or more run directories, attacks and victims in the
    order their manifests list them."""
    from ..store.rundir import load_manifest, load_rows

    frames, aorder, vorder = [], [], []
    for run in runs:
        man = load_manifest(run)
        frames.append(load_rows(run))
        a, v = manifest_orders(man)
        aorder += [x for x in a if x not in aorder]
        vorder += [x for x in v if x not in vorder]
    rows = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
    if rows.empty:
        raise UadbenchError(
            f"no result rows in {', '.join(str(r) for r in runs)}; has the run finished any job?"
        )
    return leaderboard_table(
        rows, by_kind=by_kind, valid_only=valid_only, attack_order=aorder, victim_order=vorder
    )
