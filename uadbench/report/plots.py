"""Leaderboard plots as PNG (matplotlib, Agg backend, no pyplot global state).

- :func:`asr_bars`: ASR@k per victim, one bar group per victim, one bar per attack.
- :func:`eps_curves`: for a sweep (several labels of one attack name with different
  ε), ASR@k against ε, one line per victim.
"""

from __future__ import annotations

import io
import logging
import re
from pathlib import Path

import pandas as pd

from ..store.rundir import load_manifest, load_rows
from ..store.schema import CLEAN
from .leaderboard import METRICS, leaderboard_table

log = logging.getLogger(__name__)


def _figure(w: float, h: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w, h), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def figure_png(fig) -> bytes:
    """PNG bytes of a matplotlib figure."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    return buf.getvalue()


def asr_bars(table: pd.DataFrame, metric: str = "asr50", include_clean: bool = False):
    """Grouped bars of ``metric`` (from a tidy :func:`leaderboard_table`, kind ``all``):
    x = victims, one bar per attack. Returns a matplotlib Figure."""
    t = table[table["prompt_kind"] == "all"]
    if not include_clean:
        t = t[t["attack"] != CLEAN]
    attacks = list(dict.fromkeys(t["attack"]))
    victims = list(dict.fromkeys(t["victim"]))
    fig = _figure(max(6.0, 1.2 * len(victims) + 0.25 * len(attacks) * len(victims)), 4.0)
    ax = fig.add_subplot(1, 1, 1)
    width = 0.8 / max(1, len(attacks))
    idx = t.set_index(["attack", "victim"])[metric]
    for i, a in enumerate(attacks):
        xs = [j + (i - (len(attacks) - 1) / 2) * width for j in range(len(victims))]
        ys = [float(idx.get((a, v), float("nan"))) for v in victims]
        ax.bar(xs, ys, width=width, label=a)
    ax.set_xticks(range(len(victims)))
    ax.set_xticklabels(victims, rotation=20, ha="right")
    label = METRICS[metric][0]
    ax.set_ylabel(f"{label} (%)")
    ax.set_ylim(0, 100)
    ax.set_title(
        f"{label} per victim (higher = stronger attack)"
        if not METRICS[metric][2]
        else f"{label} per victim (lower = stronger attack)"
    )
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, ncol=min(4, max(1, len(attacks))))
    return fig


def sweeps(table: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Attack names with several labels of distinct ε: name -> their tidy lines."""
    t = table[(table["prompt_kind"] == "all") & (table["attack"] != CLEAN)]
    out = {}
    for name, g in t.groupby("attack_name", sort=False):
        if g["attack"].nunique() > 1 and g["eps"].nunique() > 1:
            out[str(name)] = g
    return out


def eps_curves(lines: pd.DataFrame, metric: str = "asr50", name: str = ""):
    """``metric`` against ε (in /255) for one sweep's tidy lines, one line per victim."""
    fig = _figure(6.0, 4.0)
    ax = fig.add_subplot(1, 1, 1)
    for v, g in lines.groupby("victim", sort=False):
        g = g.sort_values("eps")
        ax.plot(g["eps"] * 255, g[metric], marker="o", label=str(v))
    label = METRICS[metric][0]
    ax.set_xlabel("ε (/255)")
    ax.set_ylabel(f"{label} (%)")
    ax.set_ylim(0, 100)
    ax.set_title(f"{name}: {label} vs ε")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def _slug(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.+-]+", "_", s).strip("_") or "x"


def run_figures(run_dir: str | Path, metric: str = "asr50") -> dict[str, object]:
    """The run's figures by file name: ``<metric>_bars.png`` and one
    ``<metric>_vs_eps_<attack>.png`` per sweep."""
    rows = load_rows(run_dir)
    man = load_manifest(run_dir)
    order = [a["label"] if isinstance(a, dict) else str(a) for a in man.get("attacks", [])]
    vorder = [v["name"] if isinstance(v, dict) else str(v) for v in man.get("victims", [])]
    table = leaderboard_table(rows, attack_order=order, victim_order=vorder)
    figs: dict[str, object] = {}
    if table.empty:
        return figs
    figs[f"{metric}_bars.png"] = asr_bars(table, metric)
    for name, lines in sweeps(table).items():
        figs[f"{metric}_vs_eps_{_slug(name)}.png"] = eps_curves(lines, metric, name)
    return figs


def plot_run(
    run_dir: str | Path, out_dir: str | Path | None = None, metric: str = "asr50"
) -> list[Path]:
    """Write the run's plots as PNG into ``out_dir`` (default ``<run>/plots``)."""
    out = Path(out_dir) if out_dir else Path(run_dir) / "plots"
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for fname, fig in run_figures(run_dir, metric).items():
        p = out / fname
        p.write_bytes(figure_png(fig))
        paths.append(p)
    log.info("wrote %d plot(s) to %s", len(paths), out)
    return paths
