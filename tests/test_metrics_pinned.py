"""The protocol's maths pinned to independent values: IoU / mIoU / ASR@k against
hand-counted pixels, and the prompt sampler against a plain re-implementation of the
protocol written here from UAD.md's description (same seeded generator, same draw order).

Each assertion is one a planted bug turns red (``scripts/mutants.py --area eval``): the
≤ boundary of ASR, the empty-mask conventions, the axes IoU sums over, off-by-one
clipping of boxes to the image, the jitter range, the anchor-box construction.
"""

from __future__ import annotations

import dataclasses
import hashlib
import warnings

import numpy as np
import pytest

from uadbench.eval.metrics import asr, iou, miou
from uadbench.eval.prompts import (
    BOX,
    POINT,
    PromptConfig,
    PromptSet,
    mask_box,
    prompt_rng,
    sample_prompts,
)


# ---------------------------------------------------------------------------- metrics
def _rect(h, w, y0, y1, x0, x1):
    m = np.zeros((h, w), bool)
    m[y0:y1, x0:x1] = True
    return m


def test_iou_hand_counted_on_a_non_square_batch():
    # 5×7 masks: A = rows 0-1 × cols 0-3 (8 px), B = rows 1-3 × cols 2-6 (15 px);
    # overlap = row 1 × cols 2-3 (2 px); union = 8 + 15 - 2 = 21.
    a = _rect(5, 7, 0, 2, 0, 4)
    b = _rect(5, 7, 1, 4, 2, 7)
    assert a.sum() == 8 and b.sum() == 15 and (a & b).sum() == 2
    assert float(iou(a, b)) == pytest.approx(100 * 2 / 21, abs=1e-12)
    # a batch of 3 (leading axis must not be summed over; shape (3,) out)
    c = _rect(5, 7, 4, 5, 6, 7)  # one pixel, disjoint from A
    out = iou(np.stack([a, a, c]), np.stack([b, a, a]))
    assert out.shape == (3,)
    np.testing.assert_allclose(out, [100 * 2 / 21, 100.0, 0.0], atol=1e-12)
    # two leading axes (2, 3, 5, 7) → (2, 3)
    out2 = iou(np.stack([np.stack([a, a, c])] * 2), np.stack([np.stack([b, a, a])] * 2))
    assert out2.shape == (2, 3)
    np.testing.assert_allclose(out2[1], [100 * 2 / 21, 100.0, 0.0], atol=1e-12)


def test_iou_single_pixel_unions_and_empty_masks():
    one = _rect(3, 4, 1, 2, 2, 3)
    empty = np.zeros((3, 4), bool)
    # union of exactly one pixel: same pixel → 100, against empty → 0
    assert float(iou(one, one)) == 100.0
    assert float(iou(one, empty)) == 0.0
    assert float(iou(empty, one)) == 0.0
    # both empty agree perfectly, and computing it warns about nothing (no 0/0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        both = iou(np.stack([empty, one]), np.stack([empty, empty]))
    np.testing.assert_array_equal(both, [100.0, 0.0])


def test_iou_counts_pixels_not_values_and_checks_shapes():
    # non-bool input is read as a mask (nonzero = in)
    a = np.array([[0, 3], [0, 0]])
    b = np.array([[0, 1], [1, 0]])
    assert float(iou(a, b)) == pytest.approx(50.0)
    for sa, sb in [((2, 3), (3, 2)), ((3, 2), (2, 3)), ((2, 3), (2, 3, 1))]:
        with pytest.raises(ValueError, match="shapes differ"):
            iou(np.zeros(sa, bool), np.zeros(sb, bool))
    iou(np.zeros((2, 3), bool), np.zeros((2, 3), bool))  # equal shapes do not raise


def test_asr_boundary_is_at_most_threshold():
    # IoU exactly at the threshold counts as destroyed (≤), just above does not
    ious = [49.5, 50.0, 50.5, 100.0]
    assert asr(ious, 50.0) == 50.0  # 49.5, 50.0
    assert asr(ious, 49.5) == 25.0  # 49.5 only
    assert asr(ious, 50.5) == 75.0
    assert asr(ious) == 50.0  # the default threshold is 50
    assert asr([10.0, 10.0, 11.0], 10) == pytest.approx(200 / 3)
    assert asr([0.0], 0.0) == 100.0 and asr([0.0], 10.0) == 100.0
    assert asr([100.0], 99.0) == 0.0


def test_asr_and_miou_of_empty_and_single_lists():
    assert np.isnan(asr([], 50)) and np.isnan(miou([]))
    assert asr([30.0], 50) == 100.0 and asr([70.0], 50) == 0.0
    assert miou([30.0]) == 30.0
    assert miou([0.0, 100.0, 50.0, 10.0]) == 40.0
    assert isinstance(miou([1, 2]), float) and isinstance(asr([1, 2]), float)


# ---------------------------------------------------------------------------- prompts
def _rng(dataset, sample_id, seed):
    """The documented seeding: SHA-256 of "prompts|dataset|id|seed", first 8 bytes LE."""
    d = hashlib.sha256(f"prompts|{dataset}|{sample_id}|{seed}".encode()).digest()
    return np.random.default_rng(int.from_bytes(d[:8], "little"))


def _jittered(box, n, jitter, w, h, rng):
    """n copies of XYXY ``box`` with width and height scaled by U[1-j, 1+j] (one draw of
    (sw, sh) per copy) around the centre, clipped to pixel indices 0..w-1 / 0..h-1."""
    out = []
    for _ in range(n):
        sw, sh = rng.uniform(1 - jitter, 1 + jitter, size=2)
        cx, cy = 0.5 * (box[0] + box[2]), 0.5 * (box[1] + box[3])
        half_w, half_h = 0.5 * sw * (box[2] - box[0]), 0.5 * sh * (box[3] - box[1])
        x0, x1 = min(max(cx - half_w, 0), w - 1), min(max(cx + half_w, 0), w - 1)
        y0, y1 = min(max(cy - half_h, 0), h - 1), min(max(cy + half_h, 0), h - 1)
        out.append((BOX, [x0, y0, x1, y1]))
    return out


def _reference_gt(dataset, sample_id, masks, boxes, seed, cfg):
    rng = _rng(dataset, sample_id, seed)
    h, w = masks.shape[1:]
    rows = []
    usable = [i for i, m in enumerate(masks) if m.sum() > 0][: cfg.max_masks]
    for i in usable:
        ys, xs = np.nonzero(masks[i])
        # min(n, |mask|) distinct pixels, without replacement
        for j in rng.choice(len(xs), size=min(cfg.points_per_mask, len(xs)), replace=False):
            rows.append((POINT, [xs[j], ys[j], np.nan, np.nan], i))
        box = boxes[i] if boxes is not None else mask_box(masks[i])
        rows += [
            (k, c, i) for k, c in _jittered(box, cfg.boxes_per_mask, cfg.box_jitter, w, h, rng)
        ]
    return rows


def _reference_no_gt(dataset, sample_id, hw, seed, cfg):
    rng = _rng(dataset, sample_id, seed)
    h, w = hw
    rows = []
    for i in range(cfg.max_masks):
        bw = w * rng.uniform(0.15, 0.5)
        bh = h * rng.uniform(0.15, 0.5)
        cx = rng.uniform(0.5 * bw, w - 0.5 * bw)
        cy = rng.uniform(0.5 * bh, h - 0.5 * bh)
        for _ in range(cfg.points_per_mask):
            x = cx + rng.uniform(-0.25 * bw, 0.25 * bw)
            y = cy + rng.uniform(-0.25 * bh, 0.25 * bh)
            rows.append((POINT, [x, y, np.nan, np.nan], i))
        anchor = [cx - 0.5 * bw, cy - 0.5 * bh, cx + 0.5 * bw, cy + 0.5 * bh]
        rows += [
            (k, c, i) for k, c in _jittered(anchor, cfg.boxes_per_mask, cfg.box_jitter, w, h, rng)
        ]
    return rows


def _assert_matches(p: PromptSet, rows):
    assert len(p) == len(rows)
    assert p.kinds.tolist() == [r[0] for r in rows]
    np.testing.assert_allclose(p.coords, np.array([r[1] for r in rows], float), rtol=0, atol=1e-9)
    assert p.mask_index.tolist() == [r[2] for r in rows]
    assert p.labels.tolist() == [1 if r[0] == POINT else -1 for r in rows]


def _gt_masks():
    """12 masks on a 40×60 image; mask 1 is empty (skipped), masks 3 and 11 touch the
    right/bottom edges so jittered boxes get clipped (11 is the 11th non-empty one: beyond max_masks); all masks of different sizes."""
    h, w = 40, 60
    masks = np.zeros((12, h, w), bool)
    for i in range(12):
        masks[i, 2 * i : 2 * i + 6 + i % 3, 3 * i : 3 * i + 8 + i % 4] = True
    masks[1] = False
    masks[3, 30:40, 45:60] = True
    masks[11, 28:40, 40:60] = True
    return masks


@pytest.mark.parametrize("with_boxes", [False, True])
def test_gt_protocol_equals_a_plain_reimplementation(with_boxes):
    masks = _gt_masks()
    cfg = PromptConfig()
    boxes = None
    if with_boxes:  # explicit GT boxes (as COCO gives), here wider than the masks
        boxes = np.stack([mask_box(m) if m.any() else np.zeros(4) for m in masks])
        boxes[:, 2] += 3.0
        boxes[3] = [40, 25, 70, 50]  # past the right and bottom edges: clipped to 59 / 39
        boxes[5] = [-10, -8, 10, 8]  # past the left and top edges: clipped to 0
    p = sample_prompts("sa1b", "sa_7", masks.shape[1:], masks, boxes, seed=3, config=cfg)
    rows = _reference_gt("sa1b", "sa_7", masks, boxes, 3, cfg)
    assert len(rows) == 10 * 8  # the first 10 non-empty masks, 5 points + 3 boxes each
    assert {r[2] for r in rows} == {0, *range(2, 11)}  # empty mask 1 skipped, 11 is the 11th
    _assert_matches(p, rows)
    if with_boxes:
        bx = p.coords[p.is_box]
        assert bx[:, 2].max() == 59 and bx[:, 3].max() == 39  # clipped at w - 1, h - 1
        assert bx[:, 0].min() == 0 and bx[:, 1].min() == 0


def test_gt_protocol_other_config_and_seed():
    masks = _gt_masks()
    cfg = PromptConfig(max_masks=3, points_per_mask=2, boxes_per_mask=4, box_jitter=0.3)
    p = sample_prompts("coco", "000123", masks.shape[1:], masks, None, seed=11, config=cfg)
    _assert_matches(p, _reference_gt("coco", "000123", masks, None, 11, cfg))
    assert len(p) == 3 * 6


def test_no_gt_protocol_equals_a_plain_reimplementation():
    cfg = PromptConfig(max_masks=6)
    for hw in [(50, 90), (90, 50)]:
        p = sample_prompts("samples", "astronaut", hw, None, None, seed=2, config=cfg)
        _assert_matches(p, _reference_no_gt("samples", "astronaut", hw, 2, cfg))
    # empty GT (no masks at all) falls back to anchors
    p = sample_prompts("folder", "x", (30, 40), np.zeros((0, 30, 40), bool), None, config=cfg)
    _assert_matches(p, _reference_no_gt("folder", "x", (30, 40), 0, cfg))


def test_prompt_rng_is_the_documented_hash():
    a = prompt_rng("d", "img", 5).integers(0, 2**62, size=4)
    b = _rng("d", "img", 5).integers(0, 2**62, size=4)
    np.testing.assert_array_equal(a, b)
    other = prompt_rng("d", "img", 5, salt="other").integers(0, 2**62, size=4)
    assert not np.array_equal(a, other)


def test_default_config_is_the_papers():
    cfg = PromptConfig()
    assert (cfg.max_masks, cfg.points_per_mask, cfg.boxes_per_mask) == (10, 5, 3)
    assert cfg.box_jitter == 0.1
    with pytest.raises(dataclasses.FrozenInstanceError):  # a config is an identity: immutable
        cfg.max_masks = 3


def test_mask_box_is_inclusive_pixel_indices():
    m = _rect(10, 12, 2, 5, 3, 9)  # rows 2..4, cols 3..8
    np.testing.assert_array_equal(mask_box(m), [3, 2, 8, 4])


def test_prompt_set_lists_subset_and_views():
    p = PromptSet.from_lists(points=[(1, 2), (3, 4)], boxes=[(0, 1, 5, 6)])
    assert p.kinds.tolist() == [POINT, POINT, BOX]
    assert p.labels.tolist() == [1, 1, -1] and p.mask_index.tolist() == [0, 1, 2]
    np.testing.assert_array_equal(p.coords[2], [0, 1, 5, 6])
    assert np.isnan(p.coords[:2, 2:]).all()
    assert p.is_point.tolist() == [True, True, False]
    assert p.is_box.tolist() == [False, False, True]
    idx, pts = p.points()
    assert idx.tolist() == [0, 1] and pts.tolist() == [[1, 2], [3, 4]]
    bidx, bx = p.boxes()
    assert bidx.tolist() == [2] and bx.tolist() == [[0, 1, 5, 6]]
    s = p.subset(np.array([2, 0]))
    assert s.kinds.tolist() == [BOX, POINT] and s.labels.tolist() == [-1, 1]
    assert s.mask_index.tolist() == [2, 0] and s.coords[1, :2].tolist() == [1, 2]
    empty = PromptSet.from_lists()
    assert len(empty) == 0 and empty.coords.shape == (0, 4) and empty.kinds.dtype.kind == "U"
    n = sample_prompts("d", "i", (10, 10), None, None, config=PromptConfig(max_masks=0))
    assert len(n) == 0 and n.coords.shape == (0, 4) and n.kinds.dtype.kind == "U"
