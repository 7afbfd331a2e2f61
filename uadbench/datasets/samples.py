"""``samples``: real photographs bundled inside scikit-image (no ground truth).

The default dataset of ``uadbench run``. The files ship inside the ``skimage.data``
package directory and are read from there directly, so nothing is ever downloaded
(images that scikit-image fetches with pooch are not offered).

Example::

    uadbench run --dataset samples                         # 6 colour photos, longest side 256
    uadbench run --dataset samples:names=[coffee|rocket],max_side=0
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path

import numpy as np

from ..errors import ConfigError, DataError, UnknownNameError
from .base import Dataset, Sample
from .io import read_image, resize_max_side

#: name → file inside the ``skimage.data`` package directory. Colour photographs first;
#: the grayscale ones are converted to RGB (three equal channels).
BUNDLED: dict[str, str] = {
    "astronaut": "astronaut.png",
    "chelsea": "chelsea.png",
    "coffee": "coffee.png",
    "rocket": "rocket.jpg",
    "motorcycle": "motorcycle_left.png",
    "immunohistochemistry": "ihc.png",
    "hubble_deep_field": "hubble_deep_field.jpg",
    "retina": "retina.jpg",
    "camera": "camera.png",
    "coins": "coins.png",
    "moon": "moon.png",
    "page": "page.png",
    "brick": "brick.png",
    "grass": "grass.png",
    "gravel": "gravel.png",
}

#: The default selection: colour photographs with distinct objects.
DEFAULT_NAMES: tuple[str, ...] = (
    "astronaut",
    "chelsea",
    "coffee",
    "rocket",
    "motorcycle",
    "immunohistochemistry",
)


def bundled_path(name: str) -> Path:
    """Path of a bundled scikit-image photograph (see :data:`BUNDLED`)."""
    import skimage.data

    if name not in BUNDLED:
        raise UnknownNameError("bundled image", name, sorted(BUNDLED))
    return Path(skimage.data.__file__).parent / BUNDLED[name]


@functools.lru_cache(maxsize=32)
def _load_bundled_cached(name: str) -> np.ndarray:
    path = bundled_path(name)
    if not path.is_file():
        raise DataError(
            f"{path}: scikit-image's bundled image {name!r} is missing; reinstall scikit-image"
        )
    img = read_image(path)
    img.setflags(write=False)
    return img


def load_bundled(name: str) -> np.ndarray:
    """A bundled photograph as RGB uint8 (H, W, 3) at its original size (read-only array)."""
    return _load_bundled_cached(name)


class Samples(Dataset):
    """Real photographs bundled with scikit-image; no ground-truth masks.

    Ids are the image names in the order given by ``names``. Each image is downscaled
    (Lanczos, antialiased, aspect ratio kept) so that its longest side is at most
    ``max_side`` pixels; ``max_side=0`` keeps the original size.
    """

    name = "samples"
    has_masks = False

    @dataclasses.dataclass(frozen=True)
    class Config:
        names: tuple[str, ...] = DEFAULT_NAMES
        max_side: int = 256

    def __init__(self, config: Config | None = None):
        super().__init__(config)
        names = tuple(self.config.names)
        if not names:
            raise ConfigError(
                "samples: names=[] selects no image; leave it out for the default set"
            )
        for n in names:
            if n not in BUNDLED:
                msg = str(UnknownNameError("bundled image", n, sorted(BUNDLED)))
                raise ConfigError("samples: " + msg.split(" (see")[0] + ".")
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ConfigError(f"samples: names lists {', '.join(dup)} more than once")
        if self.config.max_side < 0:
            raise ConfigError(
                f"samples: max_side={self.config.max_side} must be >= 0 (0 = original)"
            )
        self._names = names

    def ids(self) -> list[str]:
        return list(self._names)

    def load(self, sample_id: str) -> Sample:
        if sample_id not in self._names:
            raise DataError(
                f"samples: no image {sample_id!r}; this dataset has {', '.join(self._names)}"
            )
        img = resize_max_side(load_bundled(sample_id), self.config.max_side)
        img = np.array(img, dtype=np.uint8, copy=True)  # callers may write into it
        return Sample(id=sample_id, image=img, source=str(bundled_path(sample_id))).validate()

    def describe(self) -> str:
        side = f", max side {self.config.max_side}px" if self.config.max_side else ""
        return f"samples ({len(self._names)} scikit-image photographs{side})"
