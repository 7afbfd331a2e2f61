"""Shared reading helpers for the dataset plugins: images, JSON and COCO RLE masks.

Every function raises :class:`~uadbench.errors.DataError` naming the offending file
on bad input, never a bare Pillow / JSON / pycocotools exception.

Truncated images: Pillow raises on a truncated JPEG or PNG unless
``PIL.ImageFile.LOAD_TRUNCATED_IMAGES`` is set; this module never sets it, so a cut
file is an error here (unless some other library in the process turned it on).
"""

from __future__ import annotations

import contextlib
import json
import re
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps

from ..errors import DataError

#: File name suffixes (lower case) read as images by ``folder`` and ``sa1b``.
IMAGE_EXTENSIONS: tuple[str, ...] = (
    ".jpg",
    ".jpeg",
    ".png",
    ".bmp",
    ".tif",
    ".tiff",
    ".webp",
    ".gif",
    ".ppm",
    ".pgm",
)

_SWAP_ORIENTATIONS = (5, 6, 7, 8)  # EXIF orientations that swap width and height
_EXIF_ORIENTATION = 0x0112


# ----------------------------------------------------------------------------- images
def _to_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow mode → RGB. Alpha is composited over white; 16-bit grey is scaled."""
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        if arr.max(initial=0) > 255:
            arr = arr / 257.0
        arr = np.clip(np.rint(arr), 0, 255).astype(np.uint8)
        return Image.fromarray(arr, mode="L").convert("RGB")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return img.convert("RGB")


def read_image(
    path: str | Path,
    *,
    exif_transpose: bool = True,
    expected_hw: tuple[int, int] | None = None,
) -> np.ndarray:
    """Read an image file as RGB uint8 (H, W, 3).

    Grayscale, palette, CMYK, 16-bit and alpha images are converted to RGB (alpha over
    white). With ``exif_transpose`` the EXIF orientation is applied, as a viewer shows
    the photo.

    With ``expected_hw`` (annotated datasets, whose masks refer to the stored pixel
    grid) the raw pixels are used when their size matches; only if it does not and the
    EXIF-rotated image does, the rotated one is used; any other size is a
    :class:`DataError`.
    """
    path = Path(path)
    try:
        with Image.open(path) as img:
            img.load()  # decode now: a truncated file raises here, inside the try
            if expected_hw is not None:
                h, w = expected_hw
                if (img.height, img.width) != (h, w):
                    orient = img.getexif().get(_EXIF_ORIENTATION, 1)
                    if orient in _SWAP_ORIENTATIONS and (img.width, img.height) == (h, w):
                        img = ImageOps.exif_transpose(img)
                    else:
                        raise DataError(
                            f"{path}: image is {img.width}x{img.height} but its annotation says "
                            f"{w}x{h}; check that image and annotation belong together"
                        )
            elif exif_transpose:
                img = ImageOps.exif_transpose(img)
            arr = np.asarray(_to_rgb(img), dtype=np.uint8)
    except DataError:
        raise
    except FileNotFoundError:
        raise DataError(f"{path}: image file not found") from None
    except Image.DecompressionBombError as exc:
        raise DataError(f"{path}: image too large to decode safely ({exc})") from None
    except (OSError, ValueError, SyntaxError, Image.UnidentifiedImageError) as exc:
        raise DataError(
            f"{path}: unreadable or truncated image ({type(exc).__name__}: {exc}); "
            "re-download or delete the file"
        ) from None
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.size == 0:
        raise DataError(f"{path}: decoded to shape {arr.shape}, expected (H, W, 3)")
    return np.ascontiguousarray(arr)


def resize_max_side(image: np.ndarray, max_side: int) -> np.ndarray:
    """Downscale an RGB uint8 (H, W, 3) image so that max(H, W) <= ``max_side``.

    Keeps the aspect ratio; antialiased (Pillow's Lanczos filter, which widens its
    kernel by the reduction factor). ``max_side <= 0`` or an image already small enough
    returns the input unchanged. Never upscales.
    """
    h, w = image.shape[:2]
    if max_side <= 0 or max(h, w) <= max_side:
        return image
    scale = max_side / max(h, w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    out = Image.fromarray(image).resize((nw, nh), Image.Resampling.LANCZOS)
    return np.asarray(out, dtype=np.uint8)


# ----------------------------------------------------------------------------- json
def read_json(path: str | Path) -> Any:
    """Parse a JSON file; :class:`DataError` naming the file if missing or unparsable."""
    path = Path(path)
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise DataError(f"{path}: annotation file not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: not valid JSON ({exc}); re-download or regenerate it") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc})") from None


# ----------------------------------------------------------------------------- RLE
@contextlib.contextmanager
def quiet_pycocotools() -> Iterator[None]:
    """Silence pycocotools' NumPy-2 ``__array__`` DeprecationWarning (harmless, per call)."""
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message=".*__array__ implementation", category=DeprecationWarning
        )
        yield


def rle_runs(counts: str | bytes) -> np.ndarray:
    """Run lengths (int64) of a compressed COCO RLE ``counts`` string.

    The format (pycocotools ``rleToString``): each run is a little-endian sequence of
    6-bit groups stored as ``chr(48 + group)``; bit 5 of a group says "more groups
    follow", bit 4 of the last group is the sign; runs from the fourth on are stored
    as the difference to the run two before. Raises ``ValueError`` on a malformed
    string (bad character, unfinished run, negative run).
    """
    data = counts.encode("ascii") if isinstance(counts, str) else bytes(counts)
    if not data:
        return np.zeros(0, dtype=np.int64)
    c = np.frombuffer(data, dtype=np.uint8).astype(np.int64) - 48
    bad = np.flatnonzero((c < 0) | (c >= 64))
    if len(bad):
        p = int(bad[0])
        raise ValueError(f"invalid character {chr(data[p])!r} at position {p}")
    last = (c & 0x20) == 0  # the group that ends a run
    if not last[-1]:
        raise ValueError("unfinished run at end of counts string")
    starts = np.concatenate(([0], np.flatnonzero(last)[:-1] + 1))
    run_of = np.cumsum(np.concatenate(([0], last[:-1].astype(np.int64))))
    k = np.arange(len(c)) - starts[run_of]  # group index within its run
    if k.max() > 11:
        raise ValueError("run length too large")
    d = np.add.reduceat((c & 0x1F) << (5 * k), starts)
    ngroups = np.diff(np.append(starts, len(c)))
    sign = (c[last] & 0x10) != 0
    d = d - np.where(sign, np.left_shift(1, 5 * ngroups), 0)
    runs = d.copy()  # runs from the fourth on are deltas to the run two before
    runs[1::2] = np.cumsum(d[1::2])
    runs[2::2] = np.cumsum(d[2::2])
    neg = np.flatnonzero(runs < 0)
    if len(neg):
        raise ValueError(f"negative run length {int(runs[neg[0]])} (run {int(neg[0])})")
    return runs


def check_rle(segm: Any, hw: tuple[int, int], where: str) -> dict[str, Any]:
    """Validate an RLE segmentation dict against the image size (H, W).

    Returns an RLE dict pycocotools accepts (compressed counts as bytes; uncompressed
    list counts are compressed). ``where`` names the file for the error message.
    """
    from pycocotools import mask as mask_utils

    h, w = hw
    if not isinstance(segm, dict) or "size" not in segm or "counts" not in segm:
        raise DataError(f"{where}: segmentation must be an RLE dict with 'size' and 'counts'")
    size = segm["size"]
    if not (isinstance(size, (list, tuple)) and len(size) == 2):
        raise DataError(f"{where}: RLE size {size!r} is not [height, width]")
    if [int(size[0]), int(size[1])] != [h, w]:
        raise DataError(
            f"{where}: RLE size {list(size)} (HxW) does not match the image size {[h, w]}; "
            "the annotation belongs to another image or was resized"
        )
    counts = segm["counts"]
    if isinstance(counts, list):
        try:
            runs = np.asarray(counts, dtype=np.int64)
        except (TypeError, ValueError):
            raise DataError(f"{where}: RLE counts list holds non-integers") from None
        if (runs < 0).any() or int(runs.sum()) != h * w:
            raise DataError(
                f"{where}: uncompressed RLE counts sum to {int(runs.sum())}, expected {h * w} "
                "(H*W); the mask is corrupt"
            )
        return mask_utils.frPyObjects({"size": [h, w], "counts": counts}, h, w)
    if not isinstance(counts, (str, bytes)):
        raise DataError(f"{where}: RLE counts must be a string, got {type(counts).__name__}")
    try:
        runs = rle_runs(counts)
    except ValueError as exc:
        raise DataError(f"{where}: broken RLE counts string ({exc}); the mask is corrupt") from None
    if int(runs.sum()) != h * w:
        raise DataError(
            f"{where}: RLE counts cover {int(runs.sum())} pixels, expected {h * w} (H*W); "
            "the mask is corrupt or truncated"
        )
    raw = counts.encode("ascii") if isinstance(counts, str) else counts
    return {"size": [h, w], "counts": raw}


def decode_rle(segm: Any, hw: tuple[int, int], where: str) -> np.ndarray:
    """Decode a COCO RLE dict to a bool mask (H, W), validating it first."""
    from pycocotools import mask as mask_utils

    rle = check_rle(segm, hw, where)
    try:
        with quiet_pycocotools():
            m = mask_utils.decode(rle)
    except Exception as exc:  # pycocotools raises bare Exception on bad RLE
        raise DataError(f"{where}: pycocotools cannot decode the RLE ({exc})") from None
    if m.shape != tuple(hw):
        raise DataError(f"{where}: RLE decoded to shape {m.shape}, expected {tuple(hw)}")
    return m.astype(bool)


def encode_mask(mask: np.ndarray) -> dict[str, Any]:
    """COCO compressed RLE of a bool (H, W) mask, JSON-ready: ``{"size": [H, W], "counts": str}``."""
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {
        "size": [int(rle["size"][0]), int(rle["size"][1])],
        "counts": rle["counts"].decode("ascii"),
    }


def xywh_to_xyxy(bbox: Any, where: str) -> list[float]:
    """COCO/SA-1B ``[x, y, w, h]`` → ``[x0, y0, x1, y1]``; DataError if malformed."""
    try:
        x, y, w, h = (float(v) for v in bbox)
    except (TypeError, ValueError):
        raise DataError(f"{where}: bbox {bbox!r} is not [x, y, w, h]") from None
    if not all(np.isfinite([x, y, w, h])):
        raise DataError(f"{where}: bbox {bbox!r} has non-finite values")
    return [x, y, x + w, y + h]


# ----------------------------------------------------------------------------- ids
_SA_RE = re.compile(r"^sa_(\d+)$")


def sa_sort_key(stem: str) -> tuple[int, int, str]:
    """Order ``sa_<n>`` numerically (``sa_2`` < ``sa_10``); other names after, by name."""
    m = _SA_RE.match(stem)
    if m:
        return (0, int(m.group(1)), stem)
    return (1, 0, stem)
