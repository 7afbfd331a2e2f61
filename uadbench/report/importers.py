"""Import results published by other code bases into uadbench run directories.

``anything-unsegmentable``: the per-prompt logs of the UAD paper's reference
implementation (UAD.md, "The reference's log format"): one JSON file per (image,
attack), ``<imgid>_<attack>.json`` in one folder per attack::

    {"imgid": 8, "adv_method": "UAD",
     "evaluations": {"m0_p0": {"prompt": [x, y], "samb": 67.6, "fastsam": 0.87, ...},
                     "m0_p5": {"prompt": [x0, y0, x1, y1], ...}, ...}}

Each (file, evaluation, victim) becomes one row: ``prompt_kind`` from the number of
coordinates (2 = point, 4 = box), ``mask_index`` from ``m<mask>``, ``prompt_index``
sequential in file order, ``reference = "gt"``. The reference drew prompts without a
per-image seed, so prompts differ between attacks: the manifest says
``"pairing": "image"`` and comparisons pair images, never prompts.
"""

from __future__ import annotations

import functools
import json
import logging
import re
from pathlib import Path
from typing import Any

from ..errors import DataError, RunDirError
from ..store.rundir import MANIFEST, ROWS, atomic_write_json, write_shard

log = logging.getLogger(__name__)

#: the reference's attack names -> uadbench attack ids
AU_ATTACKS = {
    "attack_sam_k": "attack-sam-k",
    "tap": "tap",
    "ilpd": "ilpd",
    "aa": "aa",
    "pata": "pata",
    "pata++": "pata++",
    "uad": "uad",
}
#: the reference's victim keys -> uadbench victim ids
AU_VICTIMS = {
    "samb": "sam-vit-b",
    "saml": "sam-vit-l",
    "samh": "sam-vit-h",
    "fastsam": "fastsam",
}
#: paper order of the attacks (UAD.md reference results), used for the manifest
AU_ORDER = ["attack-sam-k", "tap", "ilpd", "aa", "pata", "pata++", "uad"]
AU_VICTIM_ORDER = ["fastsam", "samb", "saml", "samh"]  # reference keys, paper order
_EVAL_KEY = re.compile(r"^m(\d+)_p(\d+)$")
_FILE = re.compile(r"^(\d+)_(.+)\.json$")


def _attack_id(name: str) -> str:
    key = name.strip().lower()
    if key in AU_ATTACKS:
        return AU_ATTACKS[key]
    out = key.replace("_", "-")
    log.warning("unknown anything-unsegmentable attack %r imported as %r", name, out)
    return out


@functools.cache
def _victim_id(key: str) -> str:
    """Our victim id for a reference key: the registry's canonical name (an alias such
    as ``fastsam`` becomes the registered id, so imported and new runs share columns)."""
    from ..victims import VICTIMS

    name = AU_VICTIMS.get(key)
    if name is None:
        log.warning("unknown anything-unsegmentable victim key %r imported as is", key)
        return key
    return VICTIMS.canonical(name) if name in VICTIMS else name


def _read_log(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(
            f"{path}: not a readable JSON log ({exc}); remove or fix the file"
        ) from None
    if not isinstance(data, dict) or not isinstance(data.get("evaluations"), dict):
        raise DataError(f"{path}: no 'evaluations' object; is this an anything-unsegmentable log?")
    return data


def _rows_of(path: Path, data: dict[str, Any], attack: str) -> list[dict[str, Any]]:
    m = _FILE.match(path.name)
    imgid = data.get("imgid", m.group(1) if m else None)
    if imgid is None:
        raise DataError(f"{path}: no 'imgid' and the file name is not <imgid>_<attack>.json")
    sample_id = f"sa_{int(imgid)}"
    rows = []
    for prompt_index, (key, ev) in enumerate(data["evaluations"].items()):
        km = _EVAL_KEY.match(key)
        if km is None or not isinstance(ev, dict) or "prompt" not in ev:
            raise DataError(
                f"{path}: evaluation {key!r} is not 'm<mask>_p<prompt>' with a 'prompt'"
            )
        coords = [float(c) for c in ev["prompt"]]
        if len(coords) == 2:
            kind, xyxy = "point", (coords[0], coords[1], float("nan"), float("nan"))
        elif len(coords) == 4:
            kind, xyxy = "box", tuple(coords)
        else:
            raise DataError(f"{path}: prompt of {key!r} has {len(coords)} numbers; expected 2 or 4")
        for vkey, value in ev.items():
            if vkey == "prompt":
                continue
            rows.append(
                {
                    "dataset": "sa1b",
                    "sample_id": sample_id,
                    "attack": attack,
                    "attack_name": attack,
                    "attack_hash": "imported",
                    "eps": 8 / 255,
                    "surrogate": "sam-vit-b",
                    "victim": _victim_id(vkey),
                    "prompt_index": prompt_index,
                    "prompt_kind": kind,
                    "mask_index": int(km.group(1)),
                    "x0": xyxy[0],
                    "y0": xyxy[1],
                    "x1": xyxy[2],
                    "y1": xyxy[3],
                    "reference": "gt",
                    "iou": float(value),
                    "seconds": float("nan"),
                    "seed": 0,
                }
            )
    return rows


def import_anything_unsegmentable(src: str | Path, out: str | Path) -> Path:
    """Convert a folder of anything-unsegmentable logs into a run directory.

    ``src``: the reference's ``exp/log/benchmark`` folder (one sub-folder per attack,
    files ``<imgid>_<attack>.json``). ``out``: a new run directory (must not hold a
    manifest already). Writes ``manifest.json`` (``kind: imported``, ``pairing: image``)
    and one Parquet shard per attack. Returns ``out``.
    """
    src, out = Path(src), Path(out)
    if not src.is_dir():
        raise DataError(
            f"{src} is not a directory; pass the folder holding one sub-folder per attack"
        )
    if (out / MANIFEST).exists():
        raise RunDirError(
            f"{out} already holds a run ({MANIFEST}); choose a new --out or delete it"
        )
    files = sorted(p for p in src.glob("*/*.json") if _FILE.match(p.name))
    if not files:
        raise DataError(f"{src}: no <imgid>_<attack>.json logs found in its sub-folders")
    by_attack: dict[str, list[dict[str, Any]]] = {}
    victims: list[str] = []
    for path in sorted(files, key=lambda p: (p.parent.name, int(_FILE.match(p.name).group(1)))):
        data = _read_log(path)
        attack = _attack_id(str(data.get("adv_method") or path.parent.name))
        rows = _rows_of(path, data, attack)
        by_attack.setdefault(attack, []).extend(rows)
        victims += [r["victim"] for r in rows if r["victim"] not in victims]
    attacks = [a for a in AU_ORDER if a in by_attack] + sorted(set(by_attack) - set(AU_ORDER))
    order = [_victim_id(k) for k in AU_VICTIM_ORDER]
    victims = [v for v in order if v in victims] + [v for v in victims if v not in order]
    for attack in attacks:
        safe = re.sub(r"[^A-Za-z0-9_.-]", lambda m: f"%{ord(m.group()):02X}", attack)
        write_shard(out / ROWS / f"{safe}.parquet", by_attack[attack])
    manifest = {
        "format": "uadbench-run/1",
        "kind": "imported",
        "source": "anything-unsegmentable",
        "source_dir": str(src.resolve()),
        "pairing": "image",
        "dataset": "sa1b",
        "attacks": [
            {"label": a, "name": a, "hash": "imported", "config": {}, "eps": 8 / 255}
            for a in attacks
        ],
        "victims": [{"name": v, "hash": ""} for v in victims],
        "surrogate": "sam-vit-b",
        "seed": 0,
        "n_files": len(files),
    }
    atomic_write_json(out / MANIFEST, manifest)
    log.info(
        "imported %d logs (%d attacks, %d victims) into %s",
        len(files),
        len(attacks),
        len(victims),
        out,
    )
    return out
