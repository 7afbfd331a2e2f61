"""Where victims' weights are, found without importing torch or any model backend.

``uadbench ls victims`` and ``--victims all`` ask every victim whether its weights are
here. The victim classes import torch, so this module holds what that question needs —
the checkpoint search directories, the local Hugging Face cache, the default checkpoint
file of each built-in victim (:data:`BUILTIN`) and the ``hf:`` model lookup — and the
victim classes answer through the same functions (``weights_status``), so the listing and
a run cannot disagree (``tests/test_victims_status.py`` compares them victim by victim).

Nothing here reads more than a ``config.json``; nothing is downloaded.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
from collections.abc import Sequence
from pathlib import Path

from ..errors import MissingCheckpointError

HF_PREFIX = "hf:"


@dataclasses.dataclass(frozen=True)
class WeightsStatus:
    """Whether a victim's weights are available, and where (or why not)."""

    found: bool
    where: str  # the file or directory found, or "" when not found
    detail: str = ""  # why not / where it looked ("; "-separated places)

    def require(self, name: str) -> Path:
        """The found path, or a :class:`MissingCheckpointError` saying where we looked."""
        if not self.found:
            raise MissingCheckpointError(
                name,
                self.detail.split("; ") if self.detail else [],
                f"Get it with `uadbench download {name}` on a machine with network, or pass "
                f"--victims {name}:checkpoint=PATH, or put the file in $UADBENCH_CHECKPOINTS.",
            )
        return Path(self.where)


def package_available(module: str) -> bool:
    """Whether the top-level package ``module`` is installed (checked without importing it)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # pragma: no cover - a broken installation
        return False


# ---------------------------------------------------------------------- checkpoint files
def checkpoint_dirs() -> list[Path]:
    """Directories searched for checkpoint files, in order."""
    dirs = []
    env = os.environ.get("UADBENCH_CHECKPOINTS")
    if env:
        dirs += [Path(p).expanduser() for p in env.split(os.pathsep) if p]
    cache = (
        Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "uadbench" / "checkpoints"
    )
    dirs.append(cache)
    return dirs


def find_checkpoint(
    name: str, explicit: str | None, filenames: Sequence[str], hf_repo: str | None = None
) -> WeightsStatus:
    """Look for a checkpoint: the explicit path, then each checkpoint dir × filename, then
    (when ``hf_repo`` is given) those filenames in that repo's Hugging Face cache snapshot."""
    searched = []
    if explicit:
        p = Path(explicit).expanduser()
        if p.is_file():
            return WeightsStatus(True, str(p))
        return WeightsStatus(False, "", str(p))
    for d in checkpoint_dirs():
        for fn in filenames:
            p = d / fn
            if p.is_file():
                return WeightsStatus(True, str(p))
            searched.append(str(p))
    if hf_repo:
        snap = hf_snapshot(hf_repo)
        for fn in filenames:
            if snap is not None and (snap / fn).is_file():
                return WeightsStatus(True, str(snap / fn))
            searched.append(f"Hugging Face cache {hf_cache_dir()} ({hf_repo}/{fn})")
    return WeightsStatus(False, "", "; ".join(searched))


# ---------------------------------------------------------------------- Hugging Face cache
def hf_cache_dir() -> Path:
    """The Hugging Face hub cache, read from the environment at call time (``HF_HUB_CACHE``,
    ``HUGGINGFACE_HUB_CACHE``, ``HF_HOME``/hub, ``XDG_CACHE_HOME``/huggingface/hub)."""
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(var):
            return Path(os.environ[var]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg).expanduser() / "huggingface" / "hub"


def hf_repo_dir(repo_id: str, cache_dir: Path | None = None) -> Path:
    """``<cache>/models--org--name`` for a model repo id ``org/name``."""
    return (cache_dir or hf_cache_dir()) / ("models--" + repo_id.replace("/", "--"))


def hf_snapshot(repo_id: str, revision: str = "main", cache_dir: Path | None = None) -> Path | None:
    """The cached snapshot directory of ``repo_id`` at ``revision`` (a branch name resolved
    through ``refs/<revision>``, or a commit hash), or None when it is not cached. Never
    touches the network."""
    if not repo_id or repo_id.count("/") != 1 or ".." in repo_id:
        return None
    repo = hf_repo_dir(repo_id, cache_dir)
    ref = repo / "refs" / revision
    commit = ref.read_text().strip() if ref.is_file() else revision
    snap = repo / "snapshots" / commit
    return snap if snap.is_dir() else None


# ---------------------------------------------------------------------- hf:<id or path>
@dataclasses.dataclass(frozen=True)
class HfFamily:
    """How to drive one transformers model type. ``embedding``: what
    ``get_image_embeddings`` returns — "tensor" (SAM), "hq" ((tensor, intermediate list),
    SAM-HQ) or "multiscale" (list of feature maps, SAM 2 style).
    ``reshaped_sizes``: whether ``post_process_masks`` takes the pre-padding input size."""

    model_class: str
    processor_class: str
    embedding: str
    reshaped_sizes: bool


#: ``model_type`` of a supported ``config.json`` → how to drive it (:mod:`.hf`)
FAMILIES: dict[str, HfFamily] = {
    "sam": HfFamily("SamModel", "SamProcessor", "tensor", True),
    "sam_hq": HfFamily("SamHQModel", "SamHQProcessor", "hq", True),
    "sam2": HfFamily("Sam2Model", "Sam2Processor", "multiscale", False),
    "sam2_video": HfFamily("Sam2Model", "Sam2Processor", "multiscale", False),
    "edgetam": HfFamily("EdgeTamModel", "Sam2Processor", "multiscale", False),
    "edgetam_video": HfFamily("EdgeTamModel", "Sam2Processor", "multiscale", False),
    "sam3_tracker": HfFamily("Sam3TrackerModel", "Sam3TrackerProcessor", "multiscale", False),
}


def hf_weight_files(d: Path) -> list[Path]:
    """The weight files transformers loads from model directory ``d``: its safetensors
    files, else its ``pytorch_model*.bin`` files (sorted)."""
    return sorted(d.glob("*.safetensors")) or sorted(d.glob("pytorch_model*.bin"))


def read_model_type(d: Path) -> str | None:
    """``model_type`` from ``d/config.json`` (None if absent or unreadable)."""
    try:
        return json.loads((d / "config.json").read_text()).get("model_type")
    except (OSError, ValueError, AttributeError):
        return None


def is_local_model(model: str) -> bool:
    """Whether ``hf:<model>`` names a directory on this machine (identified by its content)
    rather than a hub id (identified by the id): the same test :func:`locate_hf_model`
    makes first."""
    return bool(model) and Path(model).expanduser().is_dir()


def locate_hf_model(model: str, revision: str) -> tuple[Path | None, str]:
    """(directory holding config.json + weights, or None; where we looked). A path to a
    directory wins over a hub id of the same spelling."""
    if not model:
        return None, "no model given: write hf:<hub id or path>"
    p = Path(model).expanduser()
    if p.is_dir():
        where, searched = p, str(p)
    else:
        searched = f"Hugging Face cache {hf_repo_dir(model)} (revision {revision})"
        where = hf_snapshot(model, revision)
        if where is None:
            return None, searched
    if not (where / "config.json").is_file() or not hf_weight_files(where):
        return None, f"{searched}: no config.json with weights in {where}"
    return where, searched


def unsupported_message(where: Path) -> str:
    return (
        f"{where}: model_type {read_model_type(where)!r} is not a supported promptable "
        f"segmenter (supported: {', '.join(FAMILIES)})"
    )


def resolve_hf_model(model: str, revision: str = "main") -> WeightsStatus:
    """Where ``model`` (hub id or local directory) is, without loading anything."""
    where, searched = locate_hf_model(model, revision)
    if where is None:
        return WeightsStatus(False, "", searched)
    if read_model_type(where) not in FAMILIES:
        return WeightsStatus(False, "", unsupported_message(where))
    return WeightsStatus(True, str(where))


def cached_hf_models() -> list[str]:
    """``hf:<id>`` names of the supported models found in the local Hugging Face cache
    (snapshot of ``refs/main``). Reads only small JSON files."""
    root = hf_cache_dir()
    out = []
    if not root.is_dir():
        return out
    for d in sorted(root.glob("models--*--*")):
        repo_id = d.name[len("models--") :].replace("--", "/", 1)
        snap = hf_snapshot(repo_id)
        if snap is not None and read_model_type(snap) in FAMILIES and hf_weight_files(snap):
            out.append(HF_PREFIX + repo_id)
    return out


# ---------------------------------------------------------------------- built-in victims
HQ_INSTALL = "needs `pip install uadbench[hq]` (the segment_anything_hq package)"
FASTSAM_INSTALL = "needs `pip install uadbench[fastsam]` (the ultralytics package)"

#: the zoo's shipped weights: ``uadbench/zoo/<name>.safetensors``
ZOO_DIR = Path(__file__).resolve().parent.parent / "zoo"


def shipped_weights(name: str) -> Path:
    """Where the weights of zoo model ``name`` ship: ``uadbench/zoo/<name>.safetensors``."""
    return ZOO_DIR / f"{name}.safetensors"


@dataclasses.dataclass(frozen=True)
class BuiltinWeights:
    """Where a built-in victim's default weights are: ``filename`` searched in
    :func:`checkpoint_dirs` (then in ``hf_repo``'s cached snapshot), or ``shipped`` with
    the package (the zoo), or neither (built in code); ``package``: the optional backend
    it needs, ``install`` what to say without it."""

    filename: str = ""
    hf_repo: str | None = None
    package: str | None = None
    install: str = ""
    shipped: bool = False


def _checkpoint(name: str, **kw) -> BuiltinWeights:
    from .download import WEIGHTS  # the official file names live with their URLs

    return BuiltinWeights(filename=WEIGHTS[name].filename, **kw)


_HQ = {"hf_repo": "lkeab/hq-sam", "package": "segment_anything_hq", "install": HQ_INSTALL}
_FASTSAM = {"package": "ultralytics", "install": FASTSAM_INSTALL}

#: built-in victim → where its default weights are (the victim classes read this too)
BUILTIN: dict[str, BuiltinWeights] = {
    "sam-vit-b": _checkpoint("sam-vit-b"),
    "sam-vit-l": _checkpoint("sam-vit-l"),
    "sam-vit-h": _checkpoint("sam-vit-h"),
    "seeded-sam-tiny": BuiltinWeights(),
    "hq-sam-vit-b": _checkpoint("hq-sam-vit-b", **_HQ),
    "hq-sam-vit-l": _checkpoint("hq-sam-vit-l", **_HQ),
    "hq-sam-vit-h": _checkpoint("hq-sam-vit-h", **_HQ),
    "hq-sam-vit-tiny": _checkpoint("hq-sam-vit-tiny", **_HQ),
    "mobilesam": _checkpoint(
        "mobilesam",
        hf_repo="dhkim2810/MobileSAM",
        package="segment_anything_hq",
        install=HQ_INSTALL,
    ),
    "fastsam-s": _checkpoint("fastsam-s", **_FASTSAM),
    "fastsam-x": _checkpoint("fastsam-x", **_FASTSAM),
    "zoo-vit-sam": BuiltinWeights(shipped=True),
    "zoo-hq-sam": BuiltinWeights(shipped=True),
    "zoo-tinyvit-sam": BuiltinWeights(shipped=True),
    "zoo-hf-sam": BuiltinWeights(shipped=True),
}


def builtin_status(name: str, checkpoint: str | None = None) -> WeightsStatus | None:
    """The weights status of built-in victim ``name`` (canonical; ``hf:<id or path>``
    included) with ``checkpoint`` as its explicit weights path (None: the default search);
    None when ``name`` is not a built-in victim known here (ask its class)."""
    if name.lower().startswith(HF_PREFIX) and len(name) > len(HF_PREFIX):
        return resolve_hf_model(name[len(HF_PREFIX) :])
    spec = BUILTIN.get(name)
    if spec is None:
        return None
    if spec.package and not package_available(spec.package):
        return WeightsStatus(False, "", spec.install)
    if spec.shipped:
        if checkpoint:
            return find_checkpoint(name, checkpoint, ())
        path = shipped_weights(name)
        return (
            WeightsStatus(True, str(path))
            if path.is_file()
            else WeightsStatus(False, "", str(path))
        )
    if not spec.filename:
        return WeightsStatus(True, "built in code")
    return find_checkpoint(name, checkpoint, (spec.filename,), spec.hf_repo)
