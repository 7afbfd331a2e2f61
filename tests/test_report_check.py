"""Regression check: passes on a rerun with another seed, fails on injected regressions."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from uadbench.errors import UadbenchError
from uadbench.report.check import check, check_rows, render_check
from uadbench.store.rundir import atomic_write_json, write_shard
from uadbench.store.schema import COLUMNS

ATTACK_MEANS = {"clean": 85.0, "uad": 45.0, "tap": 60.0}


def simulate_run(
    seed: int, n_img: int = 30, n_p: int = 24, victims=("v1", "v2"), image_prefix: str = "img"
) -> pd.DataFrame:
    """A run's rows: the images' own difficulty is fixed (seed 0), the run's seed draws
    the attack×image effects and prompt noise (as a rerun with another seed would)."""
    base = np.random.default_rng(0).normal(0, 12, n_img)
    rng = np.random.default_rng(seed)
    rows = []
    for victim in victims:
        for attack, mean in ATTACK_MEANS.items():
            img_eff = rng.normal(0, 6, n_img)
            for i in range(n_img):
                ious = np.clip(mean + base[i] + img_eff[i] + rng.normal(0, 4, n_p), 0, 100)
                for j, x in enumerate(ious):
                    rows.append(
                        {
                            "dataset": "d",
                            "sample_id": f"{image_prefix}{i}",
                            "attack": attack,
                            "attack_name": attack,
                            "attack_hash": "" if attack == "clean" else "h",
                            "eps": 0.0 if attack == "clean" else 8 / 255,
                            "surrogate": "s",
                            "victim": victim,
                            "prompt_index": j,
                            "prompt_kind": "point",
                            "mask_index": j // 8,
                            "x0": 0.0,
                            "y0": 0.0,
                            "x1": math.nan,
                            "y1": math.nan,
                            "reference": "gt",
                            "iou": float(x),
                            "seconds": 0.0,
                            "seed": seed,
                        }
                    )
    return pd.DataFrame(rows, columns=COLUMNS)


@pytest.fixture(scope="module")
def runs():
    return simulate_run(0), simulate_run(1)


def test_rerun_with_another_seed_passes(runs):
    base, cur = runs
    ok, table = check_rows(cur, base)
    assert ok, render_check(table)
    assert set(table["verdict"]) == {"ok"}
    assert set(table["attack"]) == {"uad", "tap"}  # clean rows are not attacks
    assert set(table["test"]) == {"paired wilcoxon"}
    assert len(table) == 2 * 2 * 2  # attacks × victims × metrics
    ok_r, _ = check_rows(cur, base, what="robustness")
    assert ok_r


def test_attack_replaced_by_clean_rows_fails(runs):
    base, cur = runs
    cur = cur.copy()
    uad = cur["attack"] == "uad"
    clean = cur[cur["attack"] == "clean"]
    cur.loc[uad, "iou"] = clean["iou"].to_numpy()  # same (victim, image, prompt) order
    ok, table = check_rows(cur, base)
    assert not ok
    bad = table[table["verdict"] == "REGRESSION"]
    assert set(bad["attack"]) == {"uad"} and set(bad["metric"]) == {"miou", "asr50"}
    assert (bad["delta"][bad["metric"] == "miou"] > 30).all()
    assert (table[table["attack"] == "tap"]["verdict"] == "ok").all()


def test_plus_20_iou_fails_on_one_victim_only(runs):
    base, cur = runs
    cur = cur.copy()
    sel = (cur["attack"] == "tap") & (cur["victim"] == "v2")
    cur.loc[sel, "iou"] = np.minimum(cur.loc[sel, "iou"] + 20, 100)
    ok, table = check_rows(cur, base)
    assert not ok
    bad = table[table["verdict"] == "REGRESSION"]
    assert set(zip(bad["attack"], bad["victim"])) == {("tap", "v2")}
    # a large enough margin tolerates it
    ok_m, _ = check_rows(cur, base, margin=40.0)
    assert ok_m
    # a stronger attack is not a regression
    better = base.copy()
    better.loc[better["attack"] == "uad", "iou"] -= 20
    assert check_rows(better, base)[0]


def test_robustness_check_sees_victims_getting_worse(runs):
    base, cur = runs
    cur = cur.copy()
    sel = (cur["attack"] == "clean") & (cur["victim"] == "v1")
    cur.loc[sel, "iou"] -= 15
    assert check_rows(cur, base)[0]  # attack strength unchanged
    ok, table = check_rows(cur, base, what="robustness")
    assert not ok
    bad = table[table["verdict"] == "REGRESSION"]
    assert set(zip(bad["attack"], bad["victim"])) == {("clean", "v1")}


def test_unpaired_images_use_mann_whitney(runs):
    base, _ = runs
    other = simulate_run(7, image_prefix="other")  # different images, same distribution
    ok, table = check_rows(other, base)
    assert ok and set(table["test"]) == {"mann-whitney"}
    worse = other.copy()
    worse.loc[worse["attack"] == "uad", "iou"] += 20
    ok, table = check_rows(worse, base)
    assert not ok
    assert set(table[table["verdict"] == "REGRESSION"]["attack"]) == {"uad"}


def test_check_on_run_directories_and_missing_pairs(tmp_path, runs):
    base, cur = runs
    for name, rows in (("base", base), ("cur", cur[cur["attack"] != "tap"])):
        d = tmp_path / name
        atomic_write_json(d / "manifest.json", {"format": "uadbench-run/1"})
        write_shard(d / "rows" / "all.parquet", rows.to_dict("records"))
    ok, table = check(tmp_path / "cur", tmp_path / "base")
    assert ok
    assert set(table[table["attack"] == "tap"]["verdict"]) == {"missing"}
    text = render_check(table)
    assert "missing" in text and "uad" in text
    with pytest.raises(UadbenchError, match="--what"):
        check(tmp_path / "cur", tmp_path / "base", what="speed")
    with pytest.raises(UadbenchError, match="share no"):
        check_rows(cur[cur["victim"] == "v1"], base[base["victim"] == "v2"])


def test_strict_check_fails_on_a_missing_pair(tmp_path, runs, capsys):
    from uadbench.cli import main

    base, cur = runs
    for name, rows in (("base", base), ("cur", cur[cur["attack"] != "tap"])):
        d = tmp_path / name
        atomic_write_json(d / "manifest.json", {"format": "uadbench-run/1"})
        write_shard(d / "rows" / "all.parquet", rows.to_dict("records"))
    ok, _ = check(tmp_path / "cur", tmp_path / "base", strict=True)
    assert not ok
    args = [str(tmp_path / "cur"), "--baseline", str(tmp_path / "base")]
    assert main(["check", *args]) == 0
    assert main(["check", *args, "--strict"]) == 1
    out = capsys.readouterr().out
    assert "missing from the run (--strict)" in out and "tap" in out
