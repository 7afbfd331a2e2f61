"""Dataset plugins: samples, folder, sa1b, coco, and the shared RLE/image helpers."""

from __future__ import annotations

import json
import logging
import socket
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from uadbench.config import build_config
from uadbench.datasets import DATASETS
from uadbench.datasets.coco import COCO
from uadbench.datasets.folder import Folder
from uadbench.datasets.io import encode_mask, read_image, resize_max_side, rle_runs
from uadbench.datasets.sa1b import SA1B
from uadbench.datasets.samples import BUNDLED, DEFAULT_NAMES, Samples
from uadbench.errors import ConfigError, DataError


def make(cls, **overrides):
    """Build a dataset the way the CLI does: string overrides through build_config."""
    return cls(build_config(cls.Config, {k: str(v) for k, v in overrides.items()}))


# ----------------------------------------------------------------------------- registry
def test_registry_resolves_every_dataset_plugin():
    assert DATASETS.get("samples") is Samples
    assert DATASETS.get("folder") is Folder
    assert DATASETS.get("sa-1b") is SA1B
    assert DATASETS.get("coco") is COCO
    from uadbench.datasets.synthetic import Synthetic

    assert DATASETS.get("synthetic") is Synthetic


# ----------------------------------------------------------------------------- samples
def test_samples_default_are_rgb_uint8_within_max_side():
    ds = Samples()
    assert ds.ids() == list(DEFAULT_NAMES) and len(ds) >= 6
    for s in ds:
        assert s.image.dtype == np.uint8 and s.image.ndim == 3 and s.image.shape[2] == 3
        assert max(s.image.shape[:2]) == 256  # every default photo is larger than 256
        assert s.masks is None and not s.has_gt
        assert s.image.std() > 20  # a photograph, not a blank array
    coffee = ds.load("coffee")  # 400x600 originally: aspect ratio kept
    assert coffee.image.shape[:2] == (171, 256)


def test_samples_every_bundled_name_loads_offline(monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("samples tried to use the network")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    ds = make(Samples, names="[" + "|".join(BUNDLED) + "]", max_side=64)
    for s in ds:
        assert s.image.dtype == np.uint8 and s.image.shape[2] == 3
        assert max(s.image.shape[:2]) <= 64


def test_samples_original_size_and_grayscale_as_rgb():
    ds = make(Samples, names="[astronaut|coins]", max_side=0)
    assert ds.load("astronaut").image.shape == (512, 512, 3)
    coins = ds.load("coins").image
    assert coins.shape == (303, 384, 3)
    assert (coins[..., 0] == coins[..., 1]).all() and (coins[..., 1] == coins[..., 2]).all()


def test_samples_unknown_name_is_a_config_error_with_suggestion():
    with pytest.raises(ConfigError, match="coffee"):
        make(Samples, names="[astronaut|coffe]")
    with pytest.raises(DataError, match="rocket"):
        make(Samples, names="[astronaut]").load("rocket")


def test_resize_max_side_antialiases():
    # a 1-pixel checkerboard must average to grey, not alias into stripes or moiré
    img = ((np.indices((200, 300)).sum(0) % 2) * 255).astype(np.uint8)
    img = np.repeat(img[..., None], 3, axis=2)
    out = resize_max_side(img, 50)
    assert out.shape == (33, 50, 3)
    inner = out[3:-3, 3:-3].astype(float)
    assert abs(inner.mean() - 127.5) < 6 and inner.std() < 8
    assert resize_max_side(img, 0) is img and resize_max_side(img, 300) is img


# ----------------------------------------------------------------------------- folder
def _photo(h: int = 40, w: int = 60, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w]
    img = np.stack([xx * 4, yy * 5, (xx + yy) * 2], axis=-1) % 256
    return (img + rng.integers(0, 20, (h, w, 3))).clip(0, 255).astype(np.uint8)


def test_folder_reads_png_jpeg_gray_rgba_palette(tmp_path):
    rgb = _photo()
    Image.fromarray(rgb).save(tmp_path / "b.png")
    Image.fromarray(rgb).save(tmp_path / "a.jpg", quality=95)
    Image.fromarray(rgb[..., 0]).save(tmp_path / "c_gray.png")
    rgba = np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)])
    rgba[:5, :5, 3] = 0  # transparent corner → white
    Image.fromarray(rgba, "RGBA").save(tmp_path / "d_rgba.png")
    Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE).save(tmp_path / "e_pal.gif")
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "sub").mkdir()
    Image.fromarray(rgb).save(tmp_path / "sub" / "f.png")

    ds = make(Folder, root=tmp_path)
    assert ds.ids() == ["a.jpg", "b.png", "c_gray.png", "d_rgba.png", "e_pal.gif"]
    samples = {s.id: s for s in ds}
    for s in samples.values():
        assert s.image.dtype == np.uint8 and s.image.shape == (40, 60, 3)
        assert s.masks is None and s.source.endswith(s.id)
    assert (samples["b.png"].image == rgb).all()  # lossless
    assert (
        np.abs(samples["a.jpg"].image.astype(int) - rgb).mean() < 8
    )  # JPEG, close (a wrong image is ~80 off)
    gray = samples["c_gray.png"].image
    assert (gray == rgb[..., :1]).all()  # broadcast over the 3 channels
    rgba_img = samples["d_rgba.png"].image
    assert (rgba_img[:5, :5] == 255).all() and (rgba_img[10:, 10:] == rgb[10:, 10:]).all()
    assert np.abs(samples["e_pal.gif"].image.astype(int) - rgb).mean() < 25

    deep = make(Folder, root=tmp_path, recursive="true")
    assert "sub/f.png" in deep.ids()
    only_png = make(Folder, root=tmp_path, pattern="[*.PNG]", recursive="true")
    assert only_png.ids() == ["b.png", "c_gray.png", "d_rgba.png", "sub/f.png"]
    assert make(Folder, root=tmp_path, pattern="[sub/*]", recursive="true").ids() == ["sub/f.png"]


def test_folder_applies_exif_orientation_and_max_side(tmp_path):
    img = _photo(40, 60)
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: rotate 90° clockwise to display
    Image.fromarray(img).save(tmp_path / "rot.jpg", exif=exif, quality=95)
    s = make(Folder, root=tmp_path).load("rot.jpg")
    assert s.image.shape == (60, 40, 3)
    ref = np.rot90(img, k=-1)
    assert np.abs(s.image.astype(int) - ref).mean() < 8
    small = make(Folder, root=tmp_path, max_side=30).load("rot.jpg")
    assert small.image.shape == (30, 20, 3)


@pytest.mark.parametrize("fmt", ["jpg", "png"])
def test_folder_truncated_image_raises_data_error_naming_file(tmp_path, fmt):
    Image.fromarray(_photo(120, 160)).save(tmp_path / f"good.{fmt}")
    data = (tmp_path / f"good.{fmt}").read_bytes()
    (tmp_path / f"cut.{fmt}").write_bytes(data[: len(data) // 2])
    ds = make(Folder, root=tmp_path)
    assert ds.load(f"good.{fmt}").image.shape == (120, 160, 3)
    with pytest.raises(DataError, match=rf"cut\.{fmt}.*(truncated|unreadable)"):
        ds.load(f"cut.{fmt}")


def test_folder_garbage_file_and_unknown_id(tmp_path):
    (tmp_path / "junk.png").write_bytes(b"this is not a png at all")
    ds = make(Folder, root=tmp_path)
    with pytest.raises(DataError, match=r"junk\.png"):
        ds.load("junk.png")
    with pytest.raises(DataError, match="other.png"):
        ds.load("other.png")
    with pytest.raises(DataError, match="other.png"):
        ds.load("../other.png")


def test_folder_empty_missing_and_unset_root(tmp_path):
    with pytest.raises(DataError, match=rf"{tmp_path}.*no image files"):
        make(Folder, root=tmp_path).ids()
    with pytest.raises(DataError, match="does not exist"):
        make(Folder, root=tmp_path / "nope")
    with pytest.raises(ConfigError, match="root=DIR"):
        Folder()


# ----------------------------------------------------------------------------- RLE helper
def test_rle_runs_matches_pycocotools_on_random_masks():
    rng = np.random.default_rng(0)
    for _ in range(40):
        h, w = (int(v) for v in rng.integers(1, 120, 2))
        m = rng.random((h, w)) < rng.random()
        rle = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
        runs = rle_runs(rle["counts"].decode())
        assert runs.sum() == h * w
        flat = np.repeat(np.arange(len(runs)) % 2, runs).astype(bool)
        assert (flat.reshape(w, h).T == m).all()  # column-major runs, background first


# ----------------------------------------------------------------------------- sa1b
def _sa1b_masks(h: int = 30, w: int = 40) -> np.ndarray:
    m = np.zeros((3, h, w), bool)
    m[0, 2:12, 3:20] = True
    yy, xx = np.mgrid[:h, :w]
    m[1] = (yy - 20) ** 2 + (xx - 28) ** 2 < 7**2
    m[2, 0:h, 35:40] = True  # touches the right and both horizontal borders
    return m


def _write_sa1b(
    root: Path, stem: str, masks: np.ndarray, image: np.ndarray | None = None
) -> tuple[Path, dict]:
    n, h, w = masks.shape
    if image is None:
        image = _photo(h, w)
    Image.fromarray(image).save(root / f"{stem}.jpg", quality=95)
    anns = []
    for i, m in enumerate(masks):
        ys, xs = np.nonzero(m)
        x0, y0 = int(xs.min()), int(ys.min())
        bw, bh = int(xs.max()) - x0 + 1, int(ys.max()) - y0 + 1
        anns.append(
            {
                "id": 100 + i,
                "segmentation": encode_mask(m),
                "bbox": [x0, y0, bw, bh],
                "area": int(m.sum()),
                "predicted_iou": 0.9,
                "point_coords": [[x0 + 0.5, y0 + 0.5]],
                "crop_box": [0, 0, w, h],
                "stability_score": 0.95,
            }
        )
    record = {
        "image": {"image_id": 1, "width": w, "height": h, "file_name": f"{stem}.jpg"},
        "annotations": anns,
    }
    path = root / f"{stem}.json"
    path.write_text(json.dumps(record))
    return path, record


def test_sa1b_round_trip_exact_masks_and_xyxy_boxes(tmp_path):
    masks = _sa1b_masks()
    _write_sa1b(tmp_path, "sa_7", masks)
    ds = make(SA1B, root=tmp_path)
    assert ds.ids() == ["sa_7"]
    s = ds.load("sa_7")
    assert s.masks.dtype == bool and s.masks.shape == (3, 30, 40)
    assert (s.masks == masks).all()
    assert s.boxes.tolist() == [[3, 2, 20, 12], [22, 14, 35, 27], [35, 0, 40, 30]]
    assert s.image.shape == (30, 40, 3) and s.source.endswith("sa_7.jpg")
    assert (make(SA1B, root=tmp_path, max_masks=2).load("sa_7").masks == masks[:2]).all()


def test_sa1b_ids_sort_numerically(tmp_path):
    one = _sa1b_masks()[:1]
    for stem in ["sa_10", "sa_2", "zeta", "sa_1", "sa_100", "alpha"]:
        _write_sa1b(tmp_path, stem, one)
    assert make(SA1B, root=tmp_path).ids() == ["sa_1", "sa_2", "sa_10", "sa_100", "alpha", "zeta"]


@pytest.mark.parametrize(
    "counts, why",
    [("garbage{!", "broken RLE"), ("52200", "cover"), ("", "cover")],
)
def test_sa1b_broken_rle_names_the_json(tmp_path, counts, why):
    path, rec = _write_sa1b(tmp_path, "sa_1", _sa1b_masks())
    rec["annotations"][1]["segmentation"]["counts"] = counts
    path.write_text(json.dumps(rec))
    with pytest.raises(DataError, match=rf"sa_1\.json.*annotation 1.*{why}"):
        make(SA1B, root=tmp_path).load("sa_1")


def test_sa1b_truncated_counts_string_is_caught(tmp_path):
    path, rec = _write_sa1b(tmp_path, "sa_1", _sa1b_masks())
    counts = rec["annotations"][0]["segmentation"]["counts"]
    rec["annotations"][0]["segmentation"]["counts"] = counts[:-2]
    path.write_text(json.dumps(rec))
    with pytest.raises(DataError, match=r"sa_1\.json"):
        make(SA1B, root=tmp_path).load("sa_1")


def test_sa1b_rle_size_mismatch(tmp_path):
    path, rec = _write_sa1b(tmp_path, "sa_1", _sa1b_masks())
    rec["annotations"][2]["segmentation"] = encode_mask(np.ones((40, 30), bool))
    path.write_text(json.dumps(rec))
    with pytest.raises(DataError, match=r"sa_1\.json.*RLE size \[40, 30\].*\[30, 40\]"):
        make(SA1B, root=tmp_path).load("sa_1")


def test_sa1b_bbox_outside_image(tmp_path):
    path, rec = _write_sa1b(tmp_path, "sa_1", _sa1b_masks())
    rec["annotations"][0]["bbox"] = [30, 5, 20, 10]  # x1 = 50 > width 40
    path.write_text(json.dumps(rec))
    with pytest.raises(DataError, match=r"sa_1\.json.*outside the 40x30 image"):
        make(SA1B, root=tmp_path).load("sa_1")


def test_sa1b_unparsable_json_and_image_size_mismatch(tmp_path):
    path, rec = _write_sa1b(tmp_path, "sa_1", _sa1b_masks())
    path.write_text(json.dumps(rec)[:-10])
    with pytest.raises(DataError, match=r"sa_1\.json.*not valid JSON"):
        make(SA1B, root=tmp_path).load("sa_1")
    rec["image"]["width"] = 41
    path.write_text(json.dumps(rec))
    with pytest.raises(DataError, match=r"sa_1\.jpg.*40x30.*41x30"):
        make(SA1B, root=tmp_path).load("sa_1")


def test_sa1b_image_without_json(tmp_path, caplog):
    _write_sa1b(tmp_path, "sa_1", _sa1b_masks())
    Image.fromarray(_photo(30, 40)).save(tmp_path / "sa_2.jpg")
    with caplog.at_level(logging.WARNING, logger="uadbench.datasets.sa1b"):
        ds = make(SA1B, root=tmp_path)
        assert ds.ids() == ["sa_1"]
    assert "sa_2.jpg" in caplog.text and "strict=true" in caplog.text
    with pytest.raises(DataError, match=r"sa_2\.jpg"):
        ds.load("sa_2")
    with pytest.raises(DataError, match=r"sa_2\.jpg.*no annotation file sa_2\.json"):
        make(SA1B, root=tmp_path, strict="true").ids()


def test_sa1b_empty_or_unannotated_dir(tmp_path):
    with pytest.raises(DataError, match=rf"{tmp_path}.*expected sa_<n>\.jpg"):
        make(SA1B, root=tmp_path).ids()
    Image.fromarray(_photo()).save(tmp_path / "x.jpg")
    with pytest.raises(DataError, match="folder:root="):
        make(SA1B, root=tmp_path).ids()
    with pytest.raises(ConfigError, match="root=DIR"):
        SA1B()


# ----------------------------------------------------------------------------- coco
def _write_coco(root: Path) -> tuple[Path, Path, np.ndarray]:
    images = root / "images"
    images.mkdir()
    h, w = 32, 48
    for name in ("a.png", "b.png", "c.png"):
        Image.fromarray(_photo(h, w)).save(images / name)
    rle_mask = np.zeros((h, w), bool)
    rle_mask[20:30, 30:45] = True
    rle_mask[22:25, 33:36] = False  # a hole: something a polygon cannot express
    crowd = np.zeros((h, w), bool)
    crowd[0:5, 0:10] = True
    data = {
        "images": [
            {"id": 10, "file_name": "a.png", "height": h, "width": w},
            {"id": 2, "file_name": "b.png", "height": h, "width": w},
            {"id": 5, "file_name": "c.png", "height": h, "width": w},  # no annotations
        ],
        "annotations": [
            {
                "id": 1,
                "image_id": 10,
                "category_id": 1,
                "iscrowd": 0,
                "segmentation": [[4.0, 4.0, 20.0, 4.0, 20.0, 16.0, 4.0, 16.0]],
                "bbox": [4.0, 4.0, 16.0, 12.0],
                "area": 192.0,
            },
            {
                "id": 2,
                "image_id": 10,
                "category_id": 1,
                "iscrowd": 0,
                "segmentation": encode_mask(rle_mask),
                "bbox": [30.0, 20.0, 15.0, 10.0],
                "area": float(rle_mask.sum()),
            },
            {
                "id": 3,
                "image_id": 10,
                "category_id": 1,
                "iscrowd": 1,
                "segmentation": encode_mask(crowd),
                "bbox": [0.0, 0.0, 10.0, 5.0],
                "area": 50.0,
            },
            {
                "id": 4,
                "image_id": 2,
                "category_id": 1,
                "iscrowd": 0,
                "segmentation": [[10.0, 10.0, 30.0, 10.0, 20.0, 25.0]],
                "bbox": [10.0, 10.0, 20.0, 15.0],
                "area": 150.0,
            },
        ],
        "categories": [{"id": 1, "name": "thing"}],
    }
    ann = root / "instances.json"
    ann.write_text(json.dumps(data))
    return ann, images, rle_mask


def test_coco_polygon_and_rle_masks(tmp_path, capsys):
    ann, images, rle_mask = _write_coco(tmp_path)
    ds = make(COCO, annotations=ann, images=images)
    assert ds.ids() == ["2", "10"]  # numeric order; image 5 has no annotation
    s = ds.load("10")
    assert capsys.readouterr().out == ""  # pycocotools' prints are swallowed
    assert s.masks.shape == (2, 32, 48) and s.masks.dtype == bool  # the crowd one is left out
    poly = s.masks[0]
    assert poly[5:15, 5:19].all()  # the rectangle's inside
    assert not poly[:3].any() and not poly[18:].any() and not poly[:, :3].any()
    assert not poly[:, 22:].any()
    assert 150 <= poly.sum() <= 240  # 16x12 = 192 up to the border convention
    assert (s.masks[1] == rle_mask).all()
    assert s.boxes.tolist() == [[4, 4, 20, 16], [30, 20, 45, 30]]
    assert s.source.endswith("a.png")

    tri = ds.load("2").masks[0]
    assert tri[12, 20] and tri[20, 20] and not tri[20, 12] and not tri[20, 28] and not tri[9, 20]

    crowd = make(COCO, annotations=ann, images=images, iscrowd="true").load("10")
    assert len(crowd.masks) == 3 and crowd.masks[2][:5, :10].all()
    assert len(make(COCO, annotations=ann, images=images, max_masks=1).load("10").masks) == 1


def test_coco_bad_annotations(tmp_path):
    ann, images, _ = _write_coco(tmp_path)
    data = json.loads(ann.read_text())
    data["annotations"][1]["segmentation"]["counts"] = "garbage{!"
    ann.write_text(json.dumps(data))
    ds = make(COCO, annotations=ann, images=images)
    ds.load("2")  # the other image is fine
    with pytest.raises(DataError, match=r"instances\.json.*annotation 2.*broken RLE"):
        ds.load("10")

    data["annotations"][1]["segmentation"] = encode_mask(np.zeros((10, 10), bool))
    ann.write_text(json.dumps(data))
    with pytest.raises(DataError, match=r"instances\.json.*RLE size"):
        make(COCO, annotations=ann, images=images).load("10")

    data["annotations"][1]["segmentation"] = [[1.0, 2.0, 3.0, 4.0]]  # would read as a bbox
    ann.write_text(json.dumps(data))
    with pytest.raises(DataError, match=r"instances\.json.*polygon"):
        make(COCO, annotations=ann, images=images).load("10")

    ann.write_text("{not json")
    with pytest.raises(DataError, match=r"instances\.json.*not valid JSON"):
        make(COCO, annotations=ann, images=images).ids()
    with pytest.raises(ConfigError, match="annotations=FILE"):
        COCO()


def test_read_image_prefers_raw_pixels_when_annotation_size_matches(tmp_path):
    img = _photo(40, 60)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(img).save(tmp_path / "x.jpg", exif=exif, quality=95)
    assert read_image(tmp_path / "x.jpg", expected_hw=(40, 60)).shape == (40, 60, 3)
    assert read_image(tmp_path / "x.jpg", expected_hw=(60, 40)).shape == (60, 40, 3)
    with pytest.raises(DataError, match="50x50"):
        read_image(tmp_path / "x.jpg", expected_hw=(50, 50))
