"""End-to-end runs of the engine: resume after SIGKILL, failures, locks, bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from uadbench import api
from uadbench.errors import ConfigError, MissingCheckpointError, RunDirError, UnknownNameError
from uadbench.store.lock import RunLock
from uadbench.store.rundir import load_manifest, load_rows

TINY = "seeded-sam-tiny"
KEY = ["sample_id", "attack", "victim", "prompt_index"]


def _cli(*args: str, env=None, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "uadbench", *args],
        capture_output=True,
        text=True,
        env=env or dict(os.environ),
        **kw,
    )


def _files(run_dir: Path) -> dict[str, int]:
    out = {}
    for p in list(run_dir.glob("adv/**/*.png")) + list(run_dir.glob("rows/**/*.parquet")):
        st = p.stat()
        out[str(p)] = st.st_mtime_ns
    return out


def test_run_writes_rows_manifest_and_images(tmp_path):
    res = api.run(
        attacks="feature-pgd:steps=5", victims=TINY, limit=2, out=tmp_path / "r", progress=False
    )
    assert res.ok
    rows = load_rows(res.run_dir)
    assert set(rows.attack) == {"clean", "feature-pgd[steps=5]"}
    assert len(rows) == 2 * 2 * 80 and not rows.duplicated(KEY).any()
    # no GT in `samples`: reference = the victim's clean prediction, so clean IoU is 100
    assert (rows[rows.attack == "clean"].iou == 100).all()
    assert (rows.reference == "clean").all()
    man = load_manifest(res.run_dir)
    assert man["identity"]["seed"] == 0 and man["attacks"][0]["name"] == "feature-pgd"
    assert man["versions"]["torch"]
    pngs = sorted(res.run_dir.glob("adv/**/*.png"))
    assert len(pngs) == 2
    # the cached image respects the budget exactly
    from uadbench.datasets.samples import Samples

    ds = Samples()
    for p in pngs:
        adv = np.asarray(Image.open(p)).astype(int)
        clean = ds.load(p.stem).image.astype(int)
        assert adv.shape == clean.shape
        assert np.abs(adv - clean).max() == 8  # 8/255 budget, reached by PGD
    # rerun: everything is cached, nothing is recomputed
    before = _files(res.run_dir)
    res2 = api.run(
        attacks="feature-pgd:steps=5", victims=TINY, limit=2, out=tmp_path / "r", progress=False
    )
    assert res2.summary.attack_done == 0 and res2.summary.eval_done == 0
    assert _files(res.run_dir) == before


def _start_run_then_signal(out: Path, kill_when: str, sig: int):
    """Start a small run in a subprocess, send ``sig`` once a first job has finished and
    return (args, exit code, stderr, the finished files with their mtimes)."""
    args = ["run", "--attack", "feature-pgd:steps=3", "--victims", TINY, "--limit", "3"]
    args += ["--out", str(out), "--no-progress"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "uadbench.cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    pattern = "adv/**/*.png" if kill_when == "attack" else "rows/**/feature-pgd-*/*.parquet"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None and not list(out.glob(pattern)):
        time.sleep(0.02)
    assert proc.poll() is None, "run finished before it could be stopped"
    proc.send_signal(sig)
    _, err = proc.communicate()
    finished = _files(out)
    assert finished, "the stopped run left no finished job"
    return args, proc.returncode, err, finished


def _resume_loses_and_duplicates_nothing(out: Path, args: list[str], finished: dict[str, int]):
    import pandas as pd

    shards = [p for p in finished if p.endswith(".parquet")]
    before = pd.concat([pd.read_parquet(p) for p in shards]) if shards else None
    again = _cli(*args)
    assert again.returncode == 0, again.stderr
    rows = load_rows(out)
    assert len(rows) == 3 * 2 * 80
    assert not rows.duplicated(KEY).any()
    after = _files(out)
    for path, mtime in finished.items():
        if path.endswith(".parquet"):
            continue  # row shards are compacted when the run finishes: compared below
        assert after[path] == mtime, f"finished job redone: {path}"
    if before is not None:  # finished rows kept as they were (their timing is not re-measured)
        cols = [*KEY, "seconds", "iou"]
        kept = before[cols].merge(rows[cols], how="left", indicator=True)
        assert (kept["_merge"] == "both").all(), "finished job redone"
    assert not list(out.glob("rows/*/*/*.parquet")), "finished run left loose row shards"
    assert not list(out.glob("**/*.tmp"))
    assert not (out / ".lock").exists()


@pytest.mark.parametrize("kill_when", ["attack", "eval"])
def test_sigkill_then_resume_loses_and_duplicates_nothing(tmp_path, kill_when):
    out = tmp_path / "run"
    args, _, _, finished = _start_run_then_signal(out, kill_when, signal.SIGKILL)
    assert (out / ".lock").exists()  # stale lock of the dead process: must not block the resume
    _resume_loses_and_duplicates_nothing(out, args, finished)


def test_sigterm_stops_like_ctrl_c_and_the_run_resumes(tmp_path):
    """kill / timeout / a scheduler's preemption send SIGTERM: the run stops cleanly (exit
    130, says how to resume, lock released, no half-written file) and resumes exactly."""
    out = tmp_path / "run"
    args, code, err, finished = _start_run_then_signal(out, "attack", signal.SIGTERM)
    assert code == 130, err
    assert "interrupted; finished jobs are saved — rerun the same command" in err
    assert not (out / ".lock").exists() and not list(out.glob("**/*.tmp"))
    _resume_loses_and_duplicates_nothing(out, args, finished)


def test_failed_job_is_recorded_rest_kept_exit_nonzero(tmp_path):
    data = tmp_path / "imgs"
    data.mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        Image.fromarray(rng.integers(0, 255, (64, 80, 3), dtype=np.uint8)).save(data / f"ok{i}.png")
    good = data / "ok0.png"
    (data / "broken.jpg").write_bytes(good.read_bytes()[:200])  # truncated file
    out = tmp_path / "run"
    r = _cli(
        "run",
        "--attack",
        "feature-pgd:steps=2",
        "--victims",
        TINY,
        "--dataset",
        f"folder:root={data}",
        "--out",
        str(out),
        "--no-progress",
    )
    assert r.returncode == 1
    assert "failed" in r.stderr and "failures.jsonl" in r.stderr
    fails = [json.loads(line) for line in (out / "failures.jsonl").read_text().splitlines()]
    assert fails and all("broken.jpg" in f["key"]["sample"] for f in fails)
    assert "broken.jpg" in fails[0]["error"]
    rows = load_rows(out)
    assert set(rows.sample_id) == {"ok0.png", "ok1.png"}  # the good images' rows are all there
    assert len(rows) == 2 * 2 * 80


def test_incompatible_run_dir_is_refused(tmp_path):
    out = tmp_path / "r"
    api.run(attacks="feature-pgd:steps=1", victims=TINY, limit=1, out=out, progress=False)
    with pytest.raises(RunDirError, match="incompatible config.*seed"):
        api.run(
            attacks="feature-pgd:steps=1", victims=TINY, limit=1, out=out, seed=1, progress=False
        )
    # adding an attack to the same run directory is fine and reuses the clean rows
    res = api.run(attacks="feature-pgd:steps=2", victims=TINY, limit=1, out=out, progress=False)
    assert res.summary.eval_skipped == 1 and res.summary.eval_done == 1
    assert set(load_rows(out).attack) == {"clean", "feature-pgd[steps=1]", "feature-pgd[steps=2]"}


def test_concurrent_run_is_refused(tmp_path):
    out = tmp_path / "r"
    out.mkdir()
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        import socket

        (out / ".lock").write_text(json.dumps({"host": socket.gethostname(), "pid": sleeper.pid}))
        with pytest.raises(RunDirError, match="in use by another run"):
            RunLock(out).acquire()
    finally:
        sleeper.kill()
        sleeper.wait()
    with RunLock(out):  # its owner is dead: stale, taken over
        pass


def test_bad_names_and_options_fail_before_loading(tmp_path):
    with pytest.raises(UnknownNameError, match="Did you mean 'feature-pgd'"):
        api.plan(attacks="featur-pgd", victims=TINY)
    with pytest.raises(UnknownNameError, match="unknown victim"):
        api.plan(attacks="feature-pgd", victims="sam-vit-z")
    with pytest.raises(UnknownNameError, match="unknown dataset"):
        api.plan(attacks="feature-pgd", victims=TINY, dataset="sa1")
    with pytest.raises(ConfigError, match="Did you mean 'steps'"):
        api.plan(attacks="feature-pgd:step=3", victims=TINY)
    with pytest.raises(ConfigError, match="eps"):
        api.plan(attacks="feature-pgd:eps=300", victims=TINY)  # 300/255 > 1


def test_missing_checkpoint_says_where_and_how(tmp_path, monkeypatch):
    monkeypatch.setenv("UADBENCH_CHECKPOINTS", str(tmp_path / "ckpts"))
    with pytest.raises(MissingCheckpointError) as ei:
        api.plan(attacks="feature-pgd", victims="sam-vit-b")
    msg = str(ei.value)
    assert str(tmp_path / "ckpts" / "sam_vit_b_01ec64.pth") in msg
    assert "uadbench download sam-vit-b" in msg and "\n" not in msg
    r = _cli("run", "--victims", "sam-vit-b", "--out", str(tmp_path / "x"))
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "uadbench download" in r.stderr
    assert not (tmp_path / "x").exists()  # nothing written before the check


def test_eps_sweep_gives_one_label_per_budget(tmp_path):
    spec = api.plan(attacks="feature-pgd", victims=TINY, eps="4,8,16")
    labels = [a.label for a in spec.attacks]
    assert labels == ["feature-pgd[eps=4/255]", "feature-pgd", "feature-pgd[eps=16/255]"]
    assert len({a.hash for a in spec.attacks}) == 3


def test_eval_adds_a_victim_without_reattacking(tmp_path):
    out = tmp_path / "r"
    api.run(attacks="feature-pgd:steps=2", victims=TINY, limit=1, out=out, progress=False)
    pngs = _files(out)
    res = api.evaluate(out, victims=f"{TINY}:seed=1", progress=False)
    assert res.summary.attack_done == 0
    rows = load_rows(out)
    assert set(rows.victim) == {TINY, f"{TINY}[seed=1]"}
    assert {k: v for k, v in _files(out).items() if k.endswith(".png")} == {
        k: v for k, v in pngs.items() if k.endswith(".png")
    }


def test_summary_line_reports_speed_only_when_something_ran():
    from uadbench.engine.local import Summary

    idle = Summary(
        attack_jobs=3, attack_skipped=3, eval_jobs=3, eval_skipped=3, seconds=2.0, images=6
    )
    assert "nothing left to run" in idle.line() and "images/s" not in idle.line()
    busy = Summary(attack_jobs=3, attack_done=3, eval_jobs=3, eval_done=3, seconds=2.0, images=6)
    assert "3.00 images/s" in busy.line()


def test_temp_file_of_a_killed_writer_is_swept_when_the_run_ends(tmp_path):
    """A worker SIGKILLed inside atomic_write_bytes leaves ``.<name>.*.tmp``; the next
    invocation on the run directory removes it and keeps every finished file."""
    out = tmp_path / "run"
    api.run(attacks="feature-pgd:steps=1", victims=TINY, limit=1, out=out, progress=False)
    kept = sorted(p for p in out.rglob("*") if p.is_file() and not p.name.endswith(".json"))
    orphan = kept[0].parent / f".{kept[0].name}.abc123.tmp"
    orphan.write_bytes(b"half a file")
    api.run(attacks="feature-pgd:steps=1", victims=TINY, limit=1, out=out, progress=False)
    assert not orphan.exists()
    assert all(p.is_file() for p in kept)


def test_resume_refuses_a_victim_whose_weights_changed(tmp_path, monkeypatch):
    """A retrained model (its default weights file rewritten) keeps its config hash;
    resuming must not mix its old rows with rows of the new weights."""
    import shutil

    from uadbench.zoo import models

    w = tmp_path / "w.safetensors"
    shutil.copy(models.shipped_weights("zoo-hf-sam"), w)
    real = models.shipped_weights
    monkeypatch.setattr(
        models, "shipped_weights", lambda name: w if name == "zoo-hf-sam" else real(name)
    )
    out = tmp_path / "r"
    victims = f"{TINY},zoo-hf-sam"
    kw = dict(attacks="feature-pgd:steps=1", limit=1, out=out, progress=False)
    api.run(victims=victims, **kw)
    rows = len(load_rows(out))
    original = w.read_bytes()
    changed = bytearray(original)
    changed[-1] ^= 1
    w.write_bytes(bytes(changed))
    os.utime(w, ns=(1, 1))  # the digest cache keys on mtime: never the same one twice
    with pytest.raises(RunDirError, match="zoo-hf-sam.*weights changed.*another --out"):
        api.run(victims=victims, **kw)
    assert len(load_rows(out)) == rows  # nothing finished was lost
    api.run(victims=TINY, **kw)  # the other victims' rows still resume
    w.write_bytes(original)  # the weights the run used: resumes, nothing redone
    os.utime(w, ns=(2, 2))
    res = api.run(victims=victims, **kw)
    assert res.summary.eval_done == 0 and len(load_rows(out)) == rows


def test_deleted_images_are_remade_only_for_evaluations_still_to_run(tmp_path):
    """A run directory whose adversarial images were deleted resumes without attacking
    again while every victim's rows exist; a new victim needs the image, and the attack
    remakes it identically."""
    import shutil

    out = tmp_path / "r"
    api.run(attacks="feature-pgd:steps=2", victims=TINY, limit=1, out=out, progress=False)
    png = next(out.glob("adv/**/*.png"))
    first = png.read_bytes()
    rows = load_rows(out)
    shutil.rmtree(out / "adv")
    res = api.run(attacks="feature-pgd:steps=2", victims=TINY, limit=1, out=out, progress=False)
    assert res.ok and res.summary.attack_done == 0 and res.summary.eval_done == 0
    assert not png.exists()
    again = load_rows(out)
    assert len(again) == len(rows) and not again.duplicated(KEY).any()
    res = api.evaluate(out, victims=f"{TINY}:seed=1", progress=False)
    assert res.summary.attack_done == 1 and png.read_bytes() == first
    assert set(load_rows(out).victim) == {TINY, f"{TINY}[seed=1]"}


def test_victims_all_puts_the_surrogate_first_and_untrained_models_last(tmp_path):
    """``--victims all`` is ordered for reading: the white-box column (the surrogate)
    first, then the trained models, then the models labelled as not trained; an explicit
    list keeps the order it was given in."""
    spec = api.plan(attacks="uad", victims="all")
    names = [v.name for v in spec.victims]
    assert names[0] == spec.surrogate.name == "zoo-vit-sam"  # offline default
    assert names[-1] == TINY and len(names) == len(set(names)) >= 5
    hq = api.plan(attacks="uad", victims="all", surrogate="zoo-hq-sam")
    assert [v.name for v in hq.victims][0] == "zoo-hq-sam"
    assert sorted(v.name for v in hq.victims) == sorted(names)  # same victims, reordered
    # a surrogate with other settings is another model: it does not move the default one
    from uadbench.engine.plan import expand_victims

    registry_order = [v.name for v in expand_victims("all")[0]]
    assert registry_order != names  # (the reordering is what this test checks)
    from uadbench.zoo.models import shipped_weights

    w = tmp_path / "other.safetensors"  # other weights (any bytes: plan() loads nothing)
    w.write_bytes(shipped_weights("zoo-vit-sam").read_bytes()[:-1] + b"x")
    other = api.plan(attacks="uad", victims="all", surrogate=f"zoo-vit-sam:checkpoint={w}")
    assert [v.name for v in other.victims] == [n for n in registry_order if n != TINY] + [TINY]
    # a run field (prompt_batch) is not another model: that surrogate is the default one
    same = api.plan(attacks="uad", victims="all", surrogate="zoo-vit-sam:prompt_batch=8")
    assert [v.name for v in same.victims] == names
    given = api.plan(attacks="uad", victims=f"{TINY},zoo-hf-sam,zoo-vit-sam")
    assert [v.name for v in given.victims] == [TINY, "zoo-hf-sam", "zoo-vit-sam"]


def test_run_output_says_which_column_is_white_box(tmp_path, capsys):
    from uadbench.cli import main

    args = ["run", "--attack", "feature-pgd:steps=1", "--limit", "1", "--no-progress"]
    assert main([*args, "--victims", TINY, "--surrogate", TINY, "--out", str(tmp_path / "a")]) == 0
    out = capsys.readouterr().out
    assert f"surrogate: {TINY} (its column is white-box" in out
    assert (
        main([*args, "--victims", "zoo-hq-sam", "--surrogate", TINY, "--out", str(tmp_path / "b")])
        == 0
    )
    out = capsys.readouterr().out
    assert f"surrogate: {TINY} (not a victim here: every column measures transfer)" in out
