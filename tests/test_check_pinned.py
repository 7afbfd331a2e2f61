"""uadbench.report.check pinned to hand-computed values on tiny row frames: the damage
relative to clean and its orientation per metric, the no-clean fallback, the clean line
of ``--what robustness``, which side is "worse", the margin's sign, the bound's side,
dropped / missing / new bookkeeping, what fails the check, the identity comparison, and
the rendered text. Pure numpy/pandas (no torch): ``scripts/mutants.py --area check``
runs this file with ``--noconftest``, so each mutant costs seconds."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest
from row_helpers import prompt_rows

from uadbench.errors import UadbenchError
from uadbench.report import check as C
from uadbench.report.stats import family_tests
from uadbench.store.schema import COLUMNS

N = 8


def frame(spec: dict[tuple[str, str], dict[str, list[float]]]) -> pd.DataFrame:
    """Rows from {(attack, victim): {image: [iou of each prompt]}}."""
    rows = [
        r for (attack, victim), images in spec.items() for r in prompt_rows(attack, images, victim)
    ]
    return pd.DataFrame(rows, columns=COLUMNS)


def imgs(values, k: int = 2, prefix: str = "i") -> dict[str, list[float]]:
    """Image i gets k prompts of IoU values[i] (a scalar: every image)."""
    vals = np.broadcast_to(np.asarray(values, dtype=float), (N,))
    return {f"{prefix}{i}": [float(v)] * k for i, v in enumerate(vals)}


def runs(clean_b=80.0, adv_b=30.0, clean_c=80.0, adv_c=30.0, victim="v", attack="uad"):
    base = frame({("clean", victim): imgs(clean_b), (attack, victim): imgs(adv_b)})
    cur = frame({("clean", victim): imgs(clean_c), (attack, victim): imgs(adv_c)})
    return cur, base


K = np.arange(1.0, N + 1)  # 1..8: per-image changes with spread (a real, consistent change)


def line(table, metric="miou", attack="uad"):
    t = table[(table["metric"] == metric) & (table["attack"] == attack)]
    assert len(t) == 1
    return t.iloc[0]


def test_damage_relative_to_clean_values_and_orientation():
    # the attack got weaker by K points of damage; the victim's clean mIoU rose by 10
    cur, base = runs(clean_b=80, adv_b=30, clean_c=90, adv_c=40 + K)
    ok, t = C.check_rows(cur, base)
    r = line(t)
    assert r["quantity"] == "damage mIoU (clean − attacked)" and r["worse_if"] == "lower"
    assert r["baseline"] == pytest.approx(50.0)
    assert r["current"] == pytest.approx(50 - K.mean())
    assert r["delta"] == pytest.approx(-K.mean())
    assert r["verdict"] == "REGRESSION" and not ok
    assert r["bound"] < 0 and r["bound"] == pytest.approx(r["bound"])
    assert r["n_images"] == N and r["n_dropped"] == 0 and r["dropped"] == ""
    a = line(t, "asr50")
    assert a["quantity"] == "damage ASR@50 (attacked − clean)" and a["worse_if"] == "lower"
    assert a["baseline"] == pytest.approx(100.0) and a["current"] == pytest.approx(100.0)
    assert a["delta"] == 0 and a["verdict"] == "ok"
    # the same attacked IoUs with the clean drift alone: damage unchanged -> ok
    cur, base = runs(clean_b=80, adv_b=30, clean_c=80 + K, adv_c=30 + K)
    ok, t = C.check_rows(cur, base)
    assert ok and line(t)["delta"] == pytest.approx(0.0)


def test_the_bound_is_the_inverted_one_sided_test_on_the_worse_side():
    cur, base = runs(adv_c=30 + K)  # damage falls by K: delta = -4.5
    ok, t = C.check_rows(cur, base, seed=3)
    r = line(t)
    diffs = [-K, np.zeros(N)]  # miou, asr50 changes (asr: 100 − 100)
    fam = family_tests(diffs, alternative=["less", "less"], null=[0.0, 0.0], seed=3)
    assert r["bound"] == pytest.approx(fam["ci_high"].iloc[0])
    assert r["bound_level"] == pytest.approx(1 - 0.05 / 2)
    assert r["p"] == pytest.approx(fam["p"].iloc[0]) and r["p_adj"] == pytest.approx(
        fam["p_adj"].iloc[0]
    )
    assert r["min_p_adj"] == pytest.approx(fam["min_p_adj"].iloc[0])
    assert r["mde"] == pytest.approx(fam["mde"].iloc[0])
    # the attack got stronger: never a regression of the attack
    cur, base = runs(adv_c=30 - K)
    ok, t = C.check_rows(cur, base)
    assert ok and line(t)["delta"] == pytest.approx(K.mean()) and line(t)["p"] > 0.5


def test_margin_is_on_the_displayed_delta_and_on_the_worse_side():
    cur, base = runs(adv_c=30 + K)  # delta = -4.5, one-sided bound about -2.x
    ok, t = C.check_rows(cur, base, margin=1.0)
    assert not ok
    ok, t = C.check_rows(cur, base, margin=8.0)
    assert ok and line(t)["verdict"] == "ok"
    # the margin shifts the null to -margin: p of "delta < -8" is large
    assert line(t)["p"] > 0.5
    cur2, base2 = runs(adv_c=30 - K)  # the attack got stronger by 4.5 > margin 1: still ok
    assert C.check_rows(cur2, base2, margin=1.0)[0]
    with pytest.raises(UadbenchError, match="--margin -1 must be >= 0"):
        C.check_rows(cur, base, margin=-1)


def test_without_clean_rows_the_attacked_metric_is_used():
    base = frame({("uad", "v"): imgs(30.0)})
    cur = frame({("uad", "v"): imgs(30.0 + K)})  # attacked mIoU rose: weaker
    ok, t = C.check_rows(cur, base)
    r = line(t)
    assert r["quantity"] == "attacked mIoU (no clean rows)" and r["worse_if"] == "higher"
    assert r["baseline"] == pytest.approx(30.0) and r["delta"] == pytest.approx(K.mean())
    assert r["verdict"] == "REGRESSION" and not ok
    assert r["bound"] == pytest.approx(r["bound"]) and 0 < r["bound"] < K.mean()
    a = line(t, "asr50")
    assert a["quantity"] == "attacked ASR@50 (no clean rows)" and a["worse_if"] == "lower"
    assert a["baseline"] == pytest.approx(100.0)
    cur = frame({("uad", "v"): imgs(30.0 - K)})  # stronger: fine
    assert C.check_rows(cur, base)[0]
    # robustness without clean rows: the victim is worse when the attacked mIoU falls
    ok, t = C.check_rows(cur, base, what="robustness")
    assert line(t)["worse_if"] == "lower" and not ok
    assert line(t, "asr50")["worse_if"] == "higher"


def test_robustness_checks_the_clean_line_and_the_damage():
    cur, base = runs(clean_c=80 - K, adv_c=30 - K)  # clean fell, damage unchanged
    ok, t = C.check_rows(cur, base, what="robustness")
    c = line(t, "miou", "clean")
    assert c["quantity"] == "clean mIoU" and c["worse_if"] == "lower"
    assert c["baseline"] == pytest.approx(80.0) and c["delta"] == pytest.approx(-K.mean())
    assert c["verdict"] == "REGRESSION" and not ok
    ca = line(t, "asr50", "clean")
    assert ca["quantity"] == "clean ASR@50" and ca["worse_if"] == "higher"
    u = line(t, "miou", "uad")
    assert u["worse_if"] == "higher" and u["delta"] == pytest.approx(0.0)
    assert u["verdict"] == "ok"
    assert set(t["attack"]) == {"clean", "uad"}
    # the attack check never lists the clean line
    assert set(C.check_rows(cur, base)[1]["attack"]) == {"uad"}
    # damage rose (the victim got less robust): a robustness regression, not an attack one
    cur, base = runs(adv_c=30 - K)
    ok, t = C.check_rows(cur, base, what="robustness")
    assert not ok and line(t)["verdict"] == "REGRESSION"
    with pytest.raises(UadbenchError, match="unknown --what 'x'; choose attack or robustness"):
        C.check_rows(cur, base, what="x")


def test_dropped_missing_new_and_what_fails(caplog):
    cur, base = runs()
    cur = cur[cur["sample_id"] != "i3"]
    base = pd.concat(
        [base, frame({("clean", "v"): {"extra": [90.0]}, ("uad", "v"): {"extra": [10.0]}})]
    )
    with caplog.at_level(logging.WARNING, logger="uadbench.report.check"):
        ok, t = C.check_rows(cur, base)
    r = line(t)
    assert r["n_images"] == N - 1 and r["n_dropped"] == 2
    assert r["dropped"] == "extra (baseline only), i3 (baseline only)"
    assert "check: uad on v: 2 image(s) in only one run, left out" in caplog.text
    assert ok
    cur2 = pd.concat([cur, frame({("clean", "v"): {"nw": [90.0]}, ("uad", "v"): {"nw": [10.0]}})])
    r = line(C.check_rows(cur2, base)[1])
    assert "nw (run only)" in r["dropped"] and r["n_dropped"] == 3
    # a baseline pair missing from the run fails (unless allowed); new pairs are listed
    cur3, base3 = runs()
    base3 = pd.concat([base3, frame({("tap", "v"): imgs(50.0)})])
    cur3 = pd.concat([cur3, frame({("pgd", "v"): imgs(50.0)})])
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="uadbench.report.check"):
        ok, t = C.check_rows(cur3, base3)
    assert not ok and "check: tap on v is in the baseline but not in the current run" in (
        caplog.text
    )
    assert t[t["attack"] == "tap"]["verdict"].tolist() == ["MISSING", "MISSING"]
    assert t[t["attack"] == "pgd"]["verdict"].tolist() == ["new (not in baseline)"] * 2
    assert t[t["attack"] == "tap"]["n_images"].tolist() == [0, 0]
    assert t["dropped"].tolist()[-1] == ""
    ok, t = C.check_rows(cur3, base3, allow_missing=True)
    assert ok and t.attrs["allow_missing"] is True
    assert t.attrs["what"] == "attack" and t.attrs["margin"] == 0.0
    assert list(t.columns) == C.CHECK_COLUMNS
    # no common image: fails, with its own verdict
    cur4 = frame({("clean", "v"): imgs(80.0, prefix="j"), ("uad", "v"): imgs(30.0, prefix="j")})
    ok, t = C.check_rows(cur4, runs()[1], allow_missing=True)
    assert not ok and (t["verdict"] == "NO COMMON IMAGES").all()
    assert t["delta"].isna().all() and t["bound_level"].isna().all()
    with pytest.raises(UadbenchError, match="share no \\(attack, victim\\) pair"):
        C.check_rows(cur, frame({("uad", "w"): imgs(1.0)}))


def test_pairs_and_comparable():
    rows = frame({("clean", "v"): imgs(1.0), ("uad", "v"): imgs(1.0), ("uad", "w"): imgs(1.0)})
    assert C._pairs(rows, "attack") == {("uad", "v"), ("uad", "w")}
    assert C._pairs(rows, "robustness") == {("clean", "v"), ("uad", "v"), ("uad", "w")}
    ident = {"dataset": "A", "prompts": "P", "seed": 0, "surrogate": "s"}
    b = frame({("uad", "v"): imgs(1.0)})
    assert C.comparable({"identity": ident}, {"identity": ident | {"seed": 1}}, b, b) == []
    assert C.comparable({"identity": ident}, {"identity": ident | {"surrogate": "t"}}, b, b) == []
    why = C.comparable({"identity": ident}, {"identity": ident | {"dataset": "B"}}, b, b)
    assert why == ["dataset: baseline 'A', run 'B'"]
    why = C.comparable({"identity": ident}, {"identity": {**ident, "extra": 1}}, b, b)
    assert why == ["extra: baseline None, run 1"]
    assert C.comparable({}, {"identity": ident}, b, b) == []
    why = C.comparable({}, {}, b, b.assign(reference="clean"))
    assert why == ["reference masks: baseline ['gt'], run ['clean']"]
    assert C.comparable({}, {}, b.drop(columns="reference"), b.drop(columns="reference")) == []


def test_render_check_reads_the_numbers():
    cur, base = runs(adv_c=30 + K)
    cur = cur[cur["sample_id"] != "i7"]
    ok, t = C.check_rows(cur, base, margin=0.5)
    t.attrs["note"] = "the surrogate differs"
    text = C.render_check(t)
    lines = text.splitlines()
    assert lines[0].split()[:4] == ["attack", "victim", "quantity", "worse"]
    row = lines[2].split()
    # attack, victim, quantity (4 words), worse if, baseline, current, delta, bound, n, ...
    assert row[:7] == ["uad", "v", "damage", "mIoU", "(clean", "−", "attacked)"]
    want_delta = -np.arange(1.0, N).mean()
    assert row[7:11] == ["lower", "50.00", f"{50 + want_delta:.2f}", f"{want_delta:+.2f}"]
    assert row[11] == "≤" and row[13:15] == ["7", "(-1)"]
    assert row[-1] == "REGRESSION" and row[-2] == f"{line(t)['mde']:.2f}"
    assert np.isfinite(line(t)["mde"])
    asr = lines[3].split()
    assert asr[7:11] == ["lower", "100.00", "100.00", "+0.00"] and asr[-1] == "ok"
    assert "one-sided (towards 'worse if')" in text
    assert (
        "bound: one-sided 97.50% confidence bound of delta (the inverted test); a line is " in text
    )
    assert "the margin (0.5 pp) on the 'worse' side" in text
    assert "smallest attainable adjusted p: 0.016" in text  # 2 · 2^-7
    assert "images left out of uad on v: i7 (baseline only)" in text
    assert text.rstrip().endswith("note: the surrogate differs")
    assert "cannot fail" not in text
    assert C.render_check(t, "csv") == t.to_csv(index=False, lineterminator="\n")
    tex = C.render_check(t, "latex")
    assert r"\begin{tabular}" in tex and "% bound: one-sided" in tex


def test_render_check_signs_infinities_and_missing_lines():
    cur, base = runs(adv_c=30 + K)
    base = pd.concat([base, frame({("tap", "v"): imgs(50.0)})])
    t = C.check_rows(cur, base, what="attack")[1]
    text = C.render_check(t)
    miss = [ln for ln in text.splitlines() if ln.startswith("tap")]
    assert len(miss) == 2 and miss[0].split()[2:4] == ["mIoU", "–"]
    assert miss[1].split()[2:4] == ["ASR@50", "–"] and miss[0].split()[-1] == "MISSING"
    assert miss[0].split()[4:11] == ["–", "–", "–", "–", "0", "–", "–"]
    t2 = t.copy()
    t2.loc[0, ["delta", "bound", "worse_if"]] = [-0.001, -np.inf, "lower"]
    t2.loc[1, ["bound", "worse_if", "mde"]] = [np.inf, "higher", np.inf]
    txt = C.render_check(t2)
    body = txt.splitlines()
    assert "-0.00" not in body[2] and "+0.00" in body[2] and "≤ -inf" in body[2]
    assert "≥ +inf" in body[3] and "none" in body[3]
    # few images: the warning says the check cannot fail
    cur5 = frame({("clean", "v"): imgs(80.0), ("uad", "v"): imgs(30.0)}).query("sample_id < 'i3'")
    base5 = frame({("clean", "v"): imgs(80.0), ("uad", "v"): imgs(40.0)}).query("sample_id < 'i3'")
    t5 = C.check_rows(cur5, base5)[1]
    assert "— this check cannot fail on a regression" in C.render_check(t5)
    # nothing dropped: no "left out" line (even for MISSING lines, whose count is 0)
    assert "images left out" not in text
    empty = t.iloc[0:0].copy()
    empty.attrs = {}
    assert C.render_check(empty).splitlines()[0].split()[0] == "attack"


def test_check_rows_takes_its_options_by_keyword_only():
    cur, base = runs()
    assert C.check_rows(current=cur, baseline=base)[0]
    with pytest.raises(TypeError):
        C.check_rows(cur, base, 0.05)
