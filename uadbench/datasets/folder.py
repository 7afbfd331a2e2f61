"""``folder``: any directory of images, without ground truth.

Example::

    uadbench run --dataset folder:root=photos
    uadbench run --dataset folder:root=photos,pattern=[*.jpg|*.png],recursive=true,max_side=1024

Ids are the images' paths relative to ``root`` (POSIX separators), sorted. Hidden files
and directories (name starting with ``.``) are skipped. Every image is converted to RGB
(grayscale, palette, CMYK, 16-bit; alpha over white) and its EXIF orientation applied.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import os
from pathlib import Path

from ..config import run_field
from ..errors import ConfigError, DataError
from .base import Dataset, Sample
from .io import IMAGE_EXTENSIONS, read_image, resize_max_side


class Folder(Dataset):
    """A directory of image files; no ground-truth masks.

    Config:
        root: the directory (required).
        pattern: shell wildcards matched (case-insensitively) against each file's name or
            its path relative to ``root`` (``sub/*.png``); empty means any file with a
            common image extension (:data:`IMAGE_EXTENSIONS`).
        recursive: also scan subdirectories.
        max_side: downscale (antialiased) so the longest side is at most this; 0 keeps
            the original size.
    """

    name = "folder"
    has_masks = False

    @dataclasses.dataclass(frozen=True)
    class Config:
        root: str = run_field("")
        pattern: tuple[str, ...] = ()
        recursive: bool = False
        max_side: int = 0

    def __init__(self, config: Config | None = None):
        super().__init__(config)
        cfg = self.config
        if not cfg.root:
            raise ConfigError(
                "folder needs root=DIR, the directory of images: e.g. --dataset folder:root=photos"
            )
        if cfg.max_side < 0:
            raise ConfigError(f"folder: max_side={cfg.max_side} must be >= 0 (0 = original)")
        self.root = Path(cfg.root).expanduser()
        if not self.root.is_dir():
            what = "is not a directory" if self.root.exists() else "does not exist"
            raise DataError(f"{self.root}: image folder {what}; pass root=DIR of .jpg/.png images")
        self._ids: list[str] | None = None
        self._idset: frozenset[str] = frozenset()

    def _matches(self, rel: str) -> bool:
        low = rel.lower()
        name = low.rsplit("/", 1)[-1]
        if self.config.pattern:
            return any(
                fnmatch.fnmatch(name, p.lower()) or fnmatch.fnmatch(low, p.lower())
                for p in self.config.pattern
            )
        return name.endswith(IMAGE_EXTENSIONS)

    def ids(self) -> list[str]:
        if self._ids is None:
            found: list[str] = []
            for dirpath, dirnames, filenames in os.walk(self.root):
                dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
                if not self.config.recursive:
                    dirnames[:] = []
                for fn in filenames:
                    rel = (Path(dirpath) / fn).relative_to(self.root).as_posix()
                    if not fn.startswith(".") and self._matches(rel):
                        found.append(rel)
            if not found:
                want = (
                    " or ".join(self.config.pattern)
                    if self.config.pattern
                    else "image files (" + ", ".join(e.lstrip(".") for e in IMAGE_EXTENSIONS) + ")"
                )
                deep = " (subdirectories included)" if self.config.recursive else ""
                hint = (
                    "" if self.config.recursive else "; add recursive=true to scan subdirectories"
                )
                raise DataError(f"{self.root}: no {want} found{deep}{hint}")
            self._ids = sorted(found)
            self._idset = frozenset(found)
        return list(self._ids)

    def load(self, sample_id: str) -> Sample:
        self.ids()
        if sample_id not in self._idset:
            raise DataError(f"{self.root}: no image {sample_id!r} in this folder dataset")
        path = self.root / sample_id
        img = resize_max_side(read_image(path), self.config.max_side)
        return Sample(id=sample_id, image=img, source=str(path)).validate()
