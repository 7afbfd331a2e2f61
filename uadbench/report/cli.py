"""Report subcommands of the ``uadbench`` command.

:func:`add_report_commands` adds ``leaderboard``, ``compare``, ``check``, ``import``,
``show``, ``plot`` and ``report`` to the main parser's subparsers; each handler takes
the parsed args and returns the exit code. User errors raise
:class:`uadbench.errors.UadbenchError` (the main CLI prints them on one line).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

_RAW = argparse.RawDescriptionHelpFormatter


def _emit(text: str, out: str | None) -> None:
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(text)
        print(f"wrote {out}", file=sys.stderr)
    else:
        sys.stdout.write(text)


def _victims_arg(values: list[str] | None) -> list[str] | None:
    if not values:
        return None
    return [v.strip() for item in values for v in item.split(",") if v.strip()]


# ----------------------------------------------------------------------------- handlers
def cmd_leaderboard(args: argparse.Namespace) -> int:
    from ..eval.perturbation import perturbation_table, split_metrics
    from .leaderboard import LB_METRICS, parse_metrics, render, runs_table

    # perturbation metrics (linf, psnr, ssim, …) get their own per-attack table
    iou_metrics, pert_metrics = split_metrics(None if args.metrics == "auto" else args.metrics)
    metrics = None if iou_metrics is None else parse_metrics(iou_metrics, LB_METRICS)
    if args.seeds:
        from .leaderboard import seeds_table

        table = seeds_table(
            args.runs, by_kind=args.by_kind, by_size=args.by_size, valid_only=args.valid_only
        )
        title = None if args.format == "csv" else "Leaderboard over seeds: " + ", ".join(args.runs)
        _emit(render(table, args.format, metrics, title=title, show_n=args.n), args.out)
        return 0
    table = runs_table(
        args.runs,
        by_kind=args.by_kind,
        by_size=args.by_size,
        valid_only=args.valid_only,
        split=args.split,
        metrics=metrics or ("miou", "asr50", "asr50cc"),
        alpha=args.alpha,
        correction=args.correction,
        ci=args.ci,
        seed=args.seed,
    )
    title = None
    if args.format != "csv":
        title = "Leaderboard: " + ", ".join(args.runs)
    text = render(table, args.format, metrics, title=title, show_n=args.n, show_ci=args.ci)
    _emit(text + perturbation_table(args.runs, pert_metrics, args.format), args.out)
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from ..errors import UadbenchError
    from ..store.rundir import load_manifest, load_unit_rows
    from .stats import all_pairs, compare_pairs, render_compare

    man = load_manifest(args.run)
    rows = load_unit_rows(args.run)  # (victim, transform) is the unit compared within
    if args.all:
        if args.a or args.b:
            raise UadbenchError("--all compares every pair of attacks; drop --a/--b")
        pairs = all_pairs(rows)
        if not pairs:
            raise UadbenchError("--all needs at least two attacks besides clean in the run")
    elif args.a and args.b:
        pairs = [(args.a, args.b)]
    else:
        raise UadbenchError("name two attacks with --a and --b, or compare every pair with --all")
    table = compare_pairs(
        rows,
        pairs,
        victims=_victims_arg(args.victims),
        metrics=args.metrics,
        n_perm=args.n_perm,
        seed=args.seed,
        alpha=args.alpha,
        correction=args.correction,
        test=args.test,
        equivalence=args.equivalence,
        unit=args.unit,
        pairing=str(man.get("pairing", "prompt")),
    )
    _emit(render_compare(table, args.format, args.alpha), args.out)
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from .check import check, render_check

    ok, table = check(
        args.run,
        args.baseline,
        alpha=args.alpha,
        what=args.what,
        margin=args.margin,
        allow_missing=args.allow_missing,
        correction=args.correction,
        n_perm=args.n_perm,
        seed=args.seed,
    )
    text = render_check(table, args.format)
    pairs = table.drop_duplicates(["attack", "victim", "verdict"])
    n_reg = int((table["verdict"] == "REGRESSION").sum())
    n_missing = int((pairs["verdict"] == "MISSING").sum())
    n_none = int((pairs["verdict"] == "NO COMMON IMAGES").sum())
    n_new = int((pairs["verdict"] == "new (not in baseline)").sum())
    what = "attack strength" if args.what == "attack" else "victim robustness"
    how = f"{args.correction}, alpha={args.alpha:g}, margin={args.margin:g} pp"
    reasons = []
    if n_reg:
        reasons.append(f"{n_reg} significant drop(s) in {what} ({how})")
    if n_missing:
        reasons.append(
            f"{n_missing} baseline (attack, victim) pair(s) missing from the run"
            + (" (tolerated: --allow-missing)" if args.allow_missing else "")
        )
    if n_none:
        reasons.append(f"{n_none} pair(s) with no image in common")
    failing = [r for r in reasons if "tolerated" not in r]
    summary = (
        ("FAIL: " + "; ".join(failing)) if not ok else f"OK: no significant drop in {what} ({how})"
    )
    if ok and len(reasons) > len(failing):
        summary += "; " + "; ".join(r for r in reasons if "tolerated" in r)
    if n_new:
        summary += f"; {n_new} new pair(s) not in the baseline (listed, not checked)"
    _emit(text + ("" if args.format == "csv" else summary + "\n"), args.out)
    if args.out or args.format == "csv":
        print(summary, file=sys.stderr)
    return 0 if ok else 1


def cmd_import(args: argparse.Namespace) -> int:
    from .importers import import_anything_unsegmentable

    out = import_anything_unsegmentable(args.src, args.out)
    print(f"imported {args.src} into {out}")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    from .panel import show

    path = show(
        args.run,
        args.sample,
        args.attack,
        args.out,
        device=args.device,
        n_prompts=args.prompts,
        victims=_victims_arg(args.victims),
        transform=args.transform,
    )
    print(f"wrote {path}")
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    from .plots import plot_run

    formats = [f.strip() for f in args.formats.split(",") if f.strip()]
    paths = plot_run(args.run, args.out, formats=formats, dpi=args.dpi)
    for p in paths:
        print(f"wrote {p}")
    if not paths:
        print("no rows to plot", file=sys.stderr)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from .html import html_report

    path = html_report(
        args.run,
        args.out,
        n_boot=args.n_boot,
        seed=args.seed,
        alpha=args.alpha,
        reference=args.reference,
    )
    print(f"wrote {path}")
    return 0


# ----------------------------------------------------------------------------- parsers
def add_report_commands(subparsers: argparse._SubParsersAction) -> None:
    """Add the report subcommands to ``subparsers`` (from ``parser.add_subparsers()``)."""
    fmts = ["terminal", "markdown", "latex", "csv", "html"]

    p = subparsers.add_parser(
        "leaderboard",
        help="table of mIoU / ASR per attack and victim",
        formatter_class=_RAW,
        description="Rows = attacks (clean first), columns = victims. An attack is marked "
        "best in its column (* in the terminal, bold elsewhere) only where it is "
        "significantly stronger than the runner-up (paired sign-flip test and bootstrap-t on "
        "per-image means, Bonferroni over the columns tested). ASR@50 clean-correct counts only "
        "prompts whose clean mask was right. Runs that cannot be pooled (other dataset, "
        "prompts, surrogate, seed or reference masks) are refused, or shown side by side "
        "with --split. CSV is tidy: one line per (attack, victim [, split]).",
        epilog="examples:\n"
        "  uadbench leaderboard results/run1\n"
        "  uadbench leaderboard results/run1 --format markdown --metrics miou,asr50,asr10\n"
        "  uadbench leaderboard results/run1 --format latex --n --ci --out table.tex\n"
        "  uadbench leaderboard results/run1 --by-kind --by-size --valid-only\n"
        "  uadbench leaderboard results/run1 results/run2 --split\n"
        "  uadbench leaderboard results/run1 --format csv --out leaderboard.csv",
    )
    p.add_argument("runs", nargs="+", metavar="RUN", help="run directories (rows are pooled)")
    p.add_argument("--format", choices=fmts, default="terminal")
    p.add_argument(
        "--metrics",
        default="auto",
        help="comma list of miou, asr50, asr10, asr50cc (default: miou, asr50 and, with "
        "clean rows, asr50cc); perturbation per attack, in a table of its own: linf, l2, "
        "l2_pixel, psnr, ssim, ms_ssim, lpips, wall_seconds, cpu_seconds, gpu_seconds, "
        "peak_mem_mb",
    )
    p.add_argument("--by-kind", action="store_true", help="add point-only and box-only lines")
    p.add_argument(
        "--by-size",
        action="store_true",
        help="add small / medium / large object lines (COCO area thresholds 32^2, 96^2 px)",
    )
    p.add_argument(
        "--valid-only",
        action="store_true",
        help="keep prompts whose clean IoU > 50 (needs clean rows; judged per run)",
    )
    p.add_argument("--n", action="store_true", help="show images/prompts per cell")
    p.add_argument(
        "--ci", action="store_true", help="show a 95%% cluster-bootstrap interval per cell"
    )
    p.add_argument(
        "--split", action="store_true", help="runs that cannot be pooled: one table per pool"
    )
    p.add_argument(
        "--seeds",
        action="store_true",
        help="the RUNs differ only in their seed: mean ± between-seed SD per cell",
    )
    p.add_argument("--alpha", type=float, default=0.05, help="level of the 'best' marks")
    p.add_argument("--correction", choices=["bonferroni", "holm"], default="bonferroni")
    p.add_argument("--seed", type=int, default=0, help="seed of resampling (CI, Monte Carlo)")
    p.add_argument("--out", help="write to this file instead of stdout")
    p.set_defaults(func=cmd_leaderboard)

    p = subparsers.add_parser(
        "compare",
        help="significance of the difference between two attacks",
        formatter_class=_RAW,
        description="Per victim and metric: the mean over images of the per-image difference "
        "(delta > 0 means attack A is stronger: mIoU B - A, ASR A - B), a paired sign-flip "
        "permutation test of it (exact up to 16 images, seeded Monte Carlo beyond) and a "
        "bootstrap-t, both of which must reject, the confidence interval by inverting them, "
        "and p adjusted over every line shown (Bonferroni by default: the intervals are "
        "simultaneous). Each line also shows the minimum detectable effect at 80% power; a warning says when nothing could be "
        "significant. See docs/statistics.md.",
        epilog="examples:\n"
        "  uadbench compare results/run1 --a uad --b tap\n"
        "  uadbench compare results/au --a uad --b pata++ --victims sam-vit-b,sam-vit-h\n"
        "  uadbench compare results/run1 --all                 # every pair, one family\n"
        "  uadbench compare results/run1 --a uad --b tap --equivalence 2   # TOST at 2 pp\n"
        "  uadbench compare results/run1 --a uad --b aa --test wilcoxon --format markdown",
    )
    p.add_argument("run", metavar="RUN")
    p.add_argument("--a", help="attack label A")
    p.add_argument("--b", help="attack label B")
    p.add_argument(
        "--all", action="store_true", help="every pair of attacks (clean excluded), one family"
    )
    p.add_argument("--victims", nargs="+", help="victims (default: all with rows for both)")
    p.add_argument("--metrics", default="miou,asr50")
    p.add_argument(
        "--n-perm",
        type=int,
        default=9999,
        help="Monte Carlo sign patterns beyond 16 images (raised when the family needs more)",
    )
    p.add_argument("--n-boot", type=int, help=argparse.SUPPRESS)  # former option, ignored
    p.add_argument("--seed", type=int, default=0, help="seed of the Monte Carlo sign patterns")
    p.add_argument("--alpha", type=float, default=0.05)
    p.add_argument("--correction", choices=["bonferroni", "holm"], default="bonferroni")
    p.add_argument(
        "--test",
        choices=["sign-flip+bootstrap-t", "sign-flip", "wilcoxon"],
        default="sign-flip+bootstrap-t",
        help="default: sign-flip permutation test AND bootstrap-t must both reject; "
        "sign-flip: the permutation test alone (too liberal for skewed differences); "
        "wilcoxon: signed-rank test of symmetry with the Hodges-Lehmann estimate "
        "(an alternative; it does not test the mean)",
    )
    p.add_argument(
        "--equivalence",
        type=float,
        metavar="MARGIN",
        help="also test equivalence (TOST): is |delta| < MARGIN (percentage points)?",
    )
    p.add_argument(
        "--unit",
        choices=["image", "prompt"],
        default="image",
        help="resampling unit; 'prompt' treats prompts as independent "
        "(anti-conservative, diagnostics only)",
    )
    p.add_argument("--format", choices=fmts, default="terminal")
    p.add_argument("--out", help="write to this file instead of stdout")
    p.set_defaults(func=cmd_compare)

    p = subparsers.add_parser(
        "check",
        help="fail on a significant regression against a baseline run",
        formatter_class=_RAW,
        description="Exit 1 where attack strength (damage relative to clean: clean - attacked "
        "mIoU, attacked - clean ASR@50) dropped significantly, or, with --what robustness, "
        "where a victim got worse (clean accuracy fell, or damage rose); also when a baseline "
        "pair is missing from RUN. Each line pairs the runs on their common images and tests "
        "the mean per-image change one-sided (sign-flip test and bootstrap-t), adjusted over "
        "every line. A baseline with another dataset, prompt protocol or reference masks is "
        "refused. See docs/statistics.md.",
        epilog="examples:\n"
        "  uadbench check results/ci --baseline results/baselines/ci\n"
        "  uadbench check results/ci --baseline results/baselines/ci --alpha 0.01 --margin 2\n"
        "  uadbench check results/ci --baseline results/baselines/ci --what robustness\n"
        "  uadbench check results/ci --baseline results/baselines/ci --allow-missing",
    )
    p.add_argument("run", metavar="RUN")
    p.add_argument("--baseline", required=True, metavar="DIR", help="baseline run directory")
    p.add_argument("--alpha", type=float, default=0.05)
    p.add_argument("--what", choices=["attack", "robustness"], default="attack")
    p.add_argument(
        "--margin",
        type=float,
        default=0.0,
        help="tolerated change of the displayed delta, in percentage points (default 0)",
    )
    p.add_argument(
        "--allow-missing",
        action="store_true",
        help="do not fail when an (attack, victim) pair of the baseline is missing from RUN",
    )
    p.add_argument("--strict", action="store_true", help=argparse.SUPPRESS)  # now the default
    p.add_argument("--correction", choices=["bonferroni", "holm"], default="bonferroni")
    p.add_argument("--n-perm", type=int, default=9999, help="Monte Carlo sign patterns")
    p.add_argument("--seed", type=int, default=0, help="seed of the Monte Carlo sign patterns")
    p.add_argument("--format", choices=fmts, default="terminal")
    p.add_argument("--out", help="write the table to this file")
    p.set_defaults(func=cmd_check)

    p = subparsers.add_parser(
        "import",
        help="convert results published by other code into a run directory",
        formatter_class=_RAW,
        description="anything-unsegmentable: the per-prompt JSON logs of the UAD reference "
        "implementation (exp/log/benchmark, one folder per attack).",
        epilog="examples:\n"
        "  uadbench import anything-unsegmentable exp/log/benchmark --out results/au\n"
        "  uadbench leaderboard results/au",
    )
    p.add_argument("source", choices=["anything-unsegmentable"])
    p.add_argument("src", metavar="SRC_DIR")
    p.add_argument("--out", required=True, metavar="RUN_DIR")
    p.set_defaults(func=cmd_import)

    p = subparsers.add_parser(
        "show",
        help="PNG panel of one sample: images, perturbation, masks",
        formatter_class=_RAW,
        description="Clean, adversarial and amplified perturbation, then clean vs adversarial "
        "masks of a few prompts per victim (victims are re-run on this sample).",
        epilog="examples:\n"
        "  uadbench show results/run1 --sample astronaut\n"
        "  uadbench show results/run1 --sample sa_1 --attack tap --out sa_1_tap.png",
    )
    p.add_argument("run", metavar="RUN")
    p.add_argument("--sample", required=True, metavar="ID")
    p.add_argument("--attack", help="attack label (default uad, else the first)")
    p.add_argument("--victims", nargs="+", help="victims to show (default all)")
    p.add_argument("--prompts", type=int, default=3, help="prompts drawn per victim")
    p.add_argument(
        "--transform",
        default=None,
        help="draw what the victims saw through this transform of the run (e.g. jpeg:q=75)",
    )
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", metavar="PNG")
    p.set_defaults(func=cmd_show)

    p = subparsers.add_parser(
        "plot",
        help="figures: ASR@50 bars, transfer matrix, ASR-vs-eps curves (PDF, SVG, PNG)",
        formatter_class=_RAW,
        description="ASR@50 per victim (bars), damage per victim (clean mIoU - attacked mIoU, "
        "heatmap) and, when an attack ran at several budgets, ASR@50 against eps with a 95% "
        "image-bootstrap band; one colour per attack in every figure.",
        epilog="examples:\n  uadbench plot results/run1\n  uadbench plot results/sweep --out figs/"
        "\n  uadbench plot results/run1 --formats pdf --out paper/figs",
    )
    p.add_argument("run", metavar="RUN")
    p.add_argument("--out", metavar="DIR", help="default RUN/plots")
    p.add_argument("--formats", default="png,pdf,svg", help="comma list of png, pdf, svg")
    p.add_argument("--dpi", type=int, default=200, help="PNG resolution (default 200)")
    p.set_defaults(func=cmd_plot)

    p = subparsers.add_parser(
        "report",
        help="one self-contained HTML page for a run",
        formatter_class=_RAW,
        epilog="examples:\n  uadbench report results/run1\n"
        "  uadbench report results/au --out au.html --n-boot 5000",
    )
    p.add_argument("run", metavar="RUN")
    p.add_argument("--out", metavar="HTML", help="default RUN/report.html")
    p.add_argument(
        "--reference",
        metavar="LABEL",
        help="attack compared with every other one (default uad if it ran, else the first)",
    )
    p.add_argument("--n-boot", type=int, default=2000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--alpha", type=float, default=0.05)
    p.set_defaults(func=cmd_report)
