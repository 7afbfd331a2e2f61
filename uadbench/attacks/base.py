"""Attack base class: the budget, projection, rounding, seeding and the attack space live here.

A subclass writes only its maths in :meth:`Attack.perturb`, working on float images in
[0, 1], batched (B, 3, H, W): at the image's own resolution (``attack_space=image``) or
resized into the surrogate's input frame (``attack_space=model``; the base maps the
perturbation back to the original size). The base turns uint8 images
into tensors on the surrogate's device, seeds every random draw from the run seed and
the sample ids, projects onto the L∞ ball and the valid range, and rounds to uint8 so
that the saved image respects the budget exactly: |adv − clean| ≤ ⌊ε·255⌋ per pixel.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from ..config import budget_field
from ..eval.prompts import PromptSet

#: where the perturbation is optimised: at the image's own resolution, or in the
#: surrogate's input frame (longest side = its ``img_size``) and upsampled as a perturbation
ATTACK_SPACES = ("image", "model")
#: how the saved uint8 image is made: "exact" (clean + δ at the original size, rounded,
#: |adv − clean| ≤ ⌊ε·255⌋) or "reference" (the reference's: the adversarial image of the
#: model frame truncated to uint8 and resized bilinearly to the original size — the
#: budget does not hold against the original, which also carries resampling blur)
OUTPUTS = ("exact", "reference")


@dataclasses.dataclass(frozen=True)
class AttackConfig:
    """The common threat model (UAD.md): ε = 8/255, α = 2/255, 40 signed steps.
    ``eps``: the L∞ budget in the [0, 1] pixel range (8/255: 8 grey levels).
    ``alpha``: the PGD step size, in the same unit. ``steps``: signed-gradient PGD steps.

    ``attack_space``: "model" (default) optimises the perturbation in the surrogate's
    input frame (the image resized so that its longest side is the model's ``img_size``,
    as the reference does; the loss reads δ after its round trip to the original size and
    back, see :meth:`Attack.view`) and maps it back as clean + upsampled δ, then the exact
    ε clip and rounding; "image" optimises it at the image's own resolution (the surrogate
    resizes it on every forward; ~27× the CPU time of "model" for UAD on a 1500×2250
    image, docs/reference-differences.md). The saved image respects the budget against
    the original either way.
    The two are the same for a surrogate that runs at the image's own size, and for an
    image no larger than the surrogate's input (see :meth:`Attack.frame`).

    ``output``: "exact" (default) or "reference" (see ``OUTPUTS``; with it every image
    is attacked in the surrogate's frame, enlarged ones too, as the reference does).
    """

    eps: float = budget_field(8 / 255)  # eps=8, eps=8/255 and --eps 8 agree
    """L∞ budget in the [0, 1] pixel range (8/255: 8 of 255 grey levels)."""
    alpha: float = budget_field(2 / 255)
    """PGD step size in the [0, 1] pixel range."""
    steps: int = 40
    """Signed-gradient PGD steps."""
    attack_space: str = "model"
    """Where δ is optimised: "model" (the surrogate's input frame) or "image" (own size)."""
    output: str = "exact"
    """How the uint8 image is saved: "exact" (budget holds) or "reference" (the reference's)."""

    def __post_init__(self) -> None:
        if not (0 <= self.eps <= 1):
            raise ValueError(f"eps={self.eps} must lie in [0, 1] (e.g. 8/255)")
        if self.alpha <= 0 or self.steps < 0:
            raise ValueError("alpha must be > 0 and steps >= 0")
        if self.output not in OUTPUTS:
            raise ValueError(f"output={self.output!r} must be one of {', '.join(OUTPUTS)}")
        if self.attack_space not in ATTACK_SPACES:
            raise ValueError(
                f"attack_space={self.attack_space!r} must be one of {', '.join(ATTACK_SPACES)}"
            )


@dataclasses.dataclass
class AttackContext:
    """What an attack may know besides the images.

    ``sample_ids``: ids of the batch's images. ``seed``: the run seed.
    ``prompts``: per image, the evaluation prompts (only prompt-specific attacks read them).
    ``draw_image``: ``draw_image(generator, exclude_id) -> uint8 (H, W, 3)`` returns a
    random other image of the run's dataset (targets and competitors).
    """

    sample_ids: Sequence[str]
    seed: int = 0
    prompts: Sequence[PromptSet] | None = None
    draw_image: Callable[[np.random.Generator, str], np.ndarray] | None = None

    def rng(self, salt: str = "") -> np.random.Generator:
        """A numpy generator seeded by (seed, sample ids, salt)."""
        key = f"{self.seed}|{'/'.join(self.sample_ids)}|{salt}".encode()
        return np.random.default_rng(int.from_bytes(hashlib.sha256(key).digest()[:8], "little"))

    def torch_generator(self, device: torch.device, salt: str = "") -> torch.Generator:
        g = torch.Generator(device=device)
        g.manual_seed(int(self.rng(salt).integers(0, 2**62)))
        return g


def to_tensor(images: Sequence[np.ndarray], device: torch.device) -> torch.Tensor:
    """Stack RGB uint8 (H, W, 3) images of one size into float (B, 3, H, W) in [0, 1]."""
    arr = np.stack(images).astype(np.float32) / 255.0
    return torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous().to(device)


def resample(x: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of (B, C, H, W) to ``hw`` (antialiased when shrinking), as the SAM
    surrogates resize their inputs; the identity when the size already matches."""
    if tuple(x.shape[-2:]) == tuple(hw):
        return x
    return F.interpolate(x, size=tuple(hw), mode="bilinear", align_corners=False, antialias=True)


def round_trip_matrix(n: int, big: int, device: torch.device) -> torch.Tensor:
    """(n, n) matrix of the 1-D round trip n → ``big`` → n of :func:`resample` (bilinear up,
    antialiased bilinear down): both resizes are linear and separable, so a model-frame
    perturbation δ (…, h, w) upsampled to the original size and resized back by the
    surrogate is ``Dy @ δ @ Dx.T``."""
    # two identical columns: a width-1 image does not resize like a column of a wider one
    eye = torch.eye(n, device=device).view(n, 1, n, 1).expand(n, 1, n, 2).contiguous()
    back = resample(resample(eye, (big, 2)), (n, 2))[..., 0]
    return back.reshape(n, n).T.contiguous()


def scale_prompts(p: PromptSet, sx: float, sy: float) -> PromptSet:
    """Prompts with their pixel coordinates scaled by (sx, sy) (points and box corners)."""
    coords = p.coords * np.array([sx, sy, sx, sy])
    return PromptSet(p.kinds, coords, p.mask_index, p.labels)


def reference_output(small_adv: torch.Tensor, hw: tuple[int, int]) -> list[np.ndarray]:
    """The reference's saved image: the model-frame adversarial (B, 3, h, w) in [0, 1]
    truncated to uint8, then resized bilinearly (no antialiasing, rounded) to ``hw``."""
    trunc = (small_adv.detach().float().clamp(0, 1) * 255.0).floor()
    up = F.interpolate(trunc, size=tuple(hw), mode="bilinear", align_corners=False)
    arr = up.round().clamp(0, 255).to(torch.uint8)
    return [a for a in arr.permute(0, 2, 3, 1).cpu().numpy()]


def to_uint8(x: torch.Tensor) -> list[np.ndarray]:
    """Float (B, 3, H, W) in [0, 1] → list of RGB uint8 (H, W, 3), rounded."""
    arr = (x.detach().float().clamp(0, 1) * 255.0).round().to(torch.uint8)
    return [a for a in arr.permute(0, 2, 3, 1).cpu().numpy()]


class Attack(ABC):
    """Maps clean uint8 images to adversarial uint8 images of the same size.

    Call it as ``attack(images, surrogate, ctx)``; images are RGB uint8 (H, W, 3) of
    one size. Subclasses implement :meth:`perturb`.
    """

    name: ClassVar[str] = ""
    Config: ClassVar[type] = AttackConfig
    #: reads ``ctx.prompts`` (prompt-specific attacks)
    uses_prompts: ClassVar[bool] = False
    #: reads other images of the dataset through ``ctx.draw_image``
    uses_dataset: ClassVar[bool] = False
    #: draws random numbers from the run seed (another seed → another image); None: undeclared
    uses_randomness: ClassVar[bool | None] = None

    def __init__(self, config: Any = None):
        self.config = config if config is not None else self.Config()
        self._view: Callable[[torch.Tensor], torch.Tensor] | None = None
        self._reference_frame_adv: torch.Tensor | None = None

    # ------------------------------------------------------------------ the maths
    @abstractmethod
    def perturb(self, x: torch.Tensor, surrogate: Any, ctx: AttackContext) -> torch.Tensor:
        """Adversarial float images (B, 3, H, W) in [0, 1] for clean ``x`` of that shape."""

    def objective(
        self, surrogate: Any, clean: torch.Tensor, ctx: AttackContext
    ) -> Callable[[torch.Tensor], torch.Tensor] | None:
        """What the attack optimises on ``surrogate``, declared by the attack itself so that
        registry-wide tests (and reports) need no per-attack knowledge: a callable
        ``score(x)`` → (B,) for float images x (B, 3, H, W) in [0, 1] of ``clean``'s shape,
        LOWER when the attack did its job (a maximised loss is negated). Call it after the
        attack ran on ``clean`` with ``ctx`` (UAD's target is the deformed image of that
        run). Default None: not declared (e.g. a third-party plugin); tests then skip the
        check that the adversarial image improves it."""
        return None

    # ------------------------------------------------------------------ shared parts
    def project(self, x_adv: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Onto the L∞ ball of radius ε around ``x`` and onto [0, 1]."""
        eps = self.config.eps
        return torch.min(torch.max(x_adv, x - eps), x + eps).clamp(0.0, 1.0)

    def pgd(
        self,
        x: torch.Tensor,
        loss_fn: Callable[[torch.Tensor], torch.Tensor],
        steps: int | None = None,
        x_init: torch.Tensor | None = None,
        maximize: bool = True,
        on_step: Callable[[int, torch.Tensor], None] | None = None,
    ) -> torch.Tensor:
        """Signed-gradient PGD: ``steps`` steps of size α on ``loss_fn`` (summed over the
        batch), projected after each. Returns the final (detached) adversarial images."""
        cfg = self.config
        steps = cfg.steps if steps is None else steps
        x_adv = (x if x_init is None else self.project(x_init, x)).detach().clone()
        sign = 1.0 if maximize else -1.0
        for i in range(steps):
            x_adv.requires_grad_(True)
            loss = loss_fn(self.view(x_adv))
            (grad,) = torch.autograd.grad(loss.sum(), x_adv)
            with torch.no_grad():
                x_adv = self.project(x_adv + sign * cfg.alpha * grad.sign(), x)
            if on_step is not None:
                on_step(i, x_adv)
        return x_adv.detach()

    def frame(self, surrogate: Any, hw: tuple[int, int]) -> tuple[int, int] | None:
        """The (h, w) the perturbation is optimised at when it differs from the image's
        own ``hw``, else None: with ``attack_space=model``, the surrogate's frame when the
        surrogate shrinks the image into it. An image the surrogate enlarges (smaller than
        its input) is attacked at its own size: its own grid is already the finest one the
        saved image has, and a δ made on the larger grid would be averaged on the way back."""
        reference = getattr(self.config, "output", "exact") == "reference"
        if getattr(self.config, "attack_space", "image") != "model" and not reference:
            return None
        frame_of = getattr(surrogate, "model_frame", None)
        fhw = frame_of(tuple(hw)) if frame_of is not None else None
        if fhw is None or tuple(fhw) == tuple(hw):
            return None
        if not reference and fhw[0] >= hw[0] and fhw[1] >= hw[1]:
            return None
        return tuple(fhw)

    def perturb_in_space(self, x: torch.Tensor, surrogate: Any, ctx: AttackContext) -> torch.Tensor:
        """:meth:`perturb` in the configured ``attack_space``: at the image's size, or in
        the surrogate's frame (clean resized there, prompts scaled with it), the
        perturbation then upsampled and added to the clean image at its own size."""
        hw = tuple(x.shape[-2:])
        fhw = self.frame(surrogate, hw)
        if fhw is None:
            x_adv = self.perturb(x, surrogate, ctx)
            if getattr(self.config, "output", "exact") == "reference":
                self._reference_frame_adv = x_adv.detach()  # truncation, no resize
            return x_adv
        small = resample(x, fhw).clamp(0.0, 1.0)
        if ctx.prompts is not None:
            sx, sy = fhw[1] / hw[1], fhw[0] / hw[0]
            ctx = dataclasses.replace(ctx, prompts=[scale_prompts(p, sx, sy) for p in ctx.prompts])
        if getattr(self.config, "output", "exact") == "reference":
            small_adv = self.perturb(small, surrogate, ctx)
            self._reference_frame_adv = small_adv.detach()
        else:
            # the surrogate will see resample(x + up(δ)) = small + D(δ): optimise that
            dy = round_trip_matrix(fhw[0], hw[0], x.device)
            dx = round_trip_matrix(fhw[1], hw[1], x.device)
            self._view = lambda z: small + torch.matmul(torch.matmul(dy, z - small), dx.T)
            try:
                small_adv = self.perturb(small, surrogate, ctx)
            finally:
                self._view = None
        return x + resample(small_adv - small, hw)

    def view(self, x_adv: torch.Tensor) -> torch.Tensor:
        """What the surrogate will see of the iterate ``x_adv`` once it is saved: the iterate
        itself, or with ``attack_space=model`` the model-frame image after the perturbation's
        round trip (upsampled to the original size, resized back by the surrogate), a
        smoothing of δ. Attacks feed losses ``view(x_adv)``."""
        return x_adv if self._view is None else self._view(x_adv)

    def __call__(
        self, images: Sequence[np.ndarray], surrogate: Any, ctx: AttackContext
    ) -> list[np.ndarray]:
        sizes = {im.shape for im in images}
        if len(sizes) != 1:
            raise ValueError(f"attack batch must hold images of one size, got {sorted(sizes)}")
        device = getattr(surrogate, "device", torch.device("cpu"))
        x = to_tensor(images, device)
        torch.manual_seed(int(ctx.rng("torch").integers(0, 2**62)))
        self._reference_frame_adv = None
        with torch.enable_grad():
            x_adv = self.perturb_in_space(x, surrogate, ctx)
        if self._reference_frame_adv is not None:
            return reference_output(self._reference_frame_adv, tuple(x.shape[-2:]))
        out = to_uint8(self.project(x_adv.float(), x))
        # exact budget after rounding: clip to the integer radius around the clean image
        r = math.floor(self.config.eps * 255 + 1e-6)
        res = []
        for clean, adv in zip(images, out):
            lo = np.clip(clean.astype(np.int16) - r, 0, 255)
            hi = np.clip(clean.astype(np.int16) + r, 0, 255)
            res.append(np.clip(adv.astype(np.int16), lo, hi).astype(np.uint8))
        return res
