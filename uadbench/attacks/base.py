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

from ..config import budget_field, late_field, split_specs
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

    ``eot``, ``eot_transforms``: expectation over transformation (Athalye et al. 2018), the
    adaptive attack against an input transform. With ``eot=N`` (N >= 1) every gradient step
    uses the mean of N gradients, each of the loss on T(x_adv) for one draw T of the listed
    transforms (``eot_transforms=jpeg:q=75|blur:sigma=1``; the draws of a step cycle through
    a fresh random order of the list, so each transform is equally likely and, with N a
    multiple of the list's length, used equally often; a random transform such as
    random-resize-pad gets a fresh draw each time), through the transform's differentiable
    path or BPDA (docs/transforms.md), applied where the evaluation applies it (the image
    at its own size). All draws come from the run seed and the sample id (per image). ``eot=0``
    (default) is the plain attack; ``eot=1`` is one draw per step. The clean image's
    features the loss compares with get the same draw (f(T(x_adv)) against f(T(x))) and
    prompts move with a geometric draw; other images' features (AA's and PATA's targets,
    UAD's deformed target) are those of the untransformed images.
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
    eot: int = late_field(0)
    """Expectation over transformation: gradients averaged per step over this many draws of
    eot_transforms (0: off)."""
    eot_transforms: tuple[str, ...] = late_field(())
    """Transforms EOT draws from, separated by | (e.g. jpeg:q=75|blur:sigma=1)."""

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
        self._check_eot()

    def _check_eot(self) -> None:
        """EOT's settings, every transform resolved up front (a value split at its commas,
        ``[random-resize-pad:min_scale=0.5,fill=0]``, is put back together)."""
        specs = tuple(split_specs(",".join(self.eot_transforms)))
        object.__setattr__(self, "eot_transforms", specs)
        if self.eot < 0:
            raise ValueError(f"eot={self.eot} must be >= 0 (0: off, N: draws per step)")
        if self.eot and not specs:
            raise ValueError(f"eot={self.eot} needs eot_transforms=SPEC|SPEC (e.g. jpeg:q=75)")
        if specs and not self.eot:
            raise ValueError("eot_transforms is set but eot=0: set eot=N draws per step")
        if specs:
            eot_transforms(specs)


def eot_transforms(specs: Sequence[str]) -> list[Any]:
    """The transforms of EOT specs, configured (a clear error for a bad one)."""
    from ..engine.plan import resolve
    from ..errors import UadbenchError

    out = []
    for spec in specs:
        try:
            p = resolve("transform", spec)
        except UadbenchError as exc:
            raise ValueError(f"eot_transforms: {str(exc).splitlines()[0]}") from None
        out.append(p.cls(p.config))
    return out


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
        self._eot: tuple[int, list[Any], list[np.random.Generator]] | None = None
        self._eot_geometry: list[Any] | None = None
        self._eot_current: tuple[tuple[Any, int], ...] | None = None
        self._eot_seen: torch.Tensor | None = None  # what the surrogate sees in this draw
        self._eot_full: tuple[Callable[[torch.Tensor], torch.Tensor], tuple[int, int]] | None = None

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
            _, grad = self.loss_grad(x_adv, loss_fn)
            with torch.no_grad():
                x_adv = self.project(x_adv + sign * cfg.alpha * grad.sign(), x)
            if on_step is not None:
                on_step(i, x_adv)
        return x_adv.detach()

    def loss_grad(
        self,
        x_adv: torch.Tensor,
        loss_fn: Callable[[torch.Tensor], torch.Tensor],
        inp: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The per-image loss on what the surrogate sees of ``inp`` (default ``x_adv``, a
        function of it) and the gradient of its sum w.r.t. ``x_adv``: the one place a step's
        gradient is made. Under EOT (``eot=N``) both are means over N transform draws, each
        applied where the evaluation applies it: to the image at its own size (with
        ``attack_space=model``, clean + upsampled δ, transformed, then resized into the
        surrogate's frame), moving prompts with a geometric draw."""
        inp = x_adv if inp is None else inp
        if self._eot is None:
            loss = loss_fn(self.view(inp))
            (grad,) = torch.autograd.grad(loss.sum(), x_adv)
            return loss, grad
        losses, grad = [], torch.zeros_like(x_adv)
        draws = self.eot_draws()
        for draw in draws:
            z, self._eot_geometry = self.eot_apply(inp, draw)
            self._eot_current, self._eot_seen = draw, z.detach()
            try:
                loss = loss_fn(z)
            finally:
                self._eot_geometry = self._eot_current = self._eot_seen = None
            (g,) = torch.autograd.grad(loss.sum(), x_adv)
            grad += g / len(draws)
            losses.append(loss.detach())
        return torch.stack(losses).mean(0), grad

    def eot_apply(self, inp: torch.Tensor, draw: Sequence[tuple[Any, int]]) -> tuple[Any, Any]:
        """One EOT draw — per batch image a (transform, seed of its generator) — applied to
        the images whose iterate (or clean image) in perturb's frame is ``inp``, where the
        evaluation applies it: at the image's own size, then into the surrogate's frame
        (``attack_space=model``). Returns what the surrogate sees and the draw's geometry
        per image in that frame (None where nothing moved; None for all when none did)."""
        z = self.view(inp) if self._eot_full is None else self._eot_full[0](inp)
        outs, geos = [], []
        for i, (transform, seed) in enumerate(draw):
            y, g = transform.torch_geometry(z[i : i + 1], np.random.default_rng(seed))
            outs.append(y)
            geos.append(None if g is None else g[0])
        y = torch.cat(outs)
        if self._eot_full is not None:
            fhw = self._eot_full[1]
            fy, fx = fhw[0] / y.shape[-2], fhw[1] / y.shape[-1]
            geos = [
                g
                and dataclasses.replace(g, tx=g.tx * fx, ty=g.ty * fy, height=fhw[0], width=fhw[1])
                for g in geos
            ]
            y = resample(y, fhw)
        return y, (geos if any(g is not None for g in geos) else None)

    def eot_reference(self, plain: Any, fn: Callable[[torch.Tensor], Any], x: torch.Tensor) -> Any:
        """A fixed reference of a loss made from the clean image ``x`` (``plain`` = ``fn(x)``,
        computed once): ``plain`` itself, or inside an EOT draw ``fn`` of the clean image
        under that same draw, so the loss compares T(x_adv) with T(x) (a geometric draw
        stays aligned). Call it inside the loss function."""
        if self._eot_current is None:
            return plain
        with torch.no_grad():
            z, _ = self.eot_apply(x, self._eot_current)
            return fn(z.detach())

    def eot_draws(self) -> list[tuple[tuple[Any, int], ...]]:
        """One step's N EOT draws; a draw holds, per batch image, a (transform, seed of its
        random draw) from that image's own generator (a result does not depend on its batch
        mates), the transforms cycling through a fresh random order of the list."""
        n, transforms, rngs = self._eot
        per_image = []
        for rng in rngs:
            order: list[int] = []
            while len(order) < n:
                order += [int(i) for i in rng.permutation(len(transforms))]
            seeds = rng.integers(0, 2**63, size=n)
            per_image.append([(transforms[order[d]], int(seeds[d])) for d in range(n)])
        return [tuple(p[d] for p in per_image) for d in range(n)]

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
            if self._eot is not None:  # EOT transforms the saved image, at its own size
                self._eot_full = (lambda z: x + resample(z - small, hw), fhw)
            try:
                small_adv = self.perturb(small, surrogate, ctx)
            finally:
                self._view = self._eot_full = None
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
        self._eot = None
        if getattr(self.config, "eot", 0):
            ts = eot_transforms(self.config.eot_transforms)
            rngs = [AttackContext([sid], ctx.seed).rng("eot") for sid in ctx.sample_ids]
            self._eot = (self.config.eot, ts, rngs)
            surrogate = EOTSurrogate(surrogate, self)
        try:
            with torch.enable_grad():
                x_adv = self.perturb_in_space(x, surrogate, ctx)
        finally:
            self._eot = None
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


class EOTSurrogate:
    """The surrogate under EOT: itself, but prompts (``mask_logits``) and point groups
    (``point_group_logits``) move with the current draw's geometry (random-resize-pad),
    so a prompt-specific loss still points at the object it was placed on."""

    def __init__(self, inner: Any, attack: Attack):
        self._inner, self._attack = inner, attack

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._inner, name)
        if name not in ("mask_logits", "point_group_logits"):
            return attr

        def moved(x: torch.Tensor, per_image: Sequence[Any], *a: Any, **kw: Any) -> Any:
            geos, z = self._attack._eot_geometry, self._attack._eot_seen
            if geos is not None and z is not None:
                # the batch images the call is about (attack-sam skips prompt-less ones)
                rows = range(len(geos))
                if len(per_image) != len(geos):
                    rows = [next(j for j in range(len(z)) if torch.equal(r, z[j])) for r in x]
                per_image = [
                    p if geos[j] is None else _move(p, geos[j]) for p, j in zip(per_image, rows)
                ]
            return attr(x, per_image, *a, **kw)

        return moved


def _move(p: Any, g: Any) -> Any:
    """A PromptSet or an (K, 2) array of (x, y) points moved by the Geometry ``g``."""
    if isinstance(p, PromptSet):
        coords = p.coords * np.array([g.sx, g.sy, g.sx, g.sy]) + np.array([g.tx, g.ty] * 2)
        return PromptSet(p.kinds, coords, p.mask_index, p.labels)
    return g.points(np.asarray(p))
