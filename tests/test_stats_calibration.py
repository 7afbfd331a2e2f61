"""Calibration of the statistics by simulation, under conditions a real benchmark meets:
few images, bimodal IoUs (masks are either kept or destroyed), strong within-image
correlation (prompts of an image share its difficulty and its perturbation), binary ASR
outcomes and unequal prompt counts. The library's own test (sign-flip permutation of the
mean of per-image differences, :func:`uadbench.report.stats.sign_flip`) decides.

The table in docs/statistics.md is printed by
``python tests/test_stats_calibration.py`` (same simulations, more of them)."""

from __future__ import annotations

import numpy as np
import pytest

from uadbench.report.stats import Both, bootstrap_t, family_tests, sign_flip, signed_rank_p

ALPHA = 0.05


def per_image(rng: np.random.Generator, q: np.ndarray, n_p: np.ndarray) -> np.ndarray:
    """(2, n_img) per-image [mIoU, ASR@50] (%) of one attack whose prompts on image i
    are destroyed with probability q[i]: destroyed masks have IoU ~ U(0, 20), kept
    ones U(65, 100) (bimodal); n_p[i] prompts on image i."""
    n_max = int(n_p.max())
    kept = np.arange(n_max)[None, :] < n_p[:, None]
    dead = rng.random((q.size, n_max)) < q[:, None]
    iou = np.where(dead, rng.uniform(0, 20, dead.shape), rng.uniform(65, 100, dead.shape))
    miou = (iou * kept).sum(1) / n_p
    asr = 100.0 * ((iou <= 50) * kept).sum(1) / n_p
    return np.stack([miou, asr])


def benchmark(rng: np.random.Generator, n_img: int, scenario: str) -> np.ndarray:
    """(2, n_img) per-image differences b − a of [mIoU, ASR@50] for one simulated
    benchmark. ``null``: a and b exchangeable on each image (image difficulty shared,
    attack×image jitter, so prompts of an image are correlated); ``shape``: equal mean
    destroyed share (0.5) but a destroys half of every image while b destroys 62.5% of
    80% of the images and nothing on the rest (per-image differences skewed, mean 0,
    median > 0); ``effect``: b destroys 15 points more."""
    n_p = rng.integers(20, 81, n_img)  # prompts per image differ (up to 80 as in a run)
    base = rng.beta(2, 2, n_img)  # the image's difficulty, shared by both attacks
    if scenario == "null":
        qa = np.clip(base + rng.normal(0, 0.1, n_img), 0, 1)
        qb = np.clip(base + rng.normal(0, 0.1, n_img), 0, 1)
    elif scenario == "effect":
        qa = np.clip(base + rng.normal(0, 0.1, n_img), 0, 1)
        qb = np.clip(base + 0.15 + rng.normal(0, 0.1, n_img), 0, 1)
    elif scenario == "shape":
        qa = np.full(n_img, 0.5)
        qb = np.where(rng.random(n_img) < 0.8, 0.625, 0.0)
    else:
        raise ValueError(scenario)
    return per_image(rng, qb, n_p) - per_image(rng, qa, n_p)


def rates(scenario: str, n_img: int, sims: int, seed: int = 0) -> dict[str, float]:
    """Share of simulated benchmarks in which each test rejects at ALPHA (two-sided): the
    default test (sign-flip AND bootstrap-t) on mIoU and ASR@50 per-image differences,
    the sign-flip test alone, the bootstrap-t alone and the former Wilcoxon test, on mIoU."""
    rng = np.random.default_rng(seed)
    cache: dict = {}
    rej = np.zeros(5)
    for _ in range(sims):
        d = benchmark(rng, n_img, scenario)
        for j in range(2):
            flip = sign_flip(d[j], n_perm=1999, rng=rng, cache=cache)
            boot = bootstrap_t(d[j], n_boot=1999, rng=rng, cache=cache)
            rej[j] += Both(flip, boot).p_two_sided() <= ALPHA
            if j == 0:
                rej[2] += flip.p_two_sided() <= ALPHA
                rej[3] += min(1.0, 2 * min(boot.p_greater(), boot.p_less())) <= ALPHA
        rej[4] += signed_rank_p(d[0]) <= ALPHA
    r = rej / sims
    return dict(zip(("miou", "asr50", "flip_miou", "boot_miou", "wilcoxon_miou"), r))


@pytest.mark.parametrize("n_img", [8, 15, 30])
def test_null_rejection_rate_is_near_alpha(n_img):
    r = rates("null", n_img, sims=600, seed=n_img)
    for m in ("miou", "asr50"):
        assert 0.02 <= r[m] <= 0.08, f"{n_img} images, {m}: null rejection {r[m]:.3f}"


@pytest.mark.parametrize("n_img", [15, 30])
def test_equal_means_different_shapes_is_called_stronger_at_most_at_alpha(n_img):
    """Equal means, skewed per-image differences (median > 0) — issue 37. The sign-flip
    test alone rejects too often here (its permutation distribution is symmetric; 0.074 /
    0.062 at 15 / 30 images in docs/statistics.md), the former Wilcoxon test, a test of
    symmetry, ever more often as images are added; the default, which needs the
    bootstrap-t to agree, stays at most at alpha. 600 benchmarks: Monte Carlo SE of a
    rate near 0.05 is 0.009; the seeded rates are ~0.03, two SEs below alpha."""
    r = rates("shape", n_img, sims=600, seed=100 + n_img)
    for m in ("miou", "asr50"):
        assert r[m] <= ALPHA, f"{n_img} images, {m}: 'stronger' in {r[m]:.3f}"
    assert r["flip_miou"] > r["miou"], r  # the bootstrap-t is what fixes it
    if n_img >= 30:
        assert r["wilcoxon_miou"] > 3 * r["miou"], r


@pytest.mark.parametrize("n_img, floor", [(15, 0.75), (30, 0.95)])
def test_power_against_a_real_effect(n_img, floor):
    """b destroys 15 points more: the default test keeps most of the sign-flip test's
    power (simulated 0.83 vs 0.86 at 15 images, docs/statistics.md)."""
    r = rates("effect", n_img, sims=300, seed=7)
    assert r["miou"] >= floor and r["asr50"] >= floor, r
    assert r["miou"] <= r["flip_miou"]  # both must reject: never more power than one


def test_family_wise_error_over_a_benchmark():
    """9 attacks × 5 victims × 2 metrics under the global null: a false 'stronger'
    anywhere in at most ~alpha of benchmarks (Bonferroni over everything shown)."""
    rng = np.random.default_rng(11)
    any_false = 0
    sims = 60
    for s in range(sims):
        diffs = []
        for _ in range(9 * 5):
            d = benchmark(rng, 12, "null")
            diffs += [d[0], d[1]]
        t = family_tests(diffs, alpha=ALPHA, seed=s)
        any_false += bool(t["significant"].any())
    assert any_false / sims <= 0.1, any_false / sims


if __name__ == "__main__":  # the table of docs/statistics.md
    import sys

    sims = int(sys.argv[1]) if len(sys.argv) > 1 else 4000
    print(f"{sims} simulated benchmarks per line, two-sided, alpha = {ALPHA}")
    print(
        "| scenario | images | default mIoU | default ASR@50 | sign-flip alone mIoU "
        "| bootstrap-t alone mIoU | former Wilcoxon mIoU |"
    )
    print("|---|---|---|---|---|---|---|")
    for scenario in ("null", "shape", "effect"):
        for n in (6, 8, 15, 30, 50):
            r = rates(scenario, n, sims=sims, seed=n)
            print(
                f"| {scenario} | {n} | {r['miou']:.3f} | {r['asr50']:.3f} | {r['flip_miou']:.3f} "
                f"| {r['boot_miou']:.3f} | {r['wilcoxon_miou']:.3f} |"
            )
