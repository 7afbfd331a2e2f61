"""Wall time of the listing commands (`uadbench --help`, `ls`, `describe`) against importing
torch, each in a fresh interpreter.

The goal (issue 38): a listing costs well under half a second — it imports no torch
(tests/test_describe.py asserts that) — so it must take less than half of what importing
torch alone takes, measured in the same run. Asserted only with ``UADBENCH_BENCH=1``
(median of 5; wall times on a shared machine are noisy); the normal suite runs each once
and prints the figures. Run:
``UADBENCH_BENCH=1 pytest tests/benchmarks/test_bench_cli.py -s --benchmark-enable``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from bench_helpers import median_time

BENCH = os.environ.get("UADBENCH_BENCH") == "1"
REPO = Path(__file__).resolve().parents[2]
RATIO_GOAL = 0.5  # a listing / importing torch


def _wall(args: list[str], repeats: int) -> float:
    cmd = [sys.executable, *args]
    return median_time(
        lambda: subprocess.run(cmd, check=True, capture_output=True, cwd=REPO), repeats
    )


def test_listing_commands_cost_less_than_half_a_torch_import(benchmark):
    repeats = 5 if BENCH else 1
    torch_s = _wall(["-c", "import torch"], repeats)
    commands = {
        "--help": ["-m", "uadbench", "--help"],
        "ls attacks": ["-m", "uadbench", "ls", "attacks"],
        "ls victims": ["-m", "uadbench", "ls", "victims"],  # weights status, found without torch
        "ls transforms": ["-m", "uadbench", "ls", "transforms"],
        "describe uad": ["-m", "uadbench", "describe", "uad"],
    }
    walls = {name: _wall(args, repeats) for name, args in commands.items()}
    benchmark.pedantic(lambda: _wall(commands["ls attacks"], 1), rounds=1, iterations=1)
    for name, s in walls.items():
        print(f"uadbench {name}: {s:.2f} s; import torch: {torch_s:.2f} s ({s / torch_s:.2f}x)")
    if BENCH:
        for name, s in walls.items():
            assert s < RATIO_GOAL * torch_s, (name, s, torch_s)
