"""Transform base class: a uint8 image in, a uint8 image out, seeded.

A transform is applied to the clean and to the adversarial image alike, right before the
victim, with the same random draw for both (the draw depends on the run seed, the sample
and the transform, never on which image it is), so clean and attacked stay paired.

This module imports no torch at import time (``uadbench ls`` must stay fast); the
differentiable path (:meth:`Transform.torch`) imports it when called.
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Any, ClassVar

import numpy as np


@dataclasses.dataclass(frozen=True)
class NoConfig:
    """No options."""


@dataclasses.dataclass(frozen=True)
class Geometry:
    """Where a geometric transform moved the image: a point (x, y) of the input is at
    (sx·x + tx, sy·y + ty) in the output, whose size is ``height`` × ``width``.
    ``None`` in place of a Geometry means the pixels stayed where they were."""

    sx: float
    sy: float
    tx: float
    ty: float
    height: int
    width: int

    def points(self, xy: np.ndarray) -> np.ndarray:
        """Input-frame coordinates (..., 2) as (x, y) → output-frame coordinates."""
        xy = np.asarray(xy, dtype=np.float64)
        return np.stack([xy[..., 0] * self.sx + self.tx, xy[..., 1] * self.sy + self.ty], -1)

    def mask_back(self, mask: np.ndarray, height: int, width: int) -> np.ndarray:
        """A mask predicted on the output (``self.height`` × ``self.width``) in the input
        frame (``height`` × ``width``): each input pixel centre looks up the output pixel
        it was moved to (nearest); pixels moved off the output are False."""
        ys = (np.arange(height) + 0.5) * self.sy + self.ty - 0.5
        xs = (np.arange(width) + 0.5) * self.sx + self.tx - 0.5
        yi = np.rint(ys).astype(np.int64)
        xi = np.rint(xs).astype(np.int64)
        vy = (yi >= 0) & (yi < mask.shape[0])
        vx = (xi >= 0) & (xi < mask.shape[1])
        out = np.zeros((height, width), dtype=bool)
        out[np.ix_(vy, vx)] = np.asarray(mask, dtype=bool)[np.ix_(yi[vy], xi[vx])]
        return out


def transform_rng(seed: int, sample_id: str, transform_hash: str) -> np.random.Generator:
    """The generator of one transform's draw on one sample: the same for the clean and
    every adversarial image of that sample (they stay paired), different across samples,
    transforms and run seeds."""
    h = hashlib.sha256(f"{seed}|{sample_id}|{transform_hash}".encode()).digest()
    return np.random.default_rng(int.from_bytes(h[:8], "little"))


class Transform:
    """Base class of transform plugins.

    A subclass sets ``name`` and, when it has options, a frozen-dataclass ``Config``, and
    implements :meth:`apply` (uint8 (H, W, 3) → uint8 (H, W, 3), drawing any randomness
    from the ``rng`` it is given). A transform that moves pixels (a resize-and-pad)
    overrides :meth:`apply_geometry` instead and says where they went.

    ``stochastic``: the transform draws from ``rng`` (a fixed transform ignores it).
    ``differentiable``: :meth:`torch` is an exact differentiable implementation; otherwise
    the default :meth:`torch` is BPDA (the real transform forward, identity gradient).
    """

    name: ClassVar[str] = ""
    Config: ClassVar[type] = NoConfig
    stochastic: ClassVar[bool] = False
    differentiable: ClassVar[bool] = False

    def __init__(self, config: Any = None):
        self.config = config if config is not None else self.Config()

    # ----------------------------------------------------------------- evaluation
    def apply(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """The transformed uint8 image (same size as ``image``)."""
        raise NotImplementedError

    def apply_geometry(
        self, image: np.ndarray, rng: np.random.Generator
    ) -> tuple[np.ndarray, Geometry | None]:
        """The transformed uint8 image and where its pixels went (``None``: nowhere)."""
        return self.apply(image, rng), None

    # ----------------------------------------------------------------- attacks (EOT)
    def torch(self, x: Any, rng: np.random.Generator) -> Any:
        """The transform on a float batch (B, 3, H, W) in [0, 1], for expectation over
        transformation. Default (BPDA): the forward pass is :meth:`apply` on the rounded
        uint8 image of each item, the backward pass the identity."""
        import torch

        out = []
        for img in x.detach():
            u8 = (img.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
            y, _ = self.apply_geometry(u8, rng)
            out.append(torch.from_numpy(np.ascontiguousarray(y)).permute(2, 0, 1))
        y = torch.stack(out).to(device=x.device, dtype=x.dtype) / 255.0
        if y.shape != x.shape:
            raise ValueError(
                f"transform {self.name}: BPDA needs a same-size output, got {tuple(y.shape)} "
                f"for {tuple(x.shape)}; implement {type(self).__name__}.torch"
            )
        return x + (y - x).detach()

    def torch_geometry(self, x: Any, rng: np.random.Generator) -> tuple[Any, list | None]:
        """:meth:`torch` and, for a transform that moves pixels, one :class:`Geometry` per
        batch item (``None``: the pixels stayed where they were), so an attack under EOT can
        move its prompts with the draw."""
        return self.torch(x, rng), None


class Identity(Transform):
    """The image as it is: the evaluation without a transform."""

    name = "identity"
    differentiable = True

    def apply(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return image

    def torch(self, x: Any, rng: np.random.Generator) -> Any:
        return x
