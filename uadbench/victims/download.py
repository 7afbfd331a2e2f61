"""``uadbench download NAME…``: fetch official weights on a machine that has the network.

Never called implicitly: victims only *look* for their files (see
:func:`uadbench.victims.checkpoints.find_checkpoint`); this command is the one place
that downloads. Files go to the first checkpoint directory (``$UADBENCH_CHECKPOINTS``'s
first entry, else ``~/.cache/uadbench/checkpoints``), written to a ``.part`` file,
checked against the published size/hash and only then renamed into place.

``hf:<org/name>`` names are fetched with ``huggingface_hub.snapshot_download`` into the
Hugging Face cache (config, processor and safetensors files only), where the ``hf:``
victims look for them.

Hashes: SAM's release names carry the first six hex digits of each file's MD5
(``sam_vit_b_01ec64.pth``); the full MD5s below, and those of the HQ-SAM and MobileSAM
files, are the values published alongside download scripts of several independent
downstream projects. Files without a published hash (FastSAM) are only size-checked
when a size is known. ``--no-verify`` skips the check.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import logging
import os
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, BinaryIO

from ..errors import UadbenchError

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class WeightFile:
    """One downloadable checkpoint: file name, official URL and whatever check is published."""

    filename: str
    url: str
    md5: str | None = None
    sha256: str | None = None
    size: int | None = None  # bytes


_SAM = "https://dl.fbaipublicfiles.com/segment_anything/"
_HQ = "https://huggingface.co/lkeab/hq-sam/resolve/main/"
_ULTRA = "https://github.com/ultralytics/assets/releases/download/v8.4.0/"

#: victim name → its official weights. Victim classes take their file names from here.
WEIGHTS: dict[str, WeightFile] = {
    "sam-vit-b": WeightFile(
        "sam_vit_b_01ec64.pth",
        _SAM + "sam_vit_b_01ec64.pth",
        md5="01ec64d29a2fca3f0661936605ae66f8",
    ),
    "sam-vit-l": WeightFile(
        "sam_vit_l_0b3195.pth",
        _SAM + "sam_vit_l_0b3195.pth",
        md5="0b3195507c641ddb6910d2bb5adee89c",
    ),
    "sam-vit-h": WeightFile(
        "sam_vit_h_4b8939.pth",
        _SAM + "sam_vit_h_4b8939.pth",
        md5="4b8939a88964f0f4ff5f5b2642c598a6",
    ),
    "hq-sam-vit-b": WeightFile(
        "sam_hq_vit_b.pth", _HQ + "sam_hq_vit_b.pth", md5="c6b8953247bcfdc8bb8ef91e36a6cacc"
    ),
    "hq-sam-vit-l": WeightFile(
        "sam_hq_vit_l.pth", _HQ + "sam_hq_vit_l.pth", md5="08947267966e4264fb39523eccc33f86"
    ),
    "hq-sam-vit-h": WeightFile(
        "sam_hq_vit_h.pth", _HQ + "sam_hq_vit_h.pth", md5="3560f6b6a5a6edacd814a1325c39640a"
    ),
    "hq-sam-vit-tiny": WeightFile(
        "sam_hq_vit_tiny.pth", _HQ + "sam_hq_vit_tiny.pth", md5="3a661ab92d4088ccd6232fa542998a65"
    ),
    "mobilesam": WeightFile(
        "mobile_sam.pt",
        "https://github.com/ChaoningZhang/MobileSAM/raw/master/weights/mobile_sam.pt",
        md5="f3c0d8cda613564d499310dab6c812cd",
    ),
    "fastsam-s": WeightFile("FastSAM-s.pt", _ULTRA + "FastSAM-s.pt"),
    "fastsam-x": WeightFile("FastSAM-x.pt", _ULTRA + "FastSAM-x.pt"),
}

HF_PREFIX = "hf:"
#: files of a hub repo that ``hf:`` victims need (weights as safetensors only)
HF_PATTERNS = ("*.json", "*.safetensors", "*.txt")

#: opens a URL for reading; tests replace it (never the network in tests)
_open_url: Callable[[str], BinaryIO] = lambda url: urllib.request.urlopen(url, timeout=60)  # noqa: E731


def _verify(path: Path, spec: WeightFile, md5: str, sha256: str, size: int) -> None:
    problems = []
    if spec.size is not None and size != spec.size:
        problems.append(f"size {size} bytes, expected {spec.size}")
    if spec.md5 and md5 != spec.md5:
        problems.append(f"md5 {md5}, expected {spec.md5}")
    if spec.sha256 and sha256 != spec.sha256:
        problems.append(f"sha256 {sha256}, expected {spec.sha256}")
    if problems:
        raise UadbenchError(
            f"{spec.url}: downloaded file failed verification ({'; '.join(problems)}); "
            f"nothing was saved to {path}. Retry, or pass --no-verify if the publisher changed the file."
        )


def hash_file(path: Path) -> tuple[str, str, int]:
    """(md5, sha256, size) of a file, read in 1 MiB chunks."""
    md5, sha, n = hashlib.md5(), hashlib.sha256(), 0
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            md5.update(chunk)
            sha.update(chunk)
            n += len(chunk)
    return md5.hexdigest(), sha.hexdigest(), n


def fetch(spec: WeightFile, dest_dir: Path, force: bool = False, verify: bool = True) -> Path:
    """Download ``spec`` into ``dest_dir`` (atomically: ``.part`` file, check, rename).

    An existing file that passes the check is kept unless ``force``.
    """
    from tqdm.auto import tqdm

    dest_dir.mkdir(parents=True, exist_ok=True)
    dest = dest_dir / spec.filename
    if dest.is_file() and not force:
        try:
            if verify:
                _verify(dest, spec, *hash_file(dest))
            log.info("%s already present", dest)
            return dest
        except UadbenchError:
            log.warning("%s is present but fails the check; downloading it again", dest)
    part = dest.with_name(dest.name + ".part")
    md5, sha, n = hashlib.md5(), hashlib.sha256(), 0
    try:
        with _open_url(spec.url) as resp, open(part, "wb") as out:
            total = getattr(resp, "length", None) or spec.size
            with tqdm(
                total=total, unit="B", unit_scale=True, desc=spec.filename, disable=None
            ) as bar:
                for chunk in iter(lambda: resp.read(1 << 20), b""):
                    out.write(chunk)
                    md5.update(chunk)
                    sha.update(chunk)
                    n += len(chunk)
                    bar.update(len(chunk))
        if verify:
            _verify(dest, spec, md5.hexdigest(), sha.hexdigest(), n)
        os.replace(part, dest)
    except OSError as exc:
        raise UadbenchError(
            f"could not download {spec.url} ({exc}); check the network and retry"
        ) from None
    finally:
        part.unlink(missing_ok=True)
    log.info("saved %s (%d bytes)", dest, n)
    return dest


def fetch_hf(repo_id: str) -> Path:
    """Snapshot of hub repo ``repo_id`` (config/processor/safetensors) into the HF cache."""
    from .checkpoints import hf_cache_dir

    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        raise UadbenchError(
            f"cannot download hf:{repo_id}: HF_HUB_OFFLINE is set; unset it on a machine with network"
        )
    try:
        from huggingface_hub import snapshot_download

        path = snapshot_download(
            repo_id, cache_dir=str(hf_cache_dir()), allow_patterns=list(HF_PATTERNS)
        )
    except Exception as exc:  # hub errors are many types; all mean "could not fetch"
        raise UadbenchError(
            f"could not download hf:{repo_id} ({str(exc).splitlines()[0][:200]})"
        ) from None
    if not any(Path(path).glob("*.safetensors")):
        raise UadbenchError(
            f"hf:{repo_id} has no .safetensors weights; uadbench loads hub models from safetensors only"
        )
    return Path(path)


def download(
    names: Sequence[str], dest_dir: Path | None = None, force: bool = False, verify: bool = True
) -> list[Path]:
    """Fetch the weights of the given victims (registered names, aliases or ``hf:<id>``).

    Returns the paths written (or found). Raises :class:`UadbenchError` on an unknown name,
    a victim without downloadable weights, or a failed download/check.
    """
    from . import VICTIMS
    from .base import checkpoint_dirs

    dest_dir = dest_dir or checkpoint_dirs()[0]
    # resolve all names first: fail before downloading anything
    plan: list[tuple[str, Any]] = []
    for raw in names:
        if raw.strip().lower().startswith(HF_PREFIX):
            plan.append(("hf", raw.strip()[len(HF_PREFIX) :]))
            continue
        name = VICTIMS.canonical(raw)
        if name not in WEIGHTS:
            raise UadbenchError(
                f"victim {name!r} has no downloadable weights (it is built in code or ships with "
                f"uadbench); downloadable: {', '.join(sorted(WEIGHTS))}, hf:<hub id>"
            )
        plan.append(("file", WEIGHTS[name]))
    out = []
    for kind, what in plan:
        out.append(
            fetch_hf(what) if kind == "hf" else fetch(what, dest_dir, force=force, verify=verify)
        )
    return out


# ---------------------------------------------------------------------- CLI
_EPILOG = """examples:
  uadbench download sam-vit-b sam-vit-l sam-vit-h
  uadbench download mobilesam hq-sam-vit-b --dir /data/checkpoints
  uadbench download hf:facebook/sam-vit-base hf:facebook/sam2.1-hiera-tiny
"""


def _handler(args: argparse.Namespace) -> int:
    dest = Path(args.dir).expanduser() if args.dir else None
    for p in download(args.names, dest, force=args.force, verify=not args.no_verify):
        print(p)
    return 0


def add_download_command(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``download`` on an ``argparse`` subparsers object; the handler
    (``args.func(args)``) returns the exit code and raises UadbenchError on user errors."""
    p = subparsers.add_parser(
        "download",
        help="fetch official victim weights (needs network; never done implicitly)",
        description="Fetch official victim weights on a machine that has the network, into the "
        "first checkpoint directory (hf:<id> into the Hugging Face cache), verifying published "
        "hashes. Never done implicitly.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "names",
        nargs="+",
        metavar="NAME",
        help="victim names (see `uadbench ls victims`) or hf:<hub id>",
    )
    p.add_argument("--dir", default=None, help="target directory (default: first checkpoint dir)")
    p.add_argument(
        "--force", action="store_true", help="download again even if the file is present"
    )
    p.add_argument("--no-verify", action="store_true", help="skip the size/hash check")
    p.set_defaults(func=_handler)
    return p
