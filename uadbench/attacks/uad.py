"""UAD, "Unsegment Anything by Simulating Deformation" (Lu, Yang & Wang, CVPR 2024).

Two stages (UAD.md):

1. **Deformation.** K thin-plate-spline warps ("warp_size") of an n×n grid of control
   points ("num_split") deform the clean image I; their images are merged into one
   target Î (per-pixel max on the 1-cells of a warped checkerboard, min on its 0-cells).
   Adam moves the source and destination points of all warps to minimise
   L_D + λ_C·L_C (+ λ_F·L_F with ``fidelity_grad``).
2. **Feature simulation.** At the last stage-1 step, 40 signed PGD steps from I make
   f(I + r) move towards f(Î) and away from f(I): minimise
   L_F = mean over taps of −cos(f(I + r), f(Î)) + cos(f(I + r), f(I)).

Frame of reference. The paper works on SAM's 1024-px input. UAD here works on the image it
is given, of size (H, W) — the surrogate's frame with ``attack_space=model`` (default; for
SAM, longest side 1024 without the padding), the image's own size with
``attack_space=image`` — with S = max(H, W) and one *reference unit* u = S/1024 px:

- the n×n grid of control points covers the image itself (blocks H/n × W/n; the reference
  grids the padded 1024² square), source/destination noise is a fraction of the block;
- Adam's step (lr = 10 at 1024) is 10·u px; points are clamped to [0, W−1] × [0, H−1];
- the checkerboard cell (300 px at 1024) is 300·u px;
- L_C is computed on displacements in reference units (px / u), L_D on pixel differences
  in SAM-normalized units (×255/std per channel), as the reference computes both.

On a square 1024² image the constants are the reference's, but stage 1 is not its
computation to float precision: the reference puts the control points at integer centres
int((i + 0.5)·int(1024/n)) (85, 255, …, 935 for n = 6; here (i + 0.5)·1024/n = 85.3,
256, …, 938.7, up to 3.7 px apart) and scales the initial noise by an integer block of
170 px (here 170.7), and it resamples with the x/y swap below. See
docs/reference-differences.md.

Where the reference has bugs we follow the spec, not the bug: its resampling swaps the
x/y components of the flow and mixes ``align_corners`` conventions (a 0.5 px rescaling);
here a warp with destination = source is exactly the identity and a translation of all
points translates the image.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import ConfigError
from .base import AttackContext, resample
from .feature_pgd import (
    SAM_PIXEL_STD,
    FeatureAttack,
    FeaturePGDConfig,
    loss_scale,
    resolve_taps,
    sample_context,
    sample_randn,
    tap_cosine,
)

log = logging.getLogger(__name__)

DEFORM_GUIDANCES = ("patch", "ssim")
# added to r² (normalized units) so that φ is differentiable: φ(0) = 1e-6, i.e. 1e-3 px
# at 1024 (the reference floors r² at 1e-10 px², φ(0) = 1e-5 px)
_PHI_EPS = 1e-12
# dense TPS evaluation: rows per chunk keep rows·W·N below this, per warp. Not a function of
# the number of warps M, so that an image's sums run in the same order in any batch
_CHUNK_ELEMS = 1 << 19


# ============================================================================ TPS warp
def tps_solve(centres: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Fit an order-1 polyharmonic spline (φ(r) = r) with a linear part, no regularisation.

    centres: (M, N, 2) interpolation centres; values: (M, N, 2) values at them.
    Returns w (M, N, 2) radial weights and v (M, 3, 2) linear coefficients, such that
    s(q) = Σ_i w_i φ(|q − c_i|) + [q, 1]·v, s(c_i) = values_i, Σ w_i = 0, Σ w_i c_i = 0.
    Differentiable in both inputs (``linalg.solve``, one system at a time).
    """
    m, n, _ = centres.shape
    diff = centres[:, :, None, :] - centres[:, None, :, :]
    a = (diff.pow(2).sum(-1) + _PHI_EPS).sqrt()  # (M, N, N)
    p = torch.cat([centres, torch.ones_like(centres[..., :1])], dim=-1)  # (M, N, 3)
    top = torch.cat([a, p], dim=2)
    bottom = torch.cat([p.transpose(1, 2), p.new_zeros(m, 3, 3)], dim=2)
    lhs = torch.cat([top, bottom], dim=1)  # (M, N+3, N+3)
    rhs = torch.cat([values, values.new_zeros(m, 3, values.shape[-1])], dim=1)
    # one system per call: a batched LAPACK solve need not round like a single one (torch
    # 2.14's CPU build on an AMD EPYC: not bit-equal), and Adam amplifies any difference
    # over T_D steps, so an image's warps must not depend on its batch-mates
    try:
        sol = torch.stack([torch.linalg.solve(lhs_i, rhs_i) for lhs_i, rhs_i in zip(lhs, rhs)])
    except RuntimeError:  # coincident points (e.g. two clamped into one corner)
        sol = torch.stack([torch.linalg.pinv(lhs_i) @ rhs_i for lhs_i, rhs_i in zip(lhs, rhs)])
    return sol[:, :n], sol[:, n:]


def _phi_chunks(c: torch.Tensor, xs: torch.Tensor, ys: torch.Tensor):
    """Yield (r0, r1, φ) over row chunks of the grid: φ = sqrt(|q − c_n|² + ε), a
    contiguous (M, r1 − r0, W, N) view of one reused buffer (exact differences, no
    |q|² − 2q·c + |c|² cancellation)."""
    m, n = c.shape[:2]
    h, w = len(ys), len(xs)
    rows = max(1, min(h, _CHUNK_ELEMS // max(1, w * n)))
    dx2 = (xs[None, :, None] - c[:, None, :, 0]).pow(2)  # (M, W, N)
    buf = c.new_empty(m * rows * w * n)
    for r0 in range(0, h, rows):
        r1 = min(h, r0 + rows)
        phi = buf[: m * (r1 - r0) * w * n].view(m, r1 - r0, w, n)
        dy2 = (ys[r0:r1][None, :, None] - c[:, None, :, 1]).pow(2)  # (M, rows, N)
        torch.add(dy2[:, :, None, :], dx2[:, None, :, :], out=phi)
        phi.add_(_PHI_EPS).sqrt_()
        yield r0, r1, phi


class _TPSGrid(torch.autograd.Function):
    """s(q) = Σ_n w_n φ(|q − c_n|) + [q, 1]·v on the grid ``ys`` × ``xs``: (M, H, W, 2).

    Memory-lean: φ (M·H·W·N floats) is never stored; backward recomputes it chunk by
    chunk and applies the closed-form gradients ∂s/∂w_n = φ_n,
    ∂s/∂c_n = w_n (c_n − q)/φ_n, ∂s/∂v = [q, 1]."""

    @staticmethod
    def forward(ctx, c, wts, v, xs, ys):
        ctx.save_for_backward(c, wts, v, xs, ys)
        m, n = c.shape[:2]
        h, w = len(ys), len(xs)
        out = c.new_empty(m, h, w, 2)
        for r0, r1, phi in _phi_chunks(c, xs, ys):
            out[:, r0:r1] = torch.bmm(phi.view(m, -1, n), wts).view(m, r1 - r0, w, 2)
        out += (
            xs[None, None, :, None] * v[:, None, None, 0]
            + ys[None, :, None, None] * v[:, None, None, 1]
        )
        out += v[:, None, None, 2]
        return out

    @staticmethod
    def backward(ctx, grad):
        c, wts, v, xs, ys = ctx.saved_tensors
        m, n = c.shape[:2]
        w = len(xs)
        grad = grad.contiguous()
        g_c, g_w, g_v = torch.zeros_like(c), torch.zeros_like(wts), torch.zeros_like(v)
        wt = wts.transpose(1, 2)
        for r0, r1, phi in _phi_chunks(c, xs, ys):
            g = grad[:, r0:r1].reshape(m, -1, 2)  # (M, P, 2)
            p = phi.view(m, -1, n)  # (M, P, N)
            g_w += torch.bmm(p.transpose(1, 2), g)
            t = torch.bmm(g, wt).div_(p)  # ∂L/∂φ / φ
            qx, qy = xs.repeat(r1 - r0), ys[r0:r1].repeat_interleave(w)
            q1 = torch.stack([qx, qy, torch.ones_like(qx)], dim=1)  # (P, 3): [q, 1]
            g_c += c * t.sum(dim=1)[..., None] - torch.matmul(t.transpose(1, 2), q1[:, :2])
            g_v += torch.matmul(q1.t(), g)
        return g_c, g_w, g_v, None, None


def tps_flow(src: torch.Tensor, dst: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    """Dense flow (M, H, W, 2), in pixels (x, y), of the spline that interpolates
    (dst − src) at the destination points, evaluated at every pixel.

    src, dst: (M, N, 2) control points in pixels (x, y). Coordinates are divided by
    max(H, W) for conditioning (the order-1 spline is scale-covariant, so this changes
    nothing but rounding). The dense evaluation runs in row chunks of about
    ``_CHUNK_ELEMS`` floats and keeps nothing for backward but the spline's coefficients.
    """
    h, w = hw
    s = float(max(h, w))
    c = dst.float() / s
    wts, v = tps_solve(c, (dst.float() - src.float()) / s)
    ys = torch.arange(h, device=dst.device, dtype=torch.float32) / s
    xs = torch.arange(w, device=dst.device, dtype=torch.float32) / s
    return _TPSGrid.apply(c, wts, v, xs, ys) * s


def warp_by_flow(img: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """out(p) = img(p − flow(p)), bilinear, reflection at the borders.

    img: (M, C, H, W); flow: (M, H, W, 2) in pixels (x, y). Differentiable in both.
    """
    h, w = img.shape[-2:]
    ys = torch.arange(h, device=img.device, dtype=flow.dtype)
    xs = torch.arange(w, device=img.device, dtype=flow.dtype)
    qx = xs[None, None, :] - flow[..., 0]
    qy = ys[None, :, None] - flow[..., 1]
    grid = torch.stack([qx * (2.0 / max(w - 1, 1)) - 1.0, qy * (2.0 / max(h - 1, 1)) - 1.0], dim=-1)
    return F.grid_sample(
        img, grid.to(img.dtype), mode="bilinear", padding_mode="reflection", align_corners=True
    )


def tps_warp(img: torch.Tensor, src: torch.Tensor, dst: torch.Tensor) -> torch.Tensor:
    """Thin-plate-spline warp moving the content at ``src`` to ``dst``.

    img: (M, C, H, W); src, dst: (M, N, 2) pixels (x, y). Returns (M, C, H, W).
    """
    return warp_by_flow(img, tps_flow(src, dst, tuple(img.shape[-2:])))


def checkerboard(hw: tuple[int, int], cell: float, device: torch.device) -> torch.Tensor:
    """(H, W) float {0, 1}: 1 where exactly one of ⌊row/cell⌋, ⌊col/cell⌋ is odd
    (the reference's "max filter": even row bands 0, then odd column bands flipped)."""
    h, w = hw
    r = (torch.arange(h, device=device) / cell).floor().long() % 2
    c = (torch.arange(w, device=device) / cell).floor().long() % 2
    return (r[:, None] ^ c[None, :]).float()


def merge_warps(warped: torch.Tensor, filt: torch.Tensor) -> torch.Tensor:
    """Per-pixel max of the K warps where ``filt`` is 1, min where it is 0 (blended where
    the warped filter is fractional). warped: (B, K, C, H, W); filt: (B, 1, H, W)."""
    if warped.shape[1] == 1:
        return warped[:, 0]
    mx = warped.max(dim=1).values
    mn = warped.min(dim=1).values
    return mx * filt + mn * (1 - filt)


# ============================================================================ losses
def control_loss(
    src: torch.Tensor, dst: torch.Tensor, unit: float = 1.0, translation_lambda: float = 0.5
) -> torch.Tensor:
    """L_C per image: (B,). src, dst: (B, K, N, 2); ``unit``: px per reference unit.

    = mean over warps of the std over control points of the displacement (per x/y)
      − 0.5 · mean over control points of the std over warps (only when K > 1).
    Stds are unbiased (torch's default), as in the reference.
    """
    mov = (dst - src) / unit
    within = mov.std(dim=2).mean(dim=(1, 2))
    if mov.shape[1] == 1:
        return within
    across = mov.std(dim=1).mean(dim=(1, 2))
    return within - translation_lambda * across


def patch_deform_loss(
    x: torch.Tensor, warped: torch.Tensor, pixel_std: Sequence[float]
) -> torch.Tensor:
    """The reference's default L_D ("patch"): −mean |I − Î| in SAM-normalized units: (B,)."""
    std = torch.tensor(tuple(pixel_std), device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
    return -((x - warped).abs() * (255.0 / std)).flatten(1).mean(dim=1)


#: shorter side pytorch-msssim needs for its 5 scales with an 11-px window
MS_SSIM_MIN_SIDE = 161


def ssim_deform_loss(x: torch.Tensor, warped: torch.Tensor) -> torch.Tensor:
    """The paper's L_D ("ssim"): MS-SSIM(Î, I) on [0, 1] images, data range 1 (minimised): (B,).

    pytorch-msssim's standard 5-scale MS-SSIM (Wang et al. 2003); images whose shorter
    side is below 161 px are too small for its 4 downsamplings and get single-scale SSIM.
    """
    try:
        from pytorch_msssim import ms_ssim, ssim
    except ImportError as exc:  # pragma: no cover - dependency of the package
        raise ConfigError(
            "uad:deform_guidance=ssim needs pytorch-msssim: pip install pytorch-msssim"
        ) from exc
    if min(x.shape[-2:]) >= MS_SSIM_MIN_SIDE:
        return ms_ssim(warped, x, data_range=1.0, size_average=False)
    return ssim(warped, x, data_range=1.0, size_average=False)


def fidelity_loss(
    adv: list[torch.Tensor], target: list[torch.Tensor], clean: list[torch.Tensor]
) -> torch.Tensor:
    """L_F per image: mean over taps of −cos(f(x_adv), f(Î)) + cos(f(x_adv), f(I)): (B,)."""
    return tap_cosine(adv, clean) - tap_cosine(adv, target)


# ============================================================================ the attack
#: units of ``di_noise_std``: SAM-normalized (the reference's: ×std/255 per channel in
#: pixels, 4/255 ≈ 0.9 grey levels) or [0, 1] pixels (4/255 = 4 grey levels)
DI_UNITS = ("normalized", "pixel")


@dataclasses.dataclass(frozen=True)
class UADConfig(FeaturePGDConfig):
    """UAD settings; names follow the reference implementation, defaults are its own.

    Stage 1: ``deform_epochs`` (T_D = 40), ``warp_size`` (K = 4), ``num_split`` (n = 6),
    ``src_rand_range`` (0.0) and ``dst_rand_range`` (0.1) in blocks, ``deform_lr`` (10,
    in reference units), ``warp_filter_stride`` (300, checkerboard cell in reference
    units), ``deform_guidance`` ("patch" | "ssim"), ``control_loss_alpha`` (λ_C = 0.05),
    ``fidelity_loss_alpha`` (λ_F = 1), ``est_fidelity_iter`` (T_f = 4),
    ``fidelity_grad`` (False: f(Î) detached as in the reference).
    Stage 2: ``eps``, ``alpha``, ``steps`` (40) and ``taps`` as every feature attack;
    ``use_di``/``di_noise_std`` (off, 4/255), ``di_units`` ("normalized", the
    reference's, or "pixel"), ``di_keep`` (False: the noise only perturbs each forward's
    input; True: it stays in the iterate, as in the reference), ``use_mi``/``mi_momentum``
    (off, 1).
    Units: ``ref_size`` (1024) fixes the reference unit S/ref_size px; ``pixel_std``
    (SAM's) the normalized space of L_D. ``skip_unused_estimates``: see :class:`UAD`.
    """

    deform_epochs: int = 40
    """Stage-1 Adam steps on the control points (T_D)."""
    warp_size: int = 4
    """Thin-plate-spline warps merged into the target (K)."""
    num_split: int = 6
    """Control points per side of each warp's grid (n: an n×n grid)."""
    src_rand_range: float = 0.0
    """Std of the source points' noise, in blocks (image side / n)."""
    dst_rand_range: float = 0.1
    """Std of the destination points' noise, in blocks."""
    deform_lr: float = 10.0
    """Adam's learning rate on the points, in reference units (px at 1024)."""
    warp_filter_stride: float = 300.0
    """Checkerboard cell merging the warps, in reference units."""
    deform_guidance: str = "patch"
    """L_D: "patch" (−mean|I − Î|, the reference's default) or "ssim" (the paper's MS-SSIM)."""
    control_loss_alpha: float = 0.05
    """Weight of the control-point smoothness loss L_C (λ_C)."""
    fidelity_loss_alpha: float = 1.0
    """Weight of the fidelity loss L_F (λ_F)."""
    est_fidelity_iter: int = 4
    """PGD steps estimating L_F at each stage-1 step (T_f)."""
    fidelity_grad: bool = False
    """Let L_F's gradient reach the points (the reference detaches f(Î))."""
    use_di: bool = False
    """Stage 2: Gaussian noise added to the input of every forward (kept only with di_keep)."""
    di_noise_std: float = 4 / 255
    """Std of use_di's noise, in di_units (4/255 normalized: ~0.9 grey levels)."""
    di_units: str = "normalized"
    """Unit of di_noise_std: "normalized" (SAM-normalized space, the reference's) or "pixel"
    (fraction of the [0, 1] pixel range)."""
    di_keep: bool = False
    """Keep the noise in the stepped iterate (the reference's behaviour)."""
    use_mi: bool = False
    """Stage 2: momentum over per-image L1-normalised gradients (MI-FGSM)."""
    mi_momentum: float = 1.0
    """Decay factor of use_mi's momentum."""
    ref_size: int = 1024
    """Side (px) of the reference frame: one reference unit is max(H, W)/ref_size px."""
    pixel_std: tuple[float, ...] = SAM_PIXEL_STD
    """Per-channel std (0-255 scale) of the normalized space L_D is computed in."""
    skip_unused_estimates: bool = True
    """Skip the L_F estimates the result does not use (same output, faster)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.deform_guidance not in DEFORM_GUIDANCES:
            raise ValueError(
                f"deform_guidance={self.deform_guidance!r} must be one of {', '.join(DEFORM_GUIDANCES)}"
            )
        if self.deform_epochs < 1 or self.warp_size < 1 or self.est_fidelity_iter < 0:
            raise ValueError("deform_epochs and warp_size must be >= 1, est_fidelity_iter >= 0")
        if self.num_split < 2:
            raise ValueError(
                f"num_split={self.num_split}: a thin-plate spline needs a grid of at least 2×2 points"
            )
        if self.di_units not in DI_UNITS:
            raise ValueError(f"di_units={self.di_units!r} must be one of {', '.join(DI_UNITS)}")
        if self.warp_filter_stride <= 0 or self.ref_size <= 0 or self.deform_lr <= 0:
            raise ValueError("warp_filter_stride, ref_size and deform_lr must be > 0")


def grid_centres(hw: tuple[int, int], n: int) -> np.ndarray:
    """Centres of an n×n grid of blocks over an (H, W) image: (n², 2) pixels (x, y),
    row-major (the reference's order)."""
    h, w = hw
    ys = (np.arange(n) + 0.5) * h / n
    xs = (np.arange(n) + 0.5) * w / n
    yy, xx = np.meshgrid(ys, xs, indexing="ij")
    return np.stack([xx.ravel(), yy.ravel()], axis=1)


def init_control_points(
    hw: tuple[int, int], cfg: UADConfig, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Initial (src, dst) of the K warps of one image, each (K, n², 2) pixels (x, y).

    src = centres + N(0, (src_rand_range·block)²), dst = src + N(0, (dst_rand_range·block)²),
    per axis with that axis's block size, clamped to the image.
    """
    h, w = hw
    k, n = cfg.warp_size, cfg.num_split
    block = np.array([w / n, h / n])
    hi = np.array([w - 1, h - 1], dtype=np.float64)
    centres = np.repeat(grid_centres(hw, n)[None], k, axis=0)
    noise = [rng.standard_normal((k, n * n)) for _ in range(4)]  # src y, src x, dst y, dst x
    src = np.clip(centres + np.stack([noise[1], noise[0]], -1) * block * cfg.src_rand_range, 0, hi)
    dst = np.clip(src + np.stack([noise[3], noise[2]], -1) * block * cfg.dst_rand_range, 0, hi)
    return src, dst


class UAD(FeatureAttack):
    """UAD, "Unsegment Anything by Simulating Deformation" (Lu, Yang & Wang, CVPR 2024).

    Learns a deformed target Î of each image with K thin-plate-spline flow fields
    (stage 1), then crafts a perturbation whose encoder features move towards f(Î) and
    away from f(I) (stage 2). See the module docstring for the two stages and how the
    paper's 1024-px constants map to the image's own resolution.

    Threat model: L∞, ε = 8/255, α = 2/255, 40 stage-2 steps; transfer (the surrogate's
    image encoder only; prompt-agnostic).

    Args (``UADConfig``): ``eps`` (8/255), ``alpha`` (2/255), ``steps`` (40), ``taps``
    (the surrogate's default, blocks 3–6 of ViT-B), ``amp`` ("none" | "bf16" | "fp16"),
    ``deform_epochs`` (40), ``warp_size`` (4), ``num_split`` (6), ``src_rand_range`` (0.0),
    ``dst_rand_range`` (0.1), ``deform_lr`` (10), ``warp_filter_stride`` (300),
    ``deform_guidance`` ("patch": −mean|I − Î|, the reference's default; "ssim": the
    paper's MS-SSIM(Î, I) via pytorch-msssim), ``control_loss_alpha`` (0.05),
    ``fidelity_loss_alpha`` (1), ``est_fidelity_iter`` (4), ``fidelity_grad`` (False),
    ``use_di``/``di_noise_std`` (False, 4/255: Gaussian noise added to the input of every
    stage-2 forward), ``di_units`` ("normalized": the std is in SAM-normalized units, as
    in the reference, ≈ 0.9 grey levels; "pixel": in [0, 1] pixels), ``di_keep`` (False:
    the noise is not kept in the iterate; True: the step is taken from the noisy iterate,
    the reference's behaviour), ``use_mi``/``mi_momentum`` (False, 1:
    momentum over per-image L1-normalised gradients), ``ref_size`` (1024), ``pixel_std``
    (SAM's), ``skip_unused_estimates`` (True).

    Fidelity. At every stage-1 step the reference runs T_f PGD steps from I towards
    f(Î) ("fidelity estimate"). With ``fidelity_grad=False`` (its behaviour) f(Î) is
    detached and each estimate restarts from I, so only the last step's 40-step run
    reaches the output: ``skip_unused_estimates=True`` skips the others and returns the
    same image for a fraction of the cost (False runs them, e.g. for timing against the
    reference). With ``fidelity_grad=True`` the estimate's loss λ_F·Σ_t L_F(x_t, Î) (summed
    over its T_f iterates, as the reference's per-step backward would accumulate) adds its
    gradient through f(Î) to the control points before Adam's step. λ_F only weights that
    term: stage-2 steps are signed, so they ignore it.

    Randomness (control points, DI noise) is drawn per image from (run seed, sample id):
    an image's result does not depend on its batch-mates. After :meth:`perturb`,
    ``last_state`` holds the final points ("src", "dst": (B, K, N, 2) px), the deformed
    target ("deformed": (B, 3, H, W)) and the warped checkerboard ("filter").

    Shapes: ``perturb(x)`` with x float (B, 3, H, W) in [0, 1], images of one size → same.

    Example::

        uadbench run --attack uad --victims all
        uadbench run --attack uad:deform_guidance=ssim,fidelity_grad=true,amp=bf16 --device cuda
    """

    name = "uad"
    Config = UADConfig

    def __init__(self, config: UADConfig | None = None):
        super().__init__(config)
        self.last_state: dict[str, torch.Tensor] = {}

    # ------------------------------------------------------------------ stage 1 parts
    def unit(self, hw: tuple[int, int]) -> float:
        """Pixels per reference unit: max(H, W) / ref_size."""
        return max(hw) / self.config.ref_size

    def initial_points(
        self, x: torch.Tensor, ctx: AttackContext
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(src, dst), each (B, K, N, 2) float32 pixels (x, y), drawn per image."""
        hw = tuple(x.shape[-2:])
        pairs = [
            init_control_points(hw, self.config, sample_context(ctx, i).rng("uad-points"))
            for i in range(x.shape[0])
        ]
        src = torch.tensor(np.stack([p[0] for p in pairs]), dtype=torch.float32, device=x.device)
        dst = torch.tensor(np.stack([p[1] for p in pairs]), dtype=torch.float32, device=x.device)
        return src, dst

    def deform_filter(
        self, src: torch.Tensor, dst: torch.Tensor, hw: tuple[int, int]
    ) -> torch.Tensor:
        """The checkerboard warped by each image's first warp: (B, 1, H, W)."""
        board = checkerboard(hw, self.config.warp_filter_stride * self.unit(hw), src.device)
        b = src.shape[0]
        return tps_warp(board.expand(b, 1, *hw), src[:, 0], dst[:, 0])

    def deform(
        self, x: torch.Tensor, src: torch.Tensor, dst: torch.Tensor, filt: torch.Tensor
    ) -> torch.Tensor:
        """Î: the K warps of each image merged by ``filt``. x (B, C, H, W) → (B, C, H, W)."""
        b, k = src.shape[:2]
        imgs = x[:, None].expand(b, k, *x.shape[1:]).reshape(b * k, *x.shape[1:])
        warped = tps_warp(
            imgs, src.reshape(b * k, *src.shape[2:]), dst.reshape(b * k, *dst.shape[2:])
        )
        return merge_warps(warped.view(b, k, *x.shape[1:]), filt)

    def deform_loss(self, x: torch.Tensor, warped: torch.Tensor) -> torch.Tensor:
        if self.config.deform_guidance == "ssim":
            return ssim_deform_loss(x, warped)
        return patch_deform_loss(x, warped, self.config.pixel_std)

    # ------------------------------------------------------------------ stage 2
    def simulate(
        self,
        x: torch.Tensor,
        surrogate,
        taps: Sequence[int],
        target: list[torch.Tensor],
        clean: list[torch.Tensor],
        steps: int,
        ctx: AttackContext,
        salt: str,
        target_graph: list[torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``steps`` signed PGD steps from x minimising L_F towards ``target``.

        Returns the adversarial images (B, C, H, W) and, when ``target_graph`` (f(Î)
        with its graph to the control points) is given, Σ_t −mean-tap cos(f(x_t), f(Î))
        per image (B,) — the part of Σ_t L_F that depends on Î.
        """
        cfg = self.config
        scale = loss_scale(cfg.amp)
        x_adv = x.detach().clone()
        momentum = torch.zeros_like(x)
        point_term = None
        di_scale = cfg.di_noise_std
        if cfg.di_units == "normalized":
            di_scale = (
                di_scale * torch.tensor(cfg.pixel_std, device=x.device).view(1, -1, 1, 1) / 255
            )
        adv: list[torch.Tensor] = []

        def fidelity(z: torch.Tensor) -> torch.Tensor:  # per image; EOT-averaged in loss_grad
            adv[:] = self.feats(surrogate, z, taps)
            cl = self.eot_reference(clean, lambda c: self.ref_feats(surrogate, c, taps), x)
            return fidelity_loss(adv, target, cl) * scale

        for t in range(steps):
            noise = None
            if cfg.use_di:
                noise = sample_randn(ctx, x.shape[1:], f"{salt}/di/{t}", x.device) * di_scale
                if cfg.di_keep:  # the reference: the noisy iterate is the one stepped
                    x_adv, noise = (x_adv.detach() + noise), None
            x_adv.requires_grad_(True)
            inp = x_adv if noise is None else x_adv + noise
            loss, grad = self.loss_grad(x_adv, fidelity, inp)
            loss = loss / scale
            if target_graph is not None:
                term = -tap_cosine([a.detach() for a in adv], target_graph)
                point_term = term if point_term is None else point_term + term
            with torch.no_grad():
                if cfg.use_mi:
                    l1 = grad.abs().flatten(1).sum(dim=1).clamp_min(1e-30).view(-1, 1, 1, 1)
                    momentum = cfg.mi_momentum * momentum + grad / l1
                    grad = momentum
                x_adv = self.project(x_adv - cfg.alpha * grad.sign(), x)
            if log.isEnabledFor(logging.DEBUG):
                log.debug(
                    "uad %s step %d: L_F %s", salt, t, loss.detach().cpu().numpy().round(4).tolist()
                )
        return x_adv.detach(), point_term

    # ------------------------------------------------------------------ the attack
    def perturb(self, x: torch.Tensor, surrogate, ctx: AttackContext) -> torch.Tensor:
        cfg = self.config
        taps = resolve_taps(surrogate, cfg.taps)
        hw = tuple(x.shape[-2:])
        h, w = hw
        unit = self.unit(hw)
        src, dst = self.initial_points(x, ctx)
        with torch.no_grad():
            filt = self.deform_filter(src, dst, hw)
        src.requires_grad_(True)
        dst.requires_grad_(True)
        opt = torch.optim.Adam([src, dst], lr=cfg.deform_lr * unit)
        clean = self.ref_feats(surrogate, x, taps)
        x_adv = x

        def step_points(loss: torch.Tensor) -> None:
            opt.zero_grad(set_to_none=True)
            loss.sum().backward()
            opt.step()
            with torch.no_grad():
                for p in (src, dst):
                    p[..., 0].clamp_(0, w - 1)
                    p[..., 1].clamp_(0, h - 1)

        for epoch in range(cfg.deform_epochs):
            last = epoch == cfg.deform_epochs - 1
            warped = self.deform(x, src, dst, filt)
            loss_points = self.deform_loss(x, warped) + cfg.control_loss_alpha * control_loss(
                src, dst, unit
            )
            steps = cfg.steps if last else cfg.est_fidelity_iter
            salt = f"uad/{epoch}"
            if cfg.fidelity_grad and not last:
                # L_F reaches the points through f(Î): estimate first, then one Adam step
                target_graph = self.feats(surrogate, warped, taps)
                target = [t.detach() for t in target_graph]
                x_adv, term = self.simulate(
                    x, surrogate, taps, target, clean, steps, ctx, salt, target_graph
                )
                if term is not None:
                    loss_points = loss_points + cfg.fidelity_loss_alpha * term
                step_points(loss_points)
            else:
                # the reference's order: Adam step on L_D + λ_C·L_C, then the estimate
                # towards the (pre-step) Î, whose features are detached
                step_points(loss_points)
                if last or not cfg.skip_unused_estimates:
                    target = self.ref_feats(surrogate, warped.detach(), taps)
                    x_adv, _ = self.simulate(x, surrogate, taps, target, clean, steps, ctx, salt)
            if log.isEnabledFor(logging.DEBUG):
                log.debug(
                    "uad epoch %d: L_D + λ_C L_C %s",
                    epoch,
                    loss_points.detach().cpu().numpy().round(4).tolist(),
                )
        self.last_state = {
            "src": src.detach(),
            "dst": dst.detach(),
            "deformed": warped.detach(),
            "filter": filt,
        }
        return x_adv

    def objective(self, surrogate, clean: torch.Tensor, ctx: AttackContext):
        """Stage 2's minimised L_F towards the deformed target Î of the last run on ``clean``
        (in its frame: images are resized to Î's size when the attack ran in the model's)."""
        if "deformed" not in self.last_state:
            raise RuntimeError("UAD.objective reads the target of a run: run the attack first")
        target_img = self.last_state["deformed"]
        taps = resolve_taps(surrogate, self.config.taps)
        target = self.ref_feats(surrogate, target_img, taps)
        ref = self.ref_feats(surrogate, resample(clean, target_img.shape[-2:]), taps)
        return lambda x: fidelity_loss(
            self.ref_feats(surrogate, resample(x, target_img.shape[-2:]), taps), target, ref
        )
