"""UAD specifics: the thin-plate-spline warp, the checkerboard merge, the losses, the
fidelity-gradient option and the exactness of skipping unused estimates."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from attack_helpers import (
    TinyViTSurrogate,
    make_context,
    one_thread,  # noqa: F401 (autouse: one torch thread)
    random_image,
    to_float,
)

from uadbench.attacks.feature_pgd import SAM_PIXEL_STD, surrogate_features
from uadbench.attacks.uad import (
    UAD,
    UADConfig,
    checkerboard,
    control_loss,
    fidelity_loss,
    grid_centres,
    init_control_points,
    merge_warps,
    patch_deform_loss,
    ssim_deform_loss,
    tps_flow,
    tps_warp,
)
from uadbench.config import build_config
from uadbench.errors import ConfigError


@pytest.fixture(scope="module")
def surrogate():
    return TinyViTSurrogate()


def _img(h=40, w=56, seed=0) -> torch.Tensor:
    return to_float([random_image(h, w, seed)])


def _points(n=4, h=40, w=56, seed=0, jitter=3.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    c = torch.tensor(grid_centres((h, w), n), dtype=torch.float32)[None]
    return c + torch.randn(c.shape, generator=g) * jitter


# ----------------------------------------------------------------------------- TPS
def test_tps_identity_when_destination_equals_source():
    x = _img()
    p = _points()
    out = tps_warp(x, p, p.clone())
    assert torch.allclose(out, x, atol=1e-5)


def test_tps_translation_translates_the_image():
    x = _img()
    src = _points()
    dst = src + torch.tensor([3.0, 2.0])  # every point moves 3 px right, 2 px down
    out = tps_warp(x, src, dst)
    assert torch.allclose(tps_flow(src, dst, (40, 56)), torch.tensor([3.0, 2.0]), atol=1e-3)
    assert torch.allclose(out[..., 2:, 3:], x[..., :-2, :-3], atol=1e-4)


def test_tps_interpolates_the_control_displacements_at_the_destinations():
    src = _points(jitter=4.0)
    dst = (src + torch.randn(src.shape, generator=torch.Generator().manual_seed(1)) * 3).round()
    dst = torch.minimum(dst.clamp_min(0), torch.tensor([55.0, 39.0]))
    flow = tps_flow(src, dst, (40, 56))
    ix, iy = dst[0, :, 0].long(), dst[0, :, 1].long()
    assert torch.allclose(flow[0, iy, ix], (dst - src)[0], atol=1e-3)
    # content at a source point lands on its destination
    x = _img()
    out = tps_warp(x, src, dst)
    k = 5
    sx, sy = src[0, k]
    ref = torch.nn.functional.grid_sample(
        x,
        torch.tensor([[[[2 * sx / 55 - 1, 2 * sy / 39 - 1]]]]),
        align_corners=True,
        padding_mode="reflection",
    )
    assert torch.allclose(out[0, :, iy[k], ix[k]], ref[0, :, 0, 0], atol=1e-3)


def test_tps_is_the_order_one_polyharmonic_spline():
    """Matches a float64 pixel-space solve of φ(r) = r with a linear part, no regulariser."""
    h, w = 24, 30
    src = _points(n=3, h=h, w=w, jitter=2.0)
    dst = src + torch.randn(src.shape, generator=torch.Generator().manual_seed(2)) * 2
    c, f = dst[0].double(), (dst - src)[0].double()
    n = len(c)
    a = torch.cdist(c, c)
    p = torch.cat([c, torch.ones(n, 1, dtype=torch.float64)], 1)
    lhs = torch.zeros(n + 3, n + 3, dtype=torch.float64)
    lhs[:n, :n], lhs[:n, n:], lhs[n:, :n] = a, p, p.T
    sol = torch.linalg.solve(lhs, torch.cat([f, torch.zeros(3, 2, dtype=torch.float64)]))
    yy, xx = torch.meshgrid(
        torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij"
    )
    q = torch.stack([xx.ravel(), yy.ravel()], 1)
    ref = (
        torch.cdist(q, c) @ sol[:n]
        + torch.cat([q, torch.ones(len(q), 1, dtype=torch.float64)], 1) @ sol[n:]
    )
    assert torch.allclose(tps_flow(src, dst, (h, w))[0].reshape(-1, 2).double(), ref, atol=2e-3)


def test_tps_chunked_evaluation_matches_and_is_differentiable(monkeypatch):
    import uadbench.attacks.uad as uad_mod

    src = _points().requires_grad_(True)
    dst = (src.detach() + 2.5).requires_grad_(True)
    full = tps_flow(src, dst, (40, 56))
    g_full = torch.autograd.grad(full.pow(2).sum(), (src, dst))
    monkeypatch.setattr(uad_mod, "_CHUNK_ELEMS", 56 * 16 * 3)  # 3 rows per chunk
    chunked = tps_flow(src, dst, (40, 56))
    g_chunk = torch.autograd.grad(chunked.pow(2).sum(), (src, dst))
    assert torch.allclose(full, chunked, atol=1e-5)
    assert all((a - b).abs().max() < 1e-4 * a.abs().max() for a, b in zip(g_full, g_chunk))


@pytest.mark.parametrize("chunk_rows", [None, 2])
def test_tps_grid_closed_form_gradients(monkeypatch, chunk_rows):
    """The hand-written backward of the dense spline evaluation, checked numerically."""
    import uadbench.attacks.uad as uad_mod

    m, n, h, w = 2, 5, 5, 6
    if chunk_rows:
        monkeypatch.setattr(uad_mod, "_CHUNK_ELEMS", chunk_rows * w * n)
    g = torch.Generator().manual_seed(0)
    c = torch.rand(m, n, 2, generator=g, dtype=torch.float64).requires_grad_(True)
    wts = torch.randn(m, n, 2, generator=g, dtype=torch.float64).requires_grad_(True)
    v = torch.randn(m, 3, 2, generator=g, dtype=torch.float64).requires_grad_(True)
    xs, ys = torch.arange(w, dtype=torch.float64) / 6, torch.arange(h, dtype=torch.float64) / 6
    assert torch.autograd.gradcheck(
        lambda a, b, d: uad_mod._TPSGrid.apply(a, b, d, xs, ys), (c, wts, v)
    )


def test_tps_gradient_reaches_the_points():
    x = _img()
    src = _points().requires_grad_(True)
    dst = (src.detach() + torch.randn(src.shape) * 2).requires_grad_(True)
    patch_deform_loss(x, tps_warp(x, src, dst), (58.395, 57.12, 57.375)).sum().backward()
    assert src.grad.abs().sum() > 0 and dst.grad.abs().sum() > 0


# ----------------------------------------------------------------------------- merge
def test_checkerboard_pattern():
    b = checkerboard((1024, 1024), 300.0, torch.device("cpu"))
    assert (
        b[0, 0] == 0 and b[0, 299] == 0 and b[0, 300] == 1 and b[300, 0] == 1 and b[300, 300] == 0
    )
    assert b[650, 650] == 0 and b[650, 950] == 1 and b[299, 600] == 0 and b[600, 301] == 1
    small = checkerboard((64, 48), 300 * 64 / 1024, torch.device("cpu"))  # cell 18.75 px
    assert small[18, 18] == 0 and small[19, 18] == 1 and small[18, 19] == 1 and small[38, 38] == 0


def test_merge_is_max_on_one_cells_and_min_on_zero_cells():
    warped = torch.rand(2, 4, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    filt = checkerboard((16, 16), 5.0, torch.device("cpu")).expand(2, 1, 16, 16)
    out = merge_warps(warped, filt)
    on = filt.expand(2, 3, 16, 16) == 1
    assert torch.equal(out[on], warped.max(dim=1).values[on])
    assert torch.equal(out[~on], warped.min(dim=1).values[~on])
    assert torch.equal(merge_warps(warped[:, :1], filt), warped[:, 0])


# ----------------------------------------------------------------------------- losses
def test_control_loss_hand_computed():
    src = torch.zeros(1, 2, 3, 2)
    # warp 0 moves its 3 points by (1,0), (3,0), (5,0); warp 1 by (0,2), (0,2), (0,2)
    dst = torch.tensor([[[[1.0, 0], [3, 0], [5, 0]], [[0, 2], [0, 2], [0, 2]]]])
    # within: std over points (unbiased): warp 0 x: std(1,3,5)=2, y: 0; warp 1: 0, 0 → mean 0.5
    # across: std over the 2 warps per point and axis: x: |1−0|/√2, |3|/√2, |5|/√2; y: 2/√2 each
    across = (1 + 3 + 5 + 2 + 2 + 2) / np.sqrt(2) / 6
    expected = 0.5 - 0.5 * across
    assert torch.isclose(
        control_loss(src, dst), torch.tensor([expected], dtype=torch.float32), atol=1e-5
    )
    # in reference units: displacements of 2 px with 2 px per unit count as 1
    assert torch.isclose(control_loss(src, dst * 2, unit=2.0), control_loss(src, dst), atol=1e-6)
    # K = 1: no across term; within = mean(std x = 2, std y = 0) = 1
    assert torch.isclose(control_loss(src[:, :1], dst[:, :1]), torch.tensor([1.0]))


def test_patch_deform_loss_in_normalized_units():
    x = torch.zeros(1, 3, 4, 4)
    y = torch.full_like(x, 10 / 255)
    std = torch.tensor([58.395, 57.12, 57.375])
    assert torch.isclose(
        patch_deform_loss(x, y, std.tolist()), -(10 / std).mean().reshape(1), atol=1e-6
    ).all()


@pytest.mark.parametrize("size", [64, 176])
def test_ssim_deform_loss(size):
    x = to_float([random_image(size, size, 3)])
    same = ssim_deform_loss(x, x)
    other = ssim_deform_loss(x, x.flip(-1))
    assert same.shape == (1,) and torch.allclose(same, torch.ones(1), atol=1e-4)
    assert other < 0.9


def test_fidelity_loss_orientation():
    clean = [torch.tensor([[1.0, 0.0]])]
    target = [torch.tensor([[0.0, 1.0]])]
    assert fidelity_loss(clean, target, clean) == 1.0  # at I: far from f(Î), on f(I)
    assert fidelity_loss(target, target, clean) == -1.0  # reached f(Î)


# ----------------------------------------------------------------------------- set-up
def test_initial_points_follow_the_grid_and_the_seed():
    cfg = UADConfig()
    src, dst = init_control_points((60, 90), cfg, np.random.default_rng(0))
    assert src.shape == (4, 36, 2)
    assert np.allclose(src, grid_centres((60, 90), 6)[None])  # src_rand_range = 0
    disp = dst - src
    assert 0 < np.abs(disp[..., 0]).mean() < 0.1 * 15 * 1.5  # ~0.1 block (15 px) in x
    assert (dst[..., 0] <= 89).all() and (dst[..., 1] <= 59).all() and (dst >= 0).all()
    again = init_control_points((60, 90), cfg, np.random.default_rng(0))[1]
    assert np.array_equal(dst, again)


def test_scaling_to_the_image_resolution():
    uad = UAD()
    assert uad.unit((1024, 683)) == 1.0 and uad.unit((300, 512)) == 0.5
    cfg = build_config(UADConfig, {"deform_guidance": "ssim", "warp_size": "2"})
    assert cfg.deform_guidance == "ssim" and cfg.warp_size == 2
    with pytest.raises(ConfigError):
        build_config(UADConfig, {"deform_guidance": "l2"})
    with pytest.raises(ConfigError):
        build_config(UADConfig, {"num_split": "1"})


def test_defaults_are_the_papers():
    c = UADConfig()
    assert (c.eps, c.alpha, c.steps) == (8 / 255, 2 / 255, 40)
    assert (c.deform_epochs, c.warp_size, c.num_split, c.est_fidelity_iter) == (40, 4, 6, 4)
    assert (c.src_rand_range, c.dst_rand_range, c.deform_lr, c.warp_filter_stride) == (
        0.0,
        0.1,
        10.0,
        300.0,
    )
    assert (c.control_loss_alpha, c.fidelity_loss_alpha, c.deform_guidance) == (0.05, 1.0, "patch")
    assert not (c.fidelity_grad or c.use_di or c.use_mi)
    assert (c.di_noise_std, c.mi_momentum) == (4 / 255, 1.0)
    assert (c.di_units, c.di_keep) == ("normalized", False)


# ----------------------------------------------------------------------------- the attack
def _run(cfg: UADConfig, surrogate, n=1, seed=0):
    imgs = [random_image(48, 48, 10 + i) for i in range(n)]
    ctx = make_context([f"s{i}" for i in range(n)], imgs, seed=seed)
    uad = UAD(cfg)
    return uad, imgs, uad(imgs, surrogate, ctx)


FAST = dict(deform_epochs=4, est_fidelity_iter=2, steps=4)


def test_stage_one_deforms_the_image(surrogate):
    uad, imgs, _ = _run(UADConfig(**{**FAST, "deform_epochs": 8}), surrogate)
    x = to_float(imgs)
    st = uad.last_state
    moved = (st["dst"] - st["src"]).abs().mean()
    assert moved > 1.0  # px
    assert patch_deform_loss(x, st["deformed"], UADConfig().pixel_std) < -0.05
    assert st["filter"].shape == (1, 1, 48, 48) and 0 < st["filter"].mean() < 1


def test_fidelity_grad_reaches_the_control_points_only_when_asked(surrogate):
    """λ_F changes the learned points only with fidelity_grad=True (and the result then)."""
    base = dict(FAST, skip_unused_estimates=False, control_loss_alpha=0.05)
    pts = {}
    for grad in (False, True):
        for lam in (0.0, 1.0):
            uad, _, _ = _run(
                UADConfig(**base, fidelity_grad=grad, fidelity_loss_alpha=lam), surrogate
            )
            pts[grad, lam] = torch.cat([uad.last_state["src"], uad.last_state["dst"]])
    assert torch.equal(pts[False, 0.0], pts[False, 1.0])
    assert not torch.allclose(pts[True, 0.0], pts[True, 1.0])
    assert torch.equal(pts[False, 0.0], pts[True, 0.0])  # same trajectory when L_F has no weight


def test_fidelity_loss_gradient_through_the_target(surrogate):
    """The L_F term the points get with fidelity_grad: non-zero gradient via f(Î)."""
    uad = UAD(UADConfig(**FAST, fidelity_grad=True))
    x = _img(48, 48)
    ctx = make_context(["s"], [np.zeros((48, 48, 3), np.uint8)])
    src, dst = uad.initial_points(x, ctx)
    dst.requires_grad_(True)
    filt = uad.deform_filter(src, dst.detach(), (48, 48))
    taps = surrogate.default_taps()
    warped = uad.deform(x, src, dst, filt)
    target_graph = surrogate_features(surrogate, warped, taps)
    clean = surrogate_features(surrogate, x, taps)
    _, term = uad.simulate(
        x, surrogate, taps, [t.detach() for t in target_graph], clean, 2, ctx, "t", target_graph
    )
    (g,) = torch.autograd.grad(term.sum(), dst)
    assert g.abs().sum() > 0
    _, none = uad.simulate(
        x, surrogate, taps, [t.detach() for t in target_graph], clean, 2, ctx, "t"
    )
    assert none is None


@pytest.mark.parametrize("extra", [{}, {"use_di": True, "use_mi": True}])
def test_skipping_unused_estimates_gives_the_same_image(surrogate, extra):
    runs = [
        _run(UADConfig(**FAST, **extra, skip_unused_estimates=s), surrogate)[2][0]
        for s in (True, False)
    ]
    assert np.array_equal(runs[0], runs[1])


def test_di_and_mi_change_the_result(surrogate):
    plain = _run(UADConfig(**FAST), surrogate)[2][0]
    di = _run(UADConfig(**FAST, use_di=True), surrogate)[2][0]
    mi = _run(UADConfig(**FAST, use_mi=True), surrogate)[2][0]
    assert not np.array_equal(plain, di) and not np.array_equal(plain, mi)


def test_ssim_guidance_and_bf16_run(surrogate):
    for cfg in (UADConfig(**FAST, deform_guidance="ssim"), UADConfig(**FAST, amp="bf16")):
        uad, imgs, out = _run(cfg, surrogate)
        diff = np.abs(out[0].astype(int) - imgs[0].astype(int))
        assert diff.max() == 8 and diff.mean() > 2


def test_batch_of_images(surrogate):
    uad, imgs, out = _run(UADConfig(**FAST), surrogate, n=3)
    assert len(out) == 3 and uad.last_state["src"].shape == (3, 4, 36, 2)
    assert not np.array_equal(out[0], out[1])


def test_stage_one_is_exactly_batch_invariant(surrogate, monkeypatch):
    """An image's deformation does not depend on its batch-mates, bit for bit (Adam
    amplifies any float difference over T_D steps, so sums must run in the same order)."""
    import uadbench.attacks.uad as uad_mod

    monkeypatch.setattr(uad_mod, "_CHUNK_ELEMS", 48 * 36 * 12)  # 12 rows per chunk per warp
    cfg = UADConfig(deform_epochs=12, est_fidelity_iter=1, steps=1)
    batch, imgs, _ = _run(cfg, surrogate, n=3)
    ctx = make_context(["s1"], [imgs[1]])
    alone = UAD(cfg)
    alone([imgs[1]], surrogate, ctx)
    for key in ("src", "dst", "deformed"):
        assert torch.equal(batch.last_state[key][1], alone.last_state[key][0])


@pytest.mark.parametrize("units", ["normalized", "pixel"])
@pytest.mark.parametrize("keep", [False, True])
def test_di_noise_units_and_kept_iterate(surrogate, units, keep):
    """DI noise std: 4/255 in SAM-normalized units is 4/255·std/255 in pixels per channel
    (≈ 0.9 grey levels; "pixel" units: 4 grey levels). ``di_keep``: the noise stays in the
    iterate (the reference) — after one tiny step the result is ≈ x + noise — or only
    perturbs the forward's input — the result is within α of x."""
    cfg = UADConfig(**FAST, use_di=True, di_units=units, di_keep=keep, alpha=1e-4)
    uad = UAD(cfg)
    x = to_float([random_image(64, 64, 3)])
    ctx = make_context(["s"], [random_image(64, 64, 3)])
    seen = []
    feats = uad.feats
    uad.feats = lambda s, inp, taps: (seen.append(inp.detach().clone()), feats(s, inp, taps))[1]
    taps = (1, 2)
    clean = surrogate_features(surrogate, x, taps)
    out, _ = uad.simulate(x, surrogate, taps, clean, clean, 1, ctx, "t")
    std = torch.tensor(SAM_PIXEL_STD).view(3) / 255 if units == "normalized" else torch.ones(3)
    want = 4 / 255 * std
    got = (seen[0] - x)[0].flatten(1).std(dim=1)
    torch.testing.assert_close(got, want, rtol=0.08, atol=0)
    moved = (out - x)[0].flatten(1).std(dim=1)
    if keep:
        torch.testing.assert_close(moved, want, rtol=0.08, atol=0)
    else:
        assert (out - x).abs().max() <= 1e-4 + 1e-7
