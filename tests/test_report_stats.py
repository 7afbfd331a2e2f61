"""Significance tests: the sign-flip test and its interval against brute force, agreement
of direction / interval / p, compare's pairing and orientation, small-n honesty, the
family, and refusal of per-prompt pairing on image-paired runs. Calibration by
simulation: tests/test_stats_calibration.py."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd
import pytest

from uadbench.errors import UadbenchError
from uadbench.report.stats import (
    compare,
    compare_pairs,
    family_tests,
    holm,
    render_compare,
    sign_flip,
    signed_rank_p,
)
from uadbench.store.schema import COLUMNS


def brute_p(d: np.ndarray, delta: float = 0.0) -> tuple[float, float]:
    """(p_greater, p_less) of the mean of d − delta by listing every sign pattern."""
    e = np.asarray(d, dtype=float) - delta
    obs = e.mean()
    means = [np.mean(np.array(s) * e) for s in itertools.product((1, -1), repeat=e.size)]
    means = np.array(means)
    return float(np.mean(means >= obs - 1e-12)), float(np.mean(means <= obs + 1e-12))


def test_sign_flip_is_exact_and_its_interval_is_the_inverted_test():
    d = np.array([3.0, 1.0, 4.0, -1.0, 5.0, 9.0, 2.0])
    f = sign_flip(d)
    assert f.exact and f.draws == 2**7 and f.estimate == pytest.approx(d.mean())
    for delta in (-2.0, 0.0, 1.5, 3.0, 6.0):
        g, lo = brute_p(d, delta)
        assert f.p_greater(delta) == pytest.approx(g)
        assert f.p_less(delta) == pytest.approx(lo)
    # d = [1, 2, 3]: only the identity reaches the observed mean -> 1/8
    assert sign_flip(np.array([1.0, 2.0, 3.0])).p_greater() == pytest.approx(1 / 8)
    # the interval: every delta inside is kept by the two one-sided tests, just outside is not
    a = 0.1
    lo, hi = f.lower(a / 2), f.upper(a / 2)
    grid = np.linspace(lo - 3, hi + 3, 601)
    kept = [min(brute_p(d, x)) > a / 2 for x in grid]
    inside = (grid >= lo) & (grid <= hi)
    assert np.array_equal(np.array(kept), inside)


def test_direction_interval_and_p_always_agree():
    rng = np.random.default_rng(1)
    for it in range(150):
        diffs = []
        for _ in range(int(rng.integers(1, 5))):
            n = int(rng.integers(2, 40))
            d = rng.normal(rng.normal(0, 0.6), 1, n)
            diffs.append(np.round(d) if rng.random() < 0.3 else d)  # ties and zeros too
        for corr in ("bonferroni", "holm"):
            t = family_tests(diffs, correction=corr, seed=it)
            for r in t.itertuples():
                assert r.ci_low <= r.estimate <= r.ci_high
                assert r.significant == (not r.ci_low <= 0 <= r.ci_high), r
                assert r.p_adj >= r.p


def test_monte_carlo_beyond_exact_is_seeded_and_close_to_exact_reasoning():
    rng = np.random.default_rng(2)
    d = rng.normal(0.3, 1, 40)
    a = family_tests([d], seed=5)
    b = family_tests([d], seed=5)
    c = family_tests([d], seed=6)
    assert a.equals(b) and a.attrs["draws"] >= 9999
    assert abs(a["p"][0] - c["p"][0]) < 0.02  # Monte Carlo error of ~10^4 draws
    # large-sample check: the permutation p is close to the t-test's
    from scipy import stats as sps

    assert a["p"][0] == pytest.approx(sps.ttest_1samp(d, 0).pvalue, abs=0.02)


def test_small_n_honesty_smallest_p_mde_and_warning():
    # 6 images, a huge effect, a family of 10: 2 * 2^-6 * 10 = 0.3125 > alpha
    rng = np.random.default_rng(3)
    diffs = [rng.normal(70, 5, 6) for _ in range(10)]
    t = family_tests(diffs)
    assert t["min_p_adj"].tolist() == pytest.approx([0.3125] * 10)
    assert not t["significant"].any()
    assert np.isinf(t["mde"]).all()
    # with 12 images it can be significant, and the MDE is finite and plausible
    t = family_tests([rng.normal(70, 5, 12) for _ in range(10)])
    assert t["min_p_adj"].iloc[0] == pytest.approx(10 * 2 * 2.0**-12)
    assert t["significant"].all() and np.isfinite(t["mde"]).all()
    assert (t["mde"] < 20).all() and (t["mde"] > 2).all()


def test_tost_equivalence():
    rng = np.random.default_rng(4)
    d = rng.normal(0.1, 0.5, 40)
    t = family_tests([d, d + 5], equivalence=1.0)
    assert t["equivalent"].tolist() == [True, False]
    t = family_tests([d], equivalence=0.01)
    assert not t["equivalent"][0]


def _rows(attack: str, per_image: dict[str, list[float]], victim: str = "v") -> list[dict]:
    out = []
    for sid, ious in per_image.items():
        for j, x in enumerate(ious):
            out.append(
                {
                    "dataset": "d",
                    "sample_id": sid,
                    "attack": attack,
                    "attack_name": attack,
                    "attack_hash": "h",
                    "eps": 8 / 255,
                    "surrogate": "s",
                    "victim": victim,
                    "prompt_index": j,
                    "prompt_kind": "point",
                    "mask_index": 0,
                    "x0": 0.0,
                    "y0": 0.0,
                    "x1": math.nan,
                    "y1": math.nan,
                    "reference": "gt",
                    "iou": x,
                    "seconds": 0.0,
                    "seed": 0,
                }
            )
    return out


def test_compare_pairs_images_and_orients_delta():
    rng = np.random.default_rng(5)
    imgs_a = {f"i{k}": list(rng.uniform(40, 90, rng.integers(2, 9))) for k in range(25)}
    imgs_b = {k: [x - 15 for x in v[: max(1, len(v) - 1)]] for k, v in imgs_a.items()}  # b stronger
    imgs_b["only_b"] = [0.0] * 5  # unpaired image: left out
    rows = pd.DataFrame(_rows("a", imgs_a) + _rows("b", imgs_b), columns=COLUMNS)
    t = compare(rows, "a", "b", seed=0).set_index("metric")
    # the estimand: mean over the 25 paired images of per-image means (not prompt-weighted)
    ma = np.mean([np.mean(v) for v in imgs_a.values()])
    mb = np.mean([np.mean(imgs_b[k]) for k in imgs_a])
    assert t.loc["miou", "n_images"] == 25
    assert t.loc["miou", "value_a"] == pytest.approx(ma)
    assert t.loc["miou", "value_b"] == pytest.approx(mb)
    assert t.loc["miou", "delta"] == pytest.approx(mb - ma)  # < 0: b stronger
    assert t.loc["miou", "delta"] < 0 and t.loc["miou", "ci_high"] < 0
    assert t.loc["miou", "stronger"] == "b"
    assert t.loc["asr50", "delta"] <= 0
    assert (t["p_adj"] >= t["p"]).all()
    assert t.attrs["family"] == 2 and t.attrs["correction"] == "bonferroni"
    # swapping a and b flips the sign
    t2 = compare(rows, "b", "a", seed=0).set_index("metric")
    assert t2.loc["miou", "delta"] == pytest.approx(-t.loc["miou", "delta"])
    assert t2.loc["miou", "stronger"] == "b"
    text = render_compare(compare(rows, "a", "b"))
    for needle in ("sign-flip", "two-sided", "unit of pairing: image", "n = 25", "bonferroni"):
        assert needle in text, text


def test_compare_pairs_is_one_family():
    rng = np.random.default_rng(6)
    imgs = {f"i{k}": list(rng.uniform(40, 90, 4)) for k in range(20)}
    rows = pd.DataFrame(
        _rows("a", imgs)
        + _rows("b", {k: [x - 1 for x in v] for k, v in imgs.items()})
        + _rows("c", {k: [x + 30 for x in v] for k, v in imgs.items()}),
        columns=COLUMNS,
    )
    t = compare_pairs(rows, [("a", "b"), ("a", "c"), ("b", "c")], metrics="miou")
    assert len(t) == 3 and t.attrs["family"] == 3
    assert t["p_adj"].tolist() == pytest.approx(np.minimum(1, 3 * t["p"]).tolist())
    assert t["ci_level"].tolist() == pytest.approx([1 - 0.05 / 3] * 3)
    assert t.set_index(["a", "b"]).loc[("a", "c"), "stronger"] == "a"


def test_the_small_n_warning_is_printed():
    rng = np.random.default_rng(7)
    imgs = {f"i{k}": list(rng.uniform(80, 95, 5)) for k in range(5)}
    rows = pd.DataFrame(
        _rows("uad", {k: [x - 70 for x in v] for k, v in imgs.items()}) + _rows("clean", imgs),
        columns=COLUMNS,
    )
    t = compare(rows, "uad", "clean")
    assert (t["stronger"] == "n.s.").all() and (t["ci_low"] <= 0).all()
    assert (t["delta"] > 60).any()  # a huge difference, and still nothing can be significant
    assert "nothing can be significant" in render_compare(t)


def test_compare_refuses_prompt_pairing_for_image_paired_runs_and_bad_names():
    rows = pd.DataFrame(
        _rows("a", {"x": [1.0, 2.0]}) + _rows("b", {"x": [3.0, 4.0]}), columns=COLUMNS
    )
    with pytest.raises(UadbenchError, match="per-prompt pairing"):
        compare(rows, "a", "b", unit="prompt", pairing="image")
    t = compare(rows, "a", "b", unit="prompt", pairing="prompt")
    assert t["n_prompts"].tolist() == [2, 2]
    with pytest.raises(UadbenchError, match="not in the run"):
        compare(rows, "a", "zzz")
    with pytest.raises(UadbenchError, match="lack rows"):
        compare(rows, "a", "b", victims=["w"])


def test_holm_matches_hand_computation():
    p = [0.01, 0.04, 0.03, 0.005, float("nan")]
    # sorted: 0.005*4=0.02, 0.01*3=0.03, 0.03*2=0.06, 0.04*1=0.04 -> monotone 0.06
    out = holm(p)
    assert out[:4] == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert math.isnan(out[4])
    assert holm([0.9, 0.8]).tolist() == [1.0, 1.0]
    assert signed_rank_p(np.zeros(5)) == 1.0


def test_signed_rank_enumeration_matches_scipy_exact_and_permutation():
    from scipy import stats as sps

    rng = np.random.default_rng(3)
    for _ in range(12):
        n = int(rng.integers(4, 11))
        tied = rng.integers(-3, 4, n).astype(float)  # ties and zeros: scipy permutes exactly
        untied = rng.normal(size=n)
        for alt in ("two-sided", "greater", "less"):
            if np.any(tied != 0):
                assert signed_rank_p(tied, alt) == pytest.approx(
                    sps.wilcoxon(tied, alternative=alt).pvalue
                )
            assert signed_rank_p(untied, alt) == pytest.approx(
                sps.wilcoxon(untied, alternative=alt, method="exact").pvalue
            )
