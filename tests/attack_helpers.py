"""Test helpers for attacks: a tiny ViT surrogate, a fake dataset, contexts and objectives.

``TinyViTSurrogate`` implements the surrogate interface of :class:`uadbench.victims.base.Victim`
(``features`` with early exit, ``mask_logits``, ``num_blocks``, ``default_taps``) at a size
that makes an attack step take milliseconds. It also has ``full_features``, which runs
every block and the neck (as the reference runs SAM's encoder for every pass), for the
benchmark's baseline.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from uadbench.attacks.base import AttackContext
from uadbench.eval.prompts import PromptSet
from uadbench.victims.base import Victim


class _Block(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        self.heads = heads

    def forward(self, z: torch.Tensor) -> torch.Tensor:  # (B, h, w, C)
        b, h, w, c = z.shape
        t = self.norm1(z).reshape(b, h * w, c)
        q, k, v = (
            self.qkv(t).reshape(b, h * w, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        )
        a = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, h, w, c)
        z = z + self.proj(a)
        return z + self.mlp(self.norm2(z))


class _TinyNet(nn.Module):
    def __init__(self, depth: int, dim: int, heads: int, patch: int, out_dim: int):
        super().__init__()
        self.patch_embed = nn.Conv2d(3, dim, patch, patch)
        self.blocks = nn.ModuleList(_Block(dim, heads) for _ in range(depth))
        self.neck = nn.Sequential(
            nn.Conv2d(dim, out_dim, 1), nn.GELU(), nn.Conv2d(out_dim, out_dim, 3, padding=1)
        )
        self.prompt = nn.Linear(8, out_dim)
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))


class TinyViTSurrogate(Victim):
    """A seeded toy ViT encoder (``depth`` blocks of width ``dim``, patch 8, at the image's
    own size) with a neck and a prompt-dot-product mask head. Its numbers mean nothing."""

    name = "tiny-vit-test"
    is_surrogate = True

    def __init__(
        self,
        depth: int = 6,
        dim: int = 32,
        heads: int = 2,
        patch: int = 8,
        out_dim: int = 32,
        seed: int = 0,
        device: str | torch.device = "cpu",
    ):
        super().__init__(None, device=device)
        self._arch = (depth, dim, heads, patch, out_dim)
        self._seed = seed

    def build(self) -> nn.Module:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self._seed)
            return _TinyNet(*self._arch)

    @property
    def num_blocks(self) -> int:
        return self._arch[0]

    def _tokens(self, x: torch.Tensor) -> torch.Tensor:
        m = self.model
        return m.patch_embed((x - m.mean) / m.std).permute(0, 2, 3, 1)

    def features(self, x: torch.Tensor, taps: Sequence[int]) -> list[torch.Tensor]:
        want = set(int(t) for t in taps)
        z, out = self._tokens(x), {}
        for i, blk in enumerate(self.model.blocks[: max(want) + 1]):
            z = blk(z)
            if i in want:
                out[i] = z
        return [out[int(t)] for t in taps]

    def full_features(self, x: torch.Tensor, taps: Sequence[int]) -> list[torch.Tensor]:
        """Like :meth:`features` but running every block and the neck (no early exit)."""
        z, out = self._tokens(x), {}
        for i, blk in enumerate(self.model.blocks):
            z = blk(z)
            out[i] = z
        self.model.neck(z.permute(0, 3, 1, 2))
        return [out[int(t)] for t in taps]

    def _embedding(self, x: torch.Tensor) -> torch.Tensor:
        z = self._tokens(x)
        for blk in self.model.blocks:
            z = blk(z)
        emb = self.model.neck(z.permute(0, 3, 1, 2))
        return F.interpolate(emb, scale_factor=2, mode="bilinear", align_corners=False)

    def _logits(self, emb: torch.Tensor, prompts: PromptSet, hw: tuple[int, int]) -> torch.Tensor:
        h, w = hw
        c = torch.as_tensor(
            np.nan_to_num(prompts.coords, nan=-1.0), dtype=torch.float32, device=emb.device
        )
        c = c / torch.tensor([w, h, w, h], dtype=torch.float32, device=emb.device)
        code = self.model.prompt(torch.cat([torch.sin(3 * c), torch.cos(3 * c)], dim=1))  # (P, D)
        return torch.einsum("pd,dhw->phw", code, emb) / emb.shape[0] ** 0.5 + 2.0

    def mask_logits(self, x: torch.Tensor, prompts: Sequence[PromptSet]) -> list[torch.Tensor]:
        emb = self._embedding(x)
        return [self._logits(emb[i], p, tuple(x.shape[-2:])) for i, p in enumerate(prompts)]

    def point_group_logits(self, x: torch.Tensor, points) -> list[torch.Tensor]:
        """One prompt of many points per image: the mean of its points' codes → (1, h, w)."""
        emb, hw = self._embedding(x), tuple(x.shape[-2:])
        out = []
        for i, pts in enumerate(points):
            one = self._logits(emb[i], PromptSet.from_lists(points=[tuple(p) for p in pts]), hw)
            out.append(one.mean(dim=0, keepdim=True))
        return out

    # victim interface (predict), so the stand-in is a complete Victim
    def embed(self, image: np.ndarray) -> torch.Tensor:
        x = torch.as_tensor(image, device=self.device).permute(2, 0, 1)[None].float() / 255
        return self._embedding(x)[0], tuple(image.shape[:2])

    def decode(self, state, prompts: PromptSet, hw: tuple[int, int]) -> torch.Tensor:
        emb, _ = state
        low = self._logits(emb, prompts, hw)[:, None]
        return F.interpolate(low, size=hw, mode="bilinear", align_corners=False)[:, 0] > 0


def random_image(h: int, w: int, seed: int) -> np.ndarray:
    """A smooth-ish random RGB uint8 image (blobs), so warps and features have structure."""
    g = np.random.default_rng(seed)
    small = g.integers(0, 256, size=(max(2, h // 8), max(2, w // 8), 3)).astype(np.float32)
    t = torch.from_numpy(small).permute(2, 0, 1)[None]
    big = F.interpolate(t, size=(h, w), mode="bicubic", align_corners=False)[0].permute(1, 2, 0)
    noise = g.normal(0, 8, size=(h, w, 3))
    return np.clip(big.numpy() + noise, 0, 255).astype(np.uint8)


class FakePool:
    """A tiny 'dataset' for ``AttackContext.draw_image``: a few images of other sizes."""

    def __init__(self, n: int = 5, seed: int = 100):
        self.ids = [f"pool{i}" for i in range(n)]
        self.images = {
            sid: random_image(40 + 8 * i, 56 - 4 * i, seed + i) for i, sid in enumerate(self.ids)
        }
        self.calls = 0

    def draw_image(self, rng: np.random.Generator, exclude_id: str) -> np.ndarray:
        self.calls += 1
        choices = [s for s in self.ids if s != exclude_id]
        return self.images[choices[int(rng.integers(0, len(choices)))]]


def make_context(
    ids: Sequence[str], images: Sequence[np.ndarray], seed: int = 0, pool: FakePool | None = None
) -> AttackContext:
    """A context with prompts (two points and a box per image) and a fake dataset."""
    prompts = []
    for im in images:
        h, w = im.shape[:2]
        prompts.append(
            PromptSet.from_lists(
                points=[(w * 0.3, h * 0.4), (w * 0.7, h * 0.6)],
                boxes=[(w * 0.1, h * 0.2, w * 0.6, h * 0.8)],
            )
        )
    pool = pool or FakePool()
    return AttackContext(list(ids), seed=seed, prompts=prompts, draw_image=pool.draw_image)


def to_float(images: Sequence[np.ndarray]) -> torch.Tensor:
    return (
        torch.from_numpy(np.stack(images).astype(np.float32) / 255).permute(0, 3, 1, 2).contiguous()
    )


def sign_noise_images(
    images: Sequence[np.ndarray], eps: float, seed: int = 123
) -> list[np.ndarray]:
    """Each image plus random ±⌊eps·255⌋ noise per pixel (clipped): the 'random attack'."""
    g = np.random.default_rng(seed)
    r = int(np.floor(eps * 255 + 1e-6))
    return [
        np.clip(im.astype(np.int16) + g.choice([-r, r], size=im.shape), 0, 255).astype(np.uint8)
        for im in images
    ]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny ops: extra threads only spin on a shared machine. A test module gets it with
    ``from attack_helpers import one_thread  # noqa: F401`` (an autouse fixture)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
