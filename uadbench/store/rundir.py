"""Run directory layout (DESIGN.md): manifest, Parquet row shards, adversarial images,
failures. Every write is atomic (temp file + rename)."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import RunDirError
from .schema import COLUMNS, ROW_SCHEMA

MANIFEST = "manifest.json"
ROWS = "rows"
ADV = "adv"
FAILURES = "failures.jsonl"


_UMASK = os.umask(0)
os.umask(_UMASK)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; results are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def remove_orphan_temp_files(run_dir: Path) -> int:
    """Delete the temporary files :func:`atomic_write_bytes` left behind when its process
    was killed mid-write (``.<name>.*.tmp``). Only safe while holding the run's lock with
    no job running. Returns how many were removed."""
    n = 0
    for p in Path(run_dir).glob("**/.*.tmp"):
        p.unlink(missing_ok=True)
        n += 1
    return n


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(
        path, (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode()
    )


def write_shard(path: Path, rows: list[dict[str, Any]]) -> None:
    """Write rows (dicts with :data:`COLUMNS`) as one Parquet file, atomically."""
    table = pa.Table.from_pylist([{c: r.get(c) for c in COLUMNS} for r in rows], schema=ROW_SCHEMA)
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    atomic_write_bytes(path, sink.getvalue().to_pybytes())


def load_rows(run_dir: str | Path) -> pd.DataFrame:
    """All result rows of a run directory as one DataFrame with :data:`COLUMNS`."""
    run_dir = Path(run_dir)
    if not (run_dir / MANIFEST).exists():
        raise RunDirError(
            f"{run_dir} is not a uadbench run directory (no {MANIFEST}); pass the --out of a run"
        )
    shards = sorted((run_dir / ROWS).glob("**/*.parquet"))
    if not shards:
        return pd.DataFrame(
            {c: pd.Series(dtype=ROW_SCHEMA.field(c).type.to_pandas_dtype()) for c in COLUMNS}
        )
    tables = [pq.read_table(p, schema=ROW_SCHEMA) for p in shards]
    return pa.concat_tables(tables).to_pandas()


def load_manifest(run_dir: str | Path) -> dict[str, Any]:
    path = Path(run_dir) / MANIFEST
    if not path.exists():
        raise RunDirError(
            f"{run_dir} is not a uadbench run directory (no {MANIFEST}); pass the --out of a run"
        )
    return json.loads(path.read_text())


def _safe(part: str) -> str:
    """A path component for an id: keeps letters, digits and ``-_.+[]=``; '/' → '__'."""
    out = part.replace("/", "__").replace("\\", "__")
    return "".join(c if (c.isalnum() or c in "-_.+[]=@") else "_" for c in out) or "_"


def adv_path(
    run_dir: str | Path,
    attack_name: str,
    attack_hash: str,
    surrogate: str,
    sample_id: str,
    seed: int = 0,
) -> Path:
    """Where the adversarial PNG of (attack config, surrogate, seed, sample) is cached."""
    return (
        Path(run_dir)
        / ADV
        / f"{_safe(attack_name)}-{attack_hash}"
        / _safe(surrogate)
        / f"seed{seed}"
        / f"{_safe(sample_id)}.png"
    )


def shard_path(run_dir: str | Path, victim: str, attack_key: str, sample_id: str) -> Path:
    """Row shard of one evaluation job (victim × attack config × sample); ``attack_key`` is
    ``clean`` or ``<attack_name>-<hash>``."""
    return Path(run_dir) / ROWS / _safe(victim) / _safe(attack_key) / f"{_safe(sample_id)}.parquet"
