"""One self-contained HTML page per run: leaderboard, comparisons, plots (inlined)."""

from __future__ import annotations

import base64
import datetime as _dt
import html as _html
import logging
from pathlib import Path

from ..store.rundir import atomic_write_bytes, load_manifest, load_rows
from ..store.schema import CLEAN
from .leaderboard import leaderboard_table, manifest_orders, render
from .plots import figure_png, run_figures
from .stats import compare, render_compare

log = logging.getLogger(__name__)

_CSS = """
body{font-family:system-ui,sans-serif;margin:2em;color:#222;max-width:1200px}
table{border-collapse:collapse;margin:1em 0;font-size:14px}
th,td{border:1px solid #ccc;padding:3px 8px}
td.num{text-align:right;font-variant-numeric:tabular-nums}
caption{caption-side:top;text-align:left;font-weight:600;padding:4px 0}
img{max-width:100%}
.note{color:#555;font-size:13px}
"""


def html_report(
    run_dir: str | Path,
    out: str | Path | None = None,
    *,
    n_boot: int = 2000,
    seed: int = 0,
    alpha: float = 0.05,
) -> Path:
    """Write ``out`` (default ``<run>/report.html``): the leaderboard (mIoU, ASR@50,
    ASR@10), comparisons of UAD with each other attack (when the run has UAD), and the
    run's plots as base64 PNG. Returns the path."""
    run_dir = Path(run_dir)
    manifest, rows = load_manifest(run_dir), load_rows(run_dir)
    aorder, vorder = manifest_orders(manifest)
    table = leaderboard_table(rows, attack_order=aorder, victim_order=vorder)
    e = _html.escape
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'>",
        f"<title>uadbench report: {e(run_dir.name)}</title><style>{_CSS}</style></head><body>",
        f"<h1>uadbench report: {e(run_dir.name)}</h1>",
        f"<p class='note'>{e(str(manifest.get('kind', 'run')))} run"
        + (f" from {e(str(manifest.get('source')))}" if manifest.get("source") else "")
        + f"; {rows['sample_id'].nunique()} images, {len(rows)} rows; generated "
        f"{_dt.datetime.now().isoformat(timespec='seconds')}.</p>",
        "<h2>Leaderboard</h2>",
        "<p class='note'>mIoU and ASR@k in %; ASR@k counts prompts with IoU ≤ k. Bold: the "
        "strongest attack per column (lowest mIoU, highest ASR).</p>",
        render(table, "html", ("miou", "asr50", "asr10")),
    ]
    labels = [a for a in dict.fromkeys(table["attack"]) if a != CLEAN]
    uad = (
        "uad"
        if "uad" in labels
        else next(
            (
                a
                for a in labels
                if str(table.loc[table["attack"] == a, "attack_name"].iloc[0]) == "uad"
            ),
            None,
        )
    )
    parts.append("<h2>Comparisons</h2>")
    if uad and len(labels) > 1:
        parts.append(
            f"<p class='note'>Paired image-level cluster bootstrap {100 * (1 - alpha):g}% CI "
            f"({n_boot} resamples), Wilcoxon signed-rank p on per-image means, Holm-adjusted within "
            "each comparison. delta &gt; 0 means UAD is stronger.</p>"
        )
        for other in labels:
            if other == uad:
                continue
            t = compare(
                rows,
                uad,
                other,
                n_boot=n_boot,
                seed=seed,
                alpha=alpha,
                pairing=manifest.get("pairing", "prompt"),
            )
            parts.append(render_compare(t, "html", alpha))
    else:
        parts.append(
            "<p class='note'>No UAD attack with another attack to compare in this run.</p>"
        )
    figs = run_figures(run_dir)
    if figs:
        parts.append("<h2>Plots</h2>")
        for name, fig in figs.items():
            b64 = base64.b64encode(figure_png(fig)).decode()
            parts.append(
                f"<figure><img alt='{e(name)}' src='data:image/png;base64,{b64}'>"
                f"<figcaption class='note'>{e(name)}</figcaption></figure>"
            )
    parts.append("</body></html>\n")
    out = Path(out) if out else run_dir / "report.html"
    atomic_write_bytes(out, "\n".join(parts).encode())
    log.info("wrote %s", out)
    return out
