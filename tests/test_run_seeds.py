"""`uadbench run --seeds`: one run per seed, then the leaderboard over seeds with the
between-seed SD (the table's maths: tests/test_report_leaderboard.py)."""

from __future__ import annotations

from uadbench.cli import main
from uadbench.store.rundir import load_manifest, load_rows


def test_run_with_seeds_makes_one_run_per_seed_and_reports_the_sd(tmp_path, capsys):
    args = ["run", "--attack", "feature-pgd:steps=1", "--victims", "seeded-sam-tiny"]
    args += ["--limit", "1", "--no-progress", "--out", str(tmp_path / "r"), "--seeds", "0,1"]
    assert main(args) == 0
    for seed in (0, 1):
        d = tmp_path / "r" / f"s{seed}"
        assert load_manifest(d)["seed"] == seed
        assert set(load_rows(d)["seed"]) == {seed}
    out = capsys.readouterr().out
    assert "Over seeds 0, 1" in out and "between-seed SD over 2 runs (seeds 0, 1)" in out
    assert " ± " in out


def test_seeds_needs_two_integers(capsys):
    assert main(["run", "--attack", "feature-pgd", "--seeds", "3"]) != 0
    assert "--seeds needs at least two seeds" in capsys.readouterr().err
    assert main(["run", "--attack", "feature-pgd", "--seeds", "a,b"]) != 0
    assert "give integers" in capsys.readouterr().err
