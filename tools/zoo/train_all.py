"""Retrain the whole tiny zoo with the shipped recipes, teachers before their students.

Each model is one ``python -m tools.zoo train NAME`` (a subprocess with its recipe's torch
threads: two for the teacher, one for each student); models whose teacher is done run
side by side, ``--jobs`` at a time (default 2: the students of zoo-vit-sam train in
parallel on a 2-core machine). A student is distilled
from the teacher just written to ``--out``, not from the shipped file. Every run saves
its training state, so rerunning with ``--resume`` after an interruption continues where
each model stopped (finished models are skipped).

Usage::

    make zoo                                              # into uadbench/zoo (replaces the shipped zoo)
    python -m tools.zoo.train_all --out /tmp/zoo --only zoo-hf-sam --resume
    python -m tools.zoo.train_all -- --group-loss 0       # extra flags for every `zoo train`

(from the repository root: ``tools`` is a package of the source tree, not installed).

After replacing the shipped weights, regenerate the baselines (``make baselines``): the
test suite compares the weights digest the baselines were made with.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path

from uadbench.zoo import ZOO_NAMES
from uadbench.zoo.models import ZOO_DIR

from .train import RECIPES, has_progress

#: the repository root: the trainings run ``python -m tools.zoo`` from there
REPO = Path(__file__).resolve().parents[2]


def has_state(out: Path, name: str) -> bool:
    """``name`` has a training state in ``out`` that ``--resume`` continues (full or compact),
    or a round of a recipe in rounds (finished or not)."""
    return has_progress(out, name)


def command(name: str, out: Path, resume: bool, extra: list[str]) -> list[str]:
    cmd = [sys.executable, "-m", "tools.zoo", "train", name, "--out", str(out)]
    teacher = RECIPES[name].teacher
    if teacher:
        cmd += ["--teacher-checkpoint", str(out / f"{teacher}.safetensors")]
    if resume and has_state(out, name):
        cmd.append("--resume")
    return cmd + extra


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--out",
        type=Path,
        default=None,
        help="directory for weights and cards (default: uadbench/zoo)",
    )
    ap.add_argument("--only", action="append", choices=ZOO_NAMES, help="train only these")
    ap.add_argument("--jobs", type=int, default=2, help="trainings at a time (default 2)")
    ap.add_argument("--resume", action="store_true", help="continue interrupted trainings")
    ap.add_argument("extra", nargs="*", help="flags passed to every `python -m tools.zoo train`")
    args = ap.parse_args(argv)
    todo = list(args.only or ZOO_NAMES)
    out: Path = args.out or ZOO_DIR
    out.mkdir(parents=True, exist_ok=True)
    if args.resume:  # a model with weights and no leftover state finished earlier
        todo = [n for n in todo if not (out / f"{n}.safetensors").is_file() or has_state(out, n)]
    for n in todo:
        t = RECIPES[n].teacher
        if t and t not in todo and not (out / f"{t}.safetensors").is_file():
            ap.error(f"{n} is distilled from {t}, which is neither in {out} nor being trained")
    done: set[str] = set()
    running: dict[Future, str] = {}
    logs = {n: out / f"{n}.train.log" for n in todo}

    def run(name: str) -> int:
        with open(logs[name], "a") as log:
            cmd = command(name, out, args.resume, args.extra)
            log.write(f"$ {' '.join(cmd)}\n")
            log.flush()
            return subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=REPO).returncode

    def is_ready(name: str) -> bool:  # its teacher (if any) is not still to be trained
        t = RECIPES[name].teacher
        return t not in todo and t not in running.values()

    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        while todo or running:
            ready = [n for n in todo if is_ready(n)]
            for n in ready[: max(0, args.jobs - len(running))]:
                todo.remove(n)
                running[pool.submit(run, n)] = n
                print(f"training {n} (log: {logs[n]})", flush=True)
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for f in finished:
                n = running.pop(f)
                rc = f.result()
                minutes = (time.perf_counter() - t0) / 60
                if rc != 0:
                    print(f"{n} failed (exit {rc}); see {logs[n]}", file=sys.stderr)
                    return rc
                done.add(n)
                print(f"{n} done ({minutes:.1f} min since start)", flush=True)
    print(
        f"wrote {', '.join(sorted(done))} to {out}; now `make baselines` if that is the shipped zoo"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
