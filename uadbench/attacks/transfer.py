"""Transfer baselines of the UAD paper on encoder features: TAP, ILPD, AA, PATA, PATA++.

All work in [0, 1] pixel space at the image's own resolution (signed steps there equal
the reference's steps of α·255/std in SAM's normalized space). "Features" are the
surrogate's encoder taps; distances are the reference's: one L2 norm over all taps
stacked (:func:`~.feature_pgd.stacked_distance`), cosines per flattened tap averaged
over taps (:func:`~.feature_pgd.tap_cosine`). Target and competitor images are other
images of the run's dataset, drawn per image from (run seed, sample id) through
``ctx.draw_image`` and encoded through the surrogate's own preprocessing at their own
aspect ratio (:meth:`~.feature_pgd.FeatureAttack.other_feats`), as the reference does.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F

from .base import AttackContext
from .feature_pgd import (
    SAM_PIXEL_STD,
    FeatureAttack,
    FeaturePGDConfig,
    draw_other_raw,
    resolve_taps,
    sample_context,
    sample_randn,
    stacked_distance,
    tap_cosine,
)


def encoder_frame(surrogate, hw: tuple[int, int]) -> float:
    """Long side of the image the surrogate's encoder actually sees: its ``img_size``
    (SAM: 1024, it resizes every input) or, without one, the image's own max(H, W)."""
    return float(getattr(surrogate, "img_size", None) or max(hw))


def power_transform(z: torch.Tensor, power: float) -> torch.Tensor:
    """TAP's T(z) = sign(z)·|z|^power, with zero gradient (not inf) at z = 0."""
    return torch.sign(z) * z.abs().clamp_min(1e-12).pow(power)


@dataclasses.dataclass(frozen=True)
class TAPConfig(FeaturePGDConfig):
    """``tap_alpha``: power of T (0.5). ``tap_eta``: weight of the smoothness penalty
    (0.01). ``init_noise``: std of the Gaussian start noise in SAM-normalized units (0.01).
    ``pixel_std``: per-channel std of that normalization (SAM's), converting both to pixels."""

    tap_alpha: float = 0.5
    tap_eta: float = 0.01
    init_noise: float = 0.01
    pixel_std: tuple[float, ...] = SAM_PIXEL_STD


class TAP(FeatureAttack):
    """TAP, "Transferable adversarial perturbations" (Zhou et al., ECCV 2018).

    Maximises ‖T(f(x_adv)) − T(f(x))‖₂ − η·Σ|AvgPool3×3(x − x_adv)|, T(z) = sign(z)·|z|^0.5,
    over the encoder taps; starts from x + N(0, (0.01 normalized)²) so that the first
    gradient is not zero.

    Threat model: L∞, ε = 8/255, α = 2/255, 40 steps; transfer (surrogate only).

    Args (``TAPConfig``): ``eps``, ``alpha``, ``steps``, ``taps``, ``amp`` as for
    feature-pgd; ``tap_alpha`` (0.5), ``tap_eta`` (0.01), ``init_noise`` (0.01),
    ``pixel_std`` (SAM's).

    Units, as in the reference: the penalty is on the perturbation in SAM-normalized
    units (x·255/std per channel), pooled by ``AvgPool2d(3)`` (stride 3) and summed. The
    reference sums over SAM's 1024-px input; at the image's own size S = max(H, W) the
    per-pixel gradient of the feature term is (R/S)² times that of a pixel of the
    encoder's R-px input (R = the surrogate's ``img_size``, 1024 for SAM), so the penalty
    is scaled by (R/S)² to keep the reference's balance between the two terms.

    Shapes: ``perturb(x)`` with x float (B, 3, H, W) in [0, 1] → same shape.

    Example::

        uadbench run --attack tap --victims all
    """

    name = "tap"
    Config = TAPConfig

    def _mixed(self, fa: torch.Tensor, fc: torch.Tensor) -> torch.Tensor:
        return fa  # ILPD mixes with the clean features here

    def smoothness(self, x: torch.Tensor, x_adv: torch.Tensor, frame: float) -> torch.Tensor:
        """η·(R/S)²·Σ|AvgPool3(x − x_adv) in normalized units| per image: (B,);
        ``frame`` = R, the long side of the encoder's input."""
        std = torch.tensor(self.config.pixel_std, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
        d = (x - x_adv) * 255.0 / std
        area = (frame / max(x.shape[-2:])) ** 2
        return self.config.tap_eta * area * F.avg_pool2d(d, 3).abs().flatten(1).sum(dim=1)

    def perturb(self, x: torch.Tensor, surrogate, ctx: AttackContext) -> torch.Tensor:
        cfg = self.config
        taps = resolve_taps(surrogate, cfg.taps)

        def refs(c: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
            feats = self.ref_feats(surrogate, c, taps)
            return feats, [power_transform(f, cfg.tap_alpha) for f in feats]

        clean, t_clean = refs(x)
        std = torch.tensor(cfg.pixel_std, device=x.device).view(1, -1, 1, 1) / 255.0
        x_init = x + sample_randn(ctx, x.shape[1:], "init", x.device) * cfg.init_noise * std
        frame = encoder_frame(surrogate, tuple(x.shape[-2:]))

        def loss(xa: torch.Tensor) -> torch.Tensor:
            adv = self.feats(surrogate, xa, taps)
            cl, t_cl = self.eot_reference((clean, t_clean), refs, x)  # T(x) under EOT
            t_adv = [power_transform(self._mixed(fa, fc), cfg.tap_alpha) for fa, fc in zip(adv, cl)]
            return stacked_distance(t_adv, t_cl) - self.smoothness(x, xa, frame)

        return self.run_pgd(x, loss, maximize=True, x_init=x_init)

    def objective(self, surrogate, clean: torch.Tensor, ctx: AttackContext):
        """−(‖T(mix(f(x))) − T(f(clean))‖₂ − smoothness): the maximised loss, negated."""
        cfg = self.config
        taps = resolve_taps(surrogate, cfg.taps)
        ref = self.ref_feats(surrogate, clean, taps)
        t_ref = [power_transform(f, cfg.tap_alpha) for f in ref]
        frame = encoder_frame(surrogate, tuple(clean.shape[-2:]))

        def score(x: torch.Tensor) -> torch.Tensor:
            adv = self.ref_feats(surrogate, x, taps)
            t_adv = [power_transform(self._mixed(a, c), cfg.tap_alpha) for a, c in zip(adv, ref)]
            return self.smoothness(clean, x, frame) - stacked_distance(t_adv, t_ref)

        return score


@dataclasses.dataclass(frozen=True)
class ILPDConfig(TAPConfig):
    """``ilpd_gamma``: weight of the adversarial features in the mix (0.5)."""

    ilpd_gamma: float = 0.5


class ILPD(TAP):
    """ILPD, "Improving adversarial transferability by intermediate-level perturbation
    decay" (Li et al., NeurIPS 2023), as the UAD paper runs it.

    TAP's loss on mixed features γ·f(x_adv) + (1 − γ)·f(x): maximises
    ‖T(γ f(x_adv) + (1 − γ) f(x)) − T(f(x))‖₂ − η·Σ|AvgPool3×3(x − x_adv)|.

    Threat model: L∞, ε = 8/255, α = 2/255, 40 steps; transfer (surrogate only).

    Args (``ILPDConfig``): those of TAP plus ``ilpd_gamma`` (0.5).

    Shapes: ``perturb(x)`` with x float (B, 3, H, W) in [0, 1] → same shape.

    Example::

        uadbench run --attack ilpd:ilpd_gamma=0.3 --victims all
    """

    name = "ilpd"
    Config = ILPDConfig

    def _mixed(self, fa: torch.Tensor, fc: torch.Tensor) -> torch.Tensor:
        g = self.config.ilpd_gamma
        return g * fa + (1 - g) * fc


class AA(FeatureAttack):
    """AA, activation attack, "Feature space perturbations yield more transferable
    adversarial examples" (Inkawhich et al., CVPR 2019).

    Minimises ‖f(x_adv) − f(x_t)‖₂ over the encoder taps towards the features of a target
    image x_t: another image of the run's dataset drawn from (run seed, sample id),
    encoded at its own aspect ratio through the surrogate's preprocessing. Starts from x.

    Threat model: L∞, ε = 8/255, α = 2/255, 40 steps; transfer (surrogate only);
    targeted in feature space.

    Args (``FeaturePGDConfig``): ``eps``, ``alpha``, ``steps``, ``taps``, ``amp``.

    Shapes: ``perturb(x)`` with x float (B, 3, H, W) in [0, 1] → same shape.

    Example::

        uadbench run --attack aa --victims all
    """

    name = "aa"
    Config = FeaturePGDConfig
    uses_dataset = True

    def target_features(
        self, surrogate, x: torch.Tensor, ctx: AttackContext, taps
    ) -> list[torch.Tensor]:
        """The features of each batch image's target image (one per tap, batch first)."""
        imgs = draw_other_raw(ctx, who=self.name)
        return self.other_feats(surrogate, imgs, tuple(x.shape[-2:]), taps, x.device)

    def perturb(self, x: torch.Tensor, surrogate, ctx: AttackContext) -> torch.Tensor:
        taps = resolve_taps(surrogate, self.config.taps)
        target = self.target_features(surrogate, x, ctx, taps)
        return self.run_pgd(
            x, lambda xa: stacked_distance(self.feats(surrogate, xa, taps), target), False
        )

    def objective(self, surrogate, clean: torch.Tensor, ctx: AttackContext):
        """‖f(x) − f(x_t)‖₂ to the drawn target (PATA's regulariser, with its random
        competitors, is left out: the target distance is what the attack is for)."""
        taps = resolve_taps(surrogate, self.config.taps)
        target = self.target_features(surrogate, clean, ctx, taps)
        return lambda x: stacked_distance(self.ref_feats(surrogate, x, taps), target)


@dataclasses.dataclass(frozen=True)
class PATAConfig(FeaturePGDConfig):
    """``pata_lambda``: weight of the feature-dominance regulariser (0.1)."""

    pata_lambda: float = 0.1


def dominance(adv: list[torch.Tensor], comp: list[torch.Tensor]) -> torch.Tensor:
    """PATA's R = mean over taps of cos(a, a + c) − cos(c, a + c): shape (B,)."""
    mix = [a + c for a, c in zip(adv, comp)]
    return tap_cosine(adv, mix) - tap_cosine(comp, mix)


class PATA(AA):
    """PATA, "Black-box targeted adversarial attack on Segment Anything" (Zheng &
    Zhang, 2023), as the UAD paper runs it.

    Minimises ‖f(x_adv) − f(x_t)‖₂ − λ·R with R = mean over taps of
    cos(f(x_adv), f(x_adv) + f(x_c)) − cos(f(x_c), f(x_adv) + f(x_c)) for a random
    competitor image x_c (cosines over each flattened tap). Target and competitor are
    other images of the run's dataset drawn from (run seed, sample id).

    Threat model: L∞, ε = 8/255, α = 2/255, 40 steps; transfer; targeted.

    Args (``PATAConfig``): ``eps``, ``alpha``, ``steps``, ``taps``, ``amp``,
    ``pata_lambda`` (0.1).

    Shapes: ``perturb(x)`` with x float (B, 3, H, W) in [0, 1] → same shape.

    Example::

        uadbench run --attack pata --victims all
    """

    name = "pata"
    Config = PATAConfig
    #: draw a fresh competitor at every iteration (PATA++)
    fresh_competitor = False

    def perturb(self, x: torch.Tensor, surrogate, ctx: AttackContext) -> torch.Tensor:
        cfg = self.config
        taps = resolve_taps(surrogate, cfg.taps)
        hw = tuple(x.shape[-2:])
        target = self.target_features(surrogate, x, ctx, taps)
        comp_rngs = [sample_context(ctx, i).rng("competitor") for i in range(len(ctx.sample_ids))]

        def competitor() -> list[torch.Tensor]:
            imgs = draw_other_raw(ctx, comp_rngs, who=self.name)
            return self.other_feats(surrogate, imgs, hw, taps, x.device)

        state = {"comp": competitor()}

        def loss(xa: torch.Tensor) -> torch.Tensor:
            if self.fresh_competitor and state.pop("used", False):
                state["comp"] = competitor()
            state["used"] = True
            adv = self.feats(surrogate, xa, taps)
            return stacked_distance(adv, target) - cfg.pata_lambda * dominance(adv, state["comp"])

        return self.run_pgd(x, loss, maximize=False)


class PATAPlusPlus(PATA):
    """PATA++: PATA with a fresh random competitor image at every iteration.

    Same loss, arguments and threat model as :class:`PATA`; iteration k uses the k-th
    competitor drawn from the image's own seeded stream.

    Example::

        uadbench run --attack pata++ --victims all
    """

    name = "pata++"
    fresh_competitor = True
