"""Attack base class: the budget, projection, rounding and seeding live here.

A subclass writes only its maths in :meth:`Attack.perturb`, working on float images in
[0, 1] at their own resolution, batched (B, 3, H, W). The base turns uint8 images
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

from ..config import budget_field
from ..eval.prompts import PromptSet


@dataclasses.dataclass(frozen=True)
class AttackConfig:
    """The common threat model (UAD.md): ε = 8/255, α = 2/255, 40 signed steps."""

    eps: float = budget_field(8 / 255)  # eps=8, eps=8/255 and --eps 8 agree
    alpha: float = budget_field(2 / 255)
    steps: int = 40

    def __post_init__(self) -> None:
        if not (0 <= self.eps <= 1):
            raise ValueError(f"eps={self.eps} must lie in [0, 1] (e.g. 8/255)")
        if self.alpha <= 0 or self.steps < 0:
            raise ValueError("alpha must be > 0 and steps >= 0")


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

    def __init__(self, config: Any = None):
        self.config = config if config is not None else self.Config()

    # ------------------------------------------------------------------ the maths
    @abstractmethod
    def perturb(self, x: torch.Tensor, surrogate: Any, ctx: AttackContext) -> torch.Tensor:
        """Adversarial float images (B, 3, H, W) in [0, 1] for clean ``x`` of that shape."""

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
            loss = loss_fn(x_adv)
            (grad,) = torch.autograd.grad(loss.sum(), x_adv)
            with torch.no_grad():
                x_adv = self.project(x_adv + sign * cfg.alpha * grad.sign(), x)
            if on_step is not None:
                on_step(i, x_adv)
        return x_adv.detach()

    def __call__(
        self, images: Sequence[np.ndarray], surrogate: Any, ctx: AttackContext
    ) -> list[np.ndarray]:
        sizes = {im.shape for im in images}
        if len(sizes) != 1:
            raise ValueError(f"attack batch must hold images of one size, got {sorted(sizes)}")
        device = getattr(surrogate, "device", torch.device("cpu"))
        x = to_tensor(images, device)
        torch.manual_seed(int(ctx.rng("torch").integers(0, 2**62)))
        with torch.enable_grad():
            x_adv = self.perturb(x, surrogate, ctx)
        out = to_uint8(self.project(x_adv.float(), x))
        # exact budget after rounding: clip to the integer radius around the clean image
        r = math.floor(self.config.eps * 255 + 1e-6)
        res = []
        for clean, adv in zip(images, out):
            lo = np.clip(clean.astype(np.int16) - r, 0, 255)
            hi = np.clip(clean.astype(np.int16) + r, 0, 255)
            res.append(np.clip(adv.astype(np.int16), lo, hi).astype(np.uint8))
        return res
