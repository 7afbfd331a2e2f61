"""Throughput of the Ray executor against the local one on a single machine (2 CPUs).

Both run the same small evaluation: ``synthetic:size=128`` images, ``feature-pgd:steps=1``
on ``seeded-sam-tiny`` (surrogate and victim). The Ray instance is started before timing
(a cluster that already runs, as with ``--ray-address``). Two views:

* end to end, as a user runs ``uadbench run`` — each executor in a fresh Python process
  (imports, model loading and the run; Ray's driver joins the running cluster). This is
  the figure the goal is about;
* in process, after a warm-up run — the local executor with nothing left to import
  against Ray, whose actors are still new processes that import torch and torchvision
  and load their models: Ray's fixed cost alone (a few seconds), which a 20-image run of
  a tiny model does not amortise.

The normal suite runs 4 images and only prints the figures. ``UADBENCH_BENCH=1`` runs the
20-image goal and asserts it: end to end, Ray's wall time stays under 2× the local one.

    UADBENCH_BENCH=1 pytest tests/benchmarks/test_bench_ray.py -s
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

ray = pytest.importorskip("ray", reason="the Ray executor needs ray: pip install 'uadbench[ray]'")

from uadbench import api  # noqa: E402
from uadbench.datasets.synthetic import Synthetic  # noqa: E402

BENCH = os.environ.get("UADBENCH_BENCH") == "1"
N = 20 if BENCH else 4
#: Ray's overhead on one machine, as a bound on wall time: Ray / local
MAX_RATIO = 2.0
TINY = "seeded-sam-tiny"


@pytest.fixture(scope="module")
def cluster():
    if ray.is_initialized():  # pragma: no cover - another module left one open
        ray.shutdown()
    t = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING", log_to_driver=False)
    print(f"\nray.init (2 CPUs): {time.perf_counter() - t:.1f} s")
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


def _fresh_process(kw: dict) -> float:
    """Wall time of ``api.run(**kw)`` in a new Python process, as ``uadbench run`` runs."""
    code = (
        "import json, sys\nfrom uadbench import api\n"
        "r = api.run(**json.loads(sys.argv[1]))\nsys.exit(0 if r.ok else 1)\n"
    )
    t = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", code, json.dumps(kw)], capture_output=True, text=True, timeout=600
    )
    seconds = time.perf_counter() - t
    assert proc.returncode == 0, proc.stderr[-2000:]
    return seconds


def test_ray_throughput_against_local(benchmark, cluster, tmp_path):
    dataset = f"synthetic:n={N},size=128"
    Synthetic(Synthetic.Config(n=N, size=128)).ids()  # generated before timing
    kw = dict(
        attacks="feature-pgd:steps=1", victims=TINY, surrogate=TINY, dataset=dataset, progress=False
    )
    ray_opts = {"executor": "ray", "executor_options": {"address": cluster}}

    # end to end, each in a fresh process
    e2e_local = _fresh_process({**kw, "out": str(tmp_path / "e2e-local")})

    def ray_run():
        return _fresh_process({**kw, **ray_opts, "out": str(tmp_path / "e2e-ray")})

    e2e_ray = benchmark.pedantic(ray_run, rounds=1, iterations=1)

    # in process: local warmed up, against Ray's fixed cost
    api.run(out=tmp_path / "warm", limit=1, **kw)
    t = time.perf_counter()
    local = api.run(out=tmp_path / "local", **kw)
    warm_local = time.perf_counter() - t
    t = time.perf_counter()
    remote = api.run(out=tmp_path / "ray", executor="ray", **kw)
    warm_ray = time.perf_counter() - t
    assert local.ok and remote.ok
    assert remote.summary.attack_done == N and remote.summary.eval_done == 2 * N

    ratio, warm_ratio = e2e_ray / e2e_local, warm_ray / warm_local
    benchmark.extra_info.update(
        images=N,
        local_images_per_s=N / e2e_local,
        ray_images_per_s=N / e2e_ray,
        ratio=ratio,
        warm_local_images_per_s=N / warm_local,
        warm_ray_images_per_s=N / warm_ray,
        warm_ratio=warm_ratio,
    )
    print(
        f"\n{N} images, end to end: local {e2e_local:.1f} s ({N / e2e_local:.2f} images/s), "
        f"ray on 2 CPUs {e2e_ray:.1f} s ({N / e2e_ray:.2f} images/s), ratio {ratio:.2f}"
        f"\n{N} images, in process: local {warm_local:.1f} s ({N / warm_local:.2f} images/s), "
        f"ray {warm_ray:.1f} s ({N / warm_ray:.2f} images/s), ratio {warm_ratio:.2f}"
    )
    if BENCH:
        assert ratio < MAX_RATIO, f"Ray takes {ratio:.2f}x the local time (goal < {MAX_RATIO}x)"
