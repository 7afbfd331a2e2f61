"""uadbench.report.stats pinned to hand-computed or independently computed values: the
bootstrap-t against a plain loop, the sign-flip distribution of [1, 2, 3] by hand, the
combined test's p and interval, corrections, per-image bookkeeping, the family's levels,
draws and labels, compare's orientation and dropped-image count, and every renderer's
text. Pure numpy/pandas (no torch): ``scripts/mutants.py --area stats`` runs this file
with ``--noconftest``, so each mutant costs seconds."""

from __future__ import annotations

import itertools
import logging
import math

import numpy as np
import pandas as pd
import pytest
from row_helpers import prompt_rows

from uadbench.errors import UadbenchError
from uadbench.report import stats as S
from uadbench.store.schema import COLUMNS


# ----------------------------------------------------------------------------- bootstrap-t
def plain_boot_t(d, delta, seed, B):
    """(p_greater, p_less) of the bootstrap-t by a plain loop over resamples."""
    rng = np.random.default_rng(seed)
    w = S.bootstrap_weights(d.size, B, rng)
    n = d.size
    est, se = d.mean(), d.std(ddof=1) / math.sqrt(n)
    t_obs = (est - delta) / se
    ts = []
    for row in w:
        x = np.repeat(d, row.astype(int))
        ts.append((x.mean() - est) / (x.std(ddof=1) / math.sqrt(n)))
    ts = np.array(ts)
    return (1 + np.sum(ts >= t_obs)) / (B + 1), (1 + np.sum(ts <= t_obs)) / (B + 1)


def test_bootstrap_weights_are_resampling_counts():
    w = S.bootstrap_weights(5, 400, np.random.default_rng(0))
    assert w.shape == (400, 5)
    assert (w.sum(1) == 5).all() and (w == np.round(w)).all() and (w >= 0).all()
    assert w.mean(0) == pytest.approx(np.ones(5), abs=0.15)  # each image drawn once on average
    assert len({tuple(r) for r in w}) > 50  # rows differ


def test_bootstrap_t_matches_a_plain_loop_and_its_interval_is_the_inverted_test():
    d = np.array([3.0, -1.0, 4.0, 1.5, 9.0, 2.0, -2.5])
    b = S.bootstrap_t(d, n_boot=499, rng=np.random.default_rng(3))
    assert b.draws == 499 and b.estimate == pytest.approx(d.mean())
    assert b.se == pytest.approx(d.std(ddof=1) / math.sqrt(7))
    for delta in (-3.0, 0.0, 1.0, 2.2, 5.0):
        g, le = plain_boot_t(d, delta, 3, 499)
        assert b.p_greater(delta) == pytest.approx(g)
        assert b.p_less(delta) == pytest.approx(le)
    for a in (0.025, 0.1):
        lo, hi = b.lower(a), b.upper(a)
        assert lo < d.mean() < hi
        grid = np.linspace(lo - 2, hi + 2, 401)
        kept_g = np.array([b.p_greater(x) > a for x in grid])
        kept_l = np.array([b.p_less(x) > a for x in grid])
        assert np.array_equal(kept_g, grid >= lo - 1e-9)
        assert np.array_equal(kept_l, grid <= hi + 1e-9)
    # the levels: (1 + K) / (B + 1) <= a with K = 11 at a = 0.025, B = 499
    assert b._k(0.025) == 11 and b._k(0.001) == -1
    assert b.lower(0.001) == -np.inf and b.upper(0.001) == np.inf
    assert b.min_p == pytest.approx(2 / 500)


def test_bootstrap_t_degenerate_inputs():
    c = S.bootstrap_t(np.full(4, 2.0), n_boot=99, rng=np.random.default_rng(0))
    assert c.se == 0 and c.lower(0.05) == 2.0 and c.upper(0.05) == 2.0
    assert c.p_greater(0.0) == pytest.approx(1 / 100)  # every t* is 0 < +inf
    assert c.p_less(0.0) == 1.0 and c.p_greater(2.0) == 1.0 and c.p_less(2.0) == 1.0
    assert c.p_less(3.0) == pytest.approx(1 / 100)
    one = S.bootstrap_t(np.array([5.0]))
    assert one.draws == 0 and one.estimate == 5.0
    assert one.p_greater() == 1.0 and one.p_less() == 1.0 and one.min_p == 1.0
    assert one.lower(0.5) == -np.inf and one.upper(0.5) == np.inf
    assert math.isnan(S.bootstrap_t(np.array([])).estimate)
    # a resample of only the zeros (only the 6) has se* = 0 and a mean below (above) the
    # observed one: t* = -inf (+inf)
    z = S.bootstrap_t(np.array([0.0, 0.0, 0.0, 6.0]), n_boot=999, rng=np.random.default_rng(1))
    assert z.t[0] == -np.inf and z.t[-1] == np.inf and abs((z.t == -np.inf).mean() - 0.75**4) < 0.05
    assert not np.isnan(z.t).any()
    # default generator: seed 0, and the cache reuses the counts of one n
    cache: dict = {}
    x = S.bootstrap_t(np.arange(6.0), n_boot=199, cache=cache)
    y = S.bootstrap_t(np.arange(6.0), n_boot=199, rng=np.random.default_rng(0))
    assert np.array_equal(x.t, y.t) and ("boot", 6) in cache
    w = S.bootstrap_t(np.arange(6.0) * 2, n_boot=199, rng=np.random.default_rng(9), cache=cache)
    assert np.array_equal(w.t, x.t)  # same counts: t* is scale-free


# ----------------------------------------------------------------------------- sign flip
def test_sign_patterns_exact_and_monte_carlo():
    f, exact = S.sign_patterns(3, 10, np.random.default_rng(0))
    assert exact and f.shape == (8, 3) and len({tuple(r) for r in f}) == 8
    assert not f[0].any() and f[-1].all()
    n = S.EXACT_MAX + 1
    g, exact = S.sign_patterns(n, 500, np.random.default_rng(0))
    assert not exact and g.shape == (501, n) and not g[0].any()
    assert g[1:].mean() == pytest.approx(0.5, abs=0.02)
    assert S.sign_patterns(S.EXACT_MAX, 5, np.random.default_rng(0))[1]


def test_sign_flip_of_one_two_three_by_hand():
    # flipped subsets' means, sorted: {1}=1 {1,2}=1.5 {2}=2 {1,3}=2 {1,2,3}=2 {2,3}=2.5 {3}=3
    f = S.sign_flip(np.array([1.0, 2.0, 3.0]))
    assert f.exact and f.draws == 8 and f.always == 1 and f.n == 3
    assert f.t.tolist() == pytest.approx([1, 1.5, 2, 2, 2, 2.5, 3])
    assert f.p_greater() == pytest.approx(1 / 8) and f.p_less() == 1.0
    assert f.p_two_sided() == pytest.approx(0.25) and f.min_p == pytest.approx(0.25)
    assert f.p_greater(1.5) == pytest.approx(3 / 8)  # δ = 1.5: identity, {1}, {1,2}
    assert f.p_less(2.5) == pytest.approx(3 / 8)  # identity, {3}, {2,3}
    assert f.p_two_sided(2.0) == 1.0
    assert (f.lower(0.25), f.upper(0.25)) == pytest.approx((1.5, 2.5))
    assert (f.lower(0.375), f.upper(0.375)) == pytest.approx((2.0, 2.0))
    assert f.lower(0.1) == -np.inf and f.upper(0.1) == np.inf
    assert f.lower(0.9) == pytest.approx(3.0) and f.upper(0.9) == pytest.approx(1.0)
    empty = S.sign_flip(np.array([]))
    assert math.isnan(empty.estimate) and empty.draws == 1 and empty.n == 0


def test_sign_flip_ties_count_towards_both_tails():
    f = S.sign_flip(np.array([1.0, -1.0, 1.0, -1.0]))  # mean 0, many subset means 0
    assert f.p_greater() == pytest.approx(11 / 16) and f.p_less() == pytest.approx(11 / 16)


def test_both_takes_the_larger_p_and_the_hull_of_the_intervals():
    d = np.array([3.0, -1.0, 4.0, 1.5, 9.0, 2.0, -2.5, 6.0])
    f = S.sign_flip(d)
    b = S.bootstrap_t(d, n_boot=999, rng=np.random.default_rng(2))
    both = S.Both(f, b)
    assert both.estimate == f.estimate
    for delta in (-1.0, 0.0, 2.0, 4.0):
        assert both.p_greater(delta) == max(f.p_greater(delta), b.p_greater(delta))
        assert both.p_less(delta) == max(f.p_less(delta), b.p_less(delta))
        assert both.p_two_sided(delta) == min(
            1.0, 2 * min(both.p_greater(delta), both.p_less(delta))
        )
    assert both.lower(0.05) == min(f.lower(0.05), b.lower(0.05))
    assert both.upper(0.05) == max(f.upper(0.05), b.upper(0.05))
    assert both.min_p == max(f.min_p, b.min_p) == pytest.approx(2 / 256)
    assert S.Both(S.sign_flip(d[:2]), b).p_two_sided() == 1.0  # capped at 1


# ----------------------------------------------------------------------------- corrections
def test_bonferroni_holm_and_adjust():
    p = [0.01, float("nan"), 0.3]
    out = S.bonferroni(p)
    assert out[0] == pytest.approx(0.02) and math.isnan(out[1]) and out[2] == pytest.approx(0.6)
    assert S.bonferroni([0.7, 0.2]).tolist() == pytest.approx([1.0, 0.4])
    assert S.adjust([0.01, 0.02], "bonferroni").tolist() == pytest.approx([0.02, 0.04])
    assert S.adjust([0.01, 0.02], "holm").tolist() == pytest.approx([0.02, 0.02])
    assert S.holm([0.04, 0.01]).tolist() == pytest.approx([0.04, 0.02])
    assert S.holm([0.02, 0.02]).tolist() == pytest.approx([0.04, 0.04])  # ties: stable
    assert S.holm([]).size == 0 and math.isnan(S.holm([float("nan")])[0])
    with pytest.raises(UadbenchError, match="unknown correction 'x'; choose from bonferroni"):
        S.adjust([0.1], "x")


# ----------------------------------------------------------------------------- per image
def test_destroyed_metric_values_and_per_image():
    assert S.destroyed([50.0, 50.5, 0.0, 100.0], 50).tolist() == [1.0, 0.0, 1.0, 0.0]
    assert S.metric_values(np.array([40.0, 60.0]), "miou").tolist() == [40.0, 60.0]
    assert S.metric_values(np.array([40.0, 60.0]), "asr50").tolist() == [100.0, 0.0]
    rows = pd.DataFrame(prompt_rows("a", {"y": [10.0, 70.0, 30.0], "x": [90.0]}), columns=COLUMNS)
    pi = S.per_image(rows, "miou")
    assert list(pi.index) == [("d", "x"), ("d", "y")]  # sorted
    assert pi["sum"].tolist() == [90.0, 110.0] and pi["n"].tolist() == [1.0, 3.0]
    assert pi["mean"].tolist() == pytest.approx([90.0, 110 / 3])
    assert S.per_image(rows, "asr50")["mean"].tolist() == pytest.approx([0.0, 200 / 3])
    pp = S._per_prompt(rows, "miou")
    assert pp["mean"].tolist() == [90.0, 10.0, 70.0, 30.0] and (pp["n"] == 1).all()
    dup = pd.concat([rows, rows])
    assert len(S._per_prompt(dup, "miou")) == 4


# ----------------------------------------------------------------------------- wilcoxon
def test_hodges_lehmann_and_signed_rank_edges():
    d = np.array([1.0, 3.0, -2.0, 5.0, 4.0, 0.5, 2.0, 6.0, -1.0, 3.5])
    est, lo, hi = S.hodges_lehmann(d, 0.1)
    walsh = sorted((d[i] + d[j]) / 2 for i in range(10) for j in range(i, 10))
    assert est == pytest.approx(np.median(walsh))
    # k = floor(n(n+1)/4 − z·sqrt(n(n+1)(2n+1)/24)) = floor(27.5 − 1.645·9.81) = 11
    assert (lo, hi) == pytest.approx((walsh[11], walsh[len(walsh) - 12]))
    e, lo2, hi2 = S.hodges_lehmann(d[:2], 0.05)
    assert e == pytest.approx(2.0) and lo2 == -np.inf and hi2 == np.inf
    assert all(math.isnan(x) for x in S.hodges_lehmann(np.array([]), 0.05))
    assert math.isnan(S.signed_rank_p(np.array([])))
    assert S.signed_rank_p(np.zeros(3)) == 1.0
    # zeros among 3 values: exact enumeration of the non-zero ones, 1/4 one-sided
    assert S.signed_rank_p(np.array([0.0, 2.0, 1.0]), "greater") == pytest.approx(0.25)
    assert S.signed_rank_p(np.array([0.0, 2.0, 1.0]), "less") == pytest.approx(1.0)
    assert S.signed_rank_p(np.array([0.0, 2.0, 1.0])) == pytest.approx(0.5)


# ----------------------------------------------------------------------------- families
def test_family_tests_refuses_bad_arguments():
    d = [np.ones(5)]
    for kw, msg in [
        (dict(alternative="up"), "unknown alternative"),
        (dict(alternative=["greater", "less"]), "unknown alternative"),
        (dict(test="t"), "unknown test 't'; choose from sign-flip\\+bootstrap-t, sign-flip"),
        (dict(alpha=0.0), "--alpha 0.0 must be between 0 and 1"),
        (dict(alpha=1.0), "between 0 and 1"),
        (dict(n_perm=98), "--n-perm 98 is too small"),
    ]:
        with pytest.raises(UadbenchError, match=msg):
            S.family_tests(d, **kw)
    assert len(S.family_tests(d, n_perm=99)) == 1


def test_family_tests_draws_levels_and_labels():
    d = np.arange(1.0, 11.0)
    t = S.family_tests([d] * 30, alternative="greater")
    assert t.attrs["draws"] == 12000  # 20 · 30 / 0.05, one-sided
    assert t.attrs["alternative"] == "greater" and t.attrs["family"] == 30
    assert t.attrs["test"] == S.BOTH and t.attrs["exact_max"] == S.EXACT_MAX
    assert (t["ci_high"] == np.inf).all() and (t["ci_low"] > -np.inf).all()
    assert t["min_p_adj"].iloc[0] == pytest.approx(30 * 2.0**-10)
    assert t["significant"].all() and t["ci_level"].iloc[0] == pytest.approx(1 - 0.05 / 30)
    assert S.family_tests([d] * 30).attrs["draws"] == 24000  # two-sided: twice
    assert S.family_tests([d], n_perm=5000).attrs["draws"] == 5000
    mixed = S.family_tests([d, -d], alternative=["two-sided", "less"])
    assert mixed.attrs["alternative"] == "mixed" and mixed["ci_high"].iloc[1] < np.inf
    assert mixed["ci_low"].iloc[1] == -np.inf
    one = S.family_tests([d, -d], alternative=["greater", "less"])
    assert one.attrs["alternative"] == "one-sided"
    assert one["significant"].tolist() == [True, True]


def test_family_tests_values_against_a_separately_built_test():
    rng = np.random.default_rng(8)
    d1, d2 = rng.normal(1.0, 1.0, 20), rng.normal(0.2, 1.0, 20)
    t = S.family_tests([d1, d2], seed=4, correction="holm", equivalence=0.5)
    draws = t.attrs["draws"]
    g = np.random.default_rng(4)
    cache: dict = {}
    both = []
    for d in (d1, d2):
        f = S.sign_flip(d, n_perm=draws, rng=g, cache=cache)
        both.append(S.Both(f, S.bootstrap_t(d, n_boot=draws, rng=g, cache=cache)))
    p = np.array([b.p_two_sided() for b in both])
    assert t["p"].tolist() == pytest.approx(p.tolist())
    p_adj = S.holm(p)
    assert t["p_adj"].tolist() == pytest.approx(p_adj.tolist())
    for i, b in enumerate(both):
        a_eff = 0.05 * p[i] / p_adj[i] if p_adj[i] < 1 else 0.05 / 2
        assert t["ci_level"].iloc[i] == pytest.approx(1 - a_eff)
        assert t["ci_low"].iloc[i] == pytest.approx(b.lower(a_eff / 2))
        assert t["ci_high"].iloc[i] == pytest.approx(b.upper(a_eff / 2))
        assert t["estimate"].iloc[i] == pytest.approx([d1, d2][i].mean())
        assert t["p_tost"].iloc[i] == pytest.approx(max(b.p_greater(-0.5), b.p_less(0.5)))
        sd = [d1, d2][i].std(ddof=1)
        from scipy import stats as sps

        q = sps.t.ppf(1 - 0.05 / 4, 19) + sps.t.ppf(0.8, 19)
        assert t["mde"].iloc[i] == pytest.approx(q * sd / math.sqrt(20))
        assert t["min_p_adj"].iloc[i] == pytest.approx(2 * 2 / (draws + 1))
    assert t["p_tost_adj"].tolist() == pytest.approx(S.holm(t["p_tost"]).tolist())
    assert t["significant"].tolist() == (t["p_adj"] <= 0.05).tolist() == [True, False]
    # the null moves the test: d1 − 1 has mean ≈ 0
    t0 = S.family_tests([d1], null=d1.mean())
    assert t0["p"].iloc[0] == 1.0 and not t0["significant"].iloc[0]
    # one-sided: min p halves, the mde uses the one-sided quantile
    t1 = S.family_tests([d1], alternative="greater", seed=4)
    assert t1["min_p_adj"].iloc[0] == pytest.approx(1 / (t1.attrs["draws"] + 1))
    q1 = sps.t.ppf(0.95, 19) + sps.t.ppf(0.8, 19)
    assert t1["mde"].iloc[0] == pytest.approx(q1 * d1.std(ddof=1) / math.sqrt(20))


def test_family_tests_empty_lines_and_the_other_tests():
    d = np.array([1.0, 2.5, 3.0, -0.5, 2.0, 4.0, 1.5, 3.5])
    t = S.family_tests([d, np.array([])])
    assert t.attrs["family"] == 1 and t["n"].tolist() == [8, 0]
    assert math.isnan(t["p"].iloc[1]) and not t["significant"].iloc[1]
    assert math.isnan(t["ci_low"].iloc[1]) and math.isnan(t["mde"].iloc[1])
    assert t["ci_level"].iloc[0] == pytest.approx(0.95)
    flip = S.family_tests([d], test="sign-flip")
    f = S.sign_flip(d)
    assert flip["p"].iloc[0] == pytest.approx(f.p_two_sided())
    assert flip["ci_low"].iloc[0] == pytest.approx(f.lower(0.025))
    assert flip["min_p_adj"].iloc[0] == pytest.approx(2 / 256)
    w = S.family_tests([d], test="wilcoxon", alternative="greater")
    est, lo, _ = S.hodges_lehmann(d, 0.1)
    assert w["estimate"].iloc[0] == pytest.approx(est) and w["ci_low"].iloc[0] == lo
    assert w["ci_high"].iloc[0] == np.inf
    assert w["p"].iloc[0] == pytest.approx(S.signed_rank_p(d, "greater"))
    wl = S.family_tests([d], test="wilcoxon", alternative="less")
    assert wl["ci_low"].iloc[0] == -np.inf and wl["ci_high"].iloc[0] == pytest.approx(
        S.hodges_lehmann(d, 0.1)[2]
    )
    const = S.family_tests([np.full(8, 3.0)])
    assert math.isnan(const["mde"].iloc[0])  # no spread: no MDE


# ----------------------------------------------------------------------------- text
def test_describe_names_test_sides_unit_family_and_interval():
    attrs = dict(test=S.BOTH, draws=1234, seed=7, correction="bonferroni", family=3, alpha=0.05)
    a = S.describe(attrs | {"alternative": "two-sided"}, [8, 8], estimand="EST")
    assert a[0] == (
        "test: paired sign-flip permutation test of the EST, exact (all 2^n sign patterns), "
        "AND studentized bootstrap (bootstrap-t, 1234 resamples of images, seed 7): a "
        "difference counts only when both reject (p = the larger); two-sided; unit of "
        "pairing: image, n = 8 images"
    )
    assert a[1] == (
        "family: 3 test(s) shown here, bonferroni correction, alpha = 0.05; CI: union of the "
        "two tests' inverted intervals at level 1 − alpha/3 (simultaneous 95%)"
    )
    b = S.describe(
        attrs | {"alternative": "mixed", "test": "sign-flip", "correction": "holm"},
        [8, 0, 20],
        estimand="EST",
        unit="prompt",
    )
    assert b[0] == (
        "test: paired sign-flip permutation test of the EST, Monte Carlo, 1234 sign patterns, "
        "seed 7; exact up to 16 images; two- and one-sided; unit of pairing: prompt, "
        "n = 8–20 prompts"
    )
    assert b[1].endswith(
        "CI: inversion of the same test (same sign patterns) at the level Holm used for each line"
    )
    c = S.describe(attrs | {"alternative": "less", "test": "wilcoxon"}, [20, 30], estimand="E")
    assert c[0].startswith(
        "test: Wilcoxon signed-rank test of symmetry about 0 of the per-image differences "
        "(NOT a test of the mean); estimate: Hodges–Lehmann pseudo-median; one-sided"
    )
    assert "CI: Walsh-average order statistics (normal approximation)" in c[1]
    assert (
        "Monte Carlo, 1234 sign patterns, seed 7; two-sided"
        in S.describe(
            attrs | {"alternative": "two-sided", "test": "sign-flip"}, [30], estimand="E"
        )[0]
    )
    assert "n = – images" in S.describe(attrs | {"alternative": "greater"}, [], estimand="E")[0]


def test_small_n_warning_text_and_silence():
    t = pd.DataFrame({"n": [4, 5], "min_p_adj": [0.25, 0.125]})
    t.attrs["family"] = 2
    assert S.small_n_warning(t, 0.05) == (
        "WARNING: with 5 images and a family of 2 tests nothing can be significant (smallest "
        "attainable adjusted p = 0.125 > alpha = 0.05); 'n.s.' here says nothing about the "
        "size of a difference: use more images or fewer comparisons"
    )
    assert "family of 2 tests" in S.small_n_warning(t.copy(), 0.05)  # attrs or len
    assert S.small_n_warning(t, 0.2) is None  # one line can reach 0.125 <= 0.2
    assert S.small_n_warning(t, 0.125) is None  # only strictly above alpha warns
    assert S.small_n_warning(pd.DataFrame(), 0.05) is None
    assert S.small_n_warning(pd.DataFrame({"n": [3]}), 0.05) is None
    t2 = pd.DataFrame({"n": [3], "min_p_adj": [np.nan]})
    assert S.small_n_warning(t2, 0.05) is None


def test_number_formats():
    assert S._pfmt(float("nan")) == "–"
    assert S._pfmt(0.0004) == "0.0004" and S._pfmt(0.00123) == "0.001"
    assert S._pfmt(0.001) == "0.001" and S._pfmt(0.0009999) == "0.001"
    assert S._pfmt(0.0123) == "0.012" and S._pfmt(1.0) == "1.000"
    assert S._ci_text(-1.234, 5.0) == "[-1.23, +5.00]"
    assert S._ci_text(float("nan"), np.inf) == "[–, +inf]"
    assert S._ci_text(-np.inf, 0.0) == "[-inf, +0.00]"
    assert S._mde_text(float("nan")) == "–" and S._mde_text(np.inf) == "none"
    assert S._mde_text(3.14159) == "3.14"


# ----------------------------------------------------------------------------- compare
A = {"i0": [80.0, 60.0], "i1": [70.0], "i2": [90.0, 50.0, 40.0], "i3": [30.0, 80.0]}
B = {"i0": [20.0, 40.0], "i1": [10.0], "i2": [30.0, 20.0, 60.0], "i3": [10.0, 20.0]}


def test_compare_values_orientation_and_dropped_images(caplog):
    rows = pd.DataFrame(
        prompt_rows("a", A | {"only_a": [5.0]}) + prompt_rows("b", B | {"only_b": [5.0]}),
        columns=COLUMNS,
    )
    with caplog.at_level(logging.WARNING, logger="uadbench.report.stats"):
        t = S.compare(rows, "a", "b", metrics=["miou", "asr50"]).set_index("metric")
    assert "v: 2 image(s) present under only one of a, b; left out" in caplog.text
    ma = np.mean([70.0, 70.0, 60.0, 55.0])
    mb = np.mean([30.0, 10.0, 110 / 3, 15.0])
    assert t.loc["miou", "value_a"] == pytest.approx(ma)
    assert t.loc["miou", "value_b"] == pytest.approx(mb)
    assert t.loc["miou", "delta"] == pytest.approx(mb - ma)  # mIoU: b − a (< 0: b stronger)
    assert t.columns.tolist() == [c for c in S.COMPARE_COLUMNS if c != "metric"]
    # ASR: a − b (a destroys fewer here, so delta < 0)
    asr_a = np.mean([0.0, 0.0, 200 / 3, 50.0])
    asr_b = np.mean([100.0, 100.0, 200 / 3, 100.0])
    assert t.loc["asr50", "delta"] == pytest.approx(asr_a - asr_b)
    assert t["n_images"].tolist() == [4, 4] and (t["stronger"] == "n.s.").all()
    caplog.clear()
    rows2 = pd.DataFrame(prompt_rows("a", A) + prompt_rows("b", B), columns=COLUMNS)
    with caplog.at_level(logging.WARNING, logger="uadbench.report.stats"):
        S.compare(rows2, "a", "b")
    assert "left out" not in caplog.text


def test_compare_delta_sign_and_the_stronger_label():
    rng = np.random.default_rng(1)
    base = {f"i{k}": list(rng.uniform(50, 90, 3)) for k in range(20)}
    weak = {k: [x - 0.5 for x in v] for k, v in base.items()}  # b: 0.5 lower mIoU
    rows = pd.DataFrame(prompt_rows("a", base) + prompt_rows("b", weak), columns=COLUMNS)
    t = S.compare(rows, "a", "b", metrics="miou")
    assert t["delta"].iloc[0] == pytest.approx(-0.5)
    assert t["stronger"].iloc[0] == "b" and t["ci_high"].iloc[0] < 0
    t = S.compare(rows, "b", "a", metrics="miou")
    assert t["delta"].iloc[0] == pytest.approx(0.5) and t["stronger"].iloc[0] == "b"
    assert t["ci_low"].iloc[0] > 0 and t["ci_low"].iloc[0] < 0.5 < t["ci_high"].iloc[0]


def test_compare_victims_pairs_and_refusals():
    rows = pd.DataFrame(
        prompt_rows("a", A, "v1")
        + prompt_rows("b", B, "v1")
        + prompt_rows("a", A, "v2")
        + prompt_rows("b", B, "v2")
        + prompt_rows("c", B, "v2")
        + prompt_rows("clean", A, "v2"),
        columns=COLUMNS,
    )
    t = S.compare(rows, "a", "b", metrics="miou")
    assert t["victim"].tolist() == ["v1", "v2"] and t.attrs["family"] == 2
    t = S.compare(rows, "a", "b", metrics="miou", victims=["v2"])
    assert t["victim"].tolist() == ["v2"]
    t = S.compare(rows, "a", "c", metrics="miou")
    assert t["victim"].tolist() == ["v2"]  # c has no v1 rows
    assert S.all_pairs(rows) == [("a", "b"), ("a", "c"), ("b", "c")]
    with pytest.raises(UadbenchError, match="name the same attack"):
        S.compare(rows, "a", "a")
    with pytest.raises(UadbenchError, match="attack 'z' is not in the run; it has: a, b, c"):
        S.compare(rows, "a", "z")
    with pytest.raises(UadbenchError, match=r"victim\(s\) v1 lack rows for 'a' or 'c'"):
        S.compare(rows, "a", "c", victims=["v1"])
    with pytest.raises(UadbenchError, match="unknown unit 'x'"):
        S.compare(rows, "a", "b", unit="x")
    e = S.compare_pairs(rows, [], metrics="miou")
    assert e.empty and list(e.columns) == S.COMPARE_COLUMNS and e.attrs["family"] == 0
    assert S.render_compare(e) == "(no comparisons)\n"


# ----------------------------------------------------------------------------- renderers
def _table(**kw):
    rows = pd.DataFrame(prompt_rows("a", A) + prompt_rows("b", B), columns=COLUMNS)
    return S.compare(rows, "a", "b", **kw)


def test_render_compare_terminal_reads_the_numbers():
    t = _table()
    text = S.render_compare(t)
    lines = text.splitlines()
    assert lines[0] == "a (a) vs b (b): delta > 0 means a is stronger" and lines[1] == ""
    head = lines[2].split()
    assert head[:4] == ["victim", "metric", "value", "a"] and "MDE" in head
    assert "min p adj" not in text.split("\n\n")[1].splitlines()[0]  # constant: in the foot
    miou = lines[4].split()
    # victim, metric, value a, value b, delta, CI, level, p, p adj, n, stronger, MDE
    assert miou[:5] == ["v", "mIoU", "63.75", "22.92", "-40.83"]
    assert miou[5:7] == ["[-inf,", "+inf]"] and miou[7] == "97.50%"
    assert miou[8:] == ["0.125", "0.250", "4", "n.s.", "none"]
    assert lines[5].split()[:5] == ["v", "ASR@50", "29.17", "91.67", "-62.50"]
    assert "smallest attainable adjusted p for this n and family: 0.250" in text
    assert "value a/b: mean over images of the per-image metric" in text
    assert "WARNING: with 4 images" in text
    assert "sign-flip permutation test of the mean over images of the per-image difference" in text
    assert S.render_compare(t, alpha=0.3).count("WARNING") == 0
    assert text.endswith("use more images or fewer comparisons\n")


def test_render_compare_columns_that_come_and_go():
    rows = pd.DataFrame(
        prompt_rows("a", A)
        + prompt_rows("b", B)
        + prompt_rows("c", A | {"i4": [1.0], "i5": [3.0]}),
        columns=COLUMNS,
    )
    rows = pd.concat(
        [rows, pd.DataFrame(prompt_rows("b", {"i4": [50.0], "i5": [60.0]}), columns=COLUMNS)]
    )
    t = S.compare_pairs(rows, [("a", "b"), ("b", "c")], metrics="miou", equivalence=5.0)
    text = S.render_compare(t)
    first = text.splitlines()[0]
    assert first == "attack a vs attack b: delta > 0 means a is stronger"
    header = text.splitlines()[2]
    assert " a " in header and "min p adj" in header and "equivalent" in header
    assert "no (p=1.000)" in text
    assert "equivalent: TOST of |delta| < 5 at the same correction" in text
    assert "smallest attainable adjusted p for this n and family" not in text
    pt = _table(unit="prompt", pairing="prompt")
    txt = S.render_compare(pt)
    assert "per-prompt difference" in txt and "n = 8 prompts" in txt
    assert S.render_compare(pt, "csv").splitlines()[0].endswith("n_prompts,stronger,min_p_adj,mde")


def test_render_formats():
    t = _table()
    csv = S.render_compare(t, "CSV")
    assert csv == t.to_csv(index=False, lineterminator="\n")
    md = S.render_compare(t, "markdown")
    assert md.startswith("### a (a) vs b (b): delta > 0 means a is stronger\n\n| victim")
    assert "\n| v        | mIoU     | 63.75" in md and "\n\nfamily: 2 test(s)" in md
    tex = S.render_compare(t, "latex").splitlines()
    assert tex[0] == "% a (a) vs b (b): delta > 0 means a is stronger"
    assert tex[1] == r"\begin{tabular}{llllllllllll}" and tex[2] == r"\toprule"
    assert tex[3].endswith(r"MDE (80\%) \\") and tex[4] == r"\midrule"
    assert tex[5].startswith(r"v & mIoU & 63.75 & 22.92 & -40.83") and tex[5].endswith(r"\\")
    assert tex[7] == r"\bottomrule" and tex[8] == r"\end{tabular}"
    assert tex[9].startswith("% test: ")
    html = S.render_compare(t, "html").splitlines()
    assert html[0] == '<table class="compare">'
    assert html[1] == "<caption>a (a) vs b (b): delta &gt; 0 means a is stronger</caption>"
    assert html[2].startswith("<thead><tr><th>victim</th><th>metric</th>")
    assert html[3].startswith("<tr><td>v</td><td>mIoU</td><td>63.75</td>")
    assert html[5] == "</tbody></table>" and html[6].startswith("<p class='note'>test: ")
    with pytest.raises(UadbenchError, match="unknown format 'x'; choose from terminal"):
        S.render_compare(t, "x")
    df = pd.DataFrame({"k": ["1"]})
    assert S.render_frame(df, "terminal") == "k\n---\n1\n"
    assert S.render_frame(df, "markdown") == "| k   |\n|:----|\n| 1   |\n"
    assert S.render_frame(df, "latex").splitlines()[0] == r"\begin{tabular}{l}"
    assert S.render_frame(df, "html").splitlines()[0] == '<table class="compare">'
    assert S.render_frame(df, "csv") == "k\n1\n"
    assert S.render_frame(df, "terminal", foot=["x", "y"]).endswith("1\nx\ny\n")


def test_every_sign_pattern_is_listed_once():
    f, _ = S.sign_patterns(4, 0, np.random.default_rng(0))
    want = {tuple(bool(b) for b in p) for p in itertools.product((0, 1), repeat=4)}
    assert {tuple(r) for r in f} == want


def test_defaults_and_keyword_only_options():
    d = np.array([-2.0, -1.0, 0.5, 1.0, 3.0, -0.5, 2.0])
    f = S.sign_flip(d)
    b = S.bootstrap_t(d, n_boot=99)
    for dist in (f, b, S.Both(f, b)):
        for p in (dist.p_less, dist.p_greater):
            assert p() == p(0.0) and p(1.0) != p(0.0) != p(-1.0)
    assert (
        S.Both(f, b).p_two_sided() == S.Both(f, b).p_two_sided(0.0) != S.Both(f, b).p_two_sided(1.0)
    )
    assert f.p_two_sided() == f.p_two_sided(0.0) != f.p_two_sided(-1.0)
    with pytest.raises(TypeError):
        S.family_tests([d], 0.05)
    with pytest.raises(TypeError):
        S.sign_flip(d, 99)
    with pytest.raises(TypeError):
        S.bootstrap_t(d, 99)
    t = S.family_tests([np.arange(1.0, 9.0)])
    assert t.attrs["alpha"] == 0.05 and t.attrs["correction"] == "bonferroni"
    assert t.attrs["alternative"] == "two-sided" and t.attrs["seed"] == 0
    assert t.attrs["draws"] == S.N_PERM == 9999


def test_bootstrap_t_interval_at_the_smallest_attainable_level():
    d = np.array([3.0, -1.0, 4.0, 1.5, 9.0, 2.0, -2.5])
    b = S.bootstrap_t(d, n_boot=499, rng=np.random.default_rng(3))
    assert b._k(0.003) == 0  # (1 + 0) / 500 <= 0.003 < 2 / 500
    assert b.lower(0.003) == pytest.approx(b.estimate - b.t[-1] * b.se)
    assert b.upper(0.003) == pytest.approx(b.estimate - b.t[0] * b.se)
    assert b.p_greater(b.lower(0.003) - 1e-6) <= 0.003 < b.p_greater(b.lower(0.003) + 1e-6)


def test_edges_of_levels_draws_and_formats():
    assert S.sign_flip(np.array([])).min_p == 1.0
    assert S.sign_flip(np.array([4.0])).min_p == 1.0
    one = S.bootstrap_t(np.array([1.0, 3.0, 2.0]), n_boot=1, rng=np.random.default_rng(0))
    assert one.draws == 1 and one._k(0.9) == 0
    assert np.isfinite(one.lower(0.9)) or one.t[-1] == np.inf
    assert one.upper(0.9) == pytest.approx(one.estimate - one.t[0] * one.se)
    assert S.family_tests([np.arange(1.0, 9.0)], n_perm=100).attrs["draws"] == 800
    assert S.family_tests([np.arange(1.0, 9.0)] * 2, n_perm=100).attrs["draws"] == 1600
    t = _table()
    for bad in ("bogus", "abc", "zzz"):
        with pytest.raises(UadbenchError, match="unknown format"):
            S.render_compare(t, bad)


def test_a_line_without_common_images_renders_dashes():
    rows = pd.DataFrame(
        prompt_rows("a", A)
        + prompt_rows("b", B)
        + prompt_rows("a", A, "w")
        + prompt_rows("b", {"z": [1.0]}, "w"),
        columns=COLUMNS,
    )
    t = S.compare(rows, "a", "b", metrics="miou")
    assert t["n_images"].tolist() == [4, 0] and math.isnan(t["ci_level"].iloc[1])
    body = S.render_compare(t).splitlines()
    w = [ln for ln in body if ln.startswith("w ")][0].split()
    assert w[1:4] == ["mIoU", "nan", "nan"] and w[5:9] == ["[–,", "–]", "–", "–"]
    assert w[-2:] == ["n.s.", "–"]


def test_more_edges_pinned():
    # se exactly 1: the general end points, not the se = 0 shortcut
    b = S.bootstrap_t(np.array([0.0, 2.0]), n_boot=199, rng=np.random.default_rng(0))
    assert b.se == 1.0
    assert b.lower(0.2) == pytest.approx(1.0 - b.t[199 - 1 - b._k(0.2)])
    assert b.upper(0.2) == pytest.approx(1.0 - b.t[b._k(0.2)])
    assert b.lower(0.2) != 1.0 or b.upper(0.2) != 1.0
    # the empty sign-flip distribution: p = 1
    assert S.sign_flip(np.array([])).p_greater() == 1.0
    # default generator of the Monte Carlo patterns: seed 0
    d = np.random.default_rng(5).normal(0.2, 1, S.EXACT_MAX + 4)
    x = S.sign_flip(d, n_perm=200)
    assert np.array_equal(x.t, S.sign_flip(d, n_perm=200, rng=np.random.default_rng(0)).t)
    # Hodges-Lehmann with k = 0 (4 values at 90%): the lowest Walsh average
    d4 = np.array([1.0, 4.0, 2.0, 8.0])
    _, lo, hi = S.hodges_lehmann(d4, 0.1)
    assert lo == 1.0 and hi == 8.0
    # MDE with 2 images when the level allows it
    t = S.family_tests([np.array([1.0, 3.0])], alpha=0.9)
    assert t["min_p_adj"].iloc[0] == 0.5 and np.isfinite(t["mde"].iloc[0])
    # n range over three sizes
    attrs = dict(test=S.BOTH, draws=9, seed=0, correction="holm", family=3, alpha=0.05)
    assert (
        "n = 8–20 images"
        in S.describe(attrs | {"alternative": "less"}, [8, 12, 20], estimand="E")[0]
    )


def test_strings_built_at_run_time_select_the_same_branches():
    """Options arrive from argparse as fresh (non-interned) strings."""
    wil, less = "".join(["wil", "coxon"]), "".join(["le", "ss"])
    d = np.array([1.0, 3.0, -2.0, 5.0, 4.0, 0.5, 2.0, 6.0, -1.0, 3.5])
    w = S.family_tests([d], test=wil)
    assert w["estimate"].iloc[0] == pytest.approx(S.hodges_lehmann(d, 0.05)[0])
    z = np.array([0.0, 2.0, 1.0])
    assert S.signed_rank_p(z, less) == pytest.approx(1.0)
    assert S.signed_rank_p(-z, less) == pytest.approx(0.25)


def test_all_pairs_leaves_out_clean_whatever_the_names():
    rows = pd.DataFrame(
        prompt_rows("uad", A)
        + prompt_rows("clean", A)
        + prompt_rows("tap", A)
        + prompt_rows("aa", A),
        columns=COLUMNS,
    )
    assert S.all_pairs(rows) == [("uad", "tap"), ("uad", "aa"), ("tap", "aa")]


def test_single_line_title():
    rows = pd.DataFrame(prompt_rows("a", A) + prompt_rows("b", B), columns=COLUMNS)
    t = S.compare(rows, "a", "b", metrics="miou")
    assert len(t) == 1
    assert S.render_compare(t).splitlines()[0] == "a (a) vs b (b): delta > 0 means a is stronger"


def test_more_run_time_strings_and_levels():
    holm_ = "".join(["ho", "lm"])
    assert S.adjust([0.01, 0.02], holm_).tolist() == pytest.approx([0.02, 0.02])
    rows = pd.DataFrame(prompt_rows("a", A) + prompt_rows("b", B), columns=COLUMNS)
    uad = pd.DataFrame(prompt_rows("uad", A) + prompt_rows("tap", B), columns=COLUMNS)
    with pytest.raises(UadbenchError, match="same attack"):
        S.compare(uad, "uad", "".join(["u", "ad"]))  # equal, not identical, names
    t = S.compare(rows, "a", "b", unit="".join(["pro", "mpt"]), pairing="prompt")
    assert "n_prompts" in t.columns
    d = np.arange(1.0, 11.0)
    t = S.family_tests([d], alternative="".join(["le", "ss"]))
    assert t["ci_low"].iloc[0] == -np.inf
    # Holm with a line whose adjusted p is 1: its level is alpha / m
    t = S.family_tests(
        [d, np.array([1.0, -1.0, 2.0, -2.0, 0.5, -0.5, 0.1, -0.1])], correction="holm"
    )
    assert t["p_adj"].iloc[1] == 1.0 and t["ci_level"].iloc[1] == pytest.approx(1 - 0.05 / 2)
    # exactly EXACT_MAX images is still exact
    attrs = dict(test="sign-flip", draws=9, seed=0, correction="holm", family=1, alpha=0.05)
    text = S.describe(attrs | {"alternative": "less"}, [S.EXACT_MAX], estimand="E")[0]
    assert "exact (all 2^n sign patterns)" in text
    # the Wilcoxon interval uses twice the one-sided level (10 distinct values)
    w10 = np.array([1.0, 3.1, -2.2, 5.3, 4.4, 0.55, 2.6, 6.7, -1.8, 3.9])
    w = S.family_tests([w10], test="wilcoxon", alternative="greater")
    assert w["ci_low"].iloc[0] == S.hodges_lehmann(w10, 0.1)[1]
    assert S.hodges_lehmann(w10, 0.1)[1] != S.hodges_lehmann(w10, 0.15)[1]
