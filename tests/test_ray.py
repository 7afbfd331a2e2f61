"""The Ray executor on a local 2-CPU Ray instance: same rows and images as the local
executor, resume after a worker is killed, the ``--executor ray`` command line joining a
running cluster, and ``--retry-failed`` through it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ray = pytest.importorskip("ray", reason="the Ray executor needs ray: pip install 'uadbench[ray]'")

from uadbench import api  # noqa: E402
from uadbench.engine.ray_executor import RayExecutor  # noqa: E402
from uadbench.store.manifest import open_manifest  # noqa: E402
from uadbench.store.rundir import load_rows, remove_orphan_temp_files  # noqa: E402

TINY = "seeded-sam-tiny"
KEY = ["sample_id", "attack", "victim", "prompt_index"]

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def cluster():
    """One local Ray instance (2 CPUs) for the whole module; its GCS address."""
    if ray.is_initialized():  # pragma: no cover - another module left one open
        ray.shutdown()
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING", log_to_driver=False)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


def _files(run_dir: Path) -> dict[str, int]:
    return {
        str(p): p.stat().st_mtime_ns
        for p in [*run_dir.glob("adv/**/*.png"), *run_dir.glob("rows/**/*.parquet")]
    }


def _sorted_rows(run_dir: Path):
    return load_rows(run_dir).sort_values(KEY).reset_index(drop=True)


def test_ray_writes_the_same_rows_and_images_as_local(cluster, tmp_path, capsys):
    kw = dict(
        attacks="feature-pgd:steps=2", victims=f"{TINY},{TINY}:seed=1", surrogate=TINY, limit=2
    )
    local = api.run(out=tmp_path / "local", progress=False, **kw)
    capsys.readouterr()
    remote = api.run(out=tmp_path / "ray", executor="ray", progress=True, **kw)
    err = capsys.readouterr().err
    assert local.ok and remote.ok
    # one bar per phase, jobs done/total
    assert "attack (seeded-sam-tiny, 2 actors)" in err and "2/2" in err
    assert "eval (2 victims, 2 actors)" in err and "8/8" in err
    assert ray.is_initialized()  # the caller's Ray session is left open
    s = remote.summary
    assert (s.attack_done, s.attack_jobs, s.eval_done, s.eval_jobs) == (2, 2, 8, 8)
    assert remote.summary.line().startswith("attack jobs 2 run + 0 cached of 2; eval jobs 8 run")

    a, b = _sorted_rows(local.run_dir), _sorted_rows(remote.run_dir)
    assert len(a) == 2 * 2 * 2 * 80 and not b.duplicated(KEY).any()
    assert list(a.columns) == list(b.columns)
    same = [c for c in a.columns if c not in ("iou", "seconds")]
    assert a[same].equals(b[same])
    np.testing.assert_allclose(a.iou.to_numpy(), b.iou.to_numpy(), rtol=0, atol=1e-9)
    assert (a[a.attack != "clean"].iou < 100).any()  # the attack did something

    pngs = sorted(local.run_dir.glob("adv/**/*.png"))
    assert len(pngs) == 2
    for p in pngs:
        q = remote.run_dir / p.relative_to(local.run_dir)
        assert q.read_bytes() == p.read_bytes()


def _kill_when(ex: RayExecutor, run_dir: Path, pattern: str, done: threading.Event):
    """Wait for a file matching ``pattern``, then SIGKILL the first actor's process.
    Returns (killed pid, the files finished before)."""
    deadline = time.time() + 240
    while time.time() < deadline and not done.is_set() and not list(run_dir.glob(pattern)):
        time.sleep(0.01)
    assert not done.is_set(), f"the run finished before {pattern} could be killed"
    pid = ray.get(ex.actors[0].handle.pid.remote())  # answered while the actor works
    finished = _files(run_dir)
    os.kill(pid, signal.SIGKILL)
    return pid, finished


def test_killed_worker_is_restarted_and_nothing_is_lost_or_redone(cluster, tmp_path, caplog):
    victims = f"{TINY},{TINY}:seed=1"
    spec = api.plan(attacks="feature-pgd:steps=6", victims=victims, surrogate=TINY, limit=4)
    out = tmp_path / "run"
    open_manifest(
        out,
        spec.identity(),
        spec.dataset.record(),
        spec.surrogate.record(),
        [a.record() for a in spec.attacks],
        [v.record() for v in spec.victims],
        spec.seed,
        "cpu",
    )
    # one restart: the first kill is absorbed by Ray (restart + retry), the second kills
    # the actor for good and the executor replaces it and retries its jobs
    ex = RayExecutor(spec, out, progress=False, max_restarts=1)
    result, errors, done = [], [], threading.Event()

    def target():
        try:
            result.append(ex.run())
        except BaseException as exc:  # noqa: BLE001 - re-raised below
            errors.append(exc)
        finally:
            done.set()

    thread = threading.Thread(target=target)
    caplog.set_level("WARNING", logger="uadbench.engine.ray_executor")
    thread.start()
    try:
        # the same actor: in phase 1 while it attacks, in phase 2 while it evaluates
        pid1, before1 = _kill_when(ex, out, "adv/**/*.png", done)
        pid2, before2 = _kill_when(ex, out, "rows/*/feature-pgd-*/*.parquet", done)
    finally:
        thread.join(300)
    assert not errors, errors
    summary = result[0]
    assert not summary.failures
    assert pid1 != pid2  # Ray restarted the actor after the first kill
    assert "died for good" in caplog.text  # ... and not after the second
    assert (summary.attack_done, summary.eval_done) == (4, 4 * 2 * 2)
    assert before1 and len(before2) > len(before1)
    rows = load_rows(out)
    assert len(rows) == 4 * 2 * 2 * 80
    assert not rows.duplicated(KEY).any()
    after = _files(out)
    assert len(after) == 4 + 4 * 2 * 2
    for path, mtime in {**before1, **before2}.items():
        assert after[path] == mtime, f"finished job redone: {path}"
    # a worker killed mid-write leaves its temp file (at most one per kill); api.run, which
    # holds the run's lock, sweeps them once the executor is done
    left = list(out.glob("**/*.tmp"))
    assert len(left) <= 2, left
    assert remove_orphan_temp_files(out) == len(left) and not list(out.glob("**/*.tmp"))


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "uadbench.cli", *args],
        capture_output=True,
        text=True,
        env=dict(os.environ),
        timeout=300,
    )


def test_cli_joins_a_cluster_records_failures_and_retries_them(cluster, tmp_path):
    data = tmp_path / "imgs"
    data.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (64, 80, 3), dtype=np.uint8)).save(data / "a.png")
    Image.fromarray(rng.integers(0, 255, (64, 80, 3), dtype=np.uint8)).save(data / "b.png")
    good = (data / "b.png").read_bytes()
    (data / "b.png").write_bytes(good[:100])  # truncated
    out = tmp_path / "run"
    args = ["run", "--attack", "feature-pgd:steps=1", "--victims", TINY, "--surrogate", TINY]
    args += ["--dataset", f"folder:root={data}", "--out", str(out), "--no-progress"]
    args += ["--executor", "ray", "--ray-address", cluster]

    first = _cli(*args)
    assert first.returncode == 1, first.stderr
    assert "3 failed" in first.stdout and "failures.jsonl" in first.stderr
    fails = [json.loads(line) for line in (out / "failures.jsonl").read_text().splitlines()]
    assert {f["key"]["sample"] for f in fails} == {"b.png"} and len(fails) == 3
    first = load_rows(out)
    assert set(first.sample_id) == {"a.png"}
    finished = _files(out)
    assert ray.cluster_resources().get("CPU") == 2  # joined, not shut down

    (data / "b.png").write_bytes(good)
    again = _cli(*args, "--retry-failed")
    assert again.returncode == 0, again.stderr
    assert "attack jobs 1 run" in again.stdout and "eval jobs 2 run" in again.stdout
    rows = load_rows(out)
    assert len(rows) == 2 * 2 * 80 and not rows.duplicated(KEY).any()
    after = _files(out)
    for path, mtime in finished.items():  # row files are compacted when a run ends
        if path.endswith(".png"):
            assert after[path] == mtime, f"finished job redone: {path}"
    kept = first.merge(rows, how="left", indicator=True)  # a.png's rows as they were
    assert (kept["_merge"] == "both").all(), "finished job redone"


def test_gpu_request_on_a_cluster_without_gpu_says_what_to_do(cluster, tmp_path):
    from uadbench.errors import ConfigError

    spec = api.plan(attacks="feature-pgd:steps=1", victims=TINY, surrogate=TINY, limit=1)
    with pytest.raises(ConfigError, match="must be >= 0"):
        RayExecutor(spec, tmp_path / "r", gpus_per_model=-1)
    ex = RayExecutor(spec, tmp_path / "r", device="cuda", progress=False)
    assert ex.gpus == 1.0  # default on cuda: one GPU per model
    with pytest.raises(ConfigError, match="has no GPU.*--gpus-per-model 0"):
        ex.run()
    assert ray.is_initialized() and not ex.actors
