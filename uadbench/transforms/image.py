"""The built-in image transforms: lossy codecs, resampling, filters and a random
resize-and-pad, each through the library a real pipeline would use (Pillow for the codecs,
resizes and the median filter; torchvision's Gaussian blur).

Every transform maps a uint8 (H, W, 3) RGB image to one of the same size and validates its
options when its config is built. ``torch()`` (for EOT in the attacks, float (B, 3, H, W)
in [0, 1], on the input's device and dtype) is an exact differentiable version for blur,
a differentiable version of the same resampling for resize and random-resize-pad, and
BPDA (the real transform forward, identity backward; :class:`~.base.Transform`) for the
codecs, the median filter and bit-depth reduction.
"""

from __future__ import annotations

import dataclasses
import io
import math
from typing import Any

import numpy as np

from .base import Geometry, Transform


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


def _pil(image: np.ndarray):
    from PIL import Image

    return Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8), "RGB")


def _encode_decode(image: np.ndarray, fmt: str, **options: Any) -> np.ndarray:
    """``image`` saved by Pillow as ``fmt`` with ``options`` in memory and read back (RGB)."""
    from PIL import Image

    buf = io.BytesIO()
    _pil(image).save(buf, format=fmt, **options)
    buf.seek(0)
    return np.array(Image.open(buf).convert("RGB"))


def _scaled_size(h: int, w: int, scale: float) -> tuple[int, int]:
    """(h, w) times ``scale``, rounded, at least one pixel."""
    return max(1, int(round(h * scale))), max(1, int(round(w * scale)))


# ----------------------------------------------------------------------------- codecs
@dataclasses.dataclass(frozen=True)
class JPEGConfig:
    """``q``: the JPEG quality, 1..100 (Pillow's ``quality``; 4:2:0 chroma subsampling,
    Pillow's default, as most encoders use)."""

    q: int = 75
    """JPEG quality, 1 (worst) .. 100 (best); Pillow's encoder, 4:2:0 chroma subsampling."""

    def __post_init__(self) -> None:
        _check(1 <= self.q <= 100, f"q={self.q} must be in 1..100 (e.g. jpeg:q=75)")


class JPEG(Transform):
    """JPEG compression: encode with Pillow at quality ``q`` in memory and decode (what an
    upload to most web services does)."""

    name = "jpeg"
    Config = JPEGConfig

    def apply(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return _encode_decode(image, "JPEG", quality=int(self.config.q))


@dataclasses.dataclass(frozen=True)
class WebPConfig:
    """``q``: the lossy WebP quality, 1..100 (Pillow's ``quality``)."""

    q: int = 80
    """Lossy WebP quality, 1 (worst) .. 100 (best); Pillow's encoder (libwebp)."""

    def __post_init__(self) -> None:
        _check(1 <= self.q <= 100, f"q={self.q} must be in 1..100 (e.g. webp:q=80)")


class WebP(Transform):
    """Lossy WebP compression: encode with Pillow (libwebp) at quality ``q`` and decode."""

    name = "webp"
    Config = WebPConfig

    def __init__(self, config: Any = None):
        super().__init__(config)
        from PIL import features

        if not features.check("webp"):
            from ..errors import ConfigError

            raise ConfigError(
                "transform webp: this Pillow was built without WebP support; install a "
                "Pillow wheel from PyPI (pip install --force-reinstall Pillow) or use jpeg"
            )

    def apply(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return _encode_decode(image, "WEBP", quality=int(self.config.q), lossless=False)


# ----------------------------------------------------------------------------- resampling
def _torch_resize(x: Any, hw: tuple[int, int]) -> Any:
    """Bilinear resize of a float batch, antialiased when shrinking (Pillow's bilinear
    filter widens with the reduction factor too); the identity at the same size."""
    import torch.nn.functional as F

    if tuple(x.shape[-2:]) == tuple(hw):
        return x
    shrink = hw[0] < x.shape[-2] or hw[1] < x.shape[-1]
    return F.interpolate(x, size=tuple(hw), mode="bilinear", align_corners=False, antialias=shrink)


def _pil_resize(image: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """Pillow's bilinear resize to ``hw`` (h, w): its filter support grows with the
    reduction factor, so down-sampling is antialiased."""
    from PIL import Image

    if image.shape[:2] == tuple(hw):
        return image
    return np.array(_pil(image).resize((hw[1], hw[0]), Image.Resampling.BILINEAR))


@dataclasses.dataclass(frozen=True)
class ResizeConfig:
    """``scale``: the down-sampling factor in (0, 1]; the image is shrunk to
    round(scale·H) × round(scale·W) and enlarged back to H × W."""

    scale: float = 0.5
    """Down-sampling factor in (0, 1] (0.5: half the width and height, then back up)."""

    def __post_init__(self) -> None:
        _check(0 < self.scale <= 1, f"scale={self.scale} must be in (0, 1] (e.g. resize:scale=0.5)")


class Resize(Transform):
    """Down-sample by ``scale`` and up-sample back to the original size, both with
    Pillow's bilinear filter (antialiased when shrinking, as image pipelines do).
    ``torch()``: torch's bilinear interpolation (antialiased down), differentiable; it
    agrees with Pillow to about a grey level."""

    name = "resize"
    Config = ResizeConfig
    differentiable = True

    def apply(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        h, w = image.shape[:2]
        small = _pil_resize(image, _scaled_size(h, w, self.config.scale))
        return _pil_resize(small, (h, w))

    def torch(self, x: Any, rng: np.random.Generator) -> Any:
        h, w = x.shape[-2:]
        small = _torch_resize(x, _scaled_size(h, w, self.config.scale))
        return _torch_resize(small, (h, w))


@dataclasses.dataclass(frozen=True)
class RandomResizePadConfig:
    """``min_scale``: the smallest shrink factor (the factor is uniform in
    [min_scale, 1]); ``fill``: the grey level (0..255) of the padding."""

    min_scale: float = 0.8
    """Smallest shrink factor; the factor is drawn uniformly in [min_scale, 1]."""
    fill: int = 0
    """Grey level (0..255) of the canvas around the shrunk image."""

    def __post_init__(self) -> None:
        _check(
            0 < self.min_scale <= 1,
            f"min_scale={self.min_scale} must be in (0, 1] (e.g. random-resize-pad:min_scale=0.8)",
        )
        _check(0 <= self.fill <= 255, f"fill={self.fill} must be a grey level in 0..255")


class RandomResizePad(Transform):
    """Random resize and pad (Xie et al., "Mitigating adversarial effects through
    randomization", ICLR 2018): shrink by a factor drawn uniformly in [``min_scale``, 1]
    (Pillow bilinear, antialiased), paste at a uniformly drawn offset into a canvas of the
    original size filled with ``fill``. Every draw comes from the ``rng`` given, so the
    clean and the adversarial image of a sample get the same factor and offset; the
    returned :class:`~.base.Geometry` maps prompts into, and masks out of, the canvas.
    ``torch()`` draws the same way and is differentiable (interpolate, then pad)."""

    name = "random-resize-pad"
    Config = RandomResizePadConfig
    stochastic = True
    differentiable = True

    def draw(self, h: int, w: int, rng: np.random.Generator) -> tuple[int, int, int, int]:
        """(new h, new w, top, left) of one draw."""
        s = float(rng.uniform(self.config.min_scale, 1.0))
        nh, nw = _scaled_size(h, w, s)
        top = int(rng.integers(0, h - nh + 1))
        left = int(rng.integers(0, w - nw + 1))
        return nh, nw, top, left

    def apply_geometry(
        self, image: np.ndarray, rng: np.random.Generator
    ) -> tuple[np.ndarray, Geometry]:
        h, w = image.shape[:2]
        nh, nw, top, left = self.draw(h, w, rng)
        out = np.full_like(image, self.config.fill)
        out[top : top + nh, left : left + nw] = _pil_resize(image, (nh, nw))
        return out, Geometry(sx=nw / w, sy=nh / h, tx=float(left), ty=float(top), height=h, width=w)

    def apply(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return self.apply_geometry(image, rng)[0]

    def torch(self, x: Any, rng: np.random.Generator) -> Any:
        """One draw per batch item, from ``rng`` in batch order."""
        return self.torch_geometry(x, rng)[0]

    def torch_geometry(self, x: Any, rng: np.random.Generator) -> tuple[Any, list[Geometry]]:
        import torch
        import torch.nn.functional as F

        h, w = x.shape[-2:]
        out, geos = [], []
        for item in x:
            nh, nw, top, left = self.draw(h, w, rng)
            small = _torch_resize(item[None], (nh, nw))
            pad = (left, w - nw - left, top, h - nh - top)
            out.append(F.pad(small, pad, value=self.config.fill / 255.0))
            geos.append(Geometry(nw / w, nh / h, float(left), float(top), h, w))
        return torch.cat(out), geos


# ----------------------------------------------------------------------------- filters
@dataclasses.dataclass(frozen=True)
class BlurConfig:
    """``sigma``: the Gaussian's standard deviation in pixels; the kernel is
    2·ceil(3·sigma) + 1 pixels wide."""

    sigma: float = 1.0
    """Standard deviation of the Gaussian, in pixels; kernel size 2·ceil(3·sigma)+1."""

    def __post_init__(self) -> None:
        _check(self.sigma > 0, f"sigma={self.sigma} must be > 0 pixels (e.g. blur:sigma=1)")


class Blur(Transform):
    """Gaussian blur (torchvision's ``gaussian_blur``, reflected borders), kernel size
    2·ceil(3σ)+1; the uint8 result is the float result rounded. ``torch()`` is the same
    convolution, exact and differentiable."""

    name = "blur"
    Config = BlurConfig
    differentiable = True

    def kernel_size(self) -> int:
        return 2 * math.ceil(3 * self.config.sigma) + 1

    def torch(self, x: Any, rng: np.random.Generator) -> Any:
        from torchvision.transforms.v2.functional import gaussian_blur

        k, s = self.kernel_size(), float(self.config.sigma)
        return gaussian_blur(x, kernel_size=[k, k], sigma=[s, s])

    def apply(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        import torch

        x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float() / 255.0
        y = self.torch(x, rng)
        u8 = (y[0].clamp(0, 1) * 255.0).round().to(torch.uint8)
        return u8.permute(1, 2, 0).numpy()


@dataclasses.dataclass(frozen=True)
class MedianConfig:
    """``k``: the odd side of the square window, in pixels."""

    k: int = 3
    """Side of the square median window, in pixels (odd: 3, 5, …)."""

    def __post_init__(self) -> None:
        _check(self.k >= 1 and self.k % 2 == 1, f"k={self.k} must be an odd number of pixels >= 1")


class Median(Transform):
    """Median filter over a k × k window per channel (Pillow's ``MedianFilter``), the
    feature-squeezing defence against sparse noise. ``torch()`` is BPDA."""

    name = "median"
    Config = MedianConfig

    def apply(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        from PIL import ImageFilter

        if self.config.k == 1:
            return image
        return np.array(_pil(image).filter(ImageFilter.MedianFilter(self.config.k)))


@dataclasses.dataclass(frozen=True)
class BitDepthConfig:
    """``bits``: bits kept per channel, 1..8 (2^bits grey levels)."""

    bits: int = 5
    """Bits per channel kept, 1..8: the image keeps 2^bits evenly spaced levels of 0..255."""

    def __post_init__(self) -> None:
        _check(1 <= self.bits <= 8, f"bits={self.bits} must be in 1..8 (e.g. bitdepth:bits=5)")


class BitDepth(Transform):
    """Bit-depth reduction (feature squeezing, Xu et al., NDSS 2018): each channel value v
    becomes round(round(v/255·L)/L·255) with L = 2^bits − 1, so 2^bits evenly spaced levels
    spanning 0..255 remain. ``torch()`` is BPDA."""

    name = "bitdepth"
    Config = BitDepthConfig

    def apply(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        levels = 2**self.config.bits - 1
        q = np.round(image.astype(np.float64) / 255.0 * levels)
        return np.round(q / levels * 255.0).astype(np.uint8)
