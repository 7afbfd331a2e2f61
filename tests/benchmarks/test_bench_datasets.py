"""Speed of the dataset code: synthetic generation and SA-1B loading (pytest-benchmark).

Run with ``pytest tests/benchmarks --benchmark-enable``; in the normal suite each runs once.
"""

from __future__ import annotations

import time

from uadbench.datasets.sa1b import SA1B
from uadbench.datasets.synthetic import _sources, generate


def test_generate_8_images_256(benchmark, tmp_path):
    _sources()  # the photo cache is loaded once per process; time the scenes only
    start = time.perf_counter()
    paths = benchmark.pedantic(generate, args=(tmp_path, 8, 0), rounds=1, iterations=1)
    assert len(paths) == 8
    assert time.perf_counter() - start < 10.0  # goal: well under 1 s on one CPU core


def test_load_8_synthetic_through_sa1b(benchmark, tmp_path):
    generate(tmp_path, 8, 0)
    ds = SA1B(SA1B.Config(root=str(tmp_path)))
    samples = benchmark(lambda: [ds.load(i) for i in ds.ids()])
    assert len(samples) == 8 and all(s.has_gt for s in samples)
