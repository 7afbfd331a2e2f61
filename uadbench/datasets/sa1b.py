"""``sa1b``: the SA-1B layout — a directory of ``sa_<n>.jpg`` each with ``sa_<n>.json``.

Each JSON file holds::

    {"image": {"image_id": int, "width": W, "height": H, "file_name": "sa_<n>.jpg"},
     "annotations": [{"id": int, "segmentation": {"size": [H, W], "counts": "<COCO RLE>"},
                      "bbox": [x, y, w, h], "area": int, ...}, ...]}

Example (the paper's data: the first tar ``sa_000000`` extracted into one directory)::

    uadbench run --dataset sa1b:root=data/sa_000000

Ids are the file stems, ``sa_<n>`` in numeric order (``sa_2`` before ``sa_10``), any
other names after them in lexicographic order. Masks come in annotation order (the
first ``max_masks`` of them; 0 keeps all), boxes are converted to XYXY pixels.

An image without its JSON is skipped with a logged warning, unless ``strict=true``,
which makes it a :class:`DataError` (use it when every image must be evaluated against
its masks, as in the paper's protocol). Asking for such an id with :meth:`SA1B.load`
is always an error. A JSON without an image is ignored.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import numpy as np

from ..config import run_field
from ..errors import ConfigError, DataError
from .base import Dataset, Sample
from .io import decode_rle, read_image, read_json, sa_sort_key, xywh_to_xyxy

log = logging.getLogger(__name__)

SA1B_IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")


def parse_sa1b_json(data: Any, where: str) -> tuple[tuple[int, int], list[dict[str, Any]]]:
    """Check the SA-1B schema; return ((H, W) from ``image``, the annotation list)."""
    if not isinstance(data, dict) or not isinstance(data.get("image"), dict):
        raise DataError(f"{where}: not an SA-1B annotation file (no 'image' record)")
    info = data["image"]
    try:
        h, w = int(info["height"]), int(info["width"])
    except (KeyError, TypeError, ValueError):
        raise DataError(f"{where}: 'image' record lacks integer 'height' and 'width'") from None
    if h <= 0 or w <= 0:
        raise DataError(f"{where}: image size {w}x{h} is empty")
    anns = data.get("annotations")
    if not isinstance(anns, list):
        raise DataError(f"{where}: 'annotations' must be a list")
    for i, ann in enumerate(anns):
        if not isinstance(ann, dict) or "segmentation" not in ann or "bbox" not in ann:
            raise DataError(f"{where}: annotation {i} lacks 'segmentation' or 'bbox'")
    return (h, w), anns


def load_sa1b_pair(image_path: Path, json_path: Path, sample_id: str, max_masks: int = 0) -> Sample:
    """Load one SA-1B image with its annotation file into a validated :class:`Sample`.

    ``masks`` bool (N, H, W), ``boxes`` float64 (N, 4) XYXY; N = the first ``max_masks``
    annotations (all when 0). Errors name ``json_path`` (or the image for image errors).
    """
    where = str(json_path)
    (h, w), anns = parse_sa1b_json(read_json(json_path), where)
    if max_masks > 0:
        anns = anns[:max_masks]
    image = read_image(image_path, expected_hw=(h, w))
    masks = np.zeros((len(anns), h, w), dtype=bool)
    boxes = np.zeros((len(anns), 4), dtype=np.float64)
    for i, ann in enumerate(anns):
        tag = f"{where} (annotation {i}, id {ann.get('id', '?')})"
        masks[i] = decode_rle(ann["segmentation"], (h, w), tag)
        boxes[i] = xywh_to_xyxy(ann["bbox"], tag)
    sample = Sample(id=sample_id, image=image, masks=masks, boxes=boxes, source=where)
    sample.validate()  # boxes inside the image: the error names the JSON
    sample.source = str(image_path)
    return sample


class SA1B(Dataset):
    """SA-1B-format directory: ``sa_<n>.jpg`` + ``sa_<n>.json`` (COCO RLE masks).

    Config:
        root: the directory (required; flat, as the SA-1B tars extract).
        max_masks: keep only the first N annotations of each image (0 = all). Prompt
            sampling uses the first 10 anyway; a lower value saves memory (an SA-1B
            image has ~100 masks of 1500x2250 bool = 3.4 MB each).
        strict: an image without its JSON is an error instead of a skipped sample.
    """

    name = "sa1b"
    has_masks = True

    @dataclasses.dataclass(frozen=True)
    class Config:
        root: str = run_field("")
        max_masks: int = 0
        strict: bool = False

    def __init__(self, config: Config | None = None):
        super().__init__(config)
        cfg = self.config
        if not cfg.root:
            raise ConfigError(
                f"{self.name} needs root=DIR, the directory of sa_<n>.jpg + sa_<n>.json files: "
                f"e.g. --dataset {self.name}:root=data/sa_000000"
            )
        if cfg.max_masks < 0:
            raise ConfigError(f"{self.name}: max_masks={cfg.max_masks} must be >= 0 (0 = all)")
        self.root = Path(cfg.root).expanduser()
        if not self.root.is_dir():
            what = "is not a directory" if self.root.exists() else "does not exist"
            raise DataError(
                f"{self.root}: SA-1B directory {what}; pass root=DIR holding sa_<n>.jpg + sa_<n>.json"
            )
        self._ids: list[str] | None = None
        self._images: dict[str, Path] = {}
        self._jsons: dict[str, Path] = {}

    def _scan(self) -> None:
        images: dict[str, Path] = {}
        jsons: dict[str, Path] = {}
        for p in sorted(self.root.iterdir()):
            if p.name.startswith(".") or not p.is_file():
                continue
            suf = p.suffix.lower()
            if suf in SA1B_IMAGE_EXTENSIONS:
                if p.stem in images:
                    raise DataError(
                        f"{p}: two images share the id {p.stem!r} ({images[p.stem].name}); "
                        "keep one of them"
                    )
                images[p.stem] = p
            elif suf == ".json":
                jsons[p.stem] = p
        if not images:
            raise DataError(
                f"{self.root}: no images found; expected sa_<n>.jpg files, each with its sa_<n>.json"
            )
        missing = sorted((s for s in images if s not in jsons), key=sa_sort_key)
        if missing and len(missing) == len(images):
            raise DataError(
                f"{self.root}: none of the {len(images)} images has its .json annotation "
                f"(e.g. {images[missing[0]].name} without {missing[0]}.json); for images without "
                f"masks use --dataset folder:root={self.root}"
            )
        if missing and self.config.strict:
            raise DataError(
                f"{images[missing[0]]}: no annotation file {missing[0]}.json beside it "
                f"({len(missing)} images lack one); add them or drop strict=true to skip them"
            )
        if missing:
            log.warning(
                "%s: skipping %d image(s) without a .json annotation (e.g. %s); "
                "set strict=true to make this an error",
                self.root,
                len(missing),
                images[missing[0]].name,
            )
        self._images, self._jsons = images, jsons
        self._ids = sorted((s for s in images if s in jsons), key=sa_sort_key)

    def ids(self) -> list[str]:
        if self._ids is None:
            self._scan()
        assert self._ids is not None
        return list(self._ids)

    def load(self, sample_id: str) -> Sample:
        self.ids()
        image_path = self._images.get(sample_id)
        if image_path is None:
            raise DataError(f"{self.root}: no image {sample_id!r} in this {self.name} dataset")
        json_path = self._jsons.get(sample_id)
        if json_path is None:
            raise DataError(f"{image_path}: no annotation file {sample_id}.json beside it")
        return load_sa1b_pair(image_path, json_path, sample_id, self.config.max_masks)

    def describe(self) -> str:
        return f"{self.name} ({self.root})"
