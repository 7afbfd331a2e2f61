"""Regression check: passes on a rerun with another seed, fails on injected regressions,
judges attack strength by damage relative to clean, pairs on common images, fails on
vanished pairs, lists new ones, refuses a baseline of another dataset / prompt protocol /
reference, and applies --margin to the displayed delta."""

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
    assert set(table["quantity"]) == {
        "damage mIoU (clean − attacked)",
        "damage ASR@50 (attacked − clean)",
    }
    assert len(table) == 2 * 2 * 2  # attacks × victims × metrics
    assert table.attrs["family"] == 8
    ok_r, t_r = check_rows(cur, base, what="robustness")
    assert ok_r and len(t_r) == 3 * 2 * 2  # clean counts here
    text = render_check(table)
    for needle in ("sign-flip", "one-sided", "unit of pairing: image", "n = 30", "bonferroni"):
        assert needle in text, text


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
    assert (bad["delta"][bad["metric"] == "miou"] < -30).all()  # damage fell by > 30 points
    assert (bad["current"][bad["metric"] == "miou"].abs() < 1e-9).all()  # no damage left
    assert (bad["bound"] < 0).all()
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


def test_margin_acts_on_the_displayed_delta(runs):
    base, _ = runs
    cur = base.copy()
    cur.loc[cur["attack"] == "uad", "iou"] += 5.0  # damage exactly 5 points lower everywhere
    assert cur["iou"].max() <= 100
    _, table = check_rows(cur, base)
    line = table[(table["attack"] == "uad") & (table["metric"] == "miou")]
    assert line["delta"].to_numpy() == pytest.approx([-5.0, -5.0])
    assert (
        not check_rows(cur, base, margin=4.9)[1].query("metric == 'miou'")["verdict"].eq("ok").all()
    )
    t = check_rows(cur, base, margin=5.1)[1].query("metric == 'miou'")
    assert t["verdict"].eq("ok").all()


def test_victim_drift_is_not_blamed_on_the_attack(runs):
    """The victim got better everywhere (clean and attacked alike, +10 IoU): attack
    strength (damage) is unchanged, so `check` passes; on absolute attacked IoU it would
    have failed. A victim worse everywhere shows in the robustness check only."""
    base, cur = runs
    cur = cur.copy()
    sel = cur["victim"] == "v1"
    cur.loc[sel, "iou"] = cur.loc[sel, "iou"] + 10.0
    assert check_rows(cur, base)[0]
    worse = runs[1].copy()
    sel = worse["victim"] == "v1"
    worse.loc[sel, "iou"] -= 15.0
    assert check_rows(worse, base)[0]  # attack strength unchanged
    ok, table = check_rows(worse, base, what="robustness")
    assert not ok
    # mIoU damage is unchanged by a uniform shift; only the clean line got worse (ASR@50
    # damage may rise: more attacked masks cross the threshold, which is real)
    bad = table[(table["verdict"] == "REGRESSION") & (table["metric"] == "miou")]
    assert set(zip(bad["attack"], bad["victim"])) == {("clean", "v1")}
    # a victim more vulnerable (attacked IoU down, clean unchanged) is a robustness drop
    vuln = runs[1].copy()
    sel = (vuln["victim"] == "v2") & (vuln["attack"] == "uad")
    vuln.loc[sel, "iou"] -= 20.0
    ok, table = check_rows(vuln, base, what="robustness")
    bad = table[table["verdict"] == "REGRESSION"]
    assert not ok and set(zip(bad["attack"], bad["victim"])) == {("uad", "v2")}


def test_pairs_on_common_images_and_names_the_dropped(runs, caplog):
    base, cur = runs
    cur = cur[cur["sample_id"] != "img3"]
    base = base[base["sample_id"] != "img7"]
    ok, table = check_rows(cur, base)
    assert ok
    assert (table["n_images"] == 28).all() and (table["n_dropped"] == 2).all()
    text = render_check(table)
    assert "img3 (baseline only)" in text and "img7 (run only)" in text
    # a regression is still found with one image missing (paired, not a weaker unpaired test)
    bad = cur.copy()
    bad.loc[bad["attack"] == "uad", "iou"] += 8
    assert not check_rows(bad, base)[0]


def test_no_common_images_fails(runs):
    base, _ = runs
    other = simulate_run(7, image_prefix="other")
    ok, table = check_rows(other, base)
    assert not ok and set(table["verdict"]) == {"NO COMMON IMAGES"}


def write(d, rows, identity=None):
    man = {"format": "uadbench-run/1"}
    if identity is not None:
        man["identity"] = identity
    atomic_write_json(d / "manifest.json", man)
    write_shard(d / "rows" / "all.parquet", rows.to_dict("records"))
    return d


IDENT = {
    "dataset": {"name": "d", "hash": "abc"},
    "seed": 0,
    "surrogate": {"name": "s", "hash": "1"},
    "prompts": {"points_per_mask": 5},
}


def test_missing_pairs_fail_new_pairs_are_listed(tmp_path, runs, capsys):
    from uadbench.cli import main

    base, cur = runs
    with pytest.raises(UadbenchError, match="share no"):
        check_rows(cur[cur["victim"] == "v1"], base[base["victim"] == "v2"])
    write(tmp_path / "cur2", cur[~((cur["attack"] == "tap") & (cur["victim"] == "v2"))])
    write(tmp_path / "base2", base)
    args = [str(tmp_path / "cur2"), "--baseline", str(tmp_path / "base2")]
    assert main(["check", *args]) == 1
    out = capsys.readouterr().out
    assert "missing from the run" in out and "MISSING" in out
    assert main(["check", *args, "--allow-missing"]) == 0
    assert "tolerated" in capsys.readouterr().out
    write(tmp_path / "base3", base[base["attack"] != "tap"])
    assert main(["check", str(tmp_path / "cur2"), "--baseline", str(tmp_path / "base3")]) == 0
    out = capsys.readouterr().out
    assert "new (not in baseline)" in out and "1 new pair(s)" in out


def test_refuses_a_baseline_of_another_dataset_prompts_or_reference(tmp_path, runs):
    base, cur = runs
    write(tmp_path / "cur", cur, IDENT | {"seed": 1})  # another seed is fine
    write(tmp_path / "same", base, IDENT)
    assert check(tmp_path / "cur", tmp_path / "same")[0]
    write(tmp_path / "data", base, IDENT | {"dataset": {"name": "d", "hash": "zzz"}})
    with pytest.raises(UadbenchError, match="dataset"):
        check(tmp_path / "cur", tmp_path / "data")
    write(tmp_path / "prm", base, IDENT | {"prompts": {"points_per_mask": 1}})
    with pytest.raises(UadbenchError, match="prompts"):
        check(tmp_path / "cur", tmp_path / "prm")
    write(tmp_path / "ref", base.assign(reference="clean"), IDENT)
    with pytest.raises(UadbenchError, match="reference"):
        check(tmp_path / "cur", tmp_path / "ref")
    with pytest.raises(UadbenchError, match="--what"):
        check(tmp_path / "cur", tmp_path / "same", what="speed")


def test_few_images_warn_that_the_check_cannot_fail():
    base, cur = simulate_run(0, n_img=5), simulate_run(1, n_img=5)
    cur.loc[cur["attack"] == "uad", "iou"] += 30
    ok, table = check_rows(cur, base)
    assert ok  # 2^-5 * 8 lines > alpha: nothing can be significant ...
    assert (table["min_p_adj"] > 0.05).all()
    assert "cannot fail" in render_check(table)  # ... and the output says so
