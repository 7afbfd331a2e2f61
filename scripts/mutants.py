"""Mutation testing of uadbench's maths with cosmic-ray: `make mutants` (docs/mutants.md).

Per area (a few modules, or named functions of them, and the tests that pin them) this
copies ``uadbench/`` and ``tests/`` into ``.mutants/<area>/``, lists cosmic-ray's mutants
of the area's code, checks that the area's tests pass unmutated, then applies one mutant
at a time to the copy and runs only the area's tests (``pytest -x``, one thread). A
mutant is *killed* when a test fails (or times out), *survives* when all pass.

Mutants run in a seeded random order, so an area stopped by its time budget
(``--budget``) reports an unbiased sample; ``--resume`` continues a stopped session.
Survivors listed in ``scripts/mutants_equivalent.txt`` (equivalent mutants, or accepted
ones, each with its reason) count separately; the report gives the raw kill rate and the
rate over non-equivalent mutants, per module, in ``.mutants/report.md`` (and ``.json``).

    python scripts/mutants.py                        # every area
    python scripts/mutants.py --area eval --area victims --budget 20
    python scripts/mutants.py --area eval --resume   # continue a stopped run
    python scripts/mutants.py --report               # the report of the sessions as they are
    python scripts/mutants.py --area victims --tag before --tests tests/test_zoo.py -k features
                                                     # another test selection, its own session
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / ".mutants"
EQUIVALENT = ROOT / "scripts" / "mutants_equivalent.txt"


@dataclasses.dataclass(frozen=True)
class Area:
    """Modules to mutate (``path`` → function names to keep, or None for the whole module)
    and the test files that should kill their mutants. ``pytest_args``: extra arguments
    (``--noconftest`` where the tests need no torch: a mutant then costs ~0.5 s, not ~3 s)."""

    modules: dict[str, tuple[str, ...] | None]
    tests: tuple[str, ...]
    pytest_args: tuple[str, ...] = ()
    #: module → a ``pytest -k`` expression: the tests that exercise that module
    select: dict[str, str] = dataclasses.field(default_factory=dict)


AREAS: dict[str, Area] = {
    "eval": Area(
        {"uadbench/eval/metrics.py": None, "uadbench/eval/prompts.py": None},
        ("tests/test_prompts_metrics.py", "tests/test_metrics_pinned.py"),
        ("--noconftest",),
    ),
    # The surrogate feature paths: the tap indexing (with positional embedding where the
    # model adds it), early exit, preprocessing of the float input, default taps.
    "victims": Area(
        {
            "uadbench/victims/base.py": ("default_taps",),
            "uadbench/victims/segment_anything.py": (
                "resized_hw",
                "_to_model_input",
                "num_blocks",
                "features",
            ),
            "uadbench/victims/hq.py": ("num_blocks", "features"),
            "uadbench/zoo/models.py": ("run", "num_blocks", "features", "_run_vision"),
        },
        ("tests/test_taps.py",),
        select={
            "uadbench/victims/base.py": "default_taps_by_depth",
            "uadbench/victims/segment_anything.py": "seeded or resized or float_input or positional",
            "uadbench/victims/hq.py": "mobilesam or hq-sam-vit-tiny",
            "uadbench/zoo/models.py": "zoo",
        },
    ),
    "attacks": Area(
        {
            "uadbench/attacks/base.py": None,
            "uadbench/attacks/feature_pgd.py": None,
            "uadbench/attacks/transfer.py": None,
            "uadbench/attacks/attack_sam.py": None,
            "uadbench/attacks/uad.py": None,
        },
        # the fast pinned file (~4 s) and UAD's warp/loss tests (~5 s); test_attacks.py
        # (registry-wide, minutes a run) stays out of the per-mutant run
        ("tests/test_attacks_pinned.py", "tests/test_uad.py"),
    ),
    # expectation over transformation (EOT) in the attacks' base: the draws, the transform
    # applied where the evaluation applies it, the mean gradient, the aligned references
    "eot": Area(
        {
            "uadbench/attacks/base.py": (
                "_check_eot",
                "eot_transforms",
                "loss_grad",
                "eot_apply",
                "eot_reference",
                "eot_draws",
                "moved",
                "_move",
            ),
        },
        ("tests/test_eot.py",),
    ),
    # pure numpy/pandas/scipy: --noconftest keeps torch out (a mutant costs seconds); the
    # pinned file first, since pytest -x stops at the first failure and it kills most
    "stats": Area(
        {"uadbench/report/stats.py": None},
        ("tests/test_stats_pinned.py", "tests/test_report_stats.py"),
        ("--noconftest",),
    ),
    "check": Area(
        {"uadbench/report/check.py": None},
        ("tests/test_check_pinned.py", "tests/test_report_check.py"),
        ("--noconftest",),
    ),
}

# Binary operators are replaced by the arithmetic ones only (and / by //, truncation):
# cosmic-ray's swaps to bit operators (|, &, ^, <<, >>), %, ** and @ multiply the count by
# ~3 and almost all die at once (float operands raise TypeError), so they cost time and say
# nothing about the tests.
_BIN_DROP = re.compile(
    r"ReplaceBinaryOperator_\w+_(BitOr|BitAnd|BitXor|LShift|RShift|Mod|Pow|MatMult)$"
    r"|ReplaceBinaryOperator_(BitOr|BitAnd|BitXor|LShift|RShift|Mod|Pow|MatMult)_"
    r"|ReplaceBinaryOperator_(Add|Sub|Mul)_FloorDiv$"
)


def _keep_operator(name: str) -> bool:
    return not _BIN_DROP.search(name) and "RemoveDecorator" not in name


def _copy_tree(dst: Path) -> None:
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for sub in ("uadbench", "tests"):
        if (dst / sub).exists():
            shutil.rmtree(dst / sub)
        shutil.copytree(ROOT / sub, dst / sub, ignore=ignore)
    shutil.copy2(ROOT / "pyproject.toml", dst / "pyproject.toml")


def _test_command(area: Area, module: str | None = None) -> list[str]:
    select = ["-k", area.select[module]] if module in area.select else []
    return [
        sys.executable,
        "-m",
        "pytest",
        "-x",
        "-q",
        "-p",
        "no:cacheprovider",
        "--benchmark-disable",
        *area.pytest_args,
        *select,
        *[t for t in area.tests if (ROOT / t).is_file()],  # a "before" run lacks new ones
    ]


def _env(copy: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        PYTHONPATH=str(copy),
        PYTHONDONTWRITEBYTECODE="1",
        OMP_NUM_THREADS="1",
        MKL_NUM_THREADS="1",
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
    )
    return env


def _equivalent() -> dict[str, str]:
    """key → reason, from ``scripts/mutants_equivalent.txt`` (``key  # reason`` lines)."""
    out = {}
    if EQUIVALENT.is_file():
        for line in EQUIVALENT.read_text().splitlines():
            if line.strip() and not line.startswith("#"):
                key, _, why = line.rpartition("  # ")  # (a key may hold a code comment)
                out[key.strip()] = why.strip()
    return out


def _changed_lines(diff: str) -> tuple[str, str]:
    old = [ln[1:].strip() for ln in diff.splitlines() if ln.startswith("-") and ln[1:2] != "-"]
    new = [ln[1:].strip() for ln in diff.splitlines() if ln.startswith("+") and ln[1:2] != "+"]
    return " / ".join(old), " / ".join(new)


def mutant_key(spec, diff: str) -> str:
    """A key that survives unrelated edits: module, function, operator, old → new line."""
    old, new = _changed_lines(diff or "")
    op = spec.operator_name.removeprefix("core/")
    return f"{spec.module_path}::{spec.definition_name} {op}: {old} -> {new}"


def run_area(
    name: str,
    area: Area,
    budget_s: float,
    resume: bool,
    seed: int,
    tag: str = "",
    rerun_survivors: bool = False,
) -> None:
    from cosmic_ray.commands.init import _all_work_items
    from cosmic_ray.mutating import mutate_and_test
    from cosmic_ray.work_db import WorkDB, use_db

    session = f"{name}-{tag}" if tag else name
    copy = WORK / session
    copy.mkdir(parents=True, exist_ok=True)
    _copy_tree(copy)
    db_path = WORK / f"{session}.sqlite"
    if not (resume or rerun_survivors) and db_path.exists():
        db_path.unlink()
    env = _env(copy)
    cmd = _test_command(area)

    t0 = time.monotonic()
    clean = subprocess.run(cmd, cwd=copy, env=env, capture_output=True, text=True)
    base_s = time.monotonic() - t0
    if clean.returncode != 0:
        sys.exit(
            f"mutants: area {name}: the tests fail unmutated; fix them first:\n"
            + clean.stdout[-2000:]
        )
    timeout = max(30.0, 10 * base_s)
    print(f"[{name}] unmutated tests pass in {base_s:.1f} s; timeout per mutant {timeout:.0f} s")

    old_cwd = os.getcwd()
    os.chdir(copy)  # cosmic-ray mutates the module paths relative to the working directory
    saved_env = dict(os.environ)
    os.environ.clear()
    os.environ.update(env)
    try:
        with use_db(str(db_path), WorkDB.Mode.create) as db:
            if db.num_work_items == 0:
                items = []
                for mod, funcs in area.modules.items():
                    for item in _all_work_items([Path(mod)], {}):
                        spec = item.mutations[0]
                        if not _keep_operator(spec.operator_name):
                            continue
                        if funcs is not None and spec.definition_name not in funcs:
                            continue
                        items.append(item)
                db.add_work_items(items)
            again = None
            if rerun_survivors:  # run the survivors again (after new tests), keep the kills
                again = _forget_survivors(db_path)
            pending = sorted(
                (w for w in db.pending_work_items if again is None or w.job_id in again),
                key=lambda w: (
                    str(w.mutations[0].module_path),
                    w.mutations[0].operator_name,
                    w.mutations[0].occurrence,
                ),
            )
            random.Random(seed).shuffle(pending)
            total = db.num_work_items
            print(
                f"[{name}] {total} mutants, {len(pending)} to run, budget {budget_s / 60:.0f} min"
            )
            start = time.monotonic()
            for k, item in enumerate(pending, 1):
                if time.monotonic() - start > budget_s:
                    print(f"[{name}] budget reached: {len(pending) - k + 1} mutants not run")
                    break
                mod = str(item.mutations[0].module_path)
                result = mutate_and_test(
                    item.mutations, shlex.join(_test_command(area, mod)), timeout
                )
                db.set_result(item.job_id, result)
                if k % 10 == 0:
                    el = time.monotonic() - start
                    print(f"[{name}] {k}/{len(pending)} in {el:.0f} s", flush=True)
    finally:
        os.chdir(old_cwd)
        os.environ.clear()
        os.environ.update(saved_env)


def _forget_survivors(db_path: Path) -> set[str]:
    """Forget the survivors' results; their job ids (only they run again, not the mutants
    a capped session never ran)."""
    import sqlite3

    con = sqlite3.connect(db_path)
    with con:
        ids = {
            r[0]
            for r in con.execute("SELECT job_id FROM work_results WHERE test_outcome = 'SURVIVED'")
        }
        con.execute("DELETE FROM work_results WHERE test_outcome = 'SURVIVED'")
    con.close()
    print(f"[{db_path.stem}] {len(ids)} survivors to run again")
    return ids


def collect(names: list[str], tag: str = "") -> dict:
    """Per module counts and survivors of the sessions in ``.mutants/``."""
    from cosmic_ray.work_db import WorkDB, use_db
    from cosmic_ray.work_item import TestOutcome

    equivalent = _equivalent()
    report: dict = {}
    for name in names:
        session = f"{name}-{tag}" if tag else name
        db_path = WORK / f"{session}.sqlite"
        if not db_path.exists():
            continue
        with use_db(str(db_path), WorkDB.Mode.open) as db:
            results = dict(db.results)
            mods: dict = {}
            for item in db.work_items:
                spec = item.mutations[0]
                m = mods.setdefault(
                    str(spec.module_path),
                    dict(mutants=0, killed=0, survived=0, equivalent=0, not_run=0, errors=0),
                )
                m["mutants"] += 1
                r = results.get(item.job_id)
                if r is None:
                    m["not_run"] += 1
                elif r.test_outcome == TestOutcome.KILLED:
                    m["killed"] += 1
                elif r.test_outcome == TestOutcome.SURVIVED:
                    key = mutant_key(spec, r.diff)
                    if key in equivalent:
                        m["equivalent"] += 1
                    else:
                        m["survived"] += 1
                        m.setdefault("survivors", []).append(key)
                else:
                    m["errors"] += 1
            report[session] = mods
    return report


def write_report(report: dict, tag: str = "") -> str:
    lines = [
        "# Mutation testing report (scripts/mutants.py)",
        "",
        "kill rate = killed / (killed + surviving non-equivalent); timeouts count as killed.",
        "",
        "| area | module | mutants | run | killed | survived | equivalent | kill rate |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for area, mods in report.items():
        for mod, m in mods.items():
            run = m["mutants"] - m["not_run"]
            den = m["killed"] + m["survived"]
            rate = f"{100 * m['killed'] / den:.1f}%" if den else "–"
            lines.append(
                f"| {area} | {mod} | {m['mutants']} | {run} | {m['killed']} | "
                f"{m['survived']} | {m['equivalent']} | {rate} |"
            )
    lines += ["", "## Surviving mutants (not listed as equivalent)", ""]
    for mods in report.values():
        for m in mods.values():
            for key in m.get("survivors", []):
                lines.append(f"- `{key}`")
    text = "\n".join(lines) + "\n"
    WORK.mkdir(exist_ok=True)
    stem = f"report-{tag}" if tag else "report"
    (WORK / f"{stem}.md").write_text(text)
    (WORK / f"{stem}.json").write_text(json.dumps(report, indent=1))
    return text


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--area", action="append", choices=sorted(AREAS), help="default: all")
    ap.add_argument("--budget", type=float, default=30.0, help="minutes per area (default 30)")
    ap.add_argument("--resume", action="store_true", help="keep earlier results, run the rest")
    ap.add_argument("--report", action="store_true", help="only print the report")
    ap.add_argument(
        "--rerun-survivors",
        action="store_true",
        help="keep the killed mutants of the last session, run the survivors again",
    )
    ap.add_argument("--seed", type=int, default=0, help="seed of the mutants' order")
    ap.add_argument("--tests", nargs="+", help="test files instead of the area's (one area)")
    ap.add_argument("-k", dest="select", help="pytest -k expression instead of the area's")
    ap.add_argument("--tag", default="", help="session name suffix (e.g. before)")
    args = ap.parse_args(argv)
    try:
        import cosmic_ray  # noqa: F401
    except ImportError:
        sys.exit("mutants: needs cosmic-ray: pip install -e '.[dev]'")
    names = args.area or list(AREAS)
    areas = {n: AREAS[n] for n in names}
    if args.tests or args.select:
        if len(names) != 1:
            sys.exit("mutants: --tests / -k need exactly one --area")
        a = areas[names[0]]
        areas[names[0]] = dataclasses.replace(
            a,
            tests=tuple(args.tests or a.tests),
            select={m: args.select for m in a.modules} if args.select else a.select,
        )
    if not args.report:
        for name, area in areas.items():
            run_area(
                name,
                area,
                args.budget * 60,
                args.resume,
                args.seed,
                args.tag,
                args.rerun_survivors,
            )
    print(write_report(collect(names, args.tag), args.tag))


if __name__ == "__main__":
    main()
