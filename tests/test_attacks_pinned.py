"""The attacks' maths pinned to independent values, fast (the mutation area ``attacks`` runs
this file for every planted bug, docs/mutants.md).

Tiny tensors and a toy surrogate whose features are a few elementwise layers: each loss
term of each attack is evaluated as the attack builds it (its PGD is replaced by a stub that
keeps the loss) and compared with a plain re-implementation here; PGD is observed through
the inputs the loss sees (every iterate), so per-step projection, the step size α and the
direction are checked, not only the saved image; each attack's random draws are recomputed
here from (run seed, sample id, salt)."""

from __future__ import annotations

import hashlib
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from attack_helpers import (
    FakePool,
    make_context,
    one_thread,  # noqa: F401 (autouse: one torch thread)
)

from uadbench.attacks import ATTACKS
from uadbench.attacks.attack_sam import (
    AttackSam,
    AttackSamConfig,
    AttackSamK,
    AttackSamKConfig,
    clip_mse,
    random_point_prompts,
    random_points,
)
from uadbench.attacks.base import (
    Attack,
    AttackConfig,
    AttackContext,
    reference_output,
    resample,
    round_trip_matrix,
    scale_prompts,
    to_tensor,
    to_uint8,
)
from uadbench.attacks.feature_pgd import (
    FP16_LOSS_SCALE,
    SAM_PIXEL_STD,
    FeaturePGD,
    FeaturePGDConfig,
    autocast,
    check_amp,
    draw_other_images,
    draw_other_raw,
    feature_distance,
    loss_scale,
    resolve_taps,
    sample_context,
    sample_rand,
    sample_randn,
    signed_noise_init,
    stacked_distance,
    surrogate_features,
    tap_cosine,
)
from uadbench.attacks.transfer import (
    AA,
    ILPD,
    PATA,
    TAP,
    ILPDConfig,
    PATAConfig,
    PATAPlusPlus,
    TAPConfig,
    dominance,
    encoder_frame,
    power_transform,
)
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
    tps_warp,
)
from uadbench.errors import ConfigError
from uadbench.eval.prompts import PromptSet

ATOL = 1e-5


# ============================================================================ the toy surrogate
class Toy:
    """Features: ``depth`` elementwise layers z ← tanh(M_i z + b_i) (3×3 channel mixing), tap i
    = the output of layer i (B, 3, H, W). Mask logits: an affine map of the channel mean, one
    offset per prompt. Records every input of ``features`` (``inputs``) and the taps asked."""

    name = "toy"
    device = torch.device("cpu")

    def __init__(self, depth: int = 4, img_size: int | None = None, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.mix = [torch.randn(3, 3, generator=g) for _ in range(depth)]
        self.bias = [torch.randn(3, generator=g) * 0.1 for _ in range(depth)]
        self.num_blocks = depth
        if img_size is not None:
            self.img_size = img_size
        self.inputs: list[torch.Tensor] = []
        self.taps_seen: list[tuple[int, ...]] = []

    def default_taps(self) -> tuple[int, ...]:
        return (1, 2)

    def layer(self, i: int, z: torch.Tensor) -> torch.Tensor:
        return torch.tanh(
            torch.einsum("oc,bchw->bohw", self.mix[i], z) + self.bias[i].view(-1, 1, 1)
        )

    def plain(self, x: torch.Tensor, taps) -> list[torch.Tensor]:
        z, out = x, []
        for i in range(max(taps) + 1):
            z = self.layer(i, z)
            out.append(z)
        return [out[t] for t in taps]

    def features(self, x: torch.Tensor, taps) -> list[torch.Tensor]:
        self.inputs.append(x.detach().clone())
        self.taps_seen.append(tuple(taps))
        return self.plain(x, taps)

    def logits_of(self, xi: torch.Tensor, offset: float) -> torch.Tensor:
        return 40.0 * xi.mean(0) - 15.0 + offset

    def mask_logits(self, x, prompts):
        return [
            torch.stack(
                [
                    self.logits_of(x[i], float(j) + 0.01 * float(np.nansum(p.coords[j])))
                    for j in range(len(p))
                ]
            )
            for i, p in enumerate(prompts)
        ]

    def point_group_logits(self, x, points):
        """One mask per image; the points flip the sign of the logits at their pixels."""
        out = []
        for i, pts in enumerate(points):
            at = torch.zeros(x.shape[-2:])
            at[torch.as_tensor(pts[:, 1]).long(), torch.as_tensor(pts[:, 0]).long()] = 1.0
            out.append((self.logits_of(x[i], 0.0) * (1 - 2 * at))[None])
        return out


def img(b=2, h=12, w=15, seed=0, lo=0.1, hi=0.9) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return lo + (hi - lo) * torch.rand(b, 3, h, w, generator=g)


def ctx_for(x: torch.Tensor, seed: int = 0, pool: FakePool | None = None) -> AttackContext:
    ids = [f"s{i}" for i in range(x.shape[0])]
    ims = [np.zeros((x.shape[2], x.shape[3], 3), np.uint8)] * x.shape[0]
    return make_context(ids, ims, seed=seed, pool=pool)


def capture(attack: Attack) -> dict:
    """Replace the attack's PGD by a stub that keeps what it was given and returns x."""
    got: dict = {}

    def stub(x, loss_fn, steps=None, x_init=None, maximize=True, on_step=None):
        got.update(x=x, loss=loss_fn, x_init=x_init, maximize=maximize, steps=steps)
        return x

    attack.pgd = stub
    return got


def close(a, b, atol=ATOL):
    a, b = torch.as_tensor(a).double(), torch.as_tensor(b).double()
    assert a.shape == b.shape, (a.shape, b.shape)
    assert torch.allclose(a, b, atol=atol, rtol=1e-5), (a - b).abs().max()


def plain_rng(seed: int, ids, salt: str) -> np.random.Generator:
    key = f"{seed}|{'/'.join(ids)}|{salt}".encode()
    return np.random.default_rng(int.from_bytes(hashlib.sha256(key).digest()[:8], "little"))


def plain_randn(seed, ids, shape, salt, uniform=False) -> torch.Tensor:
    rows = []
    for sid in ids:
        g = torch.Generator()
        g.manual_seed(int(plain_rng(seed, [sid], salt).integers(0, 2**62)))
        rows.append(torch.rand(shape, generator=g) if uniform else torch.randn(shape, generator=g))
    return torch.stack(rows)


def plain_project(z, x, eps):
    return (x + (z - x).clamp(-eps, eps)).clamp(0, 1)


def plain_cos(a, b):
    a, b = a.flatten(1).double(), b.flatten(1).double()
    return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1)).clamp_min(1e-8)


def plain_tap_cos(fa, fb):
    return sum(plain_cos(a, b) for a, b in zip(fa, fb)) / len(fa)


def plain_stacked(fa, fb):
    return torch.sqrt(sum(((a - b).double() ** 2).flatten(1).sum(1) for a, b in zip(fa, fb)))


# ============================================================================ configs
@pytest.mark.parametrize(
    "bad",
    [
        dict(eps=-0.01),
        dict(eps=1.01),
        dict(alpha=0.0),
        dict(alpha=-1.0),
        dict(steps=-1),
        dict(output="x"),
        dict(attack_space="x"),
    ],
)
def test_attack_config_rejects(bad):
    with pytest.raises(ValueError):
        AttackConfig(**bad)


def test_attack_config_boundaries_and_defaults():
    AttackConfig(eps=0.0, steps=0)
    AttackConfig(eps=1.0, alpha=1e-6)
    c = AttackConfig()
    assert (c.eps, c.alpha, c.steps, c.attack_space, c.output) == (
        8 / 255,
        2 / 255,
        40,
        "model",
        "exact",
    )


@pytest.mark.parametrize(
    "cls,bad",
    [
        (FeaturePGDConfig, dict(amp="fp8")),
        (AttackSamConfig, dict(amp="fp8")),
        (AttackSamKConfig, dict(k=0)),
        (AttackSamKConfig, dict(mode="x")),
        (UADConfig, dict(deform_guidance="x")),
        (UADConfig, dict(deform_epochs=0)),
        (UADConfig, dict(warp_size=0)),
        (UADConfig, dict(est_fidelity_iter=-1)),
        (UADConfig, dict(num_split=1)),
        (UADConfig, dict(di_units="x")),
        (UADConfig, dict(warp_filter_stride=0)),
        (UADConfig, dict(ref_size=0)),
        (UADConfig, dict(deform_lr=0)),
        (UADConfig, dict(warp_filter_stride=-1.0)),
        (UADConfig, dict(ref_size=-1)),
        (UADConfig, dict(deform_lr=-1.0)),
        (UADConfig, dict(eps=2.0)),
    ],
)
def test_subclass_configs_reject(cls, bad):
    with pytest.raises(ValueError):
        cls(**bad)


def test_subclass_config_boundaries_and_defaults():
    AttackSamKConfig(k=1)
    UADConfig(deform_epochs=1, warp_size=1, est_fidelity_iter=0, num_split=2)
    for amp in ("none", "bf16", "fp16"):
        check_amp(amp)
    assert (AttackSamConfig().clip_max, AttackSamKConfig().k) == (-10.0, 400)
    assert (TAPConfig().tap_alpha, TAPConfig().tap_eta, TAPConfig().init_noise) == (0.5, 0.01, 0.01)
    assert (ILPDConfig().ilpd_gamma, PATAConfig().pata_lambda) == (0.5, 0.1)
    u = UADConfig()
    assert (u.deform_epochs, u.warp_size, u.num_split, u.src_rand_range, u.dst_rand_range) == (
        40,
        4,
        6,
        0.0,
        0.1,
    )
    assert (u.deform_lr, u.warp_filter_stride, u.control_loss_alpha, u.est_fidelity_iter) == (
        10.0,
        300.0,
        0.05,
        4,
    )
    assert (u.ref_size, u.di_noise_std, u.mi_momentum, u.fidelity_loss_alpha) == (
        1024,
        4 / 255,
        1.0,
        1.0,
    )
    assert u.skip_unused_estimates is True and u.deform_guidance == "patch"
    assert not (u.fidelity_grad or u.use_di or u.di_keep or u.use_mi) and u.di_units == "normalized"


# ============================================================================ base: shared parts
def test_context_rng_is_seeded_by_seed_ids_and_salt():
    ctx = AttackContext(["a", "b"], seed=7)
    assert ctx.rng("s").integers(0, 2**62) == plain_rng(7, ["a", "b"], "s").integers(0, 2**62)
    assert ctx.rng().integers(0, 2**62) == plain_rng(7, ["a", "b"], "").integers(0, 2**62)
    g = ctx.torch_generator(torch.device("cpu"), "t")
    ref = torch.Generator()
    ref.manual_seed(int(plain_rng(7, ["a", "b"], "t").integers(0, 2**62)))
    assert torch.equal(torch.rand(5, generator=g), torch.rand(5, generator=ref))


def test_to_tensor_to_uint8_round_not_truncate():
    a = np.arange(2 * 3 * 4 * 3, dtype=np.uint8).reshape(2, 3, 4, 3) * 2
    t = to_tensor(list(a), torch.device("cpu"))
    close(t, torch.from_numpy(a).permute(0, 3, 1, 2).float() / 255)
    grey = torch.tensor([0.4, 0.6, 1.49, 1.51, 254.6, 300.0, -3.0]) / 255
    out = to_uint8(grey.view(1, 1, 1, -1).expand(1, 3, 1, 7))[0][0, :, 0]
    assert out.tolist() == [0, 1, 1, 2, 255, 255, 0]


def test_project_onto_ball_and_range():
    x = img(seed=1)
    z = x + (torch.rand(x.shape, generator=torch.Generator().manual_seed(2)) - 0.5)
    a = FeaturePGD(FeaturePGDConfig(eps=0.05))
    close(a.project(z, x), plain_project(z, x, 0.05))
    z2 = torch.full_like(x, 2.0)
    close(a.project(z2, torch.full_like(x, 0.99)), torch.ones_like(x))
    close(a.project(-z2, torch.full_like(x, 0.01)), torch.zeros_like(x))


@pytest.mark.parametrize("maximize", [True, False])
def test_pgd_steps_by_alpha_and_projects_every_iterate(maximize):
    """Loss c·z: every step moves each pixel by exactly α (signed), until the ball stops it;
    the iterates (what the loss sees) never leave the ball."""
    eps, alpha = 3 / 255, 1 / 255
    x = img(b=1, h=4, w=5, seed=3, lo=0.3, hi=0.7)
    x[0, 0, 0, 0], x[0, 1, 0, 0] = 1.0, 0.0  # at the range's ends
    c = torch.randn(x.shape, generator=torch.Generator().manual_seed(4))
    c[0, 0, 0, 0], c[0, 1, 0, 0] = 1.0, -1.0
    seen, stepped = [], []
    a = FeaturePGD(FeaturePGDConfig(eps=eps, alpha=alpha, steps=5))

    def loss(z):
        seen.append(z.detach().clone())
        return (c * z).flatten(1).sum(1)

    out = a.pgd(x, loss, maximize=maximize, on_step=lambda i, z: stepped.append((i, z.clone())))
    s = c.sign() * (1 if maximize else -1)
    assert len(seen) == 5 and [i for i, _ in stepped] == list(range(5))
    for k, z in enumerate(seen + [out]):
        close(z, plain_project(x + min(k, 3) * alpha * s, x, eps), atol=1e-6)
        assert ((z - x).abs() <= eps + 1e-6).all() and z.min() >= 0 and z.max() <= 1
    close(stepped[0][1], seen[1], atol=0)
    assert not out.requires_grad
    # a start outside the ball is projected first; steps=0 returns the (projected) start
    seen.clear()
    a.pgd(x, loss, steps=1, x_init=x + 1.0, maximize=maximize)
    close(seen[0], plain_project(x + 1.0, x, eps), atol=1e-6)
    close(a.pgd(x, loss, steps=0, x_init=x - 1.0), plain_project(x - 1.0, x, eps), atol=1e-6)
    # the default direction is ascent (a plugin calling pgd(x, loss) maximises)
    close(a.pgd(x, loss, steps=1), plain_project(x + alpha * c.sign(), x, eps), atol=1e-6)


class _Shift(Attack):
    """perturb = x + a fixed offset (grey levels), to observe the base's saving path."""

    def __init__(self, d, config=None):
        super().__init__(config)
        self.d = d

    def perturb(self, x, surrogate, ctx):
        return x + self.d.to(x) / 255


@pytest.mark.parametrize("eps,r", [(3 / 255, 3), (3.6 / 255, 3), (7.99 / 255, 7)])
def test_saved_image_rounded_and_clipped_to_the_integer_budget(eps, r):
    d = torch.tensor([0.6, 1.4, -0.7, -2.2, 5.3, -9.0, 3.4, -3.3, 3.8, -3.8, 9.0])
    clean = np.full((1, 11, 3), 100, np.uint8)
    clean[0, 4] = 254
    clean[0, 5] = 1
    out = _Shift(d.view(1, 1, 1, 11), AttackConfig(eps=eps))([clean], None, AttackContext(["a"]))[0]
    moved = np.clip(np.round(np.clip(d.numpy(), -eps * 255, eps * 255)), -r, r)
    exp = np.clip(clean.astype(int) + moved[None, :, None], 0, 255)
    # float ε = 3.6: 3.8 → 3.6 (the float clip) → rounds to 4 → the integer clip makes it 3
    assert out.dtype == np.uint8 and out.tolist() == exp.astype(np.uint8).tolist()


def test_one_size_per_batch():
    with pytest.raises(ValueError, match="one size"):
        _Shift(torch.zeros(1))(
            [np.zeros((4, 4, 3), np.uint8), np.zeros((4, 5, 3), np.uint8)],
            None,
            AttackContext(["a", "b"]),
        )


def test_resample_and_round_trip_matrix():
    x = img(b=1, h=6, w=7, seed=5)
    assert resample(x, (6, 7)) is x
    close(
        resample(x, (12, 14)),
        F.interpolate(x, (12, 14), mode="bilinear", align_corners=False, antialias=True),
    )
    d = img(b=1, h=6, w=7, seed=6) - 0.5
    dy, dx = round_trip_matrix(6, 15, x.device), round_trip_matrix(7, 16, x.device)
    assert dy.shape == (6, 6) and dx.shape == (7, 7)
    close(dy @ d @ dx.T, resample(resample(d, (15, 16)), (6, 7)))
    d1 = img(b=1, h=1, w=7, seed=7)
    close(round_trip_matrix(1, 3, x.device) @ d1 @ dx.T, resample(resample(d1, (3, 16)), (1, 7)))


def test_scale_prompts_and_reference_output():
    p = PromptSet.from_lists(points=[(2.0, 4.0)], boxes=[(1.0, 2.0, 3.0, 4.0)])
    q = scale_prompts(p, 0.5, 2.0)
    assert np.allclose(q.coords[0, :2], [1.0, 8.0]) and np.allclose(q.coords[1], [0.5, 4, 1.5, 8])
    assert list(q.kinds) == list(p.kinds)
    v = torch.tensor([0.2, 0.9, 1.7, 254.99, 300]).view(1, 1, 1, -1).expand(1, 3, 1, 5) / 255
    assert reference_output(v, (1, 5))[0][0, :, 0].tolist() == [0, 0, 1, 254, 255]  # truncated
    up = reference_output(v, (2, 10))[0]
    assert up.shape == (2, 10, 3)


class _Recorder(Attack):
    """Returns its input + 0.01, and records the input it got and the view of a probe."""

    def perturb(self, x, surrogate, ctx):
        self.got = x.clone()
        self.prompts = ctx.prompts
        probe = torch.rand(x.shape, generator=torch.Generator().manual_seed(0)) * 0.04
        self.viewed = self.view(x + probe).clone()
        return x + 0.01


class _Framed:
    device = torch.device("cpu")

    def __init__(self, fhw):
        self.fhw = fhw

    def model_frame(self, hw):
        return self.fhw


def test_model_space_perturbs_in_the_frame_and_maps_delta_back():
    x = img(b=1, h=12, w=16, seed=8)
    p = PromptSet.from_lists(points=[(8.0, 6.0)])
    ctx = AttackContext(["a"], prompts=[p])
    a = _Recorder(AttackConfig(eps=0.5))
    out = a.perturb_in_space(x, _Framed((6, 8)), ctx)
    small = resample(x, (6, 8)).clamp(0, 1)
    close(a.got, small)
    close(out, x + 0.01)
    assert np.allclose(a.prompts[0].coords[0, :2], [4.0, 3.0])
    dy, dx = round_trip_matrix(6, 12, x.device), round_trip_matrix(8, 16, x.device)
    probe = torch.rand(small.shape, generator=torch.Generator().manual_seed(0)) * 0.04
    close(a.viewed, small + dy @ probe @ dx.T)
    close(a.viewed, resample(x + resample(probe, (12, 16)), (6, 8)), atol=1e-4)  # the long way
    assert a._view is None  # restored
    # image space, an enlarging frame, or no frame: the image's own size
    for att, sur in [
        (_Recorder(AttackConfig(attack_space="image")), _Framed((6, 8))),
        (_Recorder(AttackConfig()), _Framed((24, 32))),
        (_Recorder(AttackConfig()), _Framed((12, 16))),
        (_Recorder(AttackConfig()), object()),
    ]:
        att.perturb_in_space(x, sur, ctx)
        assert att.got.shape == x.shape and att.prompts[0] is p
    assert _Recorder().frame(_Framed((12, 8)), (12, 16)) == (12, 8)
    assert _Recorder().frame(_Framed((6, 16)), (12, 16)) == (6, 16)  # shrinks one side only
    assert _Recorder().frame(_Framed((14, 16)), (12, 16)) is None  # enlarges (or keeps) both


def test_reference_output_mode_saves_the_truncated_frame_image():
    clean = np.full((12, 16, 3), 100, np.uint8)
    a = _Recorder(AttackConfig(output="reference"))
    out = a([clean], _Framed((24, 32)), AttackContext(["a"]))[0]  # enlarged: still the frame
    assert a.got.shape[-2:] == (24, 32)
    assert out.shape == clean.shape and (out == 102).all()  # 100/255 + 0.01 → 102.55 → 102
    out = a([clean], object(), AttackContext(["a"]))[0]
    assert (out == 102).all()
    out = _Recorder(AttackConfig())([clean], object(), AttackContext(["a"]))[0]
    assert (out == 103).all()  # exact mode rounds


# ============================================================================ feature helpers
def test_feature_losses_against_plain():
    g = torch.Generator().manual_seed(9)
    fa = [torch.randn(2, 3, 4, 5, generator=g), torch.randn(2, 6, 2, generator=g)]
    fb = [torch.randn(2, 3, 4, 5, generator=g), torch.randn(2, 6, 2, generator=g)]
    close(stacked_distance(fa, fb), plain_stacked(fa, fb))
    close(
        feature_distance(fa, fb),
        sum((a - b).double().flatten(1).norm(dim=1) for a, b in zip(fa, fb)),
    )
    close(tap_cosine(fa, fb), plain_tap_cos(fa, fb))
    comp = [torch.randn(2, 3, 4, 5, generator=g), torch.randn(2, 6, 2, generator=g)]
    mix = [a + c for a, c in zip(fa, comp)]
    close(dominance(fa, comp), plain_tap_cos(fa, mix) - plain_tap_cos(comp, mix))
    z = torch.tensor([-4.0, -0.25, 0.0, 0.25, 9.0])
    close(power_transform(z, 0.5), torch.tensor([-2.0, -0.5, 0.0, 0.5, 3.0]))
    close(power_transform(z, 1.0), z)
    z.requires_grad_(True)
    power_transform(z, 0.5).sum().backward()
    assert torch.isfinite(z.grad).all() and z.grad[2] == 0


def test_resolve_taps():
    t = Toy(depth=4)
    assert resolve_taps(t, ()) == (1, 2)
    assert resolve_taps(t, (0, 3)) == (0, 3)
    for bad in [(4,), (-1,), (0, 5)]:
        with pytest.raises(ConfigError, match=r"4 blocks \(0\.\.3\)"):
            resolve_taps(t, bad)


def test_surrogate_features_amp_and_scale():
    t, x = Toy(), img(b=1, h=4, w=4)
    for amp in ("none", "bf16"):
        out = surrogate_features(t, x, (1, 2), amp)
        assert all(o.dtype == torch.float32 for o in out)
    close(surrogate_features(t, x, (2, 0))[0], t.plain(x, (2,))[0])
    with autocast(x.device, "bf16"):
        assert torch.get_autocast_dtype("cpu") == torch.bfloat16 and torch.is_autocast_enabled(
            "cpu"
        )
    with autocast(x.device, "none"):
        assert not torch.is_autocast_enabled("cpu")
    assert (loss_scale("fp16"), loss_scale("bf16"), loss_scale("none")) == (FP16_LOSS_SCALE, 1, 1)
    assert FP16_LOSS_SCALE == 1024.0
    with pytest.raises(ValueError):
        check_amp("fp32")


def test_per_sample_randomness():
    ctx = AttackContext(["a", "b"], seed=3, prompts=[None, "p"])
    one = sample_context(ctx, 1)
    assert one.sample_ids == ["b"] and one.seed == 3 and one.prompts == ["p"]
    close(
        sample_randn(ctx, (2, 3), "k", torch.device("cpu")), plain_randn(3, ["a", "b"], (2, 3), "k")
    )
    close(
        sample_rand(ctx, (2, 3), "k", torch.device("cpu")),
        plain_randn(3, ["a", "b"], (2, 3), "k", uniform=True),
    )
    x = img(b=2, h=3, w=4)
    u = plain_randn(3, ["a", "b"], (3, 3, 4), "init", uniform=True)
    close(signed_noise_init(x, ctx, 0.1), x + (2 * u - 1) * 0.1)


def test_draw_other_images_seeded_per_sample():
    pool = FakePool()
    ctx = AttackContext(["pool1", "b"], seed=5, draw_image=pool.draw_image)
    raw = draw_other_raw(ctx)
    exp = [pool.draw_image(plain_rng(5, [s], "target"), s) for s in ["pool1", "b"]]
    assert all(np.array_equal(a, b) for a, b in zip(raw, exp))
    gens = [plain_rng(1, ["q"], "x"), plain_rng(2, ["q"], "x")]
    raw2 = draw_other_raw(ctx, gens)
    exp2 = [pool.draw_image(plain_rng(s, ["q"], "x"), i) for s, i in [(1, "pool1"), (2, "b")]]
    assert all(np.array_equal(a, b) for a, b in zip(raw2, exp2))
    t = draw_other_images(ctx, (8, 9), torch.device("cpu"))
    ref = F.interpolate(
        torch.from_numpy(exp[0]).permute(2, 0, 1)[None].float() / 255,
        (8, 9),
        mode="bilinear",
        align_corners=False,
        antialias=True,
    )
    close(t[:1], ref)
    with pytest.raises(ConfigError, match="pata"):
        draw_other_raw(AttackContext(["a"]), who="pata")


# ============================================================================ each attack's loss
def test_feature_pgd_loss_start_and_direction():
    x, t = img(), Toy()
    ctx = ctx_for(x, seed=2)
    a = FeaturePGD(FeaturePGDConfig(alpha=0.04))
    got = capture(a)
    a.perturb(x, t, ctx)
    assert got["maximize"] is True
    u = plain_randn(2, ["s0", "s1"], tuple(x.shape[1:]), "init", uniform=True)
    close(got["x_init"], x + (2 * u - 1) * 0.02)
    xa = x + 0.03 * torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
    fa, fc = t.plain(xa, (1, 2)), t.plain(x, (1, 2))
    close(got["loss"](xa), sum((a_ - c).flatten(1).norm(dim=1) for a_, c in zip(fa, fc)))
    a2 = FeaturePGD(FeaturePGDConfig(taps=(3,), amp="fp16"))
    got2 = capture(a2)
    a2.perturb(x, t, ctx)
    close(
        got2["loss"](xa) / 1024,
        (t.plain(xa, (3,))[0] - t.plain(x, (3,))[0]).flatten(1).norm(dim=1),
        atol=0.05,
    )


def _plain_smooth(x, xa, eta, area):
    std = torch.tensor(SAM_PIXEL_STD).view(1, 3, 1, 1)
    d = (x - xa) * 255 / std
    b, _, h, w = d.shape
    tot = torch.zeros(b, dtype=torch.float64)
    for i in range(h // 3):  # AvgPool2d(3), stride 3, no padding
        for j in range(w // 3):
            tot += (
                d[:, :, 3 * i : 3 * i + 3, 3 * j : 3 * j + 3].double().mean(dim=(2, 3)).abs().sum(1)
            )
    return eta * area * tot


@pytest.mark.parametrize("cls,gamma", [(TAP, None), (ILPD, 0.3)])
def test_tap_and_ilpd_losses(cls, gamma):
    x, t = img(h=12, w=15), Toy(img_size=30)  # encoder frame 30 = 2 × the image's 15: area 4
    ctx = ctx_for(x, seed=4)
    kw = {"tap_eta": 0.02, "tap_alpha": 0.4, "taps": (0, 2)}
    cfg = ILPDConfig(ilpd_gamma=gamma, **kw) if gamma is not None else TAPConfig(**kw)
    a = cls(cfg)
    got = capture(a)
    a.perturb(x, t, ctx)
    assert got["maximize"] is True
    std = torch.tensor(SAM_PIXEL_STD).view(1, 3, 1, 1) / 255
    close(got["x_init"], x + plain_randn(4, ["s0", "s1"], (3, 12, 15), "init") * 0.01 * std)
    xa = x + 0.03 * torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
    fa, fc = t.plain(xa, (0, 2)), t.plain(x, (0, 2))
    if gamma is not None:
        fa = [gamma * a_ + (1 - gamma) * c for a_, c in zip(fa, fc)]

    def pw(z):
        return torch.sign(z) * z.abs() ** 0.4

    exp = plain_stacked([pw(f) for f in fa], [pw(f) for f in fc]) - _plain_smooth(x, xa, 0.02, 4.0)
    close(got["loss"](xa), exp, atol=1e-4)
    assert encoder_frame(t, (12, 15)) == 30.0 and encoder_frame(Toy(), (12, 15)) == 15.0
    # no input frame: the image's own long side, here its height (area 1)
    tall, t0 = x.transpose(-1, -2).contiguous(), Toy()
    a = cls(cfg)
    got = capture(a)
    a.perturb(tall, t0, ctx)
    xt = tall + 0.03
    fa, fc = t0.plain(xt, (0, 2)), t0.plain(tall, (0, 2))
    if gamma is not None:
        fa = [gamma * a_ + (1 - gamma) * c for a_, c in zip(fa, fc)]
    exp = plain_stacked([pw(f) for f in fa], [pw(f) for f in fc]) - _plain_smooth(
        tall, xt, 0.02, 1.0
    )
    close(got["loss"](xt), exp, atol=1e-4)


def _pool_feats(t, ims, hw, taps):
    x = torch.stack(
        [
            F.interpolate(
                torch.from_numpy(im).permute(2, 0, 1)[None].float() / 255,
                hw,
                mode="bilinear",
                align_corners=False,
                antialias=True,
            )[0]
            for im in ims
        ]
    )
    return t.plain(x, taps)


def test_aa_loss_towards_the_drawn_target():
    x, t, pool = img(), Toy(), FakePool()
    ctx = ctx_for(x, seed=6, pool=pool)
    a = AA(FeaturePGDConfig())
    got = capture(a)
    a.perturb(x, t, ctx)
    assert got["maximize"] is False and got["x_init"] is None
    ims = [pool.draw_image(plain_rng(6, [s], "target"), s) for s in ["s0", "s1"]]
    xa = x + 0.03
    close(
        got["loss"](xa), plain_stacked(t.plain(xa, (1, 2)), _pool_feats(t, ims, (12, 15), (1, 2)))
    )


def test_other_images_at_their_own_size_for_a_fixed_frame_surrogate():
    x, t, pool = img(b=1), Toy(img_size=64), FakePool()
    ctx = ctx_for(x, seed=6, pool=pool)
    a = AA(FeaturePGDConfig())
    im = pool.draw_image(plain_rng(6, ["s0"], "target"), "s0")
    f = a.target_features(t, x, ctx, (1,))
    close(f[0], t.plain(torch.from_numpy(im).permute(2, 0, 1)[None].float() / 255, (1,))[0])


@pytest.mark.parametrize("cls,fresh", [(PATA, False), (PATAPlusPlus, True)])
def test_pata_loss_dominance_sign_and_competitors(cls, fresh):
    x, t, pool = img(), Toy(), FakePool(n=7)
    ctx = ctx_for(x, seed=8, pool=pool)
    a = cls(PATAConfig(pata_lambda=0.3))
    got = capture(a)
    a.perturb(x, t, ctx)
    assert got["maximize"] is False
    targets = [pool.draw_image(plain_rng(8, [s], "target"), s) for s in ["s0", "s1"]]
    tf = _pool_feats(t, targets, (12, 15), (1, 2))
    gens = [plain_rng(8, [s], "competitor") for s in ["s0", "s1"]]
    comps = [[pool.draw_image(g, s) for g, s in zip(gens, ["s0", "s1"])] for _ in range(3)]
    for k in range(3):
        xa = x + 0.01 * (k + 1)
        fa = t.plain(xa, (1, 2))
        cf = _pool_feats(t, comps[k if fresh else 0], (12, 15), (1, 2))
        mix = [p + q for p, q in zip(fa, cf)]
        exp = plain_stacked(fa, tf) - 0.3 * (plain_tap_cos(fa, mix) - plain_tap_cos(cf, mix))
        close(got["loss"](xa), exp, atol=1e-4)


def _plain_clip_mse(m, c):
    return ((m.double() - m.double().clamp(max=c)) ** 2).mean()


def test_clip_mse():
    m = torch.tensor([[-12.0, -10.0, -9.0], [0.0, 3.0, -20.0]])
    close(clip_mse(m, -10.0), torch.tensor((1 + 100 + 169) / 6.0))
    close(clip_mse(m, -5.0), _plain_clip_mse(m, -5.0))
    m.requires_grad_(True)
    clip_mse(m, -10.0).backward()
    assert (m.grad[0, :2] == 0).all() and (m.grad[0, 2] > 0) and (m.grad[1, 1] > m.grad[1, 0] > 0)


def test_attack_sam_loss_and_prompts():
    x, t = img(), Toy()
    p0 = PromptSet.from_lists(points=[(1.0, 2.0), (3.0, 4.0)])
    ctx = AttackContext(["a", "b"], prompts=[p0, PromptSet.from_lists()])
    a = AttackSam(AttackSamConfig(clip_max=-3.0))
    got = capture(a)
    a.perturb(x, t, ctx)
    assert got["maximize"] is False
    xa = x * 0.9
    m = t.mask_logits(xa[:1], [p0])[0]
    close(got["loss"](xa), torch.stack([_plain_clip_mse(m, -3.0), torch.tensor(0.0).double()]))
    close(
        a.loss(t, xa, [PromptSet.from_lists(), p0]),
        torch.stack(
            [torch.tensor(0.0), _plain_clip_mse(t.mask_logits(xa[1:], [p0])[0], -3.0).float()]
        ),
    )
    empty = a.loss(t, xa.requires_grad_(True), [PromptSet.from_lists()] * 2)
    assert empty.tolist() == [0.0, 0.0] and empty.requires_grad
    black = torch.zeros_like(x, requires_grad=True)
    assert a.loss(t, black, [PromptSet.from_lists()] * 2).tolist() == [0.0, 0.0]  # not NaN
    for bad in (AttackContext(["a", "b"]), AttackContext(["a", "b"], prompts=[p0])):
        with pytest.raises(ConfigError):
            a.perturb(x, t, bad)


def test_random_points_and_attack_sam_k():
    g1 = np.random.default_rng(3)
    pts = random_points(4, 5, 7, g1)
    idx = np.random.default_rng(3).choice(20, size=7, replace=False)
    assert np.array_equal(pts, np.stack([idx % 5, idx // 5], 1).astype(float))
    assert len({tuple(p) for p in random_points(3, 3, 50, np.random.default_rng(0))}) == 9
    pp = random_point_prompts(4, 5, 3, np.random.default_rng(3))
    assert len(pp) == 3 and np.array_equal(
        pp.coords[:, :2], random_points(4, 5, 3, np.random.default_rng(3))
    )
    x, t = img(), Toy()
    ctx = ctx_for(x, seed=9)
    a = AttackSamK(AttackSamKConfig(k=6, clip_max=-2.0))
    exp_pts = [random_points(12, 15, 6, plain_rng(9, [s], "points")) for s in ["s0", "s1"]]
    assert all(np.array_equal(p, q) for p, q in zip(a.points_for(x, ctx), exp_pts))
    got = capture(a)
    a.perturb(x, t, ctx)
    assert got["maximize"] is False
    xa = x * 0.8
    exp = torch.stack([_plain_clip_mse(t.point_group_logits(xa, exp_pts)[i], -2.0) for i in (0, 1)])
    close(got["loss"](xa), exp)
    b = AttackSamK(AttackSamKConfig(k=6, mode="per-point", clip_max=-2.0))
    got = capture(b)
    b.perturb(x, t, ctx)
    prm = [PromptSet.from_lists(points=[tuple(q) for q in p]) for p in exp_pts]
    exp = torch.stack([_plain_clip_mse(m, -2.0) for m in t.mask_logits(xa, prm)])
    close(got["loss"](xa), exp)
    assert b.uses_prompts is False and AttackSam.uses_prompts is True

    class NoGroup(Toy):
        point_group_logits = None

    with pytest.raises(ConfigError):
        a.group_loss(type("S", (), {"name": "s"})(), xa, exp_pts)


# ============================================================================ UAD
def test_checkerboard_merge_and_small_losses():
    b = checkerboard((5, 7), 2.0, torch.device("cpu"))
    exp = [[float(((r // 2) % 2) ^ ((c // 2) % 2)) for c in range(7)] for r in range(5)]
    assert b.tolist() == exp
    g = torch.Generator().manual_seed(0)
    w = torch.rand(2, 3, 1, 4, 5, generator=g)
    filt = torch.rand(2, 1, 4, 5, generator=g)
    close(merge_warps(w, filt), w.max(1).values * filt + w.min(1).values * (1 - filt))
    close(merge_warps(w[:, :1], filt), w[:, 0])
    src = torch.rand(2, 3, 4, 2, generator=g) * 10
    dst = torch.rand(2, 3, 4, 2, generator=g) * 10
    mov = ((dst - src) / 2.0).numpy()
    within = mov.std(axis=2, ddof=1).mean(axis=(1, 2))
    across = mov.std(axis=1, ddof=1).mean(axis=(1, 2))
    close(control_loss(src, dst, 2.0, 0.5), within - 0.5 * across)
    close(control_loss(src, dst, 2.0, 0.2), within - 0.2 * across)
    close(
        control_loss(src[:, :1], dst[:, :1], 2.0), mov[:, :1].std(axis=2, ddof=1).mean(axis=(1, 2))
    )
    x, y = img(b=2, h=3, w=4, seed=1), img(b=2, h=3, w=4, seed=2)
    std = torch.tensor(SAM_PIXEL_STD).view(1, 3, 1, 1)
    close(patch_deform_loss(x, y, SAM_PIXEL_STD), -((x - y).abs() * 255 / std).mean(dim=(1, 2, 3)))
    fa = [torch.randn(2, 3, 4, generator=g) for _ in range(2)]
    ft = [torch.randn(2, 3, 4, generator=g) for _ in range(2)]
    fc = [torch.randn(2, 3, 4, generator=g) for _ in range(2)]
    close(fidelity_loss(fa, ft, fc), plain_tap_cos(fa, fc) - plain_tap_cos(fa, ft))


def test_grid_and_initial_points():
    c = grid_centres((4, 6), 2)
    assert c.tolist() == [[1.5, 1.0], [4.5, 1.0], [1.5, 3.0], [4.5, 3.0]]
    cfg = UADConfig(warp_size=2, num_split=2, src_rand_range=0.3, dst_rand_range=0.2)
    src, dst = init_control_points((40, 60), cfg, np.random.default_rng(5))
    g = np.random.default_rng(5)
    n = [g.standard_normal((2, 4)) for _ in range(4)]
    cen = grid_centres((40, 60), 2)[None]
    block = np.array([30.0, 20.0])
    es = np.clip(cen + np.stack([n[1], n[0]], -1) * block * 0.3, 0, [59, 39])
    ed = np.clip(es + np.stack([n[3], n[2]], -1) * block * 0.2, 0, [59, 39])
    assert np.allclose(src, es) and np.allclose(dst, ed)
    big = UADConfig(warp_size=2, num_split=2, src_rand_range=50.0, dst_rand_range=50.0)
    s, d = init_control_points((40, 60), big, np.random.default_rng(5))
    for p in (s, d):
        assert p[..., 0].max() == 59 and p[..., 1].max() == 39 and p.min() == 0
    # blocks of a side the grid does not divide: fractions, per axis
    src, _ = init_control_points((41, 63), cfg, np.random.default_rng(5))
    g = np.random.default_rng(5)
    n = [g.standard_normal((2, 4)) for _ in range(4)]
    es = grid_centres((41, 63), 2)[None] + np.stack([n[1], n[0]], -1) * [31.5, 20.5] * 0.3
    assert np.allclose(src, np.clip(es, 0, [62, 40]))


@pytest.mark.parametrize("side", [40, 161])
def test_ssim_deform_loss_is_the_librarys_on_unit_range_images(side):
    from pytorch_msssim import ms_ssim, ssim

    from uadbench.attacks.uad import ssim_deform_loss

    x, y = img(b=2, h=side, w=side, seed=1), img(b=2, h=side, w=side, seed=2)
    y = 0.7 * x + 0.3 * y
    fn = ms_ssim if side >= 161 else ssim
    close(ssim_deform_loss(x, y), fn(y, x, data_range=1.0, size_average=False), atol=1e-5)
    close(ssim_deform_loss(x, x), torch.ones(2), atol=1e-5)


def test_tps_identity_and_translation():
    x = img(b=1, h=10, w=12, seed=3)
    s = torch.tensor(grid_centres((10, 12), 3), dtype=torch.float32)[None]
    close(tps_warp(x, s, s), x, atol=1e-4)
    moved = tps_warp(x, s, s + torch.tensor([2.0, 1.0]))
    close(moved[..., 1:, 2:], x[..., :-1, :-2], atol=1e-4)


def _uad_cfg(**kw):
    base = dict(
        deform_epochs=2,
        warp_size=2,
        num_split=2,
        est_fidelity_iter=1,
        steps=2,
        dst_rand_range=0.3,
        control_loss_alpha=0.7,
        warp_filter_stride=400.0,
        ref_size=32,
        deform_lr=2.0,
        eps=6 / 255,
        alpha=2 / 255,
    )
    return UADConfig(**{**base, **kw})


def _plain_stage2(x, t, taps, tf, fc, steps, cfg):
    """Signed descent on L_F from x; also the (detached) features of each iterate."""
    xa, seen = x.clone(), []
    for _ in range(steps):
        xa.requires_grad_(True)
        fa = t.plain(xa, taps)
        seen.append([f.detach() for f in fa])
        lf = plain_tap_cos(fa, fc) - plain_tap_cos(fa, tf)
        (gr,) = torch.autograd.grad(lf.sum(), xa)
        xa = plain_project(xa.detach() - cfg.alpha * gr.sign(), x, cfg.eps)
    return xa, seen


def _plain_uad(a: UAD, x, t, ctx, taps=(1, 2)):
    """Stage 1 and 2 by hand, with the module's own warp (pinned above)."""
    cfg = a.config
    h, w = x.shape[-2:]
    unit = max(h, w) / cfg.ref_size
    pairs = [
        init_control_points((h, w), cfg, plain_rng(ctx.seed, [s], "uad-points"))
        for s in ctx.sample_ids
    ]
    src = torch.tensor(np.stack([p[0] for p in pairs]), dtype=torch.float32)
    dst = torch.tensor(np.stack([p[1] for p in pairs]), dtype=torch.float32)
    board = checkerboard((h, w), cfg.warp_filter_stride * unit, x.device)
    filt = tps_warp(board.expand(x.shape[0], 1, h, w), src[:, 0], dst[:, 0])
    src.requires_grad_(True)
    dst.requires_grad_(True)
    opt = torch.optim.Adam([src, dst], lr=cfg.deform_lr * unit)
    std = torch.tensor(SAM_PIXEL_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        fc = t.plain(x, taps)
    for epoch in range(cfg.deform_epochs):
        last = epoch == cfg.deform_epochs - 1
        b, k = src.shape[:2]
        warped = tps_warp(x.repeat_interleave(k, 0), src.flatten(0, 1), dst.flatten(0, 1))
        warped = warped.view(b, k, *x.shape[1:])
        target_img = warped.max(1).values * filt + warped.min(1).values * (1 - filt)
        ld = -((x - target_img).abs() * 255 / std).flatten(1).mean(1)
        mov = (dst - src) / unit
        lc = mov.std(dim=2).mean(dim=(1, 2)) - 0.5 * mov.std(dim=1).mean(dim=(1, 2))
        loss = ld + cfg.control_loss_alpha * lc
        if cfg.fidelity_grad and not last:
            tg = t.plain(target_img, taps)
            _, seen = _plain_stage2(
                x, t, taps, [f.detach() for f in tg], fc, cfg.est_fidelity_iter, cfg
            )
            term = sum(-plain_tap_cos(fa, tg) for fa in seen)
            loss = loss + cfg.fidelity_loss_alpha * term
        opt.zero_grad()
        loss.sum().backward()
        opt.step()
        with torch.no_grad():
            src[..., 0].clamp_(0, w - 1), src[..., 1].clamp_(0, h - 1)
            dst[..., 0].clamp_(0, w - 1), dst[..., 1].clamp_(0, h - 1)
    with torch.no_grad():
        tf = t.plain(target_img, taps)
    xa, _ = _plain_stage2(x, t, taps, tf, fc, cfg.steps, cfg)
    return src.detach(), dst.detach(), target_img.detach(), filt, xa


def test_uad_both_stages_against_plain():
    x, t = img(b=2, h=16, w=20, seed=11), Toy()
    ctx = ctx_for(x, seed=12)
    a = UAD(_uad_cfg())
    out = a.perturb(x, t, ctx)
    src, dst, target, filt, xa = _plain_uad(a, x, t, ctx)
    st = a.last_state
    close(st["filter"], filt)
    close(st["src"], src, atol=1e-4)
    close(st["dst"], dst, atol=1e-4)
    close(st["deformed"], target, atol=1e-4)
    assert ((out - x).abs() <= 6 / 255 + 1e-6).all()
    assert (out - xa).abs().max() < 1e-4 or (out != xa).float().mean() < 0.01
    assert a.unit((16, 20)) == 20 / 32
    # stage 2 reads every tap, and each iterate stays in the ball
    t2 = Toy()
    UAD(_uad_cfg(taps=(0, 3))).perturb(x, t2, ctx)
    assert set(t2.taps_seen) == {(0, 3)}
    assert all(
        ((z - x).abs() <= 6 / 255 + 1e-6).all()
        for z in t2.inputs
        if z.shape == x.shape and (z - x).abs().max() <= 7 / 255
    )


def test_uad_simulate_mi_and_di():
    x, t = img(b=2, h=9, w=9, seed=13), Toy()
    x[1] *= 0.3  # another gradient scale: MI's L1 normalisation is per image
    ctx = ctx_for(x, seed=14)
    taps = (1, 2)
    tf = t.plain(x.flip(-1), taps)
    fc = t.plain(x, taps)
    for kw in [
        dict(use_mi=True, mi_momentum=0.5),
        dict(use_di=True, di_noise_std=0.03),
        dict(use_di=True, di_keep=True, di_units="pixel", di_noise_std=0.02),
    ]:
        a = UAD(_uad_cfg(alpha=1 / 255, **kw))
        cfg = a.config
        out, term = a.simulate(x, t, taps, tf, fc, 3, ctx, "s")
        assert term is None
        xa, mom = x.clone(), torch.zeros_like(x)
        for k in range(3):
            noise = torch.zeros_like(x)
            if cfg.use_di:
                scale = cfg.di_noise_std * (
                    torch.tensor(SAM_PIXEL_STD).view(1, 3, 1, 1) / 255
                    if cfg.di_units == "normalized"
                    else 1.0
                )
                noise = plain_randn(14, ["s0", "s1"], (3, 9, 9), f"s/di/{k}") * scale
                if cfg.di_keep:
                    xa, noise = xa + noise, torch.zeros_like(x)
            xa = xa.detach().requires_grad_(True)
            fa = t.plain(xa + noise, taps)
            (gr,) = torch.autograd.grad((plain_tap_cos(fa, fc) - plain_tap_cos(fa, tf)).sum(), xa)
            if cfg.use_mi:
                mom = cfg.mi_momentum * mom + gr / gr.abs().sum(dim=(1, 2, 3), keepdim=True)
                gr = mom
            xa = plain_project(xa.detach() - cfg.alpha * gr.sign(), x, cfg.eps)
        close(out, xa, atol=1e-6)


def test_uad_deform_filter_is_the_first_warps_board():
    x = img(b=1, h=16, w=20)
    a = UAD(_uad_cfg(warp_filter_stride=12.8))  # cell 12.8 · 20/32 = 8 px
    s = torch.tensor(grid_centres((16, 20), 2), dtype=torch.float32)[None, None].repeat(1, 2, 1, 1)
    d = s.clone()
    d[:, 1] += 3.0  # only the second warp moves
    board = checkerboard((16, 20), 8.0, x.device)
    close(a.deform_filter(s, d, (16, 20))[0, 0], board, atol=1e-5)
    d2 = s.clone()
    d2[:, 0] += torch.tensor([2.0, 0.0])
    close(a.deform_filter(s, d2, (16, 20))[0, 0, :, 2:], board[:, :-2], atol=1e-4)


# ============================================================================ randomness used
@pytest.mark.parametrize("name", ATTACKS.names())
def test_each_attacks_randomness_is_seeded_and_used(name):
    cls = ATTACKS.get(name)
    fields = {f.name for f in __import__("dataclasses").fields(cls.Config)}
    opts = dict(
        steps=2,
        deform_epochs=2,
        est_fidelity_iter=1,
        k=8,
        warp_size=2,
        num_split=3,
        eps=8 / 255,
        alpha=2 / 255,
        ref_size=32,
    )
    a = cls(cls.Config(**{k: v for k, v in opts.items() if k in fields}))
    x = img(b=1, h=16, w=16, seed=20)
    ims = [(x[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)]
    runs = [a(ims, Toy(), make_context(["s"], ims, seed=s))[0] for s in (1, 1, 2, 3)]
    assert np.array_equal(runs[0], runs[1])
    # (a dataset of 5 images: two seeds may draw the same target, three rarely do)
    same = np.array_equal(runs[0], runs[2]) and np.array_equal(runs[0], runs[3])
    assert same == (name == "attack-sam")
    assert math.isfinite(float(np.abs(runs[0].astype(int) - ims[0]).max()))


# ============================================================================ declared objectives
def test_declared_objectives_against_plain():
    x, t, pool = img(), Toy(img_size=30), FakePool()
    ctx = ctx_for(x, seed=3, pool=pool)
    xa = x + 0.02 * torch.randn(x.shape, generator=torch.Generator().manual_seed(5))
    fa, fc = t.plain(xa, (1, 2)), t.plain(x, (1, 2))
    close(
        FeaturePGD().objective(t, x, ctx)(xa),
        -sum((a - c).flatten(1).norm(dim=1) for a, c in zip(fa, fc)),
    )

    def pw(z):
        return torch.sign(z) * z.abs() ** 0.5

    for a, g in [(TAP(), 1.0), (ILPD(ILPDConfig(ilpd_gamma=0.25)), 0.25)]:
        mixed = [g * p + (1 - g) * q for p, q in zip(fa, fc)]
        exp = _plain_smooth(x, xa, 0.01, 4.0) - plain_stacked(
            [pw(f) for f in mixed], [pw(f) for f in fc]
        )
        close(a.objective(t, x, ctx)(xa), exp, atol=1e-4)
    targets = [pool.draw_image(plain_rng(3, [s], "target"), s) for s in ["s0", "s1"]]
    t0 = Toy()  # runs at the image's own size: targets are resized to it
    tf = _pool_feats(t0, targets, (12, 15), (1, 2))
    for a in (AA(), PATA(), PATAPlusPlus()):
        close(a.objective(t0, x, ctx)(xa), plain_stacked(t0.plain(xa, (1, 2)), tf))
    p0 = PromptSet.from_lists(points=[(1.0, 2.0)])
    sam_ctx = AttackContext(["a", "b"], prompts=[p0, p0])
    exp = torch.stack([_plain_clip_mse(m, -10.0) for m in t.mask_logits(xa, [p0, p0])])
    close(AttackSam().objective(t, x, sam_ctx)(xa), exp)
    k = AttackSamK(AttackSamKConfig(k=5))
    pts = [random_points(12, 15, 5, plain_rng(3, [s], "points")) for s in ["s0", "s1"]]
    exp = torch.stack([_plain_clip_mse(m, -10.0) for m in t.point_group_logits(xa, pts)])
    close(k.objective(t, x, ctx)(xa), exp)
    kp = AttackSamK(AttackSamKConfig(k=5, mode="per-point"))
    prm = [PromptSet.from_lists(points=[tuple(q) for q in p]) for p in pts]
    exp = torch.stack([_plain_clip_mse(m, -10.0) for m in t.mask_logits(xa, prm)])
    close(kp.objective(t, x, ctx)(xa), exp)
    u = UAD(_uad_cfg())
    with pytest.raises(RuntimeError):
        u.objective(t, x, ctx)
    u.perturb(x, t, ctx)
    tgt = t.plain(u.last_state["deformed"], (1, 2))
    close(u.objective(t, x, ctx)(xa), plain_tap_cos(fa, fc) - plain_tap_cos(fa, tgt))
    # in the model frame: images are resized to the target's size
    small = F.interpolate(x, (6, 8), mode="bilinear", antialias=True, align_corners=False)
    u.last_state = {"deformed": small.flip(-1)}
    fs = t.plain(
        F.interpolate(xa, (6, 8), mode="bilinear", antialias=True, align_corners=False), (1, 2)
    )
    exp = plain_tap_cos(fs, t.plain(small, (1, 2))) - plain_tap_cos(
        fs, t.plain(small.flip(-1), (1, 2))
    )
    close(u.objective(t, x, ctx)(xa), exp)
    assert (
        FeaturePGD.uses_randomness and not AttackSam.uses_randomness and AttackSamK.uses_randomness
    )


def test_uad_points_stay_on_the_image_after_each_step():
    """Adam's step (lr = deform_lr reference units) is clamped to [0, W−1] × [0, H−1]."""
    x, t = img(b=1, h=16, w=20, seed=4), Toy()
    a = UAD(_uad_cfg(deform_epochs=1, steps=0, deform_lr=5000.0, warp_size=3, num_split=3))
    out = a.perturb(x, t, ctx_for(x, seed=1))
    for p in (a.last_state["src"], a.last_state["dst"]):
        assert p[..., 0].max() == 19 and p[..., 1].max() == 15 and p.min() == 0
    assert torch.equal(out, x)  # no stage-2 step


def test_uad_logs_its_losses_at_debug_level(caplog):
    import logging

    x, t = img(b=1, h=8, w=8), Toy()
    with caplog.at_level(logging.DEBUG, logger="uadbench.attacks.uad"):
        UAD(_uad_cfg(deform_epochs=1, steps=1)).perturb(x, t, ctx_for(x))
    text = caplog.text
    assert "uad epoch 0: L_D + λ_C L_C" in text and "uad uad/0 step 0: L_F" in text
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="uadbench.attacks.uad"):
        UAD(_uad_cfg(deform_epochs=1, steps=1)).perturb(x, t, ctx_for(x))
    assert "uad epoch" not in caplog.text


@pytest.mark.parametrize("lam", [1.0, 3.0])
def test_uad_fidelity_gradient_reaches_the_points_against_plain(lam):
    x, t = img(b=1, h=16, w=20, seed=15), Toy()
    ctx = ctx_for(x, seed=16)
    cfg = _uad_cfg(deform_epochs=3, est_fidelity_iter=2, fidelity_grad=True)
    a = UAD(
        _uad_cfg(deform_epochs=3, est_fidelity_iter=2, fidelity_grad=True, fidelity_loss_alpha=lam)
    )
    a.perturb(x, t, ctx)
    src, dst, target, _, _ = _plain_uad(a, x, t, ctx)
    close(a.last_state["src"], src, atol=1e-4)
    close(a.last_state["dst"], dst, atol=1e-4)
    # and it changes them (else the test above would not see the term)
    b = UAD(cfg.__class__(**{**cfg.__dict__, "fidelity_grad": False}))
    b.perturb(x, t, ctx)
    assert (b.last_state["src"] - a.last_state["src"]).abs().max() > 1e-3


def test_tps_in_row_chunks_of_any_size(monkeypatch):
    """The dense evaluation runs in chunks of at least one row, whatever the budget."""
    import uadbench.attacks.uad as uad

    x = img(b=1, h=7, w=9, seed=2)
    for grid in (2, 3):
        s = torch.tensor(grid_centres((7, 9), grid), dtype=torch.float32)[None]
        d = s + torch.randn(s.shape, generator=torch.Generator().manual_seed(3))
        monkeypatch.setattr(uad, "_CHUNK_ELEMS", 1 << 19)
        whole = tps_warp(x, s, d)
        for elems in (1, 3, 5, 9 * 9 * 2):  # 1 row, 1 row, 1 row, 2 rows (3×3 grid)
            monkeypatch.setattr(uad, "_CHUNK_ELEMS", elems)
            close(tps_warp(x, s, d), whole, atol=1e-5)


class _GlobalNoise(Attack):
    """Draws from torch's global generator, as a careless plugin would."""

    def perturb(self, x, surrogate, ctx):
        return x + (torch.rand(x.shape) - 0.5) * 0.1


def test_the_global_torch_generator_is_seeded_per_run_and_sample():
    im = [np.full((4, 5, 3), 100, np.uint8)]
    a = _GlobalNoise(AttackConfig(eps=0.1))
    one, again = (a(im, None, AttackContext(["s"], seed=1))[0] for _ in range(2))
    other = a(im, None, AttackContext(["s"], seed=2))[0]
    other_id = a(im, None, AttackContext(["t"], seed=1))[0]
    assert np.array_equal(one, again)
    assert not np.array_equal(one, other) and not np.array_equal(one, other_id)
    for seed in range(1, 7):
        got = a(im, None, AttackContext(["s"], seed=seed))[0]
        torch.manual_seed(int(plain_rng(seed, ["s"], "torch").integers(0, 2**62)))
        noise = (torch.rand(1, 3, 4, 5) - 0.5) * 0.1
        assert np.array_equal(got, to_uint8(torch.full((1, 3, 4, 5), 100 / 255) + noise)[0])


def test_declared_needs():
    assert not Attack.uses_dataset and not Attack.uses_prompts and Attack.uses_randomness is None
    assert AA.uses_dataset and PATA.uses_dataset and not FeaturePGD.uses_dataset
    assert not UAD.uses_dataset and not TAP.uses_dataset and not AttackSam.uses_dataset
