"""Deterministic prompt sampling: the paper's protocol, seeded per image.

Prompts are not chosen by datasets or attacks: they are a function of
(dataset name, sample id, seed) alone, so every attack and every victim sees the
same prompts for the same image and per-prompt results pair across the whole run.

With ground-truth masks (paper protocol, UAD.md):
    the first ``max_masks`` (10) annotated masks; per mask min(``points_per_mask`` (5),
    |mask|) positive points: distinct pixels of the mask drawn uniformly without
    replacement, and ``boxes_per_mask`` (3)
    boxes = the GT box with width and height each scaled by a factor drawn
    uniformly from [1 - jitter, 1 + jitter] (jitter 0.1) around its centre, clipped
    to the image. Reference mask = the GT mask.

Without ground truth (``samples``, ``folder``): ``max_masks`` anchor regions, each a
box whose centre is uniform over the image and whose sides are uniform in
[0.15, 0.5] of the image's; per anchor, ``points_per_mask`` points uniform in the
anchor's central half and ``boxes_per_mask`` jittered copies of the anchor, as above.
Reference mask = the victim's own prediction on the clean image for that prompt.
"""

from __future__ import annotations

import dataclasses
import hashlib

import numpy as np

POINT, BOX = "point", "box"


@dataclasses.dataclass(frozen=True)
class PromptConfig:
    max_masks: int = 10
    points_per_mask: int = 5
    boxes_per_mask: int = 3
    box_jitter: float = 0.1


@dataclasses.dataclass
class PromptSet:
    """All prompts of one image.

    ``kinds``: (P,) array of "point" / "box".
    ``coords``: (P, 4) float64 — points as (x, y, nan, nan), boxes as XYXY, pixels of
    the original image.
    ``mask_index``: (P,) int — which GT mask (or anchor) the prompt was drawn for.
    ``labels``: (P,) int — 1 for positive points (all points here), -1 for boxes.
    """

    kinds: np.ndarray
    coords: np.ndarray
    mask_index: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.kinds)

    @property
    def is_point(self) -> np.ndarray:
        return self.kinds == POINT

    @property
    def is_box(self) -> np.ndarray:
        return self.kinds == BOX

    def points(self) -> tuple[np.ndarray, np.ndarray]:
        """(indices, (N, 2) XY) of the point prompts."""
        idx = np.flatnonzero(self.is_point)
        return idx, self.coords[idx, :2]

    def boxes(self) -> tuple[np.ndarray, np.ndarray]:
        """(indices, (N, 4) XYXY) of the box prompts."""
        idx = np.flatnonzero(self.is_box)
        return idx, self.coords[idx]

    def subset(self, idx: np.ndarray) -> PromptSet:
        return PromptSet(self.kinds[idx], self.coords[idx], self.mask_index[idx], self.labels[idx])

    @staticmethod
    def from_lists(points=(), boxes=()) -> PromptSet:
        """Build from explicit lists of (x, y) points and XYXY boxes (mask index = order)."""
        kinds, coords, labels = [], [], []
        for x, y in points:
            kinds.append(POINT)
            coords.append([x, y, np.nan, np.nan])
            labels.append(1)
        for b in boxes:
            kinds.append(BOX)
            coords.append(list(b))
            labels.append(-1)
        n = len(kinds)
        return PromptSet(
            np.array(kinds, dtype=object).astype(str) if n else np.zeros(0, dtype="<U5"),
            np.array(coords, dtype=np.float64).reshape(n, 4),
            np.arange(n, dtype=np.int64),
            np.array(labels, dtype=np.int64),
        )


def prompt_rng(
    dataset: str, sample_id: str, seed: int, salt: str = "prompts"
) -> np.random.Generator:
    """A generator seeded from (dataset, sample id, seed): stable across processes."""
    digest = hashlib.sha256(f"{salt}|{dataset}|{sample_id}|{seed}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def _jitter_boxes(box: np.ndarray, n: int, jitter: float, w: int, h: int, rng) -> np.ndarray:
    x0, y0, x1, y1 = box
    cx, cy, bw, bh = (x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0
    out = np.empty((n, 4))
    for i in range(n):
        sw, sh = rng.uniform(1 - jitter, 1 + jitter, size=2)
        nw, nh = bw * sw, bh * sh
        out[i] = [cx - nw / 2, cy - nh / 2, cx + nw / 2, cy + nh / 2]
    out[:, [0, 2]] = out[:, [0, 2]].clip(0, w - 1)
    out[:, [1, 3]] = out[:, [1, 3]].clip(0, h - 1)
    return out


def mask_box(mask: np.ndarray) -> np.ndarray:
    """Tight XYXY box of a bool mask (pixel indices, inclusive)."""
    ys, xs = np.nonzero(mask)
    return np.array([xs.min(), ys.min(), xs.max(), ys.max()], dtype=np.float64)


def sample_prompts(
    dataset: str,
    sample_id: str,
    hw: tuple[int, int],
    masks: np.ndarray | None,
    boxes: np.ndarray | None,
    seed: int = 0,
    config: PromptConfig | None = None,
) -> PromptSet:
    """Draw the prompts of one image (see module docstring for the protocol)."""
    cfg = config or PromptConfig()
    rng = prompt_rng(dataset, sample_id, seed)
    h, w = hw
    kinds, coords, mindex = [], [], []
    if masks is not None and len(masks):
        usable = [i for i in range(len(masks)) if masks[i].any()][: cfg.max_masks]
        for mi in usable:
            ys, xs = np.nonzero(masks[mi])
            # distinct pixels, without replacement (the reference's np.random.choice)
            pick = rng.choice(len(xs), size=min(cfg.points_per_mask, len(xs)), replace=False)
            for j in pick:
                kinds.append(POINT)
                coords.append([float(xs[j]), float(ys[j]), np.nan, np.nan])
                mindex.append(mi)
            box = boxes[mi] if boxes is not None else mask_box(masks[mi])
            for b in _jitter_boxes(
                np.asarray(box, float), cfg.boxes_per_mask, cfg.box_jitter, w, h, rng
            ):
                kinds.append(BOX)
                coords.append(b.tolist())
                mindex.append(mi)
    else:
        for mi in range(cfg.max_masks):
            bw, bh = rng.uniform(0.15, 0.5) * w, rng.uniform(0.15, 0.5) * h
            cx = rng.uniform(bw / 2, w - bw / 2)
            cy = rng.uniform(bh / 2, h - bh / 2)
            for _ in range(cfg.points_per_mask):
                kinds.append(POINT)
                coords.append(
                    [
                        cx + rng.uniform(-bw / 4, bw / 4),
                        cy + rng.uniform(-bh / 4, bh / 4),
                        np.nan,
                        np.nan,
                    ]
                )
                mindex.append(mi)
            anchor = np.array([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2])
            for b in _jitter_boxes(anchor, cfg.boxes_per_mask, cfg.box_jitter, w, h, rng):
                kinds.append(BOX)
                coords.append(b.tolist())
                mindex.append(mi)
    n = len(kinds)
    kinds_arr = np.array(kinds, dtype="<U5") if n else np.zeros(0, dtype="<U5")
    return PromptSet(
        kinds_arr,
        np.array(coords, dtype=np.float64).reshape(n, 4),
        np.array(mindex, dtype=np.int64),
        np.where(kinds_arr == POINT, 1, -1).astype(np.int64),
    )
