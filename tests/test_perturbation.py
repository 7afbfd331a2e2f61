"""Perturbation metrics against hand-computed values on tiny images, their storage beside
the IoU rows when an attack job finishes, and the per-attack summary."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from uadbench import api
from uadbench.errors import UadbenchError
from uadbench.eval import perturbation as P

TINY = "seeded-sam-tiny"


def test_norms_and_psnr_by_hand():
    clean = np.zeros((2, 2, 3), np.uint8)
    adv = clean.copy()
    adv[0, 0, 0] = 6  # δ = 6 and 8 in two places, 0 elsewhere
    adv[1, 1, 2] = 8
    m = P.norms(clean, adv)
    assert m["linf_255"] == 8 and m["linf"] == pytest.approx(8 / 255)
    assert m["l2_255"] == pytest.approx(10.0)  # sqrt(36 + 64)
    assert m["l2"] == pytest.approx(10.0 / 255)
    assert m["l2_pixel_255"] == pytest.approx(10.0 / 2)  # ‖δ‖ / sqrt(H·W) = 10 / sqrt(4)
    assert m["l2_pixel"] == pytest.approx(10.0 / 2 / 255)
    # MSE over the 12 values = 100 / 12
    assert m["psnr"] == pytest.approx(10 * math.log10(255**2 * 12 / 100))
    # a decrease counts like an increase (absolute value), identical images: PSNR inf
    assert P.norms(adv, clean)["linf_255"] == 8
    assert P.norms(clean, clean)["psnr"] == math.inf
    with pytest.raises(UadbenchError):
        P.norms(clean, adv[:1])


def _gauss11(sigma=1.5):
    x = np.arange(11) - 5.0
    g = np.exp(-(x**2) / (2 * sigma**2))
    g /= g.sum()
    return np.outer(g, g)


def _ssim_one_window(x: np.ndarray, y: np.ndarray) -> float:
    """SSIM of an 11×11 grey pair by Wang et al.'s formula, one Gaussian-weighted window."""
    w = _gauss11()
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    mx, my = (w * x).sum(), (w * y).sum()
    vx, vy = (w * x * x).sum() - mx**2, (w * y * y).sum() - my**2
    cxy = (w * x * y).sum() - mx * my
    return ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))


def test_ssim_by_hand_on_an_11px_image():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (11, 11)).astype(np.uint8)
    y = np.clip(x.astype(int) + rng.integers(-40, 41, x.shape), 0, 255).astype(np.uint8)
    want = _ssim_one_window(x.astype(float), y.astype(float))
    assert 0.3 < want < 0.99
    rgb = np.stack([x, x, x], axis=2), np.stack([y, y, y], axis=2)
    assert P.ssim(*rgb) == pytest.approx(want, abs=1e-6)
    # constant images: luminance term only, (2ab + C1) / (a² + b² + C1)
    a, b = np.full((11, 11, 3), 100, np.uint8), np.full((11, 11, 3), 120, np.uint8)
    c1 = (0.01 * 255) ** 2
    assert P.ssim(a, b) == pytest.approx((2 * 100 * 120 + c1) / (100**2 + 120**2 + c1), abs=1e-6)
    assert P.ssim(x, x) == pytest.approx(1.0)
    assert math.isnan(P.ssim(x[:10, :10], y[:10, :10]))


def test_ms_ssim_by_hand_on_constant_images():
    # 176 = 11·16: the 4 halvings stay even, constants stay constant; every contrast-
    # structure term is 1, so MS-SSIM = luminance^0.1333 (the coarsest scale's weight)
    a, b = np.full((176, 176, 3), 100, np.uint8), np.full((176, 176, 3), 150, np.uint8)
    c1 = (0.01 * 255) ** 2
    lum = (2 * 100 * 150 + c1) / (100**2 + 150**2 + c1)
    # (pytorch-msssim's window is float32: agreement to ~1e-5)
    assert P.ms_ssim(a, b) == pytest.approx(lum**0.1333, abs=1e-5)
    assert P.ms_ssim(a, a) == pytest.approx(1.0)
    assert math.isnan(P.ms_ssim(a[:160], b[:160]))


def test_lpips_only_with_local_weights():
    pytest.importorskip("lpips")
    if not P.lpips_available():
        x = np.zeros((32, 32, 3), np.uint8)
        assert math.isnan(P.lpips(x, x))
        pytest.skip("lpips installed but its AlexNet weights are not on this machine")
    x = np.random.default_rng(0).integers(0, 256, (64, 64, 3)).astype(np.uint8)
    assert P.lpips(x, x) == pytest.approx(0.0, abs=1e-6) and P.lpips(x, 255 - x) > 0.1


def test_attack_timer_per_image():
    with P.AttackTimer("cpu") as t:
        s = 0
        for i in range(200000):
            s += i
    cost = t.per_image(4)
    assert cost["wall_seconds"] == pytest.approx(t.wall / 4) and t.wall > 0
    assert cost["cpu_seconds"] > 0 and cost["batch_size"] == 4
    assert math.isnan(cost["gpu_seconds"]) and math.isnan(cost["peak_mem_mb"])
    assert cost["peak_rss_mb"] > 10


def test_attack_job_stores_one_perturbation_row_per_image_and_resumes(tmp_path, capsys):
    out = tmp_path / "run"
    kw = dict(attacks="feature-pgd:steps=1", victims=TINY, limit=2, out=out, progress=False)
    api.run(**kw)
    files = sorted((out / P.PERTURBATION_DIR).glob("**/*.parquet"))
    assert len(files) == 2
    df = P.load_perturbations(out)
    assert len(df) == 2 and df["sample_id"].is_unique
    # the stored row is the metric of the stored adversarial PNG against the clean image
    from uadbench.engine.jobs import load_png
    from uadbench.report.panel import load_clean_image
    from uadbench.store.rundir import adv_path, code_key, load_manifest

    r = df.iloc[0]
    man = load_manifest(out)
    code = code_key(man["attacks"][0]["code"], man["surrogate"]["code"])
    adv = load_png(
        adv_path(
            out, r["attack_name"], r["attack_hash"], r["surrogate"], r["sample_id"], r["seed"], code
        )
    )
    clean = load_clean_image(man, r["sample_id"])
    want = P.norms(clean, adv)
    assert r["linf_255"] == want["linf_255"] and r["psnr"] == pytest.approx(want["psnr"])
    assert 0 < r["linf_255"] <= round(r["eps"] * 255) + 1e-9  # within the budget
    assert r["ssim"] == pytest.approx(P.ssim(clean, adv))
    assert r["wall_seconds"] > 0 and r["cpu_seconds"] > 0 and r["batch_size"] >= 1
    # resuming does not rewrite or duplicate; a lost row of a finished job is not an error
    mtimes = [f.stat().st_mtime_ns for f in files]
    api.run(**kw)
    assert [f.stat().st_mtime_ns for f in files] == mtimes
    assert len(P.load_perturbations(out)) == 2
    summ = P.perturbation_summary(out)
    assert list(summ["attack"]) == [r["attack"]] and int(summ["n_images"].iloc[0]) == 2
    assert summ["linf_255"].iloc[0] == pytest.approx(df["linf_255"].mean())
    # the leaderboard prints them per attack on request, beside mIoU
    from uadbench.cli import main

    assert main(["leaderboard", str(out), "--metrics", "miou,linf,psnr,ssim"]) == 0
    text = capsys.readouterr().out
    assert "mIoU" in text and "Perturbation per attack" in text
    line = next(ln for ln in text.splitlines() if ln.startswith(r["attack"]) and "2" in ln)
    assert f"{df['linf_255'].mean():.2f}" in line and f"{df['ssim'].mean():.4f}" in line


def test_summary_means_and_identical_images():
    df = pd.DataFrame(
        {
            "attack": ["a", "a", "b"],
            "sample_id": ["s0", "s1", "s0"],
            "linf_255": [4.0, 8.0, 2.0],
            "psnr": [40.0, math.inf, 30.0],
            "ssim": [0.9, 1.0, 0.5],
        }
    )
    s = P.perturbation_summary(df, ("linf_255", "psnr", "ssim")).set_index("attack")
    assert s.loc["a", "linf_255"] == 6.0 and s.loc["b", "linf_255"] == 2.0
    assert s.loc["a", "psnr"] == 40.0 and s.loc["a", "psnr_identical"] == 1
    assert s.loc["a", "n_images"] == 2
    assert P.parse_perturbation_metrics("linf,psnr,ms-ssim") == ("linf_255", "psnr", "ms_ssim")
    with pytest.raises(UadbenchError, match="unknown metric 'lpipz'"):
        P.parse_perturbation_metrics("linf,lpipz")


def test_no_adversarial_png_without_its_perturbation_row(tmp_path, monkeypatch):
    """The row is written before the PNG (which marks the job done): a kill between the
    two leaves neither, and the rerun writes both."""
    from uadbench.engine import jobs

    spec = api.plan("feature-pgd:steps=1", TINY, "samples", None, 0, 1, None, False)
    worker = jobs.AttackWorker(spec, tmp_path)
    attack, sid = spec.attacks[0], worker.data.ids()[0]

    class Killed(BaseException):
        pass

    def killed(*args, **kwargs):
        raise Killed

    monkeypatch.setattr(jobs, "write_perturbation_row", killed)
    with pytest.raises(Killed):
        worker.run(attack, [sid])
    assert not worker.data.adv_file(attack, sid).exists()
    monkeypatch.undo()
    worker.run(attack, [sid])
    assert worker.data.adv_file(attack, sid).exists()
    assert P.perturbation_path(tmp_path, attack.key, sid).exists()
