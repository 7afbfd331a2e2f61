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
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..errors import RunDirError
from .schema import COLUMNS, IDENTITY, LATE_COLUMNS, ROW_SCHEMA, unit_label

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


def _row(r: dict[str, Any]) -> dict[str, Any]:
    """``r`` on :data:`COLUMNS`; a late column it lacks (or holds as None / NaN, as a frame
    made before the column existed does) takes its default (:data:`LATE_COLUMNS`)."""
    out = {c: r.get(c) for c in COLUMNS}
    for c, default in LATE_COLUMNS.items():
        v = out[c]
        if v is None or (isinstance(v, float) and v != v):
            out[c] = default
    return out


def write_shard(path: Path, rows: list[dict[str, Any]]) -> None:
    """Write rows (dicts with :data:`COLUMNS`) as one Parquet file, atomically."""
    table = pa.Table.from_pylist([_row(r) for r in rows], schema=ROW_SCHEMA)
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    atomic_write_bytes(path, sink.getvalue().to_pybytes())


def _empty_rows() -> pd.DataFrame:
    return pd.DataFrame(
        {c: pd.Series(dtype=ROW_SCHEMA.field(c).type.to_pandas_dtype()) for c in COLUMNS}
    )


def _compacted_of(shard: Path) -> Path:
    """The compacted file of a loose shard ``rows/<victim>/<attack>/<sample>.parquet``:
    ``rows/<victim>/<attack>.parquet``."""
    return shard.parent.with_name(shard.parent.name + ".parquet")


def _read(path: Path) -> pa.Table:
    """A row file as a :data:`ROW_SCHEMA` table; a file written before a column of
    :data:`LATE_COLUMNS` existed reads with that column's default (``transform`` =
    ``identity``: every earlier evaluation was on the image as it was)."""
    table = pq.read_table(path, schema=ROW_SCHEMA)
    for name, default in LATE_COLUMNS.items():
        col = table.column(name)
        if col.null_count:
            i = table.schema.get_field_index(name)
            table = table.set_column(i, name, pc.fill_null(col, default))
    return table


def row_tables(run_dir: str | Path) -> list[pa.Table]:
    """Every row file of a run directory, compacted (one per victim x attack) or loose (one
    per job), as tables; a loose shard whose sample is already in its compacted file (a
    compaction killed before it removed its inputs) is skipped, so no row counts twice."""
    rows_dir = Path(run_dir) / ROWS
    files = sorted(rows_dir.glob("**/*.parquet"))
    fileset = set(files)
    tables: list[pa.Table] = []
    read: dict[Path, pa.Table] = {}  # compacted files read early to check a shard
    compacted_ids: dict[Path, set[str]] = {}

    def stems(t: pa.Table) -> set[str]:
        return {_safe(str(i)) for i in pc.unique(t.column("sample_id")).to_pylist()}

    for p in files:
        comp = _compacted_of(p)
        if p.parent != rows_dir and comp in fileset:
            if comp not in compacted_ids:
                read[comp] = _read(comp)
                compacted_ids[comp] = stems(read[comp])
            if p.stem in compacted_ids[comp]:
                continue
        t = read.pop(p, None) or _read(p)
        if p.parent.parent == rows_dir and p.with_suffix("").is_dir():
            compacted_ids[p] = stems(t)  # a compacted file with loose shards beside it
        tables.append(t)
    return tables


def load_rows(run_dir: str | Path) -> pd.DataFrame:
    """All result rows of a run directory as one DataFrame with :data:`COLUMNS` (compacted
    and loose row files alike: :func:`row_tables`)."""
    run_dir = Path(run_dir)
    if not (run_dir / MANIFEST).exists():
        raise RunDirError(
            f"{run_dir} is not a uadbench run directory (no {MANIFEST}); pass the --out of a run"
        )
    tables = row_tables(run_dir)
    if not tables:
        return _empty_rows()
    # one chunk per column before pandas: converting many chunks is ~10x slower
    return pa.concat_tables(tables).combine_chunks().to_pandas()


def victim_dir(victim: str, transform_key: str = "") -> str:
    """The directory name under ``rows/`` of a victim evaluated under a transform:
    ``<victim>`` for the identity transform (``transform_key`` empty: the layout of every
    run made before transforms existed), ``<victim>@<transform>-<hash>`` otherwise."""
    return _safe(victim) + (f"@{_safe(transform_key)}" if transform_key else "")


def as_units(rows: pd.DataFrame) -> pd.DataFrame:
    """``rows`` with ``victim`` holding the evaluation unit (victim, transform)
    (:func:`~uadbench.store.schema.unit_label`: the victim's label under the identity,
    ``<victim> | <transform>`` otherwise), so every table, test and pairing that goes by
    ``victim`` treats each (victim, transform) as its own column and compares, pairs and
    takes clean rows within it. Rows under the identity alone come back unchanged."""
    if rows.empty or rows["transform"].eq(IDENTITY).all():
        return rows
    rows = rows.copy()
    rows["victim"] = [unit_label(v, t) for v, t in zip(rows["victim"], rows["transform"])]
    return rows


def load_unit_rows(run_dir: str | Path) -> pd.DataFrame:
    """:func:`load_rows` with (victim, transform) as the ``victim`` unit (:func:`as_units`):
    what the reports read."""
    return as_units(load_rows(run_dir))


def compacted_path(
    run_dir: str | Path, victim: str, attack_key: str, transform_key: str = ""
) -> Path:
    """The compacted row file of (victim, transform, attack config):
    ``rows/<victim_dir>/<attack>.parquet`` (:func:`victim_dir`)."""
    return Path(run_dir) / ROWS / victim_dir(victim, transform_key) / f"{_safe(attack_key)}.parquet"


def compacted_samples(
    run_dir: str | Path, victim: str, attack_key: str, transform_key: str = ""
) -> frozenset[str]:
    """Sample ids (as file-name stems) whose rows are in the compacted file of (victim,
    transform, attack config); empty when there is none."""
    path = compacted_path(run_dir, victim, attack_key, transform_key)
    if not path.exists():
        return frozenset()
    ids = pq.read_table(path, columns=["sample_id"]).column(0).to_pylist()
    return frozenset(_safe(str(i)) for i in ids)


def compact_rows(run_dir: str | Path) -> int:
    """Merge each (victim, attack config)'s loose row shards into its one compacted file
    ``rows/<victim>/<attack>.parquet``, then delete them. Returns the shards merged.

    Safe at any point: the compacted file is written atomically (with the rows it already
    had) before any shard is deleted, and readers skip a shard whose sample the compacted
    file holds, so a kill between the two steps neither loses nor duplicates a row. Only
    run while holding the run's lock with no job running."""
    rows_dir = Path(run_dir) / ROWS
    if not rows_dir.is_dir():
        return 0
    merged = 0
    for vdir in sorted(p for p in rows_dir.iterdir() if p.is_dir()):
        for adir in sorted(p for p in vdir.iterdir() if p.is_dir()):
            shards = sorted(adir.glob("*.parquet"))
            if not shards:
                continue
            comp = adir.with_name(adir.name + ".parquet")
            have: set[str] = set()
            tables = []
            if comp.exists():
                old = _read(comp)
                have = {_safe(str(i)) for i in old.column("sample_id").to_pylist()}
                tables.append(old)
            new = [p for p in shards if p.stem not in have]
            tables += [_read(p) for p in new]
            table = pa.concat_tables(tables)
            order = pa.array([_safe(str(i)) for i in table.column("sample_id").to_pylist()])
            table = (
                table.append_column("_key", order)
                .sort_by([("_key", "ascending"), ("prompt_index", "ascending")])
                .drop(["_key"])
            )
            sink = pa.BufferOutputStream()
            pq.write_table(table, sink)
            atomic_write_bytes(comp, sink.getvalue().to_pybytes())
            for p in shards:
                p.unlink()
            merged += len(new)
            try:
                adir.rmdir()
            except OSError:
                pass  # something else in there (not ours): leave it
    return merged


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


def code_key(*versions: str) -> str:
    """A short key of plugin code versions (attack and surrogate): part of an adversarial
    image's cache path, so an edited attack never gets its old images back as cached."""
    import hashlib

    if not any(versions):
        return ""
    return "c" + hashlib.sha256("|".join(versions).encode()).hexdigest()[:10]


def adv_path(
    run_dir: str | Path,
    attack_name: str,
    attack_hash: str,
    surrogate: str,
    sample_id: str,
    seed: int = 0,
    code: str = "",
) -> Path:
    """Where the adversarial PNG of (attack config, surrogate, seed, code versions
    (:func:`code_key`), sample) is cached."""
    return (
        Path(run_dir)
        / ADV
        / f"{_safe(attack_name)}-{attack_hash}"
        / _safe(surrogate)
        / (f"seed{seed}-{_safe(code)}" if code else f"seed{seed}")
        / f"{_safe(sample_id)}.png"
    )


def shard_path(
    run_dir: str | Path, victim: str, attack_key: str, sample_id: str, transform_key: str = ""
) -> Path:
    """Row shard of one evaluation job (victim × transform × attack config × sample);
    ``attack_key`` is ``clean`` or ``<attack_name>-<hash>``, ``transform_key`` empty for the
    identity transform (:func:`victim_dir`)."""
    return (
        Path(run_dir)
        / ROWS
        / victim_dir(victim, transform_key)
        / _safe(attack_key)
        / f"{_safe(sample_id)}.parquet"
    )
