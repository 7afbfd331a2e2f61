"""Tabulating a run's rows: loose per-job shards vs the compacted layout (pytest-benchmark).

A paper-scale run (1000 images x 7 attacks x 4 victims, clean rows aside) writes 28,000
row shards of 80 prompts each; a finished run compacts them into one file per victim x
attack (:func:`uadbench.store.rundir.compact_rows`). Measured here, in one process, on
synthetic rows: the time to read and tabulate (mean IoU per attack x victim) the run
directory

* loose: every job's shard, as a run leaves them before compaction;
* compacted: after :func:`compact_rows`;
* compacted + loose: compacted, then a resumed run's few new loose shards (one image);
* one file: the same rows in a single Parquet file (the floor, read by pyarrow alone).

Goal (asserted with ``UADBENCH_BENCH=1``, full size): a finished run (compacted) within
1.5x of one file; compacted + loose (a run in progress) is printed, not asserted. Without it (``make test``) the run is 12 images and only the
rows are checked; ratios are always printed.
Run: ``UADBENCH_BENCH=1 pytest tests/benchmarks/test_bench_compaction.py -s --benchmark-enable``.
"""

from __future__ import annotations

import os
import shutil
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from bench_helpers import median_time

from uadbench.store.rundir import (
    MANIFEST,
    ROWS,
    atomic_write_json,
    compact_rows,
    load_rows,
    shard_path,
    write_shard,
)

FULL = os.environ.get("UADBENCH_BENCH") == "1"
#: the paper's 1000 images under UADBENCH_BENCH=1 (UADBENCH_BENCH_IMAGES=N to change it)
IMAGES = int(os.environ.get("UADBENCH_BENCH_IMAGES", 1000)) if FULL else 12
ATTACKS = [f"atk{i}-{i:012x}" for i in range(7)]
VICTIMS = ["v-a", "v-b", "v-c", "v-d"]
PROMPTS = 80
GOAL = 1.5


def _rows(victim: str, attack: str, sid: str, rng: np.random.Generator) -> list[dict]:
    base = {
        "dataset": "synthetic",
        "sample_id": sid,
        "attack": attack.split("-")[0],
        "attack_name": attack.split("-")[0],
        "attack_hash": attack.split("-")[1],
        "eps": 8 / 255,
        "surrogate": "v-a",
        "victim": victim,
        "reference": "gt",
        "seconds": 0.1,
        "seed": 0,
    }
    ious = rng.uniform(0, 100, PROMPTS)
    return [
        {
            **base,
            "prompt_index": i,
            "prompt_kind": "point" if i % 2 else "box",
            "mask_index": i // 8,
            "x0": 1.0,
            "y0": 2.0,
            "x1": 3.0,
            "y1": 4.0,
            "iou": float(ious[i]),
        }
        for i in range(PROMPTS)
    ]


def _write_loose(run, images: range, rng) -> None:
    for v in VICTIMS:
        for a in ATTACKS:
            for k in images:
                sid = f"sa_{k:06d}"
                write_shard(shard_path(run, v, a, sid), _rows(v, a, sid, rng))


def _tabulate(run) -> np.ndarray:
    rows = load_rows(run)
    return rows.groupby(["attack", "victim"])["iou"].mean().to_numpy()


def test_tabulate_compacted_vs_loose_shards(benchmark, tmp_path):
    rng = np.random.default_rng(0)
    loose = tmp_path / "loose"
    atomic_write_json(loose / MANIFEST, {"format": "uadbench-run/1", "kind": "run"})
    _write_loose(loose, range(IMAGES), rng)
    compacted = tmp_path / "compacted"
    shutil.copytree(loose, compacted)
    t = time.perf_counter()
    merged = compact_rows(compacted)
    t_compact = time.perf_counter() - t
    assert merged == IMAGES * len(VICTIMS) * len(ATTACKS)
    assert len(list((compacted / ROWS).glob("**/*.parquet"))) == len(VICTIMS) * len(ATTACKS)
    resumed = tmp_path / "resumed"
    shutil.copytree(compacted, resumed)
    _write_loose(resumed, range(IMAGES, IMAGES + 1), rng)  # a resumed run's new image
    single = tmp_path / "single"
    atomic_write_json(single / MANIFEST, {"format": "uadbench-run/1", "kind": "run"})
    table = pa.concat_tables(pq.read_table(p) for p in sorted((loose / ROWS).glob("**/*.parquet")))
    (single / ROWS).mkdir()
    pq.write_table(table, single / ROWS / "all.parquet")

    expected = _tabulate(single)
    np.testing.assert_allclose(_tabulate(compacted), expected)  # same rows, same numbers
    np.testing.assert_allclose(_tabulate(loose), expected)
    n = IMAGES * len(VICTIMS) * len(ATTACKS) * PROMPTS
    assert len(load_rows(compacted)) == n and len(load_rows(resumed)) == n + 28 * PROMPTS

    repeats = 3 if FULL else 1
    benchmark.pedantic(_tabulate, args=(compacted,), rounds=repeats, iterations=1)
    t_single = median_time(lambda: _tabulate(single), repeats)
    t_comp = median_time(lambda: _tabulate(compacted), repeats)
    t_resumed = median_time(lambda: _tabulate(resumed), repeats)
    t_loose = median_time(lambda: _tabulate(loose), 1)
    ratios = {
        "compacted": t_comp / t_single,
        "compacted + loose": t_resumed / t_single,
        "loose": t_loose / t_single,
    }
    benchmark.extra_info.update(
        images=IMAGES,
        one_file_s=t_single,
        compacted_s=t_comp,
        compacted_plus_loose_s=t_resumed,
        loose_s=t_loose,
        compaction_s=t_compact,
    )
    print(
        f"\ntabulate {IMAGES} images x {len(ATTACKS)} attacks x {len(VICTIMS)} victims "
        f"({n} rows): one file {t_single:.3f} s, compacted {t_comp:.3f} s "
        f"({ratios['compacted']:.2f}x), compacted + 1 image loose {t_resumed:.3f} s "
        f"({ratios['compacted + loose']:.2f}x), loose {t_loose:.3f} s "
        f"({ratios['loose']:.1f}x); compaction took {t_compact:.1f} s (goal <= {GOAL}x)"
    )
    if FULL:  # a finished run is compacted; compacted + loose is a run in progress
        assert ratios["compacted"] <= GOAL, ratios
