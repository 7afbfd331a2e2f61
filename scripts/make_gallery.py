"""Build the figure gallery in ``docs/gallery/`` (``make gallery``).

Two sources:

* the committed baseline ``results/baselines/zoo-synthetic`` (rows only: every attack
  against every zoo victim on 50 synthetic scenes, one budget): ASR@50 bars and the
  transfer matrix;
* a small run made here, because the baseline keeps no adversarial images and has one
  budget: UAD and TAP at ε = 4, 8, 16 /255 on 2 of the same scenes, surrogate
  zoo-vit-sam, against zoo-vit-sam (white-box) and zoo-hf-sam — for ASR-vs-ε curves,
  sample panels, the perturbation table and the report's screenshot (headless Chromium,
  when installed). A few minutes on 2 idle CPU cores; rerunning resumes it.

Usage::

    python scripts/make_gallery.py [--out docs/gallery] [--run results/gallery-run]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BASELINE = ROOT / "results" / "baselines" / "zoo-synthetic"
SMALL = dict(
    attacks="uad,tap",
    eps="4,8,16",
    victims="zoo-vit-sam,zoo-hf-sam",
    surrogate="zoo-vit-sam",
    dataset="synthetic:n=50,seed=1,split=test",
    limit=2,
    seed=0,
)
DPI = 150


def _write_png(fig, path: Path) -> Path:
    from uadbench.report.plots import figure_bytes

    path.write_bytes(figure_bytes(fig, "png", DPI))
    return path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--out", default=str(ROOT / "docs" / "gallery"))
    ap.add_argument("--run", default=str(ROOT / "results" / "gallery-run"))
    args = ap.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    from uadbench import api
    from uadbench.eval.perturbation import parse_perturbation_metrics, perturbation_table
    from uadbench.report.browser import find_chromium, screenshot
    from uadbench.report.html import html_report
    from uadbench.report.leaderboard import leaderboard_table, manifest_orders, render
    from uadbench.report.panel import show
    from uadbench.report.plots import run_figures
    from uadbench.store.rundir import load_manifest, load_rows

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    made: list[Path] = []
    # 1. the committed baseline (rows only)
    figs = run_figures(BASELINE)
    for stem in ("asr50_bars", "transfer_matrix"):
        made.append(_write_png(figs[stem], out / f"zoo-synthetic_{stem}.png"))
    man = load_manifest(BASELINE)
    aorder, vorder = manifest_orders(man)
    base_md = render(
        leaderboard_table(load_rows(BASELINE), attack_order=aorder, victim_order=vorder),
        "markdown",
        ("miou", "asr50"),
    )
    # 2. the small run: sweep, adversarial images, panels, report
    run = Path(args.run)
    t = time.time()
    res = api.run(out=run, progress=True, **SMALL)
    print(f"small run: {time.time() - t:.0f} s, ok={res.ok}", file=sys.stderr)
    figs = run_figures(run)
    made.append(_write_png(figs["asr50_vs_eps"], out / "sweep_asr50_vs_eps.png"))
    made.append(_write_png(figs["transfer_matrix"], out / "sweep_transfer_matrix.png"))
    ids = load_manifest(run)["samples"][:1]
    for p in out.glob("panel_*.png"):
        p.unlink()
    for attack in ("uad", "tap"):  # one image, both attacks at 8/255 (noisy scenes: ~0.5 MB each)
        made.append(show(run, ids[0], attack=attack, out=out / f"panel_{ids[0]}_{attack}.png",
                         max_side=224))  # fmt: skip
    keys = parse_perturbation_metrics("linf,l2,l2_pixel,psnr,ssim,ms_ssim,wall_seconds,cpu_seconds")
    pert_md = perturbation_table([run], keys, "markdown")
    report = html_report(run, n_boot=500)
    shot = None
    if find_chromium():
        shot = screenshot(report, out / "report-screenshot.png", width=1280, height=2400)
        made.append(shot)
    else:
        print("no chromium: report screenshot skipped", file=sys.stderr)
    # 3. the README
    lines = [
        "# Figure gallery",
        "",
        "Built by `make gallery` (`scripts/make_gallery.py`); do not edit by hand.",
        "",
        "## From the committed baseline `results/baselines/zoo-synthetic`",
        "",
        "Every attack against every zoo victim on 50 held-out synthetic scenes, ε = 8/255, "
        "surrogate zoo-vit-sam (white-box column). The baseline keeps rows only (no "
        "adversarial images, one budget), so sample panels and ε curves come from the small "
        "run below.",
        "",
        "![ASR@50 per victim](zoo-synthetic_asr50_bars.png)",
        "",
        "![transfer matrix](zoo-synthetic_transfer_matrix.png)",
        "",
        base_md.strip(),
        "",
        "## From a small run made by the same command",
        "",
        "`uadbench run --attack uad,tap --eps 4,8,16 --victims zoo-vit-sam,zoo-hf-sam "
        "--surrogate zoo-vit-sam --dataset synthetic:n=50,seed=1,split=test --limit 2`: "
        "2 images only, so the bands are wide and the numbers are an illustration, not a "
        "result.",
        "",
        "![ASR@50 vs eps](sweep_asr50_vs_eps.png)",
        "",
        "![transfer matrix of the small run](sweep_transfer_matrix.png)",
        "",
        pert_md.strip(),
        "",
        "Times per image come from a shared, busy 2-core CPU machine (other jobs running): "
        "they show what is recorded, they are not a speed benchmark.",
        "",
        "Sample panels (`uadbench show`): clean, adversarial, the perturbation map (max over "
        "RGB of |adv − clean| in magma, linear from 0 to the attack's ε), the ground truth "
        "of the drawn prompts, and per victim its masks on the clean and adversarial image "
        "with the stored IoUs.",
        "",
    ]
    lines += [f"![{p.stem}]({p.name})\n" for p in made if p.name.startswith("panel_")]
    if shot:
        lines += [
            "## The report",
            "",
            "`uadbench report` of the small run, rendered by headless Chromium (top 2400 px):",
            "",
            "![report screenshot](report-screenshot.png)",
            "",
        ]
    (out / "README.md").write_text("\n".join(lines))
    for p in made:
        print(f"wrote {p} ({p.stat().st_size // 1024} KB)")
    shutil.rmtree(run / "plots", ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
