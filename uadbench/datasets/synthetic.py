"""``synthetic``: seeded scenes written in the SA-1B format, for training and testing the
tiny zoo models and for tests that need ground-truth masks offline.

:func:`generate` writes ``sa_<i>.jpg`` (JPEG quality 95) and ``sa_<i>.json`` (the exact
SA-1B schema, COCO compressed RLE masks) into a directory. The :class:`Synthetic`
dataset generates such a directory on first use into a cache and reads it back through
the real :class:`~uadbench.datasets.sa1b.SA1B` loader, so the synthetic data exercise the
same code path as SA-1B itself.

A scene: a background (photo crop, gradient, smooth noise, stripes/checks, colourised
material texture or flat colour) and 3–8 objects painted back to front. Shapes:
ellipses, (rounded) rectangles, irregular polygons, stars, blobs with a random radial
profile, rings (with a see-through hole), crescents, crosses, arrows and thick curved
bars. Fills: crops of the photographs bundled with scikit-image (random crop, scale,
rotation and colour jitter), colourised material textures, flat colours with grain,
linear/radial gradients and stripes/checks; optional shading and drop shadows; soft
(antialiased) edges; mild sensor noise.

Masks are the *visible* part of each object: a later object paints over earlier ones
and its pixels are removed from their masks, so every pixel belongs to at most one
mask. An object whose visible part would be under 1% of the image or under 30% of its
own in-image area is not painted at all (so no visible object lacks its mask; the
background carries no mask). Annotations are in z-order, bottom first (not sorted by
area; SA-1B's order is not sorted either).

Determinism: image ``i`` is drawn from ``SeedSequence([seed, crc32(split), i])``, so it
does not depend on how many images are generated, the train and test splits are
independent streams, and the same arguments give byte-identical files (for the same
Pillow / libjpeg build).

Example::

    uadbench run --dataset synthetic:n=50,seed=1
    python -c "from uadbench.datasets.synthetic import generate; generate('data/syn', 1000, 0, split='train')"
"""

from __future__ import annotations

import colorsys
import dataclasses
import functools
import json
import logging
import math
import os
import shutil
import tempfile
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

from ..config import run_field
from ..errors import ConfigError, DataError
from .base import Dataset, Sample
from .io import encode_mask
from .sa1b import SA1B

log = logging.getLogger(__name__)

#: Bump whenever the generator's output changes: it names the cache directory.
GENERATOR_VERSION = 1

#: Photographs (bundled with scikit-image) whose crops texture objects and backgrounds.
TEXTURE_PHOTOS: tuple[str, ...] = (
    "astronaut",
    "chelsea",
    "coffee",
    "rocket",
    "motorcycle",
    "immunohistochemistry",
    "hubble_deep_field",
    "retina",
)
#: Grayscale material textures, colourised with two random colours.
MATERIALS: tuple[str, ...] = ("brick", "grass", "gravel")

SPLITS = ("train", "val", "test")
MIN_VISIBLE_IMAGE_FRACTION = 0.01
MIN_VISIBLE_OWN_FRACTION = 0.30
_SOURCE_MAX_SIDE = 512


# ----------------------------------------------------------------------------- sources
@functools.lru_cache(maxsize=1)
def _sources() -> tuple[tuple[Image.Image, ...], tuple[np.ndarray, ...]]:
    """(RGB photos as PIL images, grayscale materials as float32 [0, 1]), max side 512."""
    from .io import resize_max_side
    from .samples import load_bundled

    photos = tuple(
        Image.fromarray(np.ascontiguousarray(resize_max_side(load_bundled(n), _SOURCE_MAX_SIDE)))
        for n in TEXTURE_PHOTOS
    )
    mats = tuple(
        resize_max_side(load_bundled(n), _SOURCE_MAX_SIDE)[..., 0].astype(np.float32) / 255.0
        for n in MATERIALS
    )
    return photos, mats


# ----------------------------------------------------------------------------- colours
def _colour(rng: np.random.Generator, sat: tuple[float, float] = (0.15, 1.0)) -> np.ndarray:
    h, s, v = rng.random(), rng.uniform(*sat), rng.uniform(0.15, 1.0)
    return np.array(colorsys.hsv_to_rgb(h, s, v), dtype=np.float32) * 255.0


_RGB2YIQ = np.array(
    [[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]], dtype=np.float64
)
_YIQ2RGB = np.linalg.inv(_RGB2YIQ)


def _colour_jitter(img: np.ndarray, rng: np.random.Generator, strength: float = 1.0) -> np.ndarray:
    """Hue rotation, saturation, contrast and brightness on float32 (h, w, 3) in [0, 255]."""
    hue = rng.uniform(-math.pi, math.pi) * (strength if rng.random() < 0.4 else 0.1 * strength)
    sat = rng.uniform(1 - 0.6 * strength, 1 + 0.5 * strength)
    c, s = math.cos(hue), math.sin(hue)
    rot = np.array([[1, 0, 0], [0, sat * c, -sat * s], [0, sat * s, sat * c]])
    m = (_YIQ2RGB @ rot @ _RGB2YIQ).astype(np.float32)
    out = img @ m.T
    contrast = rng.uniform(1 - 0.35 * strength, 1 + 0.35 * strength)
    bright = rng.uniform(-40, 40) * strength
    mean = out.mean(axis=(0, 1), keepdims=True)
    return (out - mean) * contrast + mean + bright


# ----------------------------------------------------------------------------- fills
def _ramp(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A linear ramp in [0, 1] along a random direction over an (h, w) grid."""
    a = rng.uniform(0, 2 * math.pi)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    t = xx * math.cos(a) + yy * math.sin(a)
    t -= t.min()
    return t / max(float(t.max()), 1e-6)


def _photo_fill(rng: np.random.Generator, h: int, w: int, jitter: float) -> np.ndarray:
    """A randomly scaled, rotated crop of a bundled photograph, as float32 (h, w, 3)."""
    photos, _ = _sources()
    src = photos[int(rng.integers(len(photos)))]
    sw, sh = src.size
    a = rng.uniform(0, 2 * math.pi) if rng.random() < 0.7 else 0.0
    ca, sa = abs(math.cos(a)), abs(math.sin(a))
    ex, ey = ca * w / 2 + sa * h / 2, sa * w / 2 + ca * h / 2  # half extents at scale 1
    s_max = min((sw - 2) / (2 * ex), (sh - 2) / (2 * ey))
    s = s_max * rng.uniform(0.25, 1.0) if s_max > 0.25 else s_max
    s = min(s, 2.0)
    cx = rng.uniform(s * ex + 1, sw - s * ex - 1) if sw - 2 * s * ex > 2 else sw / 2
    cy = rng.uniform(s * ey + 1, sh - s * ey - 1) if sh - 2 * s * ey > 2 else sh / 2
    flip = -1.0 if rng.random() < 0.5 else 1.0
    cos_a, sin_a = math.cos(a) * s, math.sin(a) * s
    # output (x, y) -> source (x', y'): centre, flip, rotate, scale, translate
    m00, m01 = cos_a * flip, -sin_a
    m10, m11 = sin_a * flip, cos_a
    c0 = cx - m00 * w / 2 - m01 * h / 2
    c1 = cy - m10 * w / 2 - m11 * h / 2
    out = src.transform(
        (w, h),
        Image.Transform.AFFINE,
        (m00, m01, c0, m10, m11, c1),
        resample=Image.Resampling.BILINEAR,
    )
    return _colour_jitter(np.asarray(out, dtype=np.float32), rng, jitter)


def _material_fill(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    _, mats = _sources()
    g = mats[int(rng.integers(len(mats)))]
    scale = rng.uniform(0.5, 1.5)
    ch, cw = min(g.shape[0], max(2, int(h * scale))), min(g.shape[1], max(2, int(w * scale)))
    y0 = int(rng.integers(0, g.shape[0] - ch + 1))
    x0 = int(rng.integers(0, g.shape[1] - cw + 1))
    crop = g[y0 : y0 + ch, x0 : x0 + cw]
    if (ch, cw) != (h, w):
        crop = np.asarray(
            Image.fromarray(crop, mode="F").resize((w, h), Image.Resampling.BILINEAR),
            dtype=np.float32,
        )
    lo, hi = crop.min(), crop.max()
    t = (crop - lo) / max(float(hi - lo), 1e-6)
    c1, c2 = _colour(rng), _colour(rng)
    return c1 + t[..., None] * (c2 - c1)


def _flat_fill(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    out = np.empty((h, w, 3), dtype=np.float32)
    out[:] = _colour(rng)
    return out + rng.normal(0, rng.uniform(1, 6), size=(h, w, 1)).astype(np.float32)


def _gradient_fill(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    c1, c2 = _colour(rng), _colour(rng)
    if rng.random() < 0.7:
        t = _ramp(rng, h, w)
    else:
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        t = np.hypot(yy - cy, xx - cx)
        t /= max(float(t.max()), 1e-6)
    return c1 + t[..., None] * (c2 - c1)


def _pattern_fill(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    c1, c2 = _colour(rng), _colour(rng)
    a = rng.uniform(0, math.pi)
    period = rng.uniform(4, 24)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    u = (xx * math.cos(a) + yy * math.sin(a)) / period
    if rng.random() < 0.6:  # stripes, soft-edged
        t = 0.5 + 0.5 * np.sin(2 * math.pi * u)
        t = np.clip((t - 0.5) * rng.uniform(1.5, 6) + 0.5, 0, 1)
    else:  # checks
        v = (-xx * math.sin(a) + yy * math.cos(a)) / period
        t = ((np.floor(u) + np.floor(v)) % 2).astype(np.float32)
    return c1 + t[..., None] * (c2 - c1)


def _noise_fill(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Smooth multi-octave value noise mapped between two or three colours."""
    t = np.zeros((h, w), dtype=np.float32)
    amp, total = 1.0, 0.0
    for cells in (3, 6, 12, 24):
        grid = rng.random((cells + 1, cells + 1)).astype(np.float32)
        up = Image.fromarray(grid, mode="F").resize((w, h), Image.Resampling.BICUBIC)
        t += amp * np.asarray(up, dtype=np.float32)
        total += amp
        amp *= rng.uniform(0.35, 0.65)
    t /= total
    t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
    c1, c2, c3 = _colour(rng), _colour(rng), _colour(rng)
    if rng.random() < 0.5:
        return c1 + t[..., None] * (c2 - c1)
    lo = np.clip(t * 2, 0, 1)[..., None]
    hi = np.clip(t * 2 - 1, 0, 1)[..., None]
    return c1 + lo * (c2 - c1) + hi * (c3 - c2)


_OBJECT_FILLS: tuple[tuple[str, float], ...] = (
    ("photo", 0.45),
    ("material", 0.12),
    ("flat", 0.15),
    ("gradient", 0.15),
    ("pattern", 0.13),
)
_BACKGROUNDS: tuple[tuple[str, float], ...] = (
    ("photo", 0.32),
    ("noise", 0.16),
    ("gradient", 0.14),
    ("material", 0.14),
    ("pattern", 0.12),
    ("flat", 0.12),
)


def _choose(rng: np.random.Generator, table: tuple[tuple[str, float], ...]) -> str:
    names = [n for n, _ in table]
    p = np.array([w for _, w in table], dtype=np.float64)
    return names[int(rng.choice(len(names), p=p / p.sum()))]


def _fill(kind: str, rng: np.random.Generator, h: int, w: int, jitter: float = 1.0) -> np.ndarray:
    if kind == "photo":
        return _photo_fill(rng, h, w, jitter)
    if kind == "material":
        return _material_fill(rng, h, w)
    if kind == "flat":
        return _flat_fill(rng, h, w)
    if kind == "gradient":
        return _gradient_fill(rng, h, w)
    if kind == "pattern":
        return _pattern_fill(rng, h, w)
    if kind == "noise":
        return _noise_fill(rng, h, w)
    raise ValueError(kind)  # pragma: no cover


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    kind = _choose(rng, _BACKGROUNDS)
    bg = _fill(kind, rng, h, w, jitter=0.6)
    if kind == "photo" and rng.random() < 0.5:  # out-of-focus backdrop
        bg = ndimage.gaussian_filter(bg, sigma=(rng.uniform(1, 3),) * 2 + (0,))
    return bg.astype(np.float32)


# ----------------------------------------------------------------------------- shapes
Polygon = list[tuple[float, float]]


def _place(pts: np.ndarray, cx: float, cy: float, angle: float) -> Polygon:
    """Rotate (N, 2) local points by ``angle`` and move them to (cx, cy)."""
    c, s = math.cos(angle), math.sin(angle)
    x = pts[:, 0] * c - pts[:, 1] * s + cx
    y = pts[:, 0] * s + pts[:, 1] * c + cy
    return list(zip(x.tolist(), y.tolist()))


def _radial(rng: np.random.Generator, r: float, n: int = 96, wobble: float = 0.3) -> np.ndarray:
    """A closed blob: radius r·(1 + Σ a_k cos(k t + φ_k)), k = 2..5."""
    t = np.linspace(0, 2 * math.pi, n, endpoint=False)
    rad = np.ones(n)
    for k in range(2, 6):
        rad += (
            rng.uniform(0, wobble) / math.sqrt(k - 1) * np.cos(k * t + rng.uniform(0, 2 * math.pi))
        )
    rad = r * np.clip(rad, 0.3, None)
    return np.stack([rad * np.cos(t), rad * np.sin(t)], axis=1)


def _ellipse(a: float, b: float, n: int = 72) -> np.ndarray:
    t = np.linspace(0, 2 * math.pi, n, endpoint=False)
    return np.stack([a * np.cos(t), b * np.sin(t)], axis=1)


def _shape(
    kind: str, rng: np.random.Generator, cx: float, cy: float, r: float
) -> tuple[list[Polygon], list[Polygon], list[tuple[Polygon, float]]]:
    """(polygons to fill, polygons to cut out, thick polylines (points, width))."""
    ang = rng.uniform(0, 2 * math.pi)
    add: list[Polygon] = []
    cut: list[Polygon] = []
    lines: list[tuple[Polygon, float]] = []
    if kind == "ellipse":
        add.append(_place(_ellipse(r, r * rng.uniform(0.4, 1.0)), cx, cy, ang))
    elif kind == "rectangle":
        a, b = r, r * rng.uniform(0.3, 1.0)
        add.append(_place(np.array([[-a, -b], [a, -b], [a, b], [-a, b]]), cx, cy, ang))
    elif kind == "rounded_rect":
        a, b, p = r, r * rng.uniform(0.35, 1.0), rng.uniform(3, 8)
        t = np.linspace(0, 2 * math.pi, 96, endpoint=False)
        ct, st = np.cos(t), np.sin(t)
        x = a * np.sign(ct) * np.abs(ct) ** (2 / p)
        y = b * np.sign(st) * np.abs(st) ** (2 / p)
        add.append(_place(np.stack([x, y], axis=1), cx, cy, ang))
    elif kind == "polygon":
        k = int(rng.integers(3, 9))
        t = np.sort(
            np.linspace(0, 2 * math.pi, k, endpoint=False)
            + rng.uniform(-0.3, 0.3, k) * 2 * math.pi / k
        )
        rad = r * rng.uniform(0.65, 1.0, k)
        add.append(_place(np.stack([rad * np.cos(t), rad * np.sin(t)], axis=1), cx, cy, ang))
    elif kind == "star":
        k = int(rng.integers(4, 10))
        t = np.linspace(0, 2 * math.pi, 2 * k, endpoint=False)
        rad = np.where(np.arange(2 * k) % 2 == 0, r, r * rng.uniform(0.3, 0.65))
        add.append(_place(np.stack([rad * np.cos(t), rad * np.sin(t)], axis=1), cx, cy, ang))
    elif kind == "blob":
        add.append(_place(_radial(rng, r, wobble=rng.uniform(0.15, 0.45)), cx, cy, ang))
    elif kind == "ring":
        outer = (
            _radial(rng, r, wobble=0.12)
            if rng.random() < 0.5
            else _ellipse(r, r * rng.uniform(0.6, 1))
        )
        inner = outer * rng.uniform(0.35, 0.7) + rng.uniform(-0.1, 0.1, 2) * r
        add.append(_place(outer, cx, cy, ang))
        cut.append(_place(inner, cx, cy, ang))
    elif kind == "crescent":
        add.append(_place(_ellipse(r, r), cx, cy, ang))
        off = r * rng.uniform(0.35, 0.8)
        cut.append(
            _place(
                _ellipse(r * rng.uniform(0.75, 1.0), r * rng.uniform(0.75, 1.0)) + [off, 0],
                cx,
                cy,
                ang,
            )
        )
    elif kind == "cross":
        a, b = r, r * rng.uniform(0.2, 0.45)
        add.append(_place(np.array([[-a, -b], [a, -b], [a, b], [-a, b]]), cx, cy, ang))
        a2 = r * rng.uniform(0.6, 1.0)
        add.append(_place(np.array([[-b, -a2], [b, -a2], [b, a2], [-b, a2]]), cx, cy, ang))
    elif kind == "arrow":
        L, sw, hw, hl = (
            r,
            r * rng.uniform(0.15, 0.3),
            r * rng.uniform(0.45, 0.7),
            r * rng.uniform(0.4, 0.7),
        )
        pts = [
            [-L, -sw],
            [L - hl, -sw],
            [L - hl, -hw],
            [L, 0],
            [L - hl, hw],
            [L - hl, sw],
            [-L, sw],
        ]
        add.append(_place(np.array(pts, dtype=np.float64), cx, cy, ang))
    elif kind == "bar":  # a thick curved stroke (quadratic Bézier) with round caps
        p0 = np.array([-r, 0.0])
        p2 = np.array([r, 0.0])
        p1 = np.array([0.0, rng.uniform(-1.2, 1.2) * r])
        t = np.linspace(0, 1, 32)[:, None]
        curve = (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t**2 * p2
        lines.append((_place(curve, cx, cy, ang), r * rng.uniform(0.18, 0.4)))
    else:  # pragma: no cover
        raise ValueError(kind)
    return add, cut, lines


_SHAPES: tuple[tuple[str, float], ...] = (
    ("ellipse", 0.11),
    ("rectangle", 0.09),
    ("rounded_rect", 0.09),
    ("polygon", 0.12),
    ("star", 0.09),
    ("blob", 0.16),
    ("ring", 0.09),
    ("crescent", 0.06),
    ("cross", 0.06),
    ("arrow", 0.05),
    ("bar", 0.08),
)


def _rasterise(
    h: int, w: int, add: list[Polygon], cut: list[Polygon], lines: list[tuple[Polygon, float]]
) -> np.ndarray:
    img = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(img)
    for poly in add:
        draw.polygon(poly, fill=255)
    for pts, width in lines:
        draw.line(pts, fill=255, width=max(1, int(round(width))), joint="curve")
        rad = width / 2
        for x, y in (pts[0], pts[-1]):
            draw.ellipse([x - rad, y - rad, x + rad, y + rad], fill=255)
    for poly in cut:
        draw.polygon(poly, fill=0)
    return np.asarray(img) > 0


# ----------------------------------------------------------------------------- scenes
def _bbox(mask: np.ndarray, pad: int, h: int, w: int) -> tuple[slice, slice]:
    ys = np.flatnonzero(mask.any(axis=1))
    xs = np.flatnonzero(mask.any(axis=0))
    y0, y1 = max(0, int(ys[0]) - pad), min(h, int(ys[-1]) + 1 + pad)
    x0, x1 = max(0, int(xs[0]) - pad), min(w, int(xs[-1]) + 1 + pad)
    return slice(y0, y1), slice(x0, x1)


def _shift(mask: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """Translate a 2-D array by (dy, dx) pixels, filling with zeros (no wrap-around)."""
    out = np.zeros_like(mask)
    h, w = mask.shape
    if abs(dy) >= h or abs(dx) >= w:
        return out
    out[max(dy, 0) : h + min(dy, 0), max(dx, 0) : w + min(dx, 0)] = mask[
        max(-dy, 0) : h + min(-dy, 0), max(-dx, 0) : w + min(-dx, 0)
    ]
    return out


def render_scene(
    rng: np.random.Generator,
    size: tuple[int, int] = (256, 256),
    n_objects: tuple[int, int] = (3, 8),
) -> tuple[np.ndarray, list[np.ndarray]]:
    """Draw one scene.

    Returns the RGB uint8 image (H, W, 3) and the visible masks, bool (H, W) each,
    bottom object first. Masks are disjoint and non-empty; each covers at least 1% of
    the image.
    """
    h, w = size
    side = min(h, w)
    canvas = _background(rng, h, w)
    lo, hi = n_objects
    target = int(rng.integers(lo, hi + 1))
    min_px = MIN_VISIBLE_IMAGE_FRACTION * h * w
    kept: list[tuple[np.ndarray, np.ndarray]] = []  # (full mask, visible mask), top first
    for _attempt in range(8):
        radii = np.exp(rng.uniform(math.log(0.09), math.log(0.38), target)) * side
        radii = radii[np.argsort(-radii * rng.uniform(0.7, 1.3, target))]  # big ones lower
        shapes: list[np.ndarray] = []
        centres: list[tuple[float, float, float]] = []
        for r in radii:
            kind = _choose(rng, _SHAPES)
            if centres and rng.random() < 0.45:  # next to an earlier object: occlusion
                px, py, pr = centres[int(rng.integers(len(centres)))]
                d, a = (pr + r) * rng.uniform(0.3, 0.9), rng.uniform(0, 2 * math.pi)
                cx, cy = px + d * math.cos(a), py + d * math.sin(a)
            else:
                cx, cy = rng.uniform(-0.05, 1.05) * w, rng.uniform(-0.05, 1.05) * h
            centres.append((cx, cy, float(r)))
            shapes.append(_rasterise(h, w, *_shape(kind, rng, cx, cy, float(r))))
        kept = []
        covered = np.zeros((h, w), dtype=bool)
        for full in reversed(shapes):  # top first: what is above is final
            own = int(full.sum())
            if own == 0:
                continue
            vis = full & ~covered
            nv = int(vis.sum())
            if nv < min_px or nv < MIN_VISIBLE_OWN_FRACTION * own:
                continue  # would be (almost) hidden: not painted at all
            kept.append((full, vis))
            covered |= full
        if len(kept) >= min(lo, target):
            break
    light = rng.uniform(0, 2 * math.pi)
    for full, _vis in reversed(kept):  # paint bottom first
        ys, xs = _bbox(full, 0, h, w)
        bh, bw = ys.stop - ys.start, xs.stop - xs.start
        if rng.random() < 0.25:  # drop shadow towards the light's opposite side
            dist = rng.uniform(0.02, 0.06) * side
            dy, dx = int(round(dist * math.sin(light))), int(round(dist * math.cos(light)))
            shadow = _shift(full, dy, dx).astype(np.float32)
            sy, sx = _bbox(full, int(dist) + 8, h, w)
            soft = ndimage.gaussian_filter(shadow[sy, sx], rng.uniform(1.5, 4))
            canvas[sy, sx] *= 1 - rng.uniform(0.25, 0.5) * soft[..., None]
        tex = _fill(_choose(rng, _OBJECT_FILLS), rng, bh, bw)
        if rng.random() < 0.5:  # shading: brighter towards the light
            yy, xx = np.mgrid[0:bh, 0:bw].astype(np.float32)
            t = (xx - bw / 2) * math.cos(light) + (yy - bh / 2) * math.sin(light)
            t /= max(float(np.abs(t).max()), 1e-6)
            tex = tex * (1 + rng.uniform(0.1, 0.35) * t)[..., None]
        sy, sx = _bbox(full, 3, h, w)
        alpha = ndimage.gaussian_filter(full[sy, sx].astype(np.float32), rng.uniform(0.4, 0.9))
        # texture lives on the tight box; edge pixels outside it borrow the nearest texel
        tex_pad = np.pad(
            tex,
            (
                (ys.start - sy.start, sy.stop - ys.stop),
                (xs.start - sx.start, sx.stop - xs.stop),
                (0, 0),
            ),
            mode="edge",
        )
        region = canvas[sy, sx]
        canvas[sy, sx] = region + alpha[..., None] * (tex_pad - region)
    if rng.random() < 0.6:
        canvas += rng.normal(0, rng.uniform(0.5, 3.0), size=canvas.shape).astype(np.float32)
    image = np.clip(np.rint(canvas), 0, 255).astype(np.uint8)
    return image, [vis for _full, vis in reversed(kept)]


def _annotation(mask: np.ndarray, ann_id: int, h: int, w: int) -> dict[str, Any]:
    from pycocotools import mask as mask_utils

    rle = encode_mask(mask)
    bbox = mask_utils.toBbox({"size": rle["size"], "counts": rle["counts"].encode("ascii")})
    ys, xs = _bbox(mask, 1, h, w)
    dist = ndimage.distance_transform_edt(mask[ys, xs])
    py, px = np.unravel_index(int(np.argmax(dist)), dist.shape)
    return {
        "id": ann_id,
        "segmentation": rle,
        "bbox": [float(v) for v in bbox],
        "area": int(mask.sum()),
        "predicted_iou": 1.0,
        "point_coords": [[float(px + xs.start) + 0.5, float(py + ys.start) + 0.5]],
        "crop_box": [0.0, 0.0, float(w), float(h)],
        "stability_score": 1.0,
    }


def _image_rng(seed: int, split: str, index: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, zlib.crc32(split.encode()), index]))


def generate(
    out_dir: str | Path,
    n_images: int,
    seed: int,
    size: tuple[int, int] = (256, 256),
    *,
    split: str = "test",
    start: int = 1,
    n_objects: tuple[int, int] = (3, 8),
    progress: Callable[[int], Any] | None = None,
) -> list[Path]:
    """Write ``n_images`` synthetic scenes in the SA-1B format into ``out_dir``.

    Files are ``sa_<i>.jpg`` (RGB, JPEG quality 95) and ``sa_<i>.json`` for
    ``i = start … start + n_images - 1``; ``size`` is (H, W) in pixels; ``n_objects``
    the (min, max) objects drawn per scene (a hidden one is dropped, so a few scenes
    have fewer). Image ``i`` depends only on (``seed``, ``split``, ``i``, ``size``,
    ``n_objects``). Existing files of the same names are overwritten. ``progress`` is
    called with 1 after each image. Returns the JPEG paths in order.
    """
    h, w = int(size[0]), int(size[1])
    if h < 16 or w < 16:
        raise ValueError(f"size {size} too small: at least 16x16 pixels")
    lo, hi = n_objects
    if not 1 <= lo <= hi:
        raise ValueError(f"n_objects {n_objects} must satisfy 1 <= min <= max")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(start, start + n_images):
        rng = _image_rng(seed, split, i)
        image, masks = render_scene(rng, (h, w), (lo, hi))
        jpg = out / f"sa_{i}.jpg"
        Image.fromarray(image).save(jpg, format="JPEG", quality=95)
        record = {
            "image": {"image_id": i, "width": w, "height": h, "file_name": jpg.name},
            "annotations": [_annotation(m, i * 1000 + k, h, w) for k, m in enumerate(masks)],
        }
        (out / f"sa_{i}.json").write_text(json.dumps(record, separators=(",", ":")))
        paths.append(jpg)
        if progress is not None:
            progress(1)
    return paths


# ----------------------------------------------------------------------------- dataset
def default_cache_root() -> Path:
    """``$XDG_CACHE_HOME/uadbench/synthetic`` (``~/.cache/uadbench/synthetic`` if unset)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "uadbench" / "synthetic"


class Synthetic(Dataset):
    """Seeded synthetic SA-1B-format scenes, generated on first use into a cache.

    Config:
        root: the cache directory (default :func:`default_cache_root`); the images live
            in ``<root>/<split>-n<n>-seed<seed>-<size>px-v<version>``.
        n: number of images (ids ``sa_1`` … ``sa_<n>``).
        seed: the seed; with ``split`` it fixes every image.
        size: image side in pixels (square images).
        split: ``train``, ``val`` or ``test``: independent streams for the same seed.

    Generation is atomic (a temporary directory renamed into place), so concurrent
    first uses and interrupted runs never leave a half-written dataset. Samples are
    read back through :class:`~uadbench.datasets.sa1b.SA1B`.
    """

    name = "synthetic"
    has_masks = True

    @dataclasses.dataclass(frozen=True)
    class Config:
        root: str = run_field("")
        n: int = 20
        seed: int = 0
        size: int = 256
        split: str = "test"

    def __init__(self, config: Config | None = None):
        super().__init__(config)
        cfg = self.config
        if cfg.n < 1:
            raise ConfigError(f"synthetic: n={cfg.n} must be >= 1")
        if cfg.size < 32:
            raise ConfigError(f"synthetic: size={cfg.size} must be >= 32 pixels")
        if cfg.split not in SPLITS:
            raise ConfigError(f"synthetic: split={cfg.split!r} must be one of {', '.join(SPLITS)}")
        root = Path(cfg.root).expanduser() if cfg.root else default_cache_root()
        self.directory = (
            root / f"{cfg.split}-n{cfg.n}-seed{cfg.seed}-{cfg.size}px-v{GENERATOR_VERSION}"
        )
        self._inner: SA1B | None = None

    def _manifest(self) -> dict[str, Any]:
        cfg = self.config
        return {
            "generator_version": GENERATOR_VERSION,
            "n": cfg.n,
            "seed": cfg.seed,
            "size": [cfg.size, cfg.size],
            "split": cfg.split,
        }

    def _ensure(self) -> SA1B:
        if self._inner is not None:
            return self._inner
        manifest_path = self.directory / "synthetic.json"
        if not self.directory.exists():
            self._generate()
        if not manifest_path.is_file():
            raise DataError(
                f"{self.directory}: exists but holds no synthetic.json manifest; delete it to regenerate"
            )
        try:
            found = json.loads(manifest_path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise DataError(f"{manifest_path}: unreadable ({exc}); delete its directory") from None
        if found != self._manifest():
            raise DataError(
                f"{manifest_path}: made with other settings {found}; delete {self.directory} to regenerate"
            )
        self._inner = SA1B(SA1B.Config(root=str(self.directory), strict=True))
        return self._inner

    def _generate(self) -> None:
        cfg = self.config
        parent = self.directory.parent
        parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{self.directory.name}.", dir=parent))
        try:
            log.info("generating %d synthetic images into %s", cfg.n, self.directory)
            generate(tmp, cfg.n, cfg.seed, (cfg.size, cfg.size), split=cfg.split)
            (tmp / "synthetic.json").write_text(json.dumps(self._manifest()))
            try:
                os.rename(tmp, self.directory)
            except OSError:
                if not self.directory.exists():
                    raise
                log.info("%s was generated concurrently; using it", self.directory)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)

    def ids(self) -> list[str]:
        return self._ensure().ids()

    def load(self, sample_id: str) -> Sample:
        return self._ensure().load(sample_id)

    def describe(self) -> str:
        c = self.config
        return f"synthetic ({c.n} {c.size}px {c.split} scenes, seed {c.seed})"
