"""The ``uadbench`` command: parses arguments and calls :mod:`uadbench.api`."""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import logging
import os
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

from .errors import UadbenchError

RUN_EPILOG = """examples:
  uadbench run --attack uad --victims all
  uadbench run --attack uad,aa,tap --victims sam-vit-b,sam-vit-l --dataset sa1b:root=/data/sa_000000 --limit 100
  uadbench run --attack uad:deform_epochs=10,warp_size=2 --victims all --out results/ablation
  uadbench run --attack all --victims all --eps 4,8,12,16       # one leaderboard row per budget
rerunning a command (or any command with the same --out) resumes the run: finished jobs are skipped."""

LS_EPILOG = """examples:
  uadbench ls attacks
  uadbench ls attacks -v         # with every attack's options (defaults, units, meaning)
  uadbench ls victims            # shows whether each victim's weights were found, and where
  uadbench ls victims 'sam-*'"""

DESCRIBE_EPILOG = """examples:
  uadbench describe uad          # UAD's options: what --attack uad:KEY=VALUE can set
  uadbench describe sam-vit-b
  uadbench describe sa1b
Options are read from the plugin's source (nothing is imported), third-party plugins too."""


def _add_run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--attack",
        "--attacks",
        dest="attack",
        default="feature-pgd",
        help="attack spec(s): NAME[:k=v,...][,NAME...] or 'all' (default: feature-pgd)",
    )
    p.add_argument(
        "--victims",
        "--victim",
        dest="victims",
        default="all",
        help="victim spec(s) or 'all' = every victim whose weights are present (default: all)",
    )
    p.add_argument(
        "--dataset", default="samples", help="dataset spec NAME[:k=v,...] (default: samples)"
    )
    _add_transforms_arg(p)
    p.add_argument(
        "--surrogate",
        default=None,
        help="victim used by the attacks (default: sam-vit-b if "
        "its weights are here, else the embedded default)",
    )
    p.add_argument("--limit", type=int, default=None, help="first N samples of the dataset")
    p.add_argument(
        "--out",
        default=None,
        help="run directory (default: results/<dataset>-<surrogate>-s<seed>-<hash>)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--seeds",
        default=None,
        help="several seeds, e.g. 0,1,2: one run per seed (OUT/s<seed> with --out), then "
        "their leaderboard with the between-seed SD",
    )
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    p.add_argument("--dtype", default="float32", help="model dtype: float32, bfloat16, float16")
    p.add_argument("--eps", default=None, help="budget sweep in 1/255 units, e.g. 4,8,12,16")
    p.add_argument("--batch-size", type=int, default=1, help="images per attack step")
    p.add_argument(
        "--strict", action="store_true", help="with --victims all: fail if any victim lacks weights"
    )
    p.add_argument(
        "--resume", action="store_true", help="accepted for clarity; rerunning always resumes"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument(
        "--retry-failed", action="store_true", help="rerun only the jobs in failures.jsonl"
    )
    p.add_argument(
        "--executor", default="local", choices=["local", "ray"], help="local (default) or ray"
    )
    p.add_argument("--ray-address", default=None, help="with --executor ray: join this cluster")
    p.add_argument(
        "--gpus-per-model",
        type=float,
        default=None,
        help="with --executor ray: GPUs per model actor",
    )
    p.add_argument("--format", default="terminal", help="format of the final leaderboard")
    p.add_argument(
        "--protocol",
        default="uadbench",
        choices=["uadbench", "reference"],
        help="uadbench (default) or reference: the reference implementation's behaviours, "
        "to reproduce the paper (docs/reference-differences.md)",
    )


def _add_transforms_arg(p: argparse.ArgumentParser, default: str | None = "identity") -> None:
    p.add_argument(
        "--transforms",
        "--transform",
        dest="transforms",
        default=default,
        help="what each victim sees the clean and adversarial images through, e.g. "
        "identity,jpeg:q=75,jpeg:q=50: one evaluation per transform, adversarial images made "
        "once (default: identity; `uadbench ls transforms`, docs/transforms.md)",
    )


def cmd_run(args: argparse.Namespace) -> int:
    if getattr(args, "seeds", None):
        return _run_seeds(args)
    return _run_one(args, args.seed, args.out)


def _run_seeds(args: argparse.Namespace) -> int:
    """``run --seeds 0,1,2``: one run per seed, then the leaderboard over the seeds."""
    from .errors import ConfigError
    from .report.leaderboard import render, seeds_table

    try:
        seeds = list(dict.fromkeys(int(x) for x in args.seeds.split(",") if x.strip()))
    except ValueError:
        raise ConfigError(f"--seeds {args.seeds!r}: give integers, e.g. --seeds 0,1,2") from None
    if len(seeds) < 2:
        raise ConfigError("--seeds needs at least two seeds (one seed: --seed)")
    dirs, code = [], 0
    for seed in seeds:
        out = str(Path(args.out) / f"s{seed}") if args.out else None
        code = max(code, _run_one(args, seed, out, dirs))
    print(render(seeds_table(dirs), args.format, title="Over seeds " + ", ".join(map(str, seeds))))
    return code


def _run_one(args: argparse.Namespace, seed: int, out: str | None, dirs: list | None = None) -> int:
    from . import api
    from .report.leaderboard import FORMATS

    if args.format not in FORMATS:  # checked before any job, not after the run
        raise UadbenchError(f"--format {args.format!r}: choose one of {', '.join(FORMATS)}")
    res = api.run(
        attacks=args.attack,
        victims=args.victims,
        dataset=args.dataset,
        surrogate=args.surrogate,
        seed=seed,
        limit=args.limit,
        out=out,
        device=args.device,
        dtype=args.dtype,
        eps=args.eps,
        batch_size=args.batch_size,
        strict=args.strict,
        progress=not args.no_progress,
        executor=args.executor,
        retry_failed=args.retry_failed,
        executor_options=_executor_options(args),
        protocol=args.protocol,
        transforms=args.transforms,
    )
    if dirs is not None:
        dirs.append(res.run_dir)
    return _finish(res, args)


def _executor_options(args: argparse.Namespace) -> dict:
    if args.executor != "ray":
        if args.ray_address or args.gpus_per_model is not None:
            from .errors import ConfigError

            raise ConfigError("--ray-address and --gpus-per-model go with --executor ray")
        return {}
    return {"address": args.ray_address, "gpus_per_model": args.gpus_per_model}


def _finish(res, args) -> int:
    from . import api

    spec = res.spec
    for name, reason in spec.skipped_victims:
        print(f"skipped victim {name}: {reason}", file=sys.stderr)
    notes = [
        f"  {v.label}: {v.cls.note}"
        for v in [*spec.victims, spec.surrogate]
        if getattr(v.cls, "note", "")
    ]
    print(api.leaderboard(res.run_dir, fmt=args.format))
    sur = spec.surrogate
    if any(v.key == sur.key for v in spec.victims):
        print(f"surrogate: {sur.label} (its column is white-box; the others measure transfer)")
    else:
        print(f"surrogate: {sur.label} (not a victim here: every column measures transfer)")
    if notes:
        print("note — models labelled as not trained:\n" + "\n".join(dict.fromkeys(notes)))
    print(f"run directory: {res.run_dir}")
    print(res.summary.line())
    if res.summary.failures:
        print(
            f"{len(res.summary.failures)} job(s) failed; see {res.run_dir / 'failures.jsonl'}; "
            "rerun the same command to retry them",
            file=sys.stderr,
        )
        return 1
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from . import api

    res = api.evaluate(
        args.run_dir,
        args.victims,
        device=args.device,
        progress=not args.no_progress,
        strict=args.strict,
        transforms=args.transforms,
    )
    return _finish(res, args)


def _registries() -> dict:
    from .attacks import ATTACKS
    from .datasets import DATASETS
    from .transforms import TRANSFORMS
    from .victims import VICTIMS

    return {"attack": ATTACKS, "victim": VICTIMS, "dataset": DATASETS, "transform": TRANSFORMS}


def cmd_describe(args: argparse.Namespace) -> int:
    from .describe import describe, format_description
    from .errors import UnknownNameError

    regs = _registries()
    kinds = [args.kind] if args.kind else list(regs)
    found = [k for k in kinds if args.name in regs[k]]
    if not found:
        names = sorted({n for k in kinds for n in regs[k].names()})
        what = args.kind or "plugin"
        raise UnknownNameError(what, args.name, names)
    for i, kind in enumerate(found):
        if i:
            print()
        print(format_description(describe(regs[kind], args.name)))
    return 0


def _ls_options(reg, names: list[str]) -> int:
    """``ls -v``: every listed plugin's description with its options."""
    from .describe import describe, format_description

    broken = 0
    for i, name in enumerate(names):
        if i:
            print()
        try:
            print(format_description(describe(reg, name)))
        except UadbenchError as exc:  # one broken plugin does not hide the others
            broken += 1
            print(f"{reg.kind} {name}\n  {exc}")
    return 1 if broken else 0


def cmd_ls(args: argparse.Namespace) -> int:
    from tabulate import tabulate

    if args.what == "victims" and not args.ls_verbose:
        return _ls_victims(args.pattern)
    reg = _registries()[args.what[:-1]]
    if args.ls_verbose:
        return _ls_options(reg, reg.names(args.pattern))
    rows = []
    for e in reg.entries():
        if args.pattern and e.name not in reg.names(args.pattern):
            continue
        desc = e.info.get("summary", "") + (
            f" [plugin: {e.source}]" if e.source != "builtin" else ""
        )
        rows.append([e.name, ", ".join(e.aliases), desc])
    print(tabulate(rows, headers=["name", "aliases", "description"], tablefmt="simple"))
    return 0


def _ls_victims(pattern: str | None) -> int:
    """Every victim (and hf:<id> model in the local HF cache): weights found, and where."""
    from tabulate import tabulate

    from .victims import VICTIMS
    from .victims.status import list_status

    rows = []
    for name, st in list_status(pattern):
        e = VICTIMS.entry(name)
        desc = e.info.get("summary", "") + (
            f" [plugin: {e.source}]" if e.source != "builtin" else ""
        )
        where = (
            st.where
            if st.found
            else (st.detail if st.detail.startswith("needs ") else f"looked in {st.detail}")
        )
        rows.append([name, "found" if st.found else "missing", where, desc])
    rows.append(
        [
            "hf:<hub id or path>",
            "",
            "local Hugging Face cache or a directory",
            VICTIMS.entry("hf:x").info.get("summary", ""),
        ]
    )
    print(
        tabulate(
            rows,
            headers=["name", "weights", "where", "description"],
            tablefmt="simple",
            maxcolwidths=[None, None, 60, 50],
        )
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="uadbench",
        description="Benchmark adversarial attacks (UAD, Attack-SAM, feature PGD, ...) against promptable "
        "segmentation models (the Segment Anything family).",
        epilog="start with:  uadbench run --attack uad --victims all",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"uadbench {__version__}")
    parser.add_argument(
        "-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser(
        "run",
        help="attack, evaluate and store a benchmark run",
        epilog=RUN_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_run_args(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser(
        "eval",
        help="add victims or transforms to an existing run without re-attacking",
        epilog="examples:\n  uadbench eval results/my-run --victims sam-vit-h\n"
        "  uadbench eval results/my-run --transforms jpeg:q=75,jpeg:q=50",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("run_dir")
    p.add_argument("--victims", default=None, help="victims to add (default: the run's)")
    _add_transforms_arg(p, default=None)
    p.add_argument("--device", default="cpu")
    p.add_argument("--strict", action="store_true")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--format", default="terminal")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser(
        "ls",
        help="list attacks, victims, datasets or transforms",
        epilog=LS_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("what", choices=["attacks", "victims", "datasets", "transforms"])
    p.add_argument("pattern", nargs="?", default=None, help="shell wildcard, e.g. 'sam-*'")
    p.add_argument(
        "-v",
        "--verbose",
        dest="ls_verbose",
        action="store_true",
        help="also each one's options: defaults, units and meaning (as `describe`)",
    )
    p.set_defaults(func=cmd_ls)

    p = sub.add_parser(
        "describe",
        help="a plugin's options: type, default, unit and meaning",
        epilog=DESCRIBE_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("name", help="attack, victim, dataset or transform name (or alias)")
    p.add_argument(
        "--kind",
        choices=["attack", "victim", "dataset", "transform"],
        default=None,
        help="which registry, when a name is in more than one",
    )
    p.set_defaults(func=cmd_describe)

    for module, fn in (
        ("uadbench.report.cli", "add_report_commands"),
        ("uadbench.victims.download", "add_download_command"),
        ("uadbench.zoo.cli", "add_zoo_commands"),
    ):
        try:
            found = importlib.util.find_spec(module) is not None
        except ModuleNotFoundError:
            found = False
        if not found:  # that part of the tool is not installed in this build
            continue
        getattr(importlib.import_module(module), fn)(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return run_command(args)


def run_command(args: argparse.Namespace) -> int:
    """Run ``args.func(args)`` as a command: a UadbenchError becomes a one-line error (exit
    2), Ctrl-C or SIGTERM an "interrupted" line (exit 130) saying what was kept."""
    with _sigterm_as_interrupt():
        try:
            return int(args.func(args) or 0)
        except UadbenchError as exc:
            print(f"uadbench: error: {exc}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            hint = getattr(args, "on_interrupt", INTERRUPTED)
            print(f"uadbench: interrupted; {hint}", file=sys.stderr)
            return 130
        except BrokenPipeError:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 1


#: what an interrupted command keeps (commands with other state set ``on_interrupt``)
INTERRUPTED = "finished jobs are saved — rerun the same command to resume"


def _sigterm(signum, frame):
    raise KeyboardInterrupt


@contextlib.contextmanager
def _sigterm_as_interrupt():
    """While a command runs, SIGTERM (``kill``, ``timeout``, a batch scheduler's preemption,
    ``docker stop``) stops it the way Ctrl-C does — finished work saved, exit code 130 —
    instead of killing it mid-write. Signals can only be set from the main thread."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)


if __name__ == "__main__":
    sys.exit(main())
