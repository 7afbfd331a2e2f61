"""Scale-out behaviour of the engine that does not need Ray: ``--retry-failed`` and
out-of-memory handling (a batch that runs out of memory is halved; a single image that
does is a recorded failure)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from uadbench import api
from uadbench.attacks.feature_pgd import FeaturePGD
from uadbench.cli import main
from uadbench.store.rundir import load_rows

TINY = "seeded-sam-tiny"
KEY = ["sample_id", "attack", "victim", "prompt_index"]

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _cli(capsys, *args: str) -> tuple[int, str, str]:
    """``uadbench ARGS`` in this process: (exit code, stdout, stderr)."""
    capsys.readouterr()
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def _files(run_dir: Path) -> dict[str, int]:
    return {
        str(p): p.stat().st_mtime_ns
        for p in [*run_dir.glob("adv/**/*.png"), *run_dir.glob("rows/**/*.parquet")]
    }


def _image_folder(root: Path, names: list[str], hw=(64, 80)) -> Path:
    root.mkdir()
    rng = np.random.default_rng(0)
    for n in names:
        Image.fromarray(rng.integers(0, 255, (*hw, 3), dtype=np.uint8)).save(root / n)
    return root


def test_retry_failed_reruns_only_the_failed_jobs(tmp_path, capsys):
    data = _image_folder(tmp_path / "imgs", ["a.png", "c.png"])
    broken = data / "b.jpg"
    Image.fromarray(np.full((64, 80, 3), 128, np.uint8)).save(broken)
    good_bytes = broken.read_bytes()
    broken.write_bytes(good_bytes[:200])  # truncated: the jobs of b.jpg fail
    out = tmp_path / "run"
    common = ["--attack", "feature-pgd:steps=1", "--surrogate", TINY]
    common += ["--dataset", f"folder:root={data}"]
    common += ["--out", str(out), "--no-progress"]

    code, out_text, err = _cli(capsys, "run", *common, "--victims", TINY, "--limit", "2")
    assert code == 1, err  # a.png ran; b.jpg failed
    # the summary counts the failed jobs (attack + clean and adversarial evaluation of b.jpg)
    assert "3 failed" in out_text
    assert "3 job(s) failed" in err and "failures.jsonl" in err
    fails = [json.loads(line) for line in (out / "failures.jsonl").read_text().splitlines()]
    assert sorted(f["phase"] for f in fails) == ["attack", "eval", "eval"]
    assert {f["key"]["sample"] for f in fails} == {"b.jpg"}
    first = load_rows(out)
    assert set(first.sample_id) == {"a.png"}
    finished = _files(out)
    # a.png: its adversarial image and two row files (clean and attack, compacted)
    assert len(finished) == 1 + 2

    broken.write_bytes(good_bytes)  # fixed
    # now over the whole dataset: c.png is pending but never failed, so it is not run
    code, out_text, err = _cli(capsys, "run", *common, "--victims", TINY, "--retry-failed")
    assert code == 0, err
    assert "attack jobs 1 run" in out_text and "eval jobs 2 run" in out_text
    rows = load_rows(out)
    assert set(rows.sample_id) == {"a.png", "b.jpg"}  # c.png untouched
    assert len(rows) == 2 * 2 * 80 and not rows.duplicated(KEY).any()
    assert not list(out.glob("adv/**/c.png"))
    after = _files(out)
    assert len(after) == 2 + 2  # two adversarial images, the two compacted row files
    for path, mtime in finished.items():
        if path.endswith(".png"):
            assert after[path] == mtime, f"finished job redone: {path}"
    kept = first.merge(rows, how="left", indicator=True)  # a.png's rows as they were
    assert (kept["_merge"] == "both").all(), "finished job redone"


@pytest.fixture
def three_images(tmp_path) -> str:
    return f"folder:root={_image_folder(tmp_path / 'imgs', [f'im{i}.png' for i in range(3)])}"


def _oom_when(monkeypatch, predicate) -> list[list[str]]:
    """Make feature-pgd raise CUDA's out-of-memory error on the batches ``predicate``
    picks; returns the sample ids of every batch it was called with."""
    calls: list[list[str]] = []
    original = FeaturePGD.perturb

    def perturb(self, x, surrogate, ctx):
        calls.append(list(ctx.sample_ids))
        if predicate(list(ctx.sample_ids)):
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return original(self, x, surrogate, ctx)

    monkeypatch.setattr(FeaturePGD, "perturb", perturb)
    return calls


def _pngs(run_dir: Path) -> dict[str, bytes]:
    """Adversarial PNG bytes by sample id."""
    return {p.name.removesuffix(".png"): p.read_bytes() for p in run_dir.glob("adv/**/*.png")}


def test_out_of_memory_batch_is_halved_and_every_image_made(tmp_path, monkeypatch, three_images):
    kw = dict(
        attacks="feature-pgd:steps=1",
        victims=TINY,
        surrogate=TINY,
        dataset=three_images,
        progress=False,
    )
    reference = api.run(out=tmp_path / "ref", batch_size=1, **kw)
    assert reference.ok
    calls = _oom_when(monkeypatch, lambda sids: len(sids) > 1)
    res = api.run(out=tmp_path / "oom", batch_size=2, **kw)
    assert res.ok and res.summary.attack_done == 3
    # a batch of two, then its halves; the last batch holds one image
    assert calls == [["im0.png", "im1.png"], ["im0.png"], ["im1.png"], ["im2.png"]]
    assert not (res.run_dir / "failures.jsonl").exists()
    # images made in halves are those of a run with batches of one
    assert _pngs(res.run_dir) == _pngs(reference.run_dir) and len(_pngs(res.run_dir)) == 3
    rows = load_rows(res.run_dir)
    assert len(rows) == 3 * 2 * 80 and not rows.duplicated(KEY).any()


@pytest.mark.parametrize("batch_size", [1, 2])
def test_out_of_memory_on_one_image_is_a_recorded_failure(
    tmp_path, monkeypatch, three_images, batch_size
):
    calls = _oom_when(monkeypatch, lambda sids: "im1.png" in sids)
    res = api.run(
        attacks="feature-pgd:steps=1",
        victims=TINY,
        surrogate=TINY,
        dataset=three_images,
        out=tmp_path / "r",
        batch_size=batch_size,
        progress=False,
    )
    assert not res.ok
    assert ["im1.png"] in calls  # retried alone (after halving, with batches of two)
    fails = [json.loads(line) for line in (res.run_dir / "failures.jsonl").read_text().splitlines()]
    attack_fails = [f for f in fails if f["phase"] == "attack"]
    assert [f["key"]["sample"] for f in attack_fails] == ["im1.png"]
    assert "OutOfMemoryError" in attack_fails[0]["error"]
    # its adversarial evaluation cannot run; everything else is there
    assert [(f["key"]["sample"], f["key"]["attack"]) for f in fails if f["phase"] == "eval"] == [
        ("im1.png", "feature-pgd[steps=1]")
    ]
    assert sorted(_pngs(res.run_dir)) == ["im0.png", "im2.png"]
    rows = load_rows(res.run_dir)
    assert len(rows) == (3 + 2) * 80 and not rows.duplicated(KEY).any()
    assert res.summary.attack_done == 2 and len(res.summary.failures) == 2


# ----------------------------------------------------------------------------- compaction
def test_finished_run_compacts_its_shards_and_resumes_without_loss_or_duplicates(tmp_path):
    from uadbench.store.rundir import compact_rows, shard_path, write_shard

    out = tmp_path / "run"
    kw = dict(attacks="feature-pgd:steps=1", victims=TINY, out=out, progress=False)
    api.run(limit=1, **kw)
    assert not list(out.glob("rows/*/*/*.parquet"))  # no loose shard left
    files = sorted(p.relative_to(out / "rows").as_posix() for p in out.glob("rows/**/*.parquet"))
    assert len(files) == 2 and all(f.count("/") == 1 for f in files)  # clean + the attack
    first = load_rows(out)
    again = api.run(limit=1, **kw)  # compacted rows count as done
    assert again.summary.eval_done == 0 and again.summary.attack_done == 0
    more = api.run(limit=2, **kw)  # a resumed run with one more image
    assert more.summary.eval_done == 2  # only the new image's (clean, attack) jobs
    rows = load_rows(out)
    assert len(rows) == 2 * 2 * 80 and not rows.duplicated(KEY).any()
    kept = first.merge(rows, how="left", indicator=True)
    assert (kept["_merge"] == "both").all()  # the first image's rows as they were
    assert not list(out.glob("rows/*/*/*.parquet"))
    # a compaction killed after writing its file, before deleting its inputs: a loose shard
    # whose sample is already compacted must count once, and the next compaction drops it
    one = rows[(rows.sample_id == first.sample_id.iloc[0]) & (rows.attack == "clean")]
    write_shard(shard_path(out, TINY, "clean", one.sample_id.iloc[0]), one.to_dict("records"))
    assert len(load_rows(out)) == len(rows)
    assert compact_rows(out) == 0 and len(load_rows(out)) == len(rows)
    assert not list(out.glob("rows/*/*/*.parquet"))
