from __future__ import annotations

import numpy as np
import pytest

from uadbench.eval.metrics import asr, iou, miou
from uadbench.eval.prompts import PromptConfig, mask_box, sample_prompts


def _masks(n=12, h=60, w=80):
    m = np.zeros((n, h, w), bool)
    for i in range(n):
        m[i, 2 + i * 4 : 6 + i * 4, 5 + i : 30 + i] = True
    return m


def test_paper_protocol_counts_and_membership():
    masks = _masks()
    boxes = np.stack([mask_box(m) for m in masks])
    p = sample_prompts("sa1b", "sa_1", masks.shape[1:], masks, boxes, seed=0)
    # first 10 masks, 5 points + 3 boxes each
    assert len(p) == 80
    assert set(p.mask_index.tolist()) == set(range(10))
    idx, pts = p.points()
    assert len(idx) == 50
    for i, (x, y) in zip(idx, pts):
        assert masks[p.mask_index[i], int(y), int(x)]  # every point lies in its mask
    bidx, bx = p.boxes()
    assert len(bidx) == 30
    for i, b in zip(bidx, bx):
        g = boxes[p.mask_index[i]]
        gw, gh = g[2] - g[0], g[3] - g[1]
        assert (
            0.9 * gw - 1e-6 <= b[2] - b[0] <= 1.1 * gw + 1e-6
            or b[0] == 0
            or b[2] == masks.shape[2] - 1
        )
        assert abs((b[0] + b[2]) / 2 - (g[0] + g[2]) / 2) <= 0.05 * gw + 1e-6 or b[0] == 0
        assert 0.9 * gh - 1e-6 <= b[3] - b[1] <= 1.1 * gh + 1e-6


def test_prompts_deterministic_and_seeded_per_image():
    masks = _masks(3)
    a = sample_prompts("d", "img1", masks.shape[1:], masks, None, seed=0)
    b = sample_prompts("d", "img1", masks.shape[1:], masks, None, seed=0)
    c = sample_prompts("d", "img2", masks.shape[1:], masks, None, seed=0)
    d = sample_prompts("d", "img1", masks.shape[1:], masks, None, seed=1)
    np.testing.assert_array_equal(a.coords, b.coords)
    assert not np.array_equal(a.coords, c.coords)
    assert not np.array_equal(a.coords, d.coords)


def test_no_gt_protocol_inside_image():
    p = sample_prompts(
        "samples", "astronaut", (100, 200), None, None, seed=0, config=PromptConfig(max_masks=4)
    )
    assert len(p) == 4 * 8
    _, pts = p.points()
    assert (pts[:, 0] >= 0).all() and (pts[:, 0] < 200).all() and (pts[:, 1] < 100).all()
    _, bx = p.boxes()
    assert (bx[:, 2] > bx[:, 0]).all() and (bx[:, 2] <= 199).all() and (bx[:, 3] <= 99).all()


def test_iou_values():
    a = np.zeros((4, 4), bool)
    b = np.zeros((4, 4), bool)
    a[:2] = True  # 8 px
    b[1:3] = True  # 8 px, overlap 4
    assert iou(a, b) == pytest.approx(100 * 4 / 12)
    assert iou(a, a) == 100
    assert iou(np.zeros((4, 4), bool), np.zeros((4, 4), bool)) == 100  # both empty agree
    assert iou(a, np.zeros((4, 4), bool)) == 0
    batch = iou(np.stack([a, a]), np.stack([a, b]))
    np.testing.assert_allclose(batch, [100, 100 / 3])


def test_asr_threshold_is_inclusive_and_miou_mean():
    ious = [0, 10, 10.0001, 50, 50.0001, 100]
    assert asr(ious, 50) == pytest.approx(100 * 4 / 6)  # IoU exactly 50 counts as destroyed
    assert asr(ious, 10) == pytest.approx(100 * 2 / 6)
    assert miou(ious) == pytest.approx(np.mean(ious))


def test_points_are_distinct_pixels_without_replacement():
    """min(5, |mask|) distinct pixels per mask: a 3-pixel mask gives its 3 pixels (drawing
    with replacement would repeat one in most draws, or give 5 points), a 6-pixel mask 5
    distinct ones, over many seeds."""
    masks = np.zeros((2, 20, 20), bool)
    masks[0, 4, 5:8] = True  # 3 pixels
    masks[1, 10:12, 10:13] = True  # 6 pixels
    for seed in range(30):
        p = sample_prompts("d", "img", (20, 20), masks, None, seed=seed)
        for mi, n in ((0, 3), (1, 5)):
            pts = p.coords[(p.mask_index == mi) & p.is_point, :2]
            assert len(pts) == n
            assert len({tuple(q) for q in pts}) == n
            assert all(masks[mi, int(y), int(x)] for x, y in pts)
