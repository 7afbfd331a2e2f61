"""Finding and safely loading checkpoint files.

Checkpoints are untrusted input: ``.pth``/``.pt`` files are read with
``torch.load(weights_only=True)`` (no arbitrary unpickling) and ``.safetensors`` with
safetensors; a file that needs more than that is refused with a clear error.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import zipfile
from pathlib import Path

import torch

from ..errors import UadbenchError

# the lookup itself is torch-free (uadbench ls victims); re-exported here
from .locate import find_checkpoint as find_checkpoint
from .locate import hf_cache_dir as hf_cache_dir
from .locate import hf_repo_dir as hf_repo_dir
from .locate import hf_snapshot as hf_snapshot

# ---------------------------------------------------------------------- content digests
_DIGESTS: dict[tuple[str, int, int], str] = {}


def digest_cache_file() -> Path:
    """Where file digests are remembered between commands (``$XDG_CACHE_HOME/uadbench``)."""
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return base / "uadbench" / "digests.json"


def file_digest(path: str | Path) -> str:
    """SHA-256 (hex) of a file's content: what identifies a checkpoint, wherever it sits.

    Remembered by (absolute path, size, mtime) in this process and in
    :func:`digest_cache_file`, so a multi-GB checkpoint is read once, not by every command;
    a file rewritten in place gets a new mtime and is hashed again."""
    p = Path(path).expanduser().resolve()
    st = p.stat()
    key = (str(p), st.st_size, st.st_mtime_ns)
    if key in _DIGESTS:
        return _DIGESTS[key]
    cache_file = digest_cache_file()
    try:
        disk = json.loads(cache_file.read_text())
    except (OSError, ValueError):
        disk = {}
    ck = f"{key[0]}|{key[1]}|{key[2]}"
    digest = disk.get(ck) if isinstance(disk, dict) else None
    if not (isinstance(digest, str) and len(digest) == 64):
        sha = hashlib.sha256()
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                sha.update(chunk)
        digest = sha.hexdigest()
        if not isinstance(disk, dict):
            disk = {}
        disk = {k: v for k, v in disk.items() if not k.startswith(f"{key[0]}|")}
        disk[ck] = digest
        try:  # a read-only home only costs a rehash next time
            from ..store.rundir import atomic_write_bytes

            atomic_write_bytes(cache_file, json.dumps(disk, sort_keys=True).encode())
        except OSError:
            pass
    _DIGESTS[key] = digest
    return digest


def _checks_file() -> Path:
    return digest_cache_file().with_name("checked.json")


_CHECKED: set[str] = set()


def was_checked(key: str) -> bool:
    """Whether the check named ``key`` (e.g. victim, code version and weights digest)
    passed before on this machine (:func:`remember_checked`)."""
    if key in _CHECKED:
        return True
    try:
        ok = key in set(json.loads(_checks_file().read_text()))
    except (OSError, ValueError, TypeError):
        ok = False
    if ok:
        _CHECKED.add(key)
    return ok


def remember_checked(key: str) -> None:
    """Remember that the check ``key`` passed (best effort: a read-only home only costs
    the check again next time)."""
    _CHECKED.add(key)
    try:
        have = list(json.loads(_checks_file().read_text()))
    except (OSError, ValueError, TypeError):
        have = []
    try:
        from ..store.rundir import atomic_write_bytes

        atomic_write_bytes(_checks_file(), json.dumps(sorted({*have[-2000:], key})).encode())
    except OSError:
        pass


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a checkpoint file, without executing any pickled code."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except Exception as exc:  # safetensors raises several types on bad headers
            raise UadbenchError(f"{path}: not a readable safetensors file ({exc})") from None
    if not _looks_like_torch_file(path):
        raise UadbenchError(
            f"{path}: not a checkpoint — neither a PyTorch file (zip or pickle) nor "
            "safetensors (random, truncated or mis-named bytes?); re-download it"
        )
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UadbenchError(
            f"{path}: refused to load — the file contains pickled objects other than tensors "
            f"({first[:160]}); only plain state_dict checkpoints are accepted"
        ) from None
    except (RuntimeError, EOFError, OSError) as exc:
        raise UadbenchError(
            f"{path}: not a readable checkpoint ({str(exc).splitlines()[0][:160]}); re-download it"
        ) from None
    if isinstance(obj, dict) and "model" in obj and isinstance(obj["model"], dict):
        obj = obj["model"]
    if not isinstance(obj, dict):
        raise UadbenchError(
            f"{path}: expected a state_dict (name → tensor), got {type(obj).__name__}"
        )
    return obj


def _looks_like_torch_file(path: Path) -> bool:
    """Whether ``path`` starts like something ``torch.load`` reads: a zip archive (the
    format since torch 1.6) or a pickle (protocol 2+ begins with 0x80; the legacy format
    pickles a magic number first)."""
    try:
        with open(path, "rb") as f:
            head = f.read(2)
    except OSError as exc:
        raise UadbenchError(f"{path}: cannot read the checkpoint ({exc.strerror or exc})") from None
    return zipfile.is_zipfile(path) or (len(head) == 2 and head[0] == 0x80 and 2 <= head[1] <= 5)


def load_state_dict_file(model: torch.nn.Module, path: str | Path, name: str) -> None:
    """Load a checkpoint into ``model`` strictly, with an error that names the mismatch."""
    load_state_dict_strict(model, read_state_dict(path), path, name)


def load_state_dict_strict(
    model: torch.nn.Module, sd: dict[str, torch.Tensor], path: str | Path, name: str
) -> None:
    """Load tensors ``sd`` (read from ``path``) into ``model`` strictly, with an error that
    names the mismatch."""
    missing, unexpected = [], []
    own = model.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    shape_bad = [k for k in own if k in sd and tuple(sd[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or shape_bad:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys (e.g. {unexpected[0]})")
        if shape_bad:
            k = shape_bad[0]
            parts.append(
                f"shape mismatch at {k}: file {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}"
            )
        raise UadbenchError(
            f"{path} does not fit victim {name!r}: {'; '.join(parts)}. Is it the checkpoint of another model size?"
        )
    model.load_state_dict(sd, strict=True)
