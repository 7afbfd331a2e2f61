"""``coco``: a COCO instances annotation file plus its image directory.

Example::

    uadbench run --dataset coco:annotations=coco/annotations/instances_val2017.json,images=coco/val2017

Ids are the image ids as strings, in numeric order. Masks come in the order the
annotations appear in the file (polygons and RLE both decoded with pycocotools'
``annToMask``), boxes converted from ``[x, y, w, h]`` to XYXY pixels.

Crowd annotations (``iscrowd=1``) are left out unless ``iscrowd=true``. Images with no
usable annotation (none at all, or only crowd ones that are left out) are not samples:
they are skipped, and the count is logged at INFO level. Annotation sizes refer to the
stored pixels: EXIF orientation is applied only when that is what makes the image size
match its ``width``/``height`` record.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np

from ..config import run_field
from ..errors import ConfigError, DataError
from .base import Dataset, Sample
from .io import check_rle, quiet_pycocotools, read_image, read_json, xywh_to_xyxy

log = logging.getLogger(__name__)


def _id_key(v: Any) -> tuple[int, int, str]:
    try:
        return (0, int(v), str(v))
    except (TypeError, ValueError):
        return (1, 0, str(v))


class COCO(Dataset):
    """COCO-format instance annotations.

    Config:
        annotations: the instances JSON file (required).
        images: the directory holding the images' ``file_name`` paths (required).
        max_masks: keep only the first N usable annotations of each image (0 = all).
        iscrowd: also use crowd annotations (off by default: they cover groups of objects).
    """

    name = "coco"
    has_masks = True

    @dataclasses.dataclass(frozen=True)
    class Config:
        annotations: str = run_field("")
        images: str = run_field("")
        max_masks: int = 0
        iscrowd: bool = False

    def __init__(self, config: Config | None = None):
        super().__init__(config)
        cfg = self.config
        if not cfg.annotations or not cfg.images:
            raise ConfigError(
                "coco needs annotations=FILE and images=DIR: e.g. --dataset coco:annotations="
                "annotations/instances_val2017.json,images=val2017"
            )
        if cfg.max_masks < 0:
            raise ConfigError(f"coco: max_masks={cfg.max_masks} must be >= 0 (0 = all)")
        self.ann_file = Path(cfg.annotations).expanduser()
        self.image_dir = Path(cfg.images).expanduser()
        if not self.ann_file.is_file():
            raise DataError(
                f"{self.ann_file}: COCO annotation file not found; pass annotations=FILE"
            )
        if not self.image_dir.is_dir():
            raise DataError(f"{self.image_dir}: COCO image directory not found; pass images=DIR")
        self._coco: Any = None
        self._ids: list[str] = []
        self._by_str: dict[str, Any] = {}

    # ------------------------------------------------------------------ index
    def _index(self) -> Any:
        if self._coco is not None:
            return self._coco
        from pycocotools.coco import COCO as _PyCOCO

        where = str(self.ann_file)
        data = read_json(self.ann_file)
        if not isinstance(data, dict) or not isinstance(data.get("images"), list):
            raise DataError(f"{where}: not a COCO instances file (no 'images' list)")
        if not isinstance(data.get("annotations"), list):
            raise DataError(f"{where}: not a COCO instances file (no 'annotations' list)")
        for i, img in enumerate(data["images"]):
            if not isinstance(img, dict) or not {"id", "file_name", "height", "width"} <= set(img):
                raise DataError(f"{where}: images[{i}] lacks id, file_name, height or width")
        for i, ann in enumerate(data["annotations"]):
            if not isinstance(ann, dict) or "image_id" not in ann or "segmentation" not in ann:
                raise DataError(f"{where}: annotations[{i}] lacks image_id or segmentation")
        coco = _PyCOCO()
        coco.dataset = data
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
            coco.createIndex()
        known = {img["id"] for img in data["images"]}
        orphan = next((a for a in data["annotations"] if a["image_id"] not in known), None)
        if orphan is not None:
            raise DataError(
                f"{where}: annotation {orphan.get('id', '?')} refers to image_id "
                f"{orphan['image_id']} which is not in 'images'"
            )
        usable_ids, skipped = [], 0
        for img_id in sorted(coco.imgs, key=_id_key):
            if any(self._usable(a) for a in coco.imgToAnns.get(img_id, [])):
                usable_ids.append(img_id)
            else:
                skipped += 1
        if skipped:
            log.info("%s: %d image(s) without usable annotations are not samples", where, skipped)
        if not usable_ids:
            raise DataError(
                f"{where}: no image has a usable annotation (crowd ones need iscrowd=true)"
            )
        self._by_str = {str(i): i for i in usable_ids}
        self._ids = [str(i) for i in usable_ids]
        self._coco = coco
        return coco

    def _usable(self, ann: dict[str, Any]) -> bool:
        if ann.get("iscrowd", 0) and not self.config.iscrowd:
            return False
        return bool(ann.get("segmentation"))

    def ids(self) -> list[str]:
        self._index()
        return list(self._ids)

    # ------------------------------------------------------------------ load
    def _check_segmentation(self, segm: Any, hw: tuple[int, int], where: str) -> None:
        if isinstance(segm, list):
            for poly in segm:
                ok = isinstance(poly, list) and len(poly) >= 6 and len(poly) % 2 == 0
                ok = ok and all(
                    isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                    for v in poly
                )
                if not ok:
                    raise DataError(
                        f"{where}: polygon must be a flat list of >= 3 (x, y) pairs of numbers"
                    )
        else:
            check_rle(segm, hw, where)

    def load(self, sample_id: str) -> Sample:
        coco = self._index()
        if sample_id not in self._by_str:
            raise DataError(f"{self.ann_file}: no usable image with id {sample_id!r}")
        img_id = self._by_str[sample_id]
        info = coco.imgs[img_id]
        where = str(self.ann_file)
        try:
            h, w = int(info["height"]), int(info["width"])
        except (TypeError, ValueError):
            raise DataError(f"{where}: image {img_id} has non-integer height/width") from None
        anns = [a for a in coco.imgToAnns[img_id] if self._usable(a)]
        if self.config.max_masks > 0:
            anns = anns[: self.config.max_masks]
        image_path = self.image_dir / str(info["file_name"])
        image = read_image(image_path, expected_hw=(h, w))
        masks = np.zeros((len(anns), h, w), dtype=bool)
        boxes = np.zeros((len(anns), 4), dtype=np.float64)
        for i, ann in enumerate(anns):
            tag = f"{where} (image {img_id}, annotation {ann.get('id', '?')})"
            self._check_segmentation(ann["segmentation"], (h, w), tag)
            if isinstance(ann["segmentation"], dict) and isinstance(
                ann["segmentation"]["counts"], str
            ):
                ann = {**ann, "segmentation": check_rle(ann["segmentation"], (h, w), tag)}
            try:
                with quiet_pycocotools():
                    m = coco.annToMask(ann)
            except Exception as exc:  # pycocotools raises bare Exception on bad RLE
                raise DataError(f"{tag}: pycocotools cannot decode the mask ({exc})") from None
            if m.shape != (h, w):
                raise DataError(f"{tag}: mask decoded to shape {m.shape}, expected {(h, w)}")
            masks[i] = m.astype(bool)
            if "bbox" in ann:
                boxes[i] = xywh_to_xyxy(ann["bbox"], tag)
            else:
                ys, xs = np.nonzero(masks[i])
                if len(xs):
                    boxes[i] = [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
        sample = Sample(id=sample_id, image=image, masks=masks, boxes=boxes, source=where)
        sample.validate()  # boxes inside the image: the error names the annotation file
        sample.source = str(image_path)
        return sample

    def describe(self) -> str:
        return f"coco ({self.ann_file.name}, {self.image_dir})"
