"""Attack-SAM and Attack-SAM-K: prompt-level attacks on the surrogate's mask logits."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import ConfigError
from ..eval.prompts import PromptSet
from .base import Attack, AttackConfig, AttackContext
from .feature_pgd import autocast, check_amp, loss_scale, sample_context


@dataclasses.dataclass(frozen=True)
class AttackSamConfig(AttackConfig):
    """``clip_max``: logit ceiling of the ClipMSE target (−10). ``amp``: autocast of the
    surrogate, "none" | "bf16" | "fp16"."""

    clip_max: float = -10.0
    amp: str = "none"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_amp(self.amp)


def clip_mse(logits: torch.Tensor, clip_max: float) -> torch.Tensor:
    """ClipMSE: MSE(m, clamp(m.detach(), max=clip_max)), mean over all elements (scalar).

    Zero once every logit is ≤ clip_max; its gradient pushes the larger logits down."""
    return F.mse_loss(logits, logits.detach().clamp(max=clip_max))


class AttackSam(Attack):
    """Attack-SAM, "Attack-SAM: Towards evaluating adversarial robustness of Segment
    Anything Model" (Zhang et al., 2023).

    Prompt-specific: with the evaluation prompts of each image (``ctx.prompts``), takes the
    surrogate's low-resolution mask logits m (one mask per prompt) and minimises
    ClipMSE = MSE(m, clamp(m.detach(), max=−10)), which drives every mask logit below −10
    (the masks vanish).

    Threat model: L∞, ε = 8/255, α = 2/255, 40 steps; white-box on the surrogate's full
    SAM (encoder, prompt encoder, decoder) and on the prompts.

    Args (``AttackSamConfig``): ``eps`` (8/255), ``alpha`` (2/255), ``steps`` (40),
    ``clip_max`` (−10), ``amp`` ("none").

    Shapes: ``perturb(x)`` with x float (B, 3, H, W) in [0, 1] → same shape; the
    surrogate's ``mask_logits`` gives (P_i, h, w) per image.

    Example::

        uadbench run --attack attack-sam --victims sam-vit-b
    """

    name = "attack-sam"
    Config = AttackSamConfig
    uses_prompts = True
    uses_randomness = False

    def prompts_for(self, x: torch.Tensor, ctx: AttackContext) -> list[PromptSet]:
        """The prompts attacked, one :class:`PromptSet` per batch image."""
        if ctx.prompts is None or len(ctx.prompts) != x.shape[0]:
            raise ConfigError(
                f"attack {self.name} is prompt-specific: pass one PromptSet per image in "
                f"AttackContext.prompts (or use attack-sam-k, which draws its own)"
            )
        return list(ctx.prompts)

    def loss(self, surrogate, x: torch.Tensor, prompts: Sequence[PromptSet]) -> torch.Tensor:
        """Per-image ClipMSE of the mask logits: (B,). Images without prompts give 0."""
        keep = [i for i, p in enumerate(prompts) if len(p)]
        out = x.new_zeros(x.shape[0])
        if not keep:
            return out + 0.0 * x.sum()
        with autocast(x.device, self.config.amp):
            logits = surrogate.mask_logits(x[keep], [prompts[i] for i in keep])
        vals = torch.stack([clip_mse(m.float(), self.config.clip_max) for m in logits])
        return out.index_put((torch.tensor(keep, device=x.device),), vals)

    def perturb(self, x: torch.Tensor, surrogate, ctx: AttackContext) -> torch.Tensor:
        prompts = self.prompts_for(x, ctx)
        scale = loss_scale(self.config.amp)
        return self.pgd(x, lambda xa: self.loss(surrogate, xa, prompts) * scale, maximize=False)

    def objective(self, surrogate, clean: torch.Tensor, ctx: AttackContext):
        """The minimised per-image ClipMSE of the attacked prompts' mask logits."""
        prompts = self.prompts_for(clean, ctx)
        return torch.no_grad()(lambda x: self.loss(surrogate, x, prompts))


#: Attack-SAM-K prompt modes: the paper's one prompt of K points, or K one-point prompts
SAMK_MODES = ("one-prompt", "per-point")


@dataclasses.dataclass(frozen=True)
class AttackSamKConfig(AttackSamConfig):
    """``k``: number of random points per image (400). ``mode``: "one-prompt" (the
    reference's and the paper's: the K points form ONE prompt, one mask) or "per-point"
    (K one-point prompts, K masks, ClipMSE over all of them; about K× the decoder cost)."""

    k: int = 400
    mode: str = "one-prompt"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.k < 1:
            raise ValueError(f"k={self.k} must be at least 1")
        if self.mode not in SAMK_MODES:
            raise ValueError(f"mode={self.mode!r} must be one of {', '.join(SAMK_MODES)}")


def random_points(h: int, w: int, k: int, rng: np.random.Generator) -> np.ndarray:
    """``k`` distinct pixel positions drawn uniformly over an (h, w) image, without
    replacement: (n, 2) XY, n = min(k, h·w)."""
    n = min(k, h * w)
    idx = rng.choice(h * w, size=n, replace=False)
    return np.stack([idx % w, idx // w], axis=1).astype(np.float64)


def random_point_prompts(h: int, w: int, k: int, rng: np.random.Generator) -> PromptSet:
    """:func:`random_points` as ``n`` one-point positive prompts."""
    return PromptSet.from_lists(points=[tuple(p) for p in random_points(h, w, k, rng)])


class AttackSamK(AttackSam):
    """Attack-SAM-K: Attack-SAM with K = 400 random points drawn uniformly over the whole
    image (the prompt-agnostic variant the UAD paper reports).

    ``mode="one-prompt"`` (default, as the reference ran it): the K points are ONE prompt
    of K positive points (``point_coords`` (1, K, 2)) → one mask per image; ClipMSE on its
    low-res logits. ``mode="per-point"``: K one-point prompts → K masks, ClipMSE over all
    (a different, ~K× costlier attack; labelled ``attack-sam-k[mode=per-point]``).

    The points are distinct pixels drawn once per image from (run seed, sample id) and
    kept for all iterations; the evaluation prompts are not used.

    Threat model: L∞, ε = 8/255, α = 2/255, 40 steps; white-box on the surrogate SAM,
    prompt-agnostic.

    Args (``AttackSamKConfig``): those of Attack-SAM plus ``k`` (400), ``mode``
    ("one-prompt" | "per-point").

    Shapes: ``perturb(x)`` with x float (B, 3, H, W) in [0, 1] → same shape; one-prompt
    logits are (1, h, w) per image.

    Example::

        uadbench run --attack attack-sam-k:k=100 --victims all
        uadbench run --attack attack-sam-k:mode=per-point --victims all
    """

    name = "attack-sam-k"
    Config = AttackSamKConfig
    uses_prompts = False
    uses_randomness = True

    def points_for(self, x: torch.Tensor, ctx: AttackContext) -> list[np.ndarray]:
        """The K points of each batch image, (K, 2) XY pixels."""
        h, w = x.shape[-2:]
        return [
            random_points(h, w, self.config.k, sample_context(ctx, i).rng("points"))
            for i in range(x.shape[0])
        ]

    def prompts_for(self, x: torch.Tensor, ctx: AttackContext) -> list[PromptSet]:
        return [
            PromptSet.from_lists(points=[tuple(p) for p in pts]) for pts in self.points_for(x, ctx)
        ]

    def group_loss(self, surrogate, x: torch.Tensor, points: list[np.ndarray]) -> torch.Tensor:
        """Per-image ClipMSE of the one K-point prompt's mask logits: (B,)."""
        if not hasattr(surrogate, "point_group_logits"):
            raise ConfigError(
                f"surrogate {surrogate.name} cannot decode one prompt of many points; use "
                f"attack-sam-k:mode=per-point or a SAM-family surrogate"
            )
        with autocast(x.device, self.config.amp):
            logits = surrogate.point_group_logits(x, points)
        return torch.stack([clip_mse(m.float(), self.config.clip_max) for m in logits])

    def perturb(self, x: torch.Tensor, surrogate, ctx: AttackContext) -> torch.Tensor:
        if self.config.mode == "per-point":
            return super().perturb(x, surrogate, ctx)
        points = self.points_for(x, ctx)
        scale = loss_scale(self.config.amp)
        return self.pgd(
            x, lambda xa: self.group_loss(surrogate, xa, points) * scale, maximize=False
        )

    def objective(self, surrogate, clean: torch.Tensor, ctx: AttackContext):
        """The minimised per-image ClipMSE of the K points' mask(s)."""
        if self.config.mode == "per-point":
            return super().objective(surrogate, clean, ctx)
        points = self.points_for(clean, ctx)
        return torch.no_grad()(lambda x: self.group_loss(surrogate, x, points))
