"""Figures of a run for a paper: vector (PDF, SVG) and PNG at a chosen dpi.

- :func:`asr_bars`: a metric per victim, one bar group per victim, one bar per attack.
- :func:`eps_curves`: ASR@k (or mIoU) against ε, one panel per victim, one line per
  attack swept over several budgets, with a 95% image-level bootstrap band.
- :func:`transfer_matrix`: attacks × victims heatmap of the damage, clean mIoU − attacked
  mIoU in percentage points (the surrogate's column is white-box, marked so).

Every figure colours an attack the same way (:func:`attack_color`: a fixed colour-blind-
safe colour per known attack name, a stable one derived from the name otherwise; budgets
or settings of one attack are shades of its colour). matplotlib's object API (Agg), no
pyplot global state. Legends sit inside the saved figure.
"""

from __future__ import annotations

import colorsys
import hashlib
import io
import logging
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from ..store.rundir import load_manifest, load_unit_rows
from ..store.schema import CLEAN
from .leaderboard import METRICS, leaderboard_table, manifest_orders

log = logging.getLogger(__name__)

FORMATS = ("png", "pdf", "svg")
#: fixed colours of the known attacks (Okabe–Ito, colour-blind safe, + two darker tones)
ATTACK_COLORS = {
    "uad": "#D55E00",
    "attack-sam": "#0072B2",
    "attack-sam-k": "#56B4E9",
    "tap": "#009E73",
    "ilpd": "#E69F00",
    "aa": "#CC79A7",
    "pata": "#7F7F7F",
    "pata++": "#000000",
    "feature-pgd": "#8C564B",
    CLEAN: "#BBBBBB",
}
_EXTRA = ["#1F77B4", "#2CA02C", "#9467BD", "#17BECF", "#BCBD22", "#E377C2", "#393B79", "#637939"]


def attack_color(name: str) -> str:
    """The colour of an attack name (registry id) in every figure."""
    base = str(name).split("[")[0]
    if base in ATTACK_COLORS:
        return ATTACK_COLORS[base]
    return _EXTRA[int(hashlib.sha1(base.encode()).hexdigest(), 16) % len(_EXTRA)]


def _shade(color: str, k: int, n: int) -> str:
    """The k-th of n shades of ``color`` (k = n − 1 is the colour itself)."""
    if n <= 1:
        return color
    r, g, b = (int(color[i : i + 2], 16) / 255 for i in (1, 3, 5))
    h, light, s = colorsys.rgb_to_hls(r, g, b)
    t = (n - 1 - k) / (n - 1)  # 1 for the lightest
    light = light + (0.85 - light) * 0.75 * t
    r, g, b = colorsys.hls_to_rgb(h, light, s)
    return "#" + "".join(f"{round(255 * c):02X}" for c in (r, g, b))


def label_colors(labels: Sequence[str], names: dict[str, str] | None = None) -> dict[str, str]:
    """Colour per attack label: its name's colour; several labels of one name (a sweep,
    other settings) get shades of it, lightest first."""
    names = names or {}
    by_name: dict[str, list[str]] = {}
    for lab in labels:
        by_name.setdefault(names.get(lab, str(lab).split("[")[0]), []).append(lab)
    out = {}
    for name, labs in by_name.items():
        for k, lab in enumerate(labs):
            out[lab] = _shade(attack_color(name), k, len(labs))
    return out


def _figure(w: float, h: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w, h), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def figure_bytes(fig, fmt: str = "png", dpi: int = 200) -> bytes:
    """The figure as ``png`` (at ``dpi``), ``pdf`` or ``svg`` bytes (vector)."""
    buf = io.BytesIO()
    meta = {"Date": None} if fmt == "svg" else ({"CreationDate": None} if fmt == "pdf" else {})
    fig.savefig(buf, format=fmt, dpi=dpi, bbox_inches="tight", metadata=meta)
    return buf.getvalue()


def figure_png(fig, dpi: int = 110) -> bytes:
    """PNG bytes of a matplotlib figure."""
    return figure_bytes(fig, "png", dpi)


def _names(table: pd.DataFrame) -> dict[str, str]:
    if "attack_name" not in table:
        return {}
    return dict(zip(table["attack"].astype(str), table["attack_name"].astype(str)))


def asr_bars(table: pd.DataFrame, metric: str = "asr50", include_clean: bool = False):
    """Grouped bars of ``metric`` (from a tidy :func:`leaderboard_table`, kind ``all``):
    x = victims, one bar per attack. Returns a matplotlib Figure."""
    t = table[table["prompt_kind"] == "all"] if "prompt_kind" in table else table
    if not include_clean:
        t = t[t["attack"] != CLEAN]
    attacks = list(dict.fromkeys(t["attack"]))
    victims = list(dict.fromkeys(t["victim"]))
    colors = label_colors(attacks, _names(t))
    fig = _figure(max(6.0, 0.8 * len(victims) + 0.13 * len(attacks) * len(victims)), 3.6)
    ax = fig.add_subplot(1, 1, 1)
    width = 0.8 / max(1, len(attacks))
    idx = t.set_index(["attack", "victim"])[metric]
    for i, a in enumerate(attacks):
        xs = [j + (i - (len(attacks) - 1) / 2) * width for j in range(len(victims))]
        ys = [float(idx.get((a, v), float("nan"))) for v in victims]
        ax.bar(xs, ys, width=width, label=a, color=colors[a], edgecolor="white", linewidth=0.4)
    ax.set_xticks(range(len(victims)))
    ax.set_xticklabels(victims, rotation=20, ha="right")
    label = METRICS[metric][0]
    ax.set_ylabel(f"{label} (%)")
    ax.set_ylim(0, 100)
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    ax.legend(
        loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False, title="attack"
    )
    ax.set_title(f"{label} per victim")
    return fig


def sweeps(table: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Attack names with several budgets in the run: name -> their tidy lines."""
    if "attack_name" not in table.columns or "eps" not in table.columns:
        return {}
    t = table[(table["attack"] != CLEAN) & (table["prompt_kind"] == "all")]
    out = {}
    for name, g in t.groupby("attack_name", sort=False):
        if g["attack"].nunique() > 1 and g["eps"].nunique() > 1:
            out[str(name)] = g
    return out


def image_bootstrap_ci(
    rows: pd.DataFrame, metric: str, n_boot: int = 1000, seed: int = 0, level: float = 0.95
) -> tuple[float, float, float, int]:
    """(value, low, high, images) of ``metric`` (%) over ``rows`` with a percentile
    bootstrap over images (prompts of an image resampled together; the ratio of sums,
    as the leaderboard weighs prompts). NaN bounds below 2 images."""
    from .stats import bootstrap_weights, per_image

    pi = per_image(rows, metric)
    s, n = pi["sum"].to_numpy(), pi["n"].to_numpy()
    value = float(s.sum() / n.sum()) if n.sum() else float("nan")
    if len(pi) < 2:
        return value, float("nan"), float("nan"), len(pi)
    w = bootstrap_weights(len(pi), n_boot, np.random.default_rng(seed))
    boot = (w @ s) / (w @ n)
    a = (1 - level) / 2
    return value, float(np.quantile(boot, a)), float(np.quantile(boot, 1 - a)), len(pi)


def eps_curves(
    rows: pd.DataFrame,
    metric: str = "asr50",
    victims: Sequence[str] | None = None,
    n_boot: int = 1000,
    seed: int = 0,
):
    """``metric`` against ε (/255), one panel per victim, one line per attack name that
    ran at several budgets, with its 95% image-bootstrap band. None when no attack was
    swept."""
    r = rows[rows["attack"] != CLEAN]
    swept = [n for n, g in r.groupby("attack_name", sort=False) if g["eps"].nunique() > 1]
    if not swept:
        return None
    victims = list(victims or dict.fromkeys(r["victim"]))
    victims = [v for v in victims if v in set(r["victim"])]
    ncol = min(3, len(victims))
    nrow = -(-len(victims) // ncol)
    fig = _figure(3.3 * ncol, 2.7 * nrow + 0.5)
    axes = fig.subplots(nrow, ncol, squeeze=False, sharex=True, sharey=True)
    label = METRICS[metric][0]
    handles = {}
    for k, v in enumerate(victims):
        ax = axes[k // ncol][k % ncol]
        for name in swept:
            g = r[(r["attack_name"] == name) & (r["victim"] == v)]
            pts = []
            for eps, ge in g.groupby("eps", sort=True):
                val, lo, hi, _ = image_bootstrap_ci(ge, metric, n_boot, seed)
                pts.append((float(eps) * 255, val, lo, hi))
            if not pts:
                continue
            x, y, lo, hi = (np.array(c) for c in zip(*pts))
            color = attack_color(str(name))
            (h,) = ax.plot(x, y, marker="o", ms=3.5, color=color, label=str(name))
            ax.fill_between(x, lo, hi, color=color, alpha=0.18, linewidth=0)
            handles[str(name)] = h
        ax.set_title(v, fontsize=10)
        ax.set_xticks(sorted({round(float(e) * 255, 2) for e in r["eps"].unique()}))
        ax.set_ylim(0, 100)
        ax.grid(alpha=0.3)
        if k % ncol == 0:
            ax.set_ylabel(f"{label} (%)")
        if k // ncol == nrow - 1:
            ax.set_xlabel("ε (/255)")
    for k in range(len(victims), nrow * ncol):
        axes[k // ncol][k % ncol].set_visible(False)
    fig.legend(
        list(handles.values()),
        list(handles),
        loc="outside lower center",
        ncols=min(5, max(1, len(handles))),
        fontsize=9,
        frameon=False,
        title=f"attack (band: 95% bootstrap CI over images, {n_boot} resamples)",
        title_fontsize=8,
    )
    return fig


def damage_table(table: pd.DataFrame) -> pd.DataFrame:
    """Attacks × victims: clean mIoU − attacked mIoU (pp) from a tidy leaderboard."""
    t = table[table["prompt_kind"] == "all"] if "prompt_kind" in table else table
    clean = t[t["attack"] == CLEAN].set_index("victim")["miou"]
    att = t[t["attack"] != CLEAN]
    m = att.pivot_table(index="attack", columns="victim", values="miou", sort=False)
    m = m.reindex(
        index=list(dict.fromkeys(att["attack"])), columns=list(dict.fromkeys(t["victim"]))
    )
    return clean.reindex(m.columns) - m


def transfer_matrix(table: pd.DataFrame, surrogate: str | None = None):
    """Heatmap of :func:`damage_table`: rows attacks, columns victims, cells annotated
    with the damage in pp; the surrogate's column is labelled white-box."""
    from matplotlib.colors import TwoSlopeNorm

    d = damage_table(table)
    vals = d.to_numpy(dtype=float)
    fig = _figure(1.5 + 1.05 * d.shape[1], 1.0 + 0.42 * d.shape[0])
    ax = fig.add_subplot(1, 1, 1)
    top = float(np.nanmax(np.abs(vals))) if np.isfinite(vals).any() else 1.0
    top = max(top, 1.0)
    if np.nanmin(vals) < -1.0:  # a victim the attack helped by more than 1 pp
        cmap, norm = "RdBu_r", TwoSlopeNorm(vmin=-top, vcenter=0.0, vmax=top)
    else:
        from matplotlib.colors import Normalize

        cmap, norm = "Reds", Normalize(0.0, top)
    im = ax.imshow(vals, cmap=cmap, norm=norm, aspect="auto")
    for i in range(vals.shape[0]):
        for j in range(vals.shape[1]):
            v = vals[i, j]
            if np.isfinite(v):
                dark = abs(norm(v) - 0.5) > 0.3 if cmap == "RdBu_r" else norm(v) > 0.6
                ax.text(
                    j, i, f"{v:.1f}".replace("-0.0", "0.0"), ha="center", va="center", fontsize=8,
                    color="white" if dark else "black",
                )  # fmt: skip
    cols = [f"{v}\n(white-box)" if v == surrogate else str(v) for v in d.columns]
    ax.set_xticks(range(len(cols)))
    ax.set_xticklabels(cols, rotation=25, ha="right", fontsize=8)
    ax.set_yticks(range(len(d.index)))
    ax.set_yticklabels(list(d.index), fontsize=8)
    for t, a in zip(ax.get_yticklabels(), d.index):
        t.set_color(attack_color(str(a)) if str(a).split("[")[0] in ATTACK_COLORS else "black")
    bar = fig.colorbar(im, ax=ax, shrink=0.9)
    bar.set_label("clean mIoU − attacked mIoU (pp)", fontsize=8)
    ax.set_title("Damage per victim (transfer matrix)", fontsize=10)
    return fig


def _slug(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.+-]+", "_", s).strip("_") or "x"


def run_figures(run_dir: str | Path, metric: str = "asr50") -> dict[str, object]:
    """The run's figures by file stem: ``<metric>_bars``, ``transfer_matrix`` (when the
    run has clean rows) and ``<metric>_vs_eps`` (when an attack ran at several ε)."""
    rows = load_unit_rows(run_dir)
    man = load_manifest(run_dir)
    order, vorder = manifest_orders(man)
    table = leaderboard_table(rows, attack_order=order, victim_order=vorder)
    figs: dict[str, object] = {}
    if table.empty:
        return figs
    names = rows.drop_duplicates("attack").set_index("attack")["attack_name"]
    table = table.assign(attack_name=table["attack"].map(names).fillna(table["attack"]))
    figs[f"{metric}_bars"] = asr_bars(table, metric)
    if (table["attack"] == CLEAN).any() and (table["attack"] != CLEAN).any():
        sur = man.get("surrogate")
        sur = (sur.get("label") or sur.get("name")) if isinstance(sur, dict) else sur
        figs["transfer_matrix"] = transfer_matrix(table, sur)
    curves = eps_curves(rows, metric, vorder or None)
    if curves is not None:
        figs[f"{metric}_vs_eps"] = curves
    return figs


def plot_run(
    run_dir: str | Path,
    out_dir: str | Path | None = None,
    metric: str = "asr50",
    formats: Sequence[str] = FORMATS,
    dpi: int = 200,
) -> list[Path]:
    """Write the run's figures into ``out_dir`` (default ``<run>/plots``), each in every
    format of ``formats`` (png at ``dpi``; pdf and svg are vector)."""
    bad = [f for f in formats if f not in FORMATS]
    if bad:
        from ..errors import UadbenchError

        raise UadbenchError(f"unknown figure format(s) {bad}; choose from {', '.join(FORMATS)}")
    out = Path(out_dir) if out_dir else Path(run_dir) / "plots"
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for stem, fig in run_figures(run_dir, metric).items():
        for fmt in formats:
            p = out / f"{stem}.{fmt}"
            p.write_bytes(figure_bytes(fig, fmt, dpi))
            paths.append(p)
    log.info("wrote %d figure file(s) to %s", len(paths), out)
    return paths
