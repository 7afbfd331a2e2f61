"""Dataset base class and the Sample record every dataset yields."""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Iterator
from typing import Any, ClassVar

import numpy as np

from ..errors import DataError


@dataclasses.dataclass
class Sample:
    """One image with optional ground truth.

    ``image``: RGB uint8 array (H, W, 3).
    ``masks``: bool array (N, H, W) of ground-truth masks in annotation order, or None.
    ``boxes``: float array (N, 4) of the masks' boxes, XYXY in pixels, or None.
    """

    id: str
    image: np.ndarray
    masks: np.ndarray | None = None
    boxes: np.ndarray | None = None
    source: str = ""  # file the image came from, for error messages

    @property
    def has_gt(self) -> bool:
        return self.masks is not None and len(self.masks) > 0

    @property
    def hw(self) -> tuple[int, int]:
        return int(self.image.shape[0]), int(self.image.shape[1])

    def validate(self) -> Sample:
        """Check shapes and ranges; raise :class:`DataError` naming the file."""
        where = self.source or self.id
        img = self.image
        if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
            raise DataError(
                f"{where}: image must be RGB uint8 (H, W, 3), got {img.dtype} {img.shape}"
            )
        h, w = self.hw
        if self.masks is not None:
            if self.masks.ndim != 3 or self.masks.shape[1:] != (h, w):
                raise DataError(
                    f"{where}: mask shape {self.masks.shape[1:]} does not match image {(h, w)}; "
                    "check that the annotation belongs to this image"
                )
        if self.boxes is not None and len(self.boxes):
            b = np.asarray(self.boxes, dtype=np.float64)
            bad = (b[:, 0] < -0.5) | (b[:, 1] < -0.5) | (b[:, 2] > w + 0.5) | (b[:, 3] > h + 0.5)
            bad |= (b[:, 2] < b[:, 0]) | (b[:, 3] < b[:, 1])
            if bad.any():
                i = int(np.flatnonzero(bad)[0])
                raise DataError(
                    f"{where}: box {i} {b[i].tolist()} (XYXY) falls outside the {w}x{h} image; "
                    "fix or drop that annotation"
                )
        return self


class Dataset(ABC):
    """A sized, indexable collection of :class:`Sample`.

    Subclasses set ``name``, ``Config`` (a frozen dataclass with defaults) and
    implement :meth:`ids` and :meth:`load`. Loading an id is independent of order, so
    jobs can fetch the samples they need.
    """

    name: ClassVar[str] = ""
    Config: ClassVar[type] = type(None)
    has_masks: ClassVar[bool] = False

    def __init__(self, config: Any = None):
        self.config = config if config is not None else self.Config()

    @abstractmethod
    def ids(self) -> list[str]:
        """Sample ids in a stable order."""

    @abstractmethod
    def load(self, sample_id: str) -> Sample:
        """Load one sample; raise :class:`DataError` naming the file on bad data."""

    def __len__(self) -> int:
        return len(self.ids())

    def __iter__(self) -> Iterator[Sample]:
        for i in self.ids():
            yield self.load(i)

    def describe(self) -> str:
        return self.name
