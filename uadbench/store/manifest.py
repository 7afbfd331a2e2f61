"""The run manifest: what a run directory holds and how it was made."""

from __future__ import annotations

import datetime as _dt
import platform
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

from .. import __version__
from ..errors import RunDirError
from .rundir import MANIFEST, atomic_write_json, load_manifest

FORMAT = "uadbench-run/1"


def _git_revision() -> str:
    try:
        here = Path(__file__).resolve().parent
        out = subprocess.run(
            ["git", "-C", str(here), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
        )
        return out.stdout.strip() if out.returncode == 0 else ""
    except (OSError, subprocess.SubprocessError):
        return ""


def _versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"python": platform.python_version(), "uadbench": __version__}
    for pkg in (
        "torch",
        "torchvision",
        "numpy",
        "segment-anything",
        "segment-anything-hq",
        "transformers",
        "timm",
        "ultralytics",
    ):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _merge(records: list[dict], new: list[dict], key: str = "hash") -> list[dict]:
    have = {r[key] for r in records}
    return records + [r for r in new if r[key] not in have]


def _check_weights(run_dir: Path, old: list[dict], new: list[dict], role: str) -> None:
    """Refuse to resume when a model's weights file changed since the run directory was
    written (e.g. a retrained zoo model): its config hash is the same, so its finished rows
    would be reused and mixed with rows of the new weights."""
    had = {r.get("hash"): r.get("weights_sha256") for r in old}
    for rec in new:
        then, now_ = had.get(rec.get("hash")), rec.get("weights_sha256")
        if then and now_ and then != now_:
            raise RunDirError(
                f"{role} {rec.get('label', rec.get('name'))}: its weights changed since {run_dir} "
                f"was written (sha256 {then} then, {now_} now), so its finished rows are from "
                "another model; pick another --out, or restore the weights the run used"
            )


def _check_code(run_dir: Path, old: list[dict], new: list[dict], role: str) -> None:
    """Refuse to resume when a plugin's code changed since the run directory was written
    (an edited attack, an upgraded plugin): its config hash is the same, so its finished
    rows and cached images would be mixed with those of the new code."""
    had = {r.get("hash"): r.get("code") for r in old}
    for rec in new:
        then, now_ = had.get(rec.get("hash")), rec.get("code")
        if then and now_ and then != now_:
            raise RunDirError(
                f"{role} {rec.get('label', rec.get('name'))}: its code changed since {run_dir} "
                f"was written ({then} then, {now_} now), so its finished results are from "
                "other code; pick another --out, or run the code the run used"
            )


def open_manifest(
    run_dir: Path,
    identity: dict[str, Any],
    dataset: dict,
    surrogate: dict,
    attacks: list[dict],
    victims: list[dict],
    seed: int,
    device: str,
    transforms: list[dict] | None = None,
) -> dict[str, Any]:
    """Create the manifest, or check an existing one is compatible and merge this
    invocation's attacks, victims and transforms into it. Returns the manifest (already
    written). ``transforms`` (records) is stored only once a transform other than
    identity was evaluated: a manifest without the key means the identity alone."""
    transforms = list(transforms or [])
    only_identity = all(t.get("name") == "identity" for t in transforms)
    path = Path(run_dir) / MANIFEST
    inv = {"started": now(), "argv": sys.argv, "host": socket.gethostname(), "device": device}
    if path.exists():
        try:
            man = load_manifest(run_dir)
        except ValueError as exc:
            raise RunDirError(
                f"{path} is not valid JSON ({exc}); move the directory away or pick another --out"
            ) from None
        if man.get("format") != FORMAT:
            raise RunDirError(
                f"{run_dir} was written by another tool or format ({man.get('format')!r}); use another --out"
            )
        old = man.get("identity", {})
        if old != identity:
            diff = [k for k in sorted(set(old) | set(identity)) if old.get(k) != identity.get(k)]
            raise RunDirError(
                f"{run_dir} was written by an incompatible config ({', '.join(diff)} differ: "
                f"{', '.join(f'{k}={old.get(k)!r} vs {identity.get(k)!r}' for k in diff)}); "
                "rerun with the same settings to resume, or pick another --out"
            )
        _check_weights(run_dir, [man.get("surrogate", {})], [surrogate], "surrogate")
        _check_weights(run_dir, man.get("victims", []), victims, "victim")
        _check_code(run_dir, [man.get("surrogate", {})], [surrogate], "surrogate")
        _check_code(run_dir, man.get("attacks", []), attacks, "attack")
        _check_code(run_dir, man.get("victims", []), victims, "victim")
        man["attacks"] = _merge(man.get("attacks", []), attacks)
        man["victims"] = _merge(man.get("victims", []), victims)
        if "transforms" in man or not only_identity:
            _check_code(run_dir, man.get("transforms", []), transforms, "transform")
            if "transforms" in man:
                had = man["transforms"]
            else:  # the run so far was evaluated under the identity alone
                from ..engine.plan import resolve

                had = [resolve("transform", "identity").record()]
            man["transforms"] = _merge(had, transforms)
        man.setdefault("invocations", []).append(inv)
    else:
        man = {
            "format": FORMAT,
            "kind": "run",
            "pairing": "prompt",
            "identity": identity,
            "dataset": dataset,
            "surrogate": surrogate,
            "seed": seed,
            "attacks": attacks,
            "victims": victims,
            "created": now(),
            "versions": _versions(),
            "git": _git_revision(),
            "invocations": [inv],
        }
        if not only_identity:
            man["transforms"] = transforms
    atomic_write_json(path, man)
    return man


def close_manifest(
    run_dir: Path, man: dict[str, Any], summary: dict[str, Any], sample_ids: list[str] = ()
) -> None:
    """Record the invocation's end and summary, and the samples the run now covers."""
    man["invocations"][-1].update({"ended": now(), **summary})
    have = man.setdefault("samples", [])
    man["samples"] = have + [s for s in sample_ids if s not in set(have)]
    man["updated"] = now()
    atomic_write_json(Path(run_dir) / MANIFEST, man)
