"""Regenerate the committed regression baselines in ``results/baselines/``.

Each baseline is one real ``uadbench run`` (the CLI, in-process) whose arguments are
listed in :data:`BASELINES`; its run directory is then stripped to what ``uadbench
check`` and ``uadbench leaderboard`` read (``manifest.json`` and the rows, compacted
into one Parquet file ``rows/baseline.parquet``) and swapped into place. The adversarial
PNG cache, the lock file and per-job shards are not committed.

``tests/test_baselines.py`` imports :data:`BASELINES` (by file path) and reruns the
configuration with another seed: that test is the CI regression gate.

Usage::

    python scripts/make_baselines.py                           # every baseline
    python scripts/make_baselines.py --only embedded-default   # one of them (repeatable)
    python scripts/make_baselines.py --limit 2 --out-root /tmp/bl   # quick dry run
    python scripts/make_baselines.py --only zoo-synthetic --resume  # continue a build
    python scripts/make_baselines.py --only zoo-synthetic --compact # to commit it unfinished

A build runs attack by attack (each with its evaluations), so an interrupted build keeps
whole attacks; ``--compact`` reduces it to manifest and row shards (the adversarial
images are dropped; one shard per evaluation job: zoo-synthetic two-thirds built is 19 MB
in 2400 files, 0.9 MB as tar.xz), which can be carried to a later sitting on any machine
and resumed with ``--resume`` — attacks whose evaluations are all recorded are not
rerun.

Regenerate after retraining the zoo or a deliberate change of an attack's, victim's or
dataset's defaults (``tests/test_baselines.py`` says when the config hashes moved).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

from uadbench.datasets.samples import BUNDLED
from uadbench.zoo import ZOO_NAMES

REPO = Path(__file__).resolve().parent.parent
DEFAULT_ROOT = REPO / "results" / "baselines"

#: What ``--victims all`` selects offline (no official weights anywhere): the tiny zoo
#: plus the untrained ``seeded-sam-tiny``. Pinned so that a machine with SAM weights
#: regenerates the same baseline.
OFFLINE_VICTIMS = ",".join(("seeded-sam-tiny", *ZOO_NAMES))
#: The default surrogate offline (``uadbench.engine.plan.default_surrogate`` without sam-vit-b).
OFFLINE_SURROGATE = "zoo-vit-sam"
#: Every photograph bundled with scikit-image. The default ``samples`` set has only 6:
#: with 6 images the one-sided exact Wilcoxon test of ``uadbench check`` cannot go below
#: p = 1/2**6, so after Holm over 5 victims × 2 metrics no regression, however large,
#: could ever be significant at alpha = 0.05 (10/64 = 0.16). 15 images: 10/2**15.
ALL_BUNDLED = "samples:names=[" + ",".join(BUNDLED) + "]"

#: name → arguments of ``uadbench run`` (without ``--out``). The only table of them.
BASELINES: dict[str, tuple[str, ...]] = {
    # `uadbench run --attack uad --victims all` as it runs offline (attack, victims,
    # surrogate, prompts, seed 0), on all 15 bundled photographs (see ALL_BUNDLED).
    # ~1.2 min on 2 idle cores (the 2026-12 zoo); the CI test reruns it with another seed.
    "embedded-default": (
        "--attack", "uad",
        "--victims", OFFLINE_VICTIMS,
        "--surrogate", OFFLINE_SURROGATE,
        "--dataset", ALL_BUNDLED,
        "--seed", "0",
    ),
    # Every attack on every zoo victim, on held-out synthetic scenes with ground truth:
    # split `test`, data seed 1 (the zoo trains on split `train`; its model cards
    # evaluate on split `test`, seed 0). ~1.5 h on 2 idle cores with the 2026-12 zoo: 130-180 s
    # per attack with its evaluations, attack-sam 9 min, attack-sam-k (400 prompts per
    # image) ~84 s per image, 70 min; not rerun in CI.
    "zoo-synthetic": (
        "--attack", "all",
        "--victims", OFFLINE_VICTIMS,
        "--surrogate", OFFLINE_SURROGATE,
        "--dataset", "synthetic:n=50,seed=1,split=test",
        "--seed", "0",
    ),
}  # fmt: skip

#: The only files a committed baseline keeps (relative to its directory).
MANIFEST = "manifest.json"
ROWS_FILE = "rows/baseline.parquet"


def option(args: tuple[str, ...] | list[str], flag: str) -> str | None:
    """The value following ``flag`` in ``args`` (None if absent)."""
    args = list(args)
    return args[args.index(flag) + 1] if flag in args else None


def with_option(args: tuple[str, ...] | list[str], flag: str, value: str) -> list[str]:
    """``args`` with ``flag``'s value replaced (or ``flag value`` appended)."""
    out = list(args)
    if flag in out:
        out[out.index(flag) + 1] = value
    else:
        out += [flag, value]
    return out


def dir_size(path: Path) -> int:
    """Total size in bytes of the files under ``path``."""
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


def strip_run(run_dir: Path) -> None:
    """Reduce a finished run directory to ``manifest.json`` + ``rows/baseline.parquet``.

    The per-job row shards are merged into one file sorted by (victim, attack, dataset,
    sample, prompt), which compresses far better than hundreds of small shards.
    """
    from uadbench.store.rundir import load_rows, write_shard

    rows = load_rows(run_dir)
    if rows.empty:
        raise SystemExit(f"{run_dir}: the run wrote no rows; nothing to commit")
    order = ["victim", "attack", "attack_hash", "dataset", "sample_id", "prompt_index"]
    rows = rows.sort_values(order, kind="stable").reset_index(drop=True)
    staged = run_dir / ".rows-merged.parquet"
    write_shard(staged, rows.to_dict("records"))
    for child in list(run_dir.iterdir()):
        if child.name in (MANIFEST, staged.name):
            continue
        shutil.rmtree(child) if child.is_dir() else child.unlink()
    (run_dir / ROWS_FILE).parent.mkdir(parents=True)
    staged.rename(run_dir / ROWS_FILE)
    merged = load_rows(run_dir)
    if len(merged) != len(rows):  # pragma: no cover - a store bug
        raise SystemExit(f"{run_dir}: {len(merged)} rows after merging, {len(rows)} before")


def record_provenance(run_dir: Path, name: str, args: list[str], seconds: float) -> None:
    """Add a ``baseline`` entry to the manifest: name, the exact run arguments, wall time."""
    from uadbench.store.rundir import atomic_write_json, load_manifest

    man = load_manifest(run_dir)
    man["baseline"] = {
        "name": name,
        "args": list(args),
        "made_by": "scripts/make_baselines.py",
        "wall_seconds": round(seconds, 1),
    }
    atomic_write_json(run_dir / MANIFEST, man)


def verify(run_dir: Path) -> None:
    """The stripped directory must still serve ``uadbench leaderboard`` and ``check``."""
    from uadbench.cli import main

    if main(["leaderboard", str(run_dir)]) != 0:
        raise SystemExit(f"{run_dir}: `uadbench leaderboard` failed on the stripped baseline")
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()) as out:
        rc = main(["check", str(run_dir), "--baseline", str(run_dir)])
    if rc != 0:
        print(out.getvalue())
        raise SystemExit(f"{run_dir}: `uadbench check` of the baseline against itself failed")


#: a build in progress keeps its wall time here across interrupted sittings
SECONDS_FILE = ".wall-seconds"


def attack_parts(args: list[str]) -> list[list[str]]:
    """The ``uadbench run`` argument lists that build a baseline: one per attack (each
    finishes its attack *and* its evaluations, so an interrupted build keeps whole
    attacks' rows), then the whole table's arguments (which then finds nothing left and
    leaves the manifest exactly as one invocation would). One part when an attack carries
    settings of its own (its label is not its name)."""
    from uadbench import api
    from uadbench.cli import build_parser

    a = build_parser().parse_args(["run", *args])
    spec = api.plan(a.attack, a.victims, a.dataset, a.surrogate, a.seed, a.limit, a.eps)
    names = [atk.name for atk in spec.attacks]
    if len(names) < 2 or any(atk.label != atk.name for atk in spec.attacks):
        return [list(args)]
    return [with_option(args, "--attack", n) for n in names] + [list(args)]


def compact_build(build: Path) -> None:
    """Drop what a build in progress can redo or does not need — adversarial images, lock,
    temp files — and keep its manifest, finished row shards and wall time, so that it can
    be committed and resumed on another machine: attacks whose evaluations are all
    recorded are not rerun (``uadbench.engine.jobs.plan_jobs``)."""
    shutil.rmtree(build / "adv", ignore_errors=True)
    for p in list(build.rglob("*")):
        if p.is_file() and (p.name.endswith(".tmp") or p.name.endswith(".lock")):
            p.unlink()


def make_baseline(
    name: str,
    out_root: Path,
    limit: int | None = None,
    progress: bool = True,
    resume: bool = False,
) -> Path:
    """Run baseline ``name`` into ``out_root/<name>`` (replacing it), strip it, verify it.

    The run is built in ``out_root/.building-<name>``, attack by attack; with ``resume``
    an existing build (e.g. one compacted and committed by an earlier sitting) continues
    where it stopped, otherwise it starts clean."""
    from uadbench.cli import main

    args = list(BASELINES[name])
    if limit is not None:
        args = with_option(args, "--limit", str(limit))
    out_root.mkdir(parents=True, exist_ok=True)
    final = out_root / name
    build = out_root / f".building-{name}"
    seconds_file = build / SECONDS_FILE
    if build.exists() and not resume:  # a previous attempt died: start clean
        shutil.rmtree(build)
    before = float(seconds_file.read_text()) if seconds_file.is_file() else 0.0
    if before:
        print(f"== {name}: resuming {build} ({before / 60:.1f} min spent before)", flush=True)
    t0 = time.perf_counter()
    for part in attack_parts(args):
        cmd = ["run", *part, "--out", str(build)] + ([] if progress else ["--no-progress"])
        print(f"== {name}: uadbench {' '.join(cmd)}", flush=True)
        try:
            rc = main(cmd)
        finally:
            seconds = before + time.perf_counter() - t0
            if build.is_dir():
                seconds_file.write_text(f"{seconds:.1f}\n")
        if rc != 0:
            raise SystemExit(
                f"{name}: `uadbench run` exited {rc}; the partial run is kept in {build} "
                "(see failures.jsonl); nothing was replaced; rerun with --resume to continue"
            )
    strip_run(build)
    record_provenance(build, name, args, seconds)
    verify(build)
    if final.exists():
        shutil.rmtree(final)
    os.replace(build, final)
    size = dir_size(final)
    print(
        f"== {name}: {final} — {size / 1024:.0f} KiB on disk, run wall time {seconds:.1f} s "
        f"({seconds / 60:.1f} min)",
        flush=True,
    )
    if size > 1 << 20:
        print(f"warning: {name} is over 1 MiB; think twice before committing it", flush=True)
    return final


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Regenerate the committed uadbench regression baselines "
        f"({', '.join(BASELINES)}) with the real CLI.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n"
        "  python scripts/make_baselines.py\n"
        "  python scripts/make_baselines.py --only embedded-default\n"
        "  python scripts/make_baselines.py --limit 2 --out-root /tmp/bl   # dry run",
    )
    parser.add_argument(
        "--only",
        action="append",
        choices=list(BASELINES),
        metavar="NAME",
        help=f"make only this baseline (repeatable): {', '.join(BASELINES)}",
    )
    parser.add_argument(
        "--out-root",
        type=Path,
        default=DEFAULT_ROOT,
        help=f"where the baselines go (default: {DEFAULT_ROOT.relative_to(REPO)})",
    )
    parser.add_argument(
        "--limit",
        type=int,
        default=None,
        help="first N samples only: a quick dry run (needs --out-root elsewhere)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue the builds in OUT_ROOT/.building-NAME instead of starting them over",
    )
    parser.add_argument(
        "--compact",
        action="store_true",
        help="only compact the builds in progress (drop adversarial images, lock and temp "
        "files; keep manifest and finished rows) so they can be committed, then resumed",
    )
    args = parser.parse_args(argv)
    if args.compact:
        for name in args.only or list(BASELINES):
            build = args.out_root / f".building-{name}"
            if build.is_dir():
                compact_build(build)
                print(f"compacted {build} ({dir_size(build) / 1024:.0f} KiB)", flush=True)
        return 0
    if args.limit is not None and args.out_root.resolve() == DEFAULT_ROOT.resolve():
        parser.error(
            "--limit makes a truncated baseline: give --out-root outside results/baselines"
        )
    total = time.perf_counter()
    for name in args.only or list(BASELINES):
        make_baseline(
            name,
            args.out_root,
            limit=args.limit,
            progress=not args.no_progress,
            resume=args.resume,
        )
    print(f"all done in {time.perf_counter() - total:.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
