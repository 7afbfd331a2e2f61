"""UAD: ours against a straightforward reference-style implementation of the same algorithm.

The baseline below (:func:`reference_uad`) is what the reference implementation does,
written plainly: one image at a time; every stage-1 step runs the T_f-step fidelity
estimate (the last one 40 steps); every pass runs the *whole* image encoder (all blocks
and the neck) and reads the taps through forward hooks; f(I) and f(Î) are computed with
autograd recording. It shares our control-point initialisation, warp and losses, so both
implementations compute the same images from the same seeds.

Ours is ``uadbench.attacks.uad.UAD``: a batch per step, encoder up to the last tap only,
targets under ``no_grad``, and (default) no unused fidelity estimates. We also time ours
with ``skip_unused_estimates=False`` to show what the other measures alone buy.

Plain test runs (``--benchmark-disable``, the default) use a few steps and assert only
that both reach the same adversarial loss. With ``--benchmark-enable`` or
``UADBENCH_BENCH=1`` the paper's settings (T_D = 40, T_f = 4, 40 steps) run and the
speed targets are asserted: ≥ 1.6× per image at batch 1, ≥ 2× at batch 4 (CPU, one
torch thread). Timings are taken inside the test around both implementations, best of
two rounds, as wall time (``perf_counter``) and process CPU time (``process_time``); the
assertion uses CPU time, which other processes on a shared machine do not inflate.

    UADBENCH_BENCH=1 .venv/bin/pytest tests/benchmarks/test_bench_uad.py -s
"""

from __future__ import annotations

import dataclasses
import math
import os
import time

import numpy as np
import pytest
import torch
from attack_helpers import make_context, random_image, to_float

from uadbench.attacks.base import AttackContext, to_tensor, to_uint8
from uadbench.attacks.feature_pgd import (
    resolve_taps,
    sample_context,
    surrogate_features,
    tap_cosine,
)
from uadbench.attacks.uad import UAD, UADConfig, control_loss, fidelity_loss, patch_deform_loss

SIZE = 128  # px; seeded-sam-tiny resizes to its 256-px input, so the encoder cost is fixed
FULL = UADConfig()  # the paper's settings
QUICK = UADConfig(deform_epochs=6, est_fidelity_iter=4, steps=10)
TARGET_RATIO = {1: 1.6, 4: 2.0}


def full_encoder_features(surrogate, x: torch.Tensor, taps) -> list[torch.Tensor]:
    """Taps read through hooks while the WHOLE encoder (every block, then the neck) runs."""
    enc = surrogate.model.image_encoder
    z, _ = surrogate._to_model_input(x)
    out: dict[int, torch.Tensor] = {}
    hooks = [
        enc.blocks[t].register_forward_hook(lambda m, i, o, t=t: out.__setitem__(t, o))
        for t in taps
    ]
    try:
        enc(z)
    finally:
        for h in hooks:
            h.remove()
    return [out[t].float() for t in taps]


def reference_uad(
    x: torch.Tensor, surrogate, ctx: AttackContext, cfg: UADConfig
) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference's algorithm, straightforwardly: returns (x_adv, Î), each (B, 3, H, W)."""
    uad = UAD(cfg)  # for its initialisation, warp and filter helpers only
    taps = resolve_taps(surrogate, cfg.taps)
    hw = tuple(x.shape[-2:])
    unit = uad.unit(hw)
    advs, deformed = [], []
    for i in range(x.shape[0]):
        xi = x[i : i + 1]
        src, dst = uad.initial_points(xi, sample_context(ctx, i))
        filt = uad.deform_filter(src, dst, hw)
        src.requires_grad_(True)
        dst.requires_grad_(True)
        opt = torch.optim.Adam([src, dst], lr=cfg.deform_lr * unit)
        clean = [f.detach() for f in full_encoder_features(surrogate, xi, taps)]
        for epoch in range(cfg.deform_epochs):
            opt.zero_grad()
            warped = uad.deform(xi, src, dst, filt)
            loss = patch_deform_loss(
                xi, warped, cfg.pixel_std
            ) + cfg.control_loss_alpha * control_loss(src, dst, unit)
            loss.sum().backward()
            opt.step()
            with torch.no_grad():
                for p in (src, dst):
                    p[..., 0].clamp_(0, hw[1] - 1)
                    p[..., 1].clamp_(0, hw[0] - 1)
            target = [f.detach() for f in full_encoder_features(surrogate, warped, taps)]
            x_adv = xi.clone()
            for _ in range(cfg.steps if epoch == cfg.deform_epochs - 1 else cfg.est_fidelity_iter):
                x_adv.requires_grad_(True)
                lf = fidelity_loss(full_encoder_features(surrogate, x_adv, taps), target, clean)
                lf.sum().backward()
                with torch.no_grad():
                    x_adv = uad.project(x_adv - cfg.alpha * x_adv.grad.sign(), xi)
        advs.append(x_adv.detach())
        deformed.append(warped.detach())
    return torch.cat(advs), torch.cat(deformed)


def saved_images(x_adv: torch.Tensor, images, eps: float) -> list[np.ndarray]:
    """The base class's uint8 rounding and exact budget clip, for the baseline's floats."""
    r = math.floor(eps * 255 + 1e-6)
    return [
        np.clip(
            a.astype(np.int16),
            np.clip(c.astype(np.int16) - r, 0, 255),
            np.clip(c.astype(np.int16) + r, 0, 255),
        ).astype(np.uint8)
        for a, c in zip(to_uint8(x_adv), images)
    ]


def target_similarity(
    surrogate, images, deformed: torch.Tensor, adv_images, taps
) -> tuple[float, float]:
    """(mean L_F, mean cos(f(x_adv), f(Î))) of saved adversarial images."""
    with torch.no_grad():
        x = to_float(images)
        clean = surrogate_features(surrogate, x, taps)
        target = surrogate_features(surrogate, deformed, taps)
        adv = surrogate_features(surrogate, to_float(adv_images), taps)
        return fidelity_loss(adv, target, clean).mean().item(), tap_cosine(
            adv, target
        ).mean().item()


@pytest.fixture(scope="module")
def sam_tiny():
    from uadbench.victims import VICTIMS

    n = torch.get_num_threads()
    torch.set_num_threads(1)  # a shared 2-core machine: one thread gives stable timings
    yield VICTIMS.get("seeded-sam-tiny")(device="cpu")
    torch.set_num_threads(n)


@pytest.mark.parametrize("batch", [1, 4])
def test_uad_faster_than_reference(benchmark, sam_tiny, batch):
    enabled = (not benchmark.disabled) or os.environ.get("UADBENCH_BENCH") == "1"
    cfg = FULL if enabled else QUICK
    images = [random_image(SIZE, SIZE, 40 + i) for i in range(batch)]
    ctx = make_context([f"bench{i}" for i in range(batch)], images, seed=0)
    x = to_tensor(images, sam_tiny.device)
    taps = resolve_taps(sam_tiny, cfg.taps)

    warm = dataclasses.replace(cfg, deform_epochs=2, est_fidelity_iter=1, steps=1)
    reference_uad(x[:1], sam_tiny, ctx, warm)
    UAD(dataclasses.replace(warm, skip_unused_estimates=False))(images, sam_tiny, ctx)

    rounds = 2 if enabled else 1  # min over rounds: other processes share the cores
    ref_wall, ref_cpu = [], []
    for _ in range(rounds):
        w0, c0 = time.perf_counter(), time.process_time()
        ref_adv, ref_deformed = reference_uad(x, sam_tiny, ctx, cfg)
        ref_wall.append(time.perf_counter() - w0)
        ref_cpu.append(time.process_time() - c0)

    w0, c0 = time.perf_counter(), time.process_time()
    no_skip = UAD(dataclasses.replace(cfg, skip_unused_estimates=False))(images, sam_tiny, ctx)
    ns_wall, ns_cpu = time.perf_counter() - w0, time.process_time() - c0

    ours_attack = UAD(cfg)
    ours_wall, ours_cpu = [], []

    def ours():
        w, c = time.perf_counter(), time.process_time()
        out = ours_attack(images, sam_tiny, ctx)
        ours_wall.append(time.perf_counter() - w)
        ours_cpu.append(time.process_time() - c)
        return out

    ours_out = benchmark.pedantic(ours, rounds=rounds, iterations=1)
    t_ref, t_ours = min(ref_wall), min(ours_wall)

    # same algorithm, same seeds: identical deformation targets, same adversarial loss
    assert torch.allclose(ours_attack.last_state["deformed"], ref_deformed, atol=1e-4)
    ref_out = saved_images(ref_adv, images, cfg.eps)
    lf_ref, cos_ref = target_similarity(sam_tiny, images, ref_deformed, ref_out, taps)
    lf_ours, cos_ours = target_similarity(sam_tiny, images, ref_deformed, ours_out, taps)
    lf_ns, _ = target_similarity(sam_tiny, images, ref_deformed, no_skip, taps)
    lf_clean, _ = target_similarity(sam_tiny, images, ref_deformed, images, taps)

    info = {
        "batch": batch,
        "settings": "paper" if enabled else "quick",
        "ref_s_per_image": t_ref / batch,
        "ours_s_per_image": t_ours / batch,
        "ours_no_skip_s_per_image": ns_wall / batch,
        "ratio": t_ref / t_ours,
        "ratio_no_skip": t_ref / ns_wall,
        "cpu_ratio": min(ref_cpu) / min(ours_cpu),
        "cpu_ratio_no_skip": min(ref_cpu) / ns_cpu,
        "L_F_clean": lf_clean,
        "L_F_ref": lf_ref,
        "L_F_ours": lf_ours,
        "L_F_ours_no_skip": lf_ns,
        "cos_target_ref": cos_ref,
        "cos_target_ours": cos_ours,
    }
    benchmark.extra_info.update(info)
    print(
        "\nUAD benchmark "
        + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in info.items())
    )

    # the attack did something, and both implementations reached the same loss (within 1%
    # of the loss's travel from the clean image: L_F itself crosses zero)
    assert lf_ours < lf_clean - 0.05 and lf_ref < lf_clean - 0.05
    assert abs(lf_ours - lf_ref) <= 0.01 * abs(lf_clean - lf_ref)
    assert abs(cos_ours - cos_ref) <= 0.01 * abs(cos_ref)
    if enabled:
        # process CPU time of this single-threaded process: wall time on a shared machine
        # also counts the waits for other processes' turns (both are reported above)
        assert info["cpu_ratio"] >= TARGET_RATIO[batch], info
