"""Feature-space PGD baselines on the image encoder, and the helpers every feature attack shares.

Helpers here (used by :mod:`.transfer`, :mod:`.attack_sam` and :mod:`.uad`):

- :func:`resolve_taps` — the configured encoder taps or the surrogate's default;
- :func:`surrogate_features` — the tapped features under optional autocast, as float32;
- :func:`autocast` — bf16/fp16 autocast on the images' own device (``amp`` config field);
- :func:`sample_context`, :func:`sample_randn`, :func:`draw_other_images` — randomness drawn
  *per image* from (run seed, sample id, salt), so an image's adversarial does not depend
  on which other images share its batch (the cache is keyed per sample);
- :func:`feature_distance`, :func:`stacked_distance`, :func:`tap_cosine` — feature losses.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import ConfigError
from .base import Attack, AttackConfig, AttackContext

#: autocast modes of the ``amp`` config field
AMP_MODES = ("none", "bf16", "fp16")
#: the reference expresses some constants in SAM's normalized input space
#: ``(255·x − mean) / std``; these per-channel stds convert them to [0, 1] pixels
SAM_PIXEL_STD = (58.395, 57.12, 57.375)
#: fp16 gradients can underflow to zero; signed steps and L1-normalised momentum do not
#: depend on the loss scale, so fp16 losses are multiplied by this before backward
FP16_LOSS_SCALE = 1024.0


def check_amp(amp: str) -> None:
    if amp not in AMP_MODES:
        raise ValueError(f"amp={amp!r} must be one of {', '.join(AMP_MODES)}")


def autocast(device: torch.device, amp: str) -> contextlib.AbstractContextManager:
    """``torch.autocast`` for ``amp`` in ("bf16", "fp16") on ``device``'s type; else a no-op."""
    if amp == "none":
        return contextlib.nullcontext()
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[amp]
    return torch.autocast(device_type=device.type, dtype=dtype)


def loss_scale(amp: str) -> float:
    return FP16_LOSS_SCALE if amp == "fp16" else 1.0


@dataclasses.dataclass(frozen=True)
class FeaturePGDConfig(AttackConfig):
    """``taps``: encoder blocks whose outputs the loss reads (0-based); empty = the
    surrogate's default (blocks 3–6 of a 12-block ViT). ``amp``: run the surrogate under
    autocast, "none" | "bf16" | "fp16" (losses and steps stay float32)."""

    taps: tuple[int, ...] = ()
    amp: str = "none"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_amp(self.amp)


# ----------------------------------------------------------------------------- helpers
def resolve_taps(surrogate, taps: tuple[int, ...]) -> tuple[int, ...]:
    """The configured taps, or the surrogate's default; checked against its depth."""
    taps = tuple(taps) or tuple(surrogate.default_taps())
    n = surrogate.num_blocks
    bad = [t for t in taps if not 0 <= t < n]
    if bad:
        raise ConfigError(
            f"taps {bad} out of range for surrogate {surrogate.name} with {n} blocks (0..{n - 1}); "
            f"pass taps=[...] within range"
        )
    return taps


def surrogate_features(
    surrogate, x: torch.Tensor, taps: Sequence[int], amp: str = "none"
) -> list[torch.Tensor]:
    """``surrogate.features(x, taps)`` under autocast ``amp``, each tap cast to float32.

    x: float (B, 3, H, W) in [0, 1]. Returns one tensor per tap, batch first.
    """
    with autocast(x.device, amp):
        feats = surrogate.features(x, taps)
    return [f.float() for f in feats]


def sample_context(ctx: AttackContext, i: int) -> AttackContext:
    """The context of the batch's ``i``-th image alone (same seed, prompts, dataset)."""
    prompts = [ctx.prompts[i]] if ctx.prompts is not None else None
    return AttackContext([ctx.sample_ids[i]], ctx.seed, prompts, ctx.draw_image)


def sample_randn(
    ctx: AttackContext, shape: Sequence[int], salt: str, device: torch.device
) -> torch.Tensor:
    """Standard normal noise of shape (B, *shape), row i drawn from image i's own seed.

    Drawn on the CPU and moved, so the numbers do not depend on the device.
    """
    rows = []
    for i in range(len(ctx.sample_ids)):
        g = sample_context(ctx, i).torch_generator(torch.device("cpu"), salt)
        rows.append(torch.randn(tuple(shape), generator=g))
    return torch.stack(rows).to(device)


def resize_image(img, hw: tuple[int, int], device: torch.device) -> torch.Tensor:
    """RGB uint8 (h, w, 3) → float (3, H, W) in [0, 1] at size ``hw`` (bilinear, antialiased)."""
    t = torch.as_tensor(np.asarray(img).copy()).permute(2, 0, 1).float().div(255.0)[None]
    if tuple(t.shape[-2:]) != tuple(hw):
        t = F.interpolate(t, size=tuple(hw), mode="bilinear", align_corners=False, antialias=True)
    return t[0].clamp(0, 1).to(device)


def draw_other_raw(
    ctx: AttackContext, generators: list | None = None, who: str = ""
) -> list[np.ndarray]:
    """One random *other* image of the dataset per batch image, as drawn: RGB uint8
    (h_i, w_i, 3) at its own size. ``generators``: per-image numpy generators (advanced
    in place, so successive calls draw fresh images); default: fresh ones from the sample
    seeds with salt "target"."""
    if ctx.draw_image is None:
        raise ConfigError(
            f"attack {who or '?'} draws target images from the dataset: run it through the "
            f"harness or pass AttackContext(draw_image=...)"
        )
    if generators is None:
        generators = [sample_context(ctx, i).rng("target") for i in range(len(ctx.sample_ids))]
    return [np.asarray(ctx.draw_image(g, sid)) for g, sid in zip(generators, ctx.sample_ids)]


def draw_other_images(
    ctx: AttackContext,
    hw: tuple[int, int],
    device: torch.device,
    generators: list | None = None,
    who: str = "",
) -> torch.Tensor:
    """:func:`draw_other_raw` resized (stretched) to ``hw``: float (B, 3, H, W) in [0, 1]."""
    imgs = draw_other_raw(ctx, generators, who)
    return torch.stack([resize_image(im, hw, device) for im in imgs])


def feature_distance(feats_adv: list[torch.Tensor], feats_ref: list[torch.Tensor]) -> torch.Tensor:
    """Per-image sum over taps of the L2 distance between feature maps: shape (B,)."""
    total = 0
    for fa, fr in zip(feats_adv, feats_ref):
        total = total + (fa - fr).flatten(1).norm(dim=1)
    return total


def stacked_distance(feats_a: list[torch.Tensor], feats_b: list[torch.Tensor]) -> torch.Tensor:
    """Per-image L2 norm of the difference of all taps stacked together (the reference's
    ``torch.norm`` over the [taps, ...] tensor): shape (B,)."""
    sq = 0
    for fa, fb in zip(feats_a, feats_b):
        sq = sq + (fa - fb).flatten(1).pow(2).sum(dim=1)
    return sq.sqrt()


def tap_cosine(feats_a: list[torch.Tensor], feats_b: list[torch.Tensor]) -> torch.Tensor:
    """Per-image mean over taps of the cosine between flattened tap outputs: shape (B,)."""
    cos = [
        F.cosine_similarity(fa.flatten(1), fb.flatten(1), dim=1) for fa, fb in zip(feats_a, feats_b)
    ]
    return torch.stack(cos).mean(dim=0)


def signed_noise_init(
    x: torch.Tensor, ctx: AttackContext, radius: float, salt: str = "init"
) -> torch.Tensor:
    """x plus per-image uniform noise in [−radius, radius] (seeded per sample)."""
    return x + (sample_rand(ctx, tuple(x.shape[1:]), salt, x.device) * 2 - 1) * radius


def sample_rand(
    ctx: AttackContext, shape: Sequence[int], salt: str, device: torch.device
) -> torch.Tensor:
    """Uniform [0, 1) noise of shape (B, *shape), row i from image i's own seed."""
    rows = []
    for i in range(len(ctx.sample_ids)):
        g = sample_context(ctx, i).torch_generator(torch.device("cpu"), salt)
        rows.append(torch.rand(tuple(shape), generator=g))
    return torch.stack(rows).to(device)


class FeatureAttack(Attack):
    """Base of the encoder-feature attacks: taps, autocast and a PGD on a per-image loss."""

    Config = FeaturePGDConfig
    uses_randomness = True  # start noise, targets, competitors, control points

    def feats(self, surrogate, x: torch.Tensor, taps: Sequence[int]) -> list[torch.Tensor]:
        return surrogate_features(surrogate, x, taps, self.config.amp)

    @torch.no_grad()
    def ref_feats(self, surrogate, x: torch.Tensor, taps: Sequence[int]) -> list[torch.Tensor]:
        """Features of fixed images (clean, target, competitor), without autograd."""
        return [f.detach() for f in self.feats(surrogate, x, taps)]

    @torch.no_grad()
    def other_feats(
        self,
        surrogate,
        images: Sequence[np.ndarray],
        hw: tuple[int, int],
        taps: Sequence[int],
        device: torch.device,
    ) -> list[torch.Tensor]:
        """Features of other images (targets, competitors), one per batch image.

        A surrogate with a fixed input frame (``img_size``: SAM resizes the longest side
        to it and pads) encodes each image through its own preprocessing at the image's
        own aspect ratio, as the reference encodes them; a surrogate that runs at the
        image's own size (no ``img_size``) gets them resized to the source's ``hw``, the
        only frame whose tokens line up with the source's."""
        if getattr(surrogate, "img_size", None) is None:
            return self.ref_feats(
                surrogate, torch.stack([resize_image(im, hw, device) for im in images]), taps
            )
        per = [
            self.ref_feats(surrogate, resize_image(im, im.shape[:2], device)[None], taps)
            for im in images
        ]
        return [torch.cat([p[t] for p in per]) for t in range(len(taps))]

    def run_pgd(
        self, x: torch.Tensor, loss_fn: Any, maximize: bool, x_init: torch.Tensor | None = None
    ) -> torch.Tensor:
        """:meth:`Attack.pgd` with the fp16 loss scale applied (no-op otherwise)."""
        scale = loss_scale(self.config.amp)
        return self.pgd(x, lambda xa: loss_fn(xa) * scale, x_init=x_init, maximize=maximize)


class FeaturePGD(FeatureAttack):
    """Untargeted feature PGD.

    Maximises ‖f(x_adv) − f(x)‖₂ summed over the surrogate's encoder taps, with signed
    gradient steps under an L∞ budget (UAD.md, "Baselines").

    Threat model: L∞, ε = 8/255, α = 2/255, 40 steps; transfer (surrogate only).

    Args (``FeaturePGDConfig``): ``eps`` (8/255), ``alpha`` (2/255), ``steps`` (40),
    ``taps`` (default: the surrogate's, blocks 3–6 of ViT-B), ``amp`` ("none").

    Starts from x plus uniform noise of radius α/2, drawn per image from the run seed and
    the sample id (at x itself the gradient of the distance is zero).

    Shapes: ``perturb(x)`` with x float (B, 3, H, W) in [0, 1] → same shape.

    Example::

        uadbench run --attack feature-pgd:eps=4/255 --victims all
    """

    name = "feature-pgd"
    Config = FeaturePGDConfig

    def perturb(self, x: torch.Tensor, surrogate, ctx: AttackContext) -> torch.Tensor:
        taps = resolve_taps(surrogate, self.config.taps)
        ref = self.ref_feats(surrogate, x, taps)
        x_init = signed_noise_init(x, ctx, self.config.alpha / 2)

        def refs(c: torch.Tensor) -> list[torch.Tensor]:
            return self.ref_feats(surrogate, c, taps)

        return self.run_pgd(
            x,
            lambda xa: feature_distance(
                self.feats(surrogate, xa, taps), self.eot_reference(ref, refs, x)
            ),
            True,
            x_init,
        )

    def objective(self, surrogate, clean: torch.Tensor, ctx: AttackContext):
        """−Σ_taps ‖f(x) − f(clean)‖₂ (the maximised distance, negated)."""
        taps = resolve_taps(surrogate, self.config.taps)
        ref = self.ref_feats(surrogate, clean, taps)
        return lambda x: -feature_distance(self.ref_feats(surrogate, x, taps), ref)
