"""The synthetic SA-1B-format generator and the ``synthetic`` dataset."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from uadbench.config import build_config
from uadbench.datasets import synthetic as syn
from uadbench.datasets.io import rle_runs
from uadbench.datasets.sa1b import SA1B
from uadbench.datasets.synthetic import Synthetic, generate, render_scene
from uadbench.errors import ConfigError


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("syn")
    generate(out, 8, seed=3, size=(96, 128))
    return out


def _files(d: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(d.iterdir())}


def test_same_seed_identical_bytes_other_seed_or_split_differs(tmp_path, generated):
    a = generate(tmp_path / "a", 8, seed=3, size=(96, 128))
    assert [p.name for p in a] == [f"sa_{i}.jpg" for i in range(1, 9)]
    assert _files(tmp_path / "a") == _files(generated)
    generate(tmp_path / "b", 8, seed=4, size=(96, 128))
    generate(tmp_path / "c", 8, seed=3, size=(96, 128), split="train")
    for other in ("b", "c"):
        files = _files(tmp_path / other)
        assert all(files[f"sa_{i}.jpg"] != _files(generated)[f"sa_{i}.jpg"] for i in range(1, 9))
    # image i does not depend on how many images are generated
    generate(tmp_path / "d", 3, seed=3, size=(96, 128))
    assert _files(tmp_path / "d") == {
        k: v
        for k, v in _files(generated).items()
        if k in {f"sa_{i}.{e}" for i in (1, 2, 3) for e in ("jpg", "json")}
    }


def test_json_follows_the_sa1b_schema(generated):
    rec = json.loads((generated / "sa_5.json").read_text())
    assert rec["image"] == {"image_id": 5, "width": 128, "height": 96, "file_name": "sa_5.jpg"}
    assert rec["annotations"]
    for ann in rec["annotations"]:
        assert {"id", "segmentation", "bbox", "area"} <= set(ann)
        seg = ann["segmentation"]
        assert seg["size"] == [96, 128] and isinstance(seg["counts"], str)
        assert int(rle_runs(seg["counts"]).sum()) == 96 * 128
        assert len(ann["bbox"]) == 4 and ann["area"] > 0
    assert len({a["id"] for a in rec["annotations"]}) == len(rec["annotations"])


def test_masks_visible_disjoint_nonempty_and_boxes_tight(generated):
    ds = SA1B(SA1B.Config(root=str(generated), strict=True))
    assert ds.ids() == [f"sa_{i}" for i in range(1, 9)]
    counts = []
    for s in ds:
        assert s.image.shape == (96, 128, 3) and s.image.dtype == np.uint8
        m = s.masks
        counts.append(len(m))
        assert 1 <= len(m) <= 8
        assert (m.sum(axis=0) <= 1).all()  # each pixel in at most one visible mask
        areas = m.sum(axis=(1, 2))
        assert (areas >= 0.01 * 96 * 128).all()  # no sliver survives
        for mask, box in zip(m, s.boxes):
            ys, xs = np.nonzero(mask)
            assert box.tolist() == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
        # objects differ from what surrounds them: the image is not blank where masks are
        assert s.image.std() > 10
    assert np.mean(counts) >= 3  # several objects per scene


def test_render_scene_occludes_and_varies():
    rng = np.random.default_rng(0)
    occluded, n_masks, coverage = 0, [], []
    for _ in range(12):
        image, masks = render_scene(rng, (128, 128))
        n_masks.append(len(masks))
        coverage.append(np.any(masks, axis=0).mean())
        stacked = np.stack(masks)
        assert (stacked.sum(0) <= 1).all() and stacked.any(axis=(1, 2)).all()
        # a mask that is not the tight region of a simple convex shape: occlusion or holes
        from scipy import ndimage

        for m in masks:
            filled = ndimage.binary_fill_holes(m)
            if filled.sum() > m.sum() or ndimage.label(m)[1] > 1:
                occluded += 1
    assert occluded >= 3  # holes (rings) and occlusion splits happen
    assert min(n_masks) >= 1 and max(n_masks) >= 5
    assert 0.1 < np.mean(coverage) < 0.9


def test_synthetic_dataset_generates_once_and_reads_through_sa1b(tmp_path, monkeypatch):
    cfg = build_config(
        Synthetic.Config, {"root": str(tmp_path), "n": "4", "size": "64", "seed": "7"}
    )
    ds = Synthetic(cfg)
    assert ds.ids() == ["sa_1", "sa_2", "sa_3", "sa_4"]
    s = ds.load("sa_2")
    assert s.image.shape == (64, 64, 3) and s.masks.dtype == bool and s.has_gt
    assert ds.directory.parent == tmp_path
    assert [p.name for p in tmp_path.iterdir()] == [ds.directory.name]  # no temp dir left
    assert isinstance(ds._inner, SA1B)  # the real loader, not a shortcut

    def boom(*a, **k):
        raise AssertionError("regenerated a cached dataset")

    monkeypatch.setattr(syn, "generate", boom)
    again = Synthetic(cfg)
    assert (again.load("sa_2").masks == s.masks).all()

    other = Synthetic(
        build_config(
            Synthetic.Config,
            {"root": str(tmp_path), "n": "4", "size": "64", "seed": "7", "split": "train"},
        )
    )
    assert other.directory != ds.directory


def test_synthetic_default_cache_and_bad_options(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    ds = Synthetic(Synthetic.Config(n=2, size=48))
    assert ds.directory.is_relative_to(tmp_path / "uadbench" / "synthetic")
    assert len(ds) == 2
    with pytest.raises(ConfigError, match="split"):
        Synthetic(Synthetic.Config(split="dev"))
    with pytest.raises(ConfigError, match="n="):
        Synthetic(Synthetic.Config(n=0))
