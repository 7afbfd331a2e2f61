"""One self-contained HTML page per run: settings, leaderboard, perturbation per attack,
comparisons, figures (inlined PNG), failures. No script, no external resource."""

from __future__ import annotations

import base64
import datetime as _dt
import html as _html
import json
import logging
from pathlib import Path
from typing import Any

import pandas as pd

from ..errors import UadbenchError
from ..store.rundir import FAILURES, atomic_write_bytes, load_manifest, load_unit_rows
from ..store.schema import CLEAN, IDENTITY, unit_label
from .leaderboard import leaderboard_table, manifest_orders, render
from .plots import figure_png, run_figures
from .stats import compare_pairs, render_compare, render_frame

log = logging.getLogger(__name__)

_CSS = """
*{box-sizing:border-box}
body{font-family:system-ui,sans-serif;margin:0 auto;padding:1.5em;color:#222;max-width:1100px;
line-height:1.4}
h1{font-size:1.6em;overflow-wrap:anywhere}
.scroll{max-width:100%;overflow-x:auto}
table{border-collapse:collapse;margin:0.6em 0;font-size:13px}
th,td{border:1px solid #ccc;padding:3px 7px;vertical-align:top}
td{overflow-wrap:break-word}
td.num{text-align:right;font-variant-numeric:tabular-nums}
caption{caption-side:top;text-align:left;font-weight:600;padding:4px 0}
table.settings td:first-child{font-weight:600;white-space:nowrap}
figure{margin:1em 0}
img{max-width:100%;height:auto;display:block}
.note{color:#555;font-size:13px}
.fail{color:#a00}
code{font-size:12px;overflow-wrap:anywhere}
"""


def plural(n: int, word: str) -> str:
    """``1 image``, ``2 images``."""
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def of_failed(k: int, n: int, word: str) -> str:
    """``1 of 2 images failed``; ``1 of 1 image failed``."""
    return f"{k} of {plural(n, word)} failed"


def _label(x: Any) -> str:
    if isinstance(x, dict):
        return str(x.get("label") or x.get("name") or "")
    return "" if x is None else str(x)


def _kv_table(items: list[tuple[str, Any]], cls: str = "settings") -> str:
    e = _html.escape
    body = "".join(
        f"<tr><td>{e(k)}</td><td>{e(v if isinstance(v, str) else json.dumps(v, default=str))}"
        "</td></tr>"
        for k, v in items
        if v not in (None, "", [], {})
    )
    return f"<div class='scroll'><table class='{cls}'>{body}</table></div>"


def settings_html(manifest: dict[str, Any]) -> str:
    """The run's settings from its manifest: dataset, surrogate, seed, prompt protocol,
    attacks and victims with their config hashes, package versions, invocations."""
    e = _html.escape
    ident = manifest.get("identity") or {}
    sur = manifest.get("surrogate")
    items = [
        ("dataset", _label(manifest.get("dataset"))),
        ("images", len(manifest.get("samples") or [])),
        (
            "surrogate",
            _label(sur)
            + (
                f" (config hash {sur.get('hash')})"
                if isinstance(sur, dict) and sur.get("hash")
                else ""
            )
            + (
                f", weights sha256 {sur['weights_sha256']}"
                if isinstance(sur, dict) and sur.get("weights_sha256")
                else ""
            ),
        ),
        ("seed", manifest.get("seed")),
        ("prompt protocol", ident.get("prompts")),
        ("pairing", manifest.get("pairing")),
        ("kind", manifest.get("kind")),
        ("source", manifest.get("source")),
        ("git revision", manifest.get("git")),
        ("created", manifest.get("created")),
        ("updated", manifest.get("updated")),
        ("versions", manifest.get("versions")),
    ]
    parts = [_kv_table(items)]
    attacks = [a for a in manifest.get("attacks", []) if isinstance(a, dict)]
    if attacks:
        df = pd.DataFrame(
            [
                {
                    "attack": a.get("label", ""),
                    "name": a.get("name", ""),
                    "eps (/255)": f"{255 * float(a.get('eps', 0) or 0):g}",
                    "config hash": a.get("hash", ""),
                    "settings": json.dumps(a.get("config", {}), sort_keys=True, default=str),
                }
                for a in attacks
            ]
        )
        parts.append(f"<div class='scroll'>{render_frame(df, 'html', 'Attacks')}</div>")
    victims = [v for v in manifest.get("victims", []) if isinstance(v, dict)]
    if victims:
        df = pd.DataFrame(
            [
                {
                    "victim": _label(v),
                    "config hash": v.get("hash", ""),
                    "weights sha256": v.get("weights_sha256", "") or "",
                    "settings": json.dumps(v.get("config", {}), sort_keys=True, default=str),
                }
                for v in victims
            ]
        )
        parts.append(f"<div class='scroll'>{render_frame(df, 'html', 'Victims')}</div>")
    transforms = [t for t in manifest.get("transforms") or [] if isinstance(t, dict)]
    if transforms:  # recorded once a transform other than identity was evaluated
        df = pd.DataFrame(
            [
                {
                    "transform": _label(t),
                    "config hash": t.get("hash", ""),
                    "settings": json.dumps(t.get("config", {}), sort_keys=True, default=str),
                }
                for t in transforms
            ]
        )
        title = "Transforms (applied to clean and adversarial images before each victim)"
        parts.append(f"<div class='scroll'>{render_frame(df, 'html', title)}</div>")
    inv = manifest.get("invocations") or []
    if inv:
        keys = ["started", "ended", "device", "host", "seconds", "attack_done", "eval_done"]
        df = pd.DataFrame(
            [
                {
                    k: (
                        f"{i[k]:.1f}"
                        if k == "seconds" and isinstance(i.get(k), float)
                        else i.get(k, "")
                    )
                    for k in [*keys, "failures"]
                }
                for i in inv
            ]
        ).astype(str)
        parts.append(
            f"<details><summary>{plural(len(inv), 'invocation')} of uadbench on this run "
            f"directory</summary><div class='scroll'>{render_frame(df, 'html')}</div></details>"
        )
    return "\n".join(parts) if parts else f"<p class='note'>{e('no settings recorded')}</p>"


def failures_summary(run_dir: Path, rows: pd.DataFrame, manifest: dict[str, Any]) -> list[str]:
    """One line per failing part of the run, e.g. ``attack uad: 1 of 2 images failed``.

    A failure counts while its output is still missing: ``failures.jsonl`` keeps every
    attempt, and a rerun that succeeded leaves rows behind."""
    path = Path(run_dir) / FAILURES
    if not path.exists():
        return []
    n_images = len(manifest.get("samples") or []) or int(rows["sample_id"].nunique()) or 1
    have = set(zip(rows["victim"], rows["attack"], rows["sample_id"]))
    attacked = set(zip(rows["attack"], rows["sample_id"]))
    attack_fail: dict[str, dict[str, str]] = {}
    eval_fail: dict[tuple[str, str], dict[str, str]] = {}
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        k, err = rec.get("key", {}), str(rec.get("error", ""))
        # the (victim, transform) unit, as the rows' ``victim`` reads (load_unit_rows)
        unit = unit_label(str(k.get("victim")), k.get("transform", IDENTITY))
        if rec.get("phase") == "attack":
            if (k.get("attack"), k.get("sample")) not in attacked:
                attack_fail.setdefault(str(k.get("attack")), {})[str(k.get("sample"))] = err
        elif (unit, k.get("attack"), k.get("sample")) not in have:
            key = (unit, str(k.get("attack")))
            eval_fail.setdefault(key, {})[str(k.get("sample"))] = err
    out = []
    for a, by in attack_fail.items():
        first = next(iter(by.items()))
        out.append(
            f"attack {a}: {of_failed(len(by), n_images, 'image')} (e.g. {first[0]}: {first[1]})"
        )
    for (v, a), by in eval_fail.items():
        if a in attack_fail and set(by) <= set(attack_fail[a]):
            continue  # evaluations of images whose attack failed: said above
        first = next(iter(by.items()))
        out.append(
            f"evaluation of {a} on {v}: {of_failed(len(by), n_images, 'image')} "
            f"(e.g. {first[0]}: {first[1]})"
        )
    return out


def pick_reference(labels: list[str], order: list[str], reference: str | None) -> str | None:
    """The attack the others are compared with: ``reference`` if given, else the run's
    first attack in the order its command named them (``order``: the manifest's attack
    labels; ``--attack uad,aa`` compares uad with aa), else the first of ``labels``."""
    if reference:
        if reference not in labels:
            raise UadbenchError(
                f"--reference {reference!r} is not an attack of this run; it has: "
                + ", ".join(labels)
            )
        return reference
    if not labels:
        return None
    return next((a for a in order if a in labels), labels[0])


def html_report(
    run_dir: str | Path,
    out: str | Path | None = None,
    *,
    n_boot: int = 2000,
    seed: int = 0,
    alpha: float = 0.05,
    reference: str | None = None,
    metrics: tuple[str, ...] = ("miou", "asr50", "asr10"),
) -> Path:
    """Write ``out`` (default ``<run>/report.html``): settings, leaderboard, perturbation
    per attack, comparisons of a reference attack (``reference``; default UAD if it ran,
    else the first attack) with every other attack, the run's figures and any panels in
    ``<run>/panels`` as inline PNG, and the failures. Returns the path."""
    from ..eval.perturbation import (
        PERTURBATION_METRICS,
        load_perturbations,
        perturbation_summary,
        summary_columns,
    )

    run_dir = Path(run_dir)
    manifest, rows = load_manifest(run_dir), load_unit_rows(run_dir)
    aorder, vorder = manifest_orders(manifest)
    table = leaderboard_table(
        rows, attack_order=aorder, victim_order=vorder, metrics=metrics, alpha=alpha
    )
    labels = [a for a in dict.fromkeys(table["attack"]) if a != CLEAN]
    ref = pick_reference(labels, list(aorder), reference)
    e = _html.escape
    n_img = int(rows["sample_id"].nunique())
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        "<meta name='viewport' content='width=device-width, initial-scale=1'>",
        f"<title>uadbench report: {e(run_dir.name)}</title><style>{_CSS}</style></head><body>",
        f"<h1>uadbench report: {e(run_dir.name)}</h1>",
        f"<p class='note'>{e(str(manifest.get('kind', 'run')))} run"
        + (f" from {e(str(manifest.get('source')))}" if manifest.get("source") else "")
        + f"; {plural(n_img, 'image')}, {plural(len(labels), 'attack')}, "
        f"{plural(int(rows['victim'].nunique()), 'victim')}, {plural(len(rows), 'row')}; "
        f"generated {_dt.datetime.now().isoformat(timespec='seconds')}.</p>",
        "<h2 id='settings'>Settings</h2>",
        settings_html(manifest),
        "<h2 id='leaderboard'>Leaderboard</h2>",
        "<p class='note'>mIoU and ASR@k in %; ASR@k counts prompts with IoU ≤ k. Bold: the "
        "strongest attack per column, only where it is significantly stronger than the "
        "runner-up (notes under the table).</p>",
        f"<div class='scroll'>{render(table, 'html', metrics)}</div>",
    ]
    pert = load_perturbations(run_dir)
    parts.append("<h2 id='perturbation'>Perturbation per attack</h2>")
    if pert.empty:
        parts.append(
            "<p class='note'>No perturbation rows (a run made before they were recorded, or "
            "an imported one).</p>"
        )
    else:
        keys = tuple(k for k in PERTURBATION_METRICS if k in pert and pert[k].notna().any())
        summ = summary_columns(perturbation_summary(pert, keys, aorder), keys)
        parts.append(
            "<p class='note'>Means over each attack's adversarial images (uint8, as the "
            "victims saw them). L∞, L2 in 0–255 units (L2/pixel: ‖δ‖₂/√(H·W)); PSNR in dB "
            "over images that differ from the clean one; SSIM and MS-SSIM with an 11×11 "
            "Gaussian window (pytorch-msssim), mean of RGB channels; time per image is "
            "the attack step's divided by its batch.</p>"
        )
        parts.append(f"<div class='scroll'>{render_frame(summ, 'html')}</div>")
    parts.append("<h2 id='comparisons'>Comparisons</h2>")
    if ref and len(labels) > 1:
        why = "given" if reference else "first attack"
        others = [o for o in labels if o != ref]
        # one family: every line this page shows is corrected together
        t = compare_pairs(
            rows,
            [(ref, o) for o in others],
            metrics=[m for m in metrics if m in ("miou", "asr50", "asr10")] or ("miou",),
            seed=seed,
            alpha=alpha,
            pairing=manifest.get("pairing", "prompt"),
        )
        parts.append(
            f"<p class='note'>Reference attack: <b>{e(ref)}</b> ({e(why)}), compared with each "
            f"other attack ({plural(len(others), 'comparison')}, one family). delta &gt; 0 "
            f"means {e(ref)} is stronger; the test, its pairing, correction and CI method are "
            "named under the table.</p>"
        )
        parts.append(f"<div class='scroll'>{render_compare(t, 'html', alpha)}</div>")
    else:
        parts.append("<p class='note'>Fewer than two attacks in this run: nothing to compare.</p>")
    figs = run_figures(run_dir)
    panels = sorted((run_dir / "panels").glob("*.png")) if (run_dir / "panels").is_dir() else []
    parts.append("<h2 id='figures'>Figures</h2>")
    if not figs and not panels:
        parts.append("<p class='note'>No figures (no rows).</p>")
    for name, fig in figs.items():
        parts.append(_img(figure_png(fig), name))
    for p in panels:
        parts.append(_img(p.read_bytes(), f"panel {p.stem} (uadbench show)"))
    parts.append("<h2 id='failures'>Failures</h2>")
    fails = failures_summary(run_dir, rows, manifest)
    if fails:
        parts.append(
            "<ul class='fail'>" + "".join(f"<li>{e(f)}</li>" for f in fails) + "</ul>"
            "<p class='note'>Tracebacks: failures.jsonl in the run directory; rerunning the "
            "same command retries them.</p>"
        )
    else:
        parts.append("<p class='note'>No failed job.</p>")
    parts.append("</body></html>\n")
    out = Path(out) if out else run_dir / "report.html"
    atomic_write_bytes(out, "\n".join(parts).encode())
    log.info("wrote %s", out)
    return out


def _img(png: bytes, caption: str) -> str:
    b64 = base64.b64encode(png).decode()
    e = _html.escape
    return (
        f"<figure><img alt='{e(caption)}' src='data:image/png;base64,{b64}'>"
        f"<figcaption class='note'>{e(caption)}</figcaption></figure>"
    )
