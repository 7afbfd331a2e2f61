"""One result, one identity (issue 38): what a result *is* (identity fields, weights'
content, plugin code) apart from how it was run (paths, batch sizes); and commands that
fail before any job leave nothing behind."""

from __future__ import annotations

import os
import sys
from importlib import metadata

import numpy as np
import pytest
from PIL import Image

from uadbench import api
from uadbench.engine.plan import Plugin, expand_attacks, parse_eps_list, resolve
from uadbench.errors import ConfigError, RunDirError, UadbenchError

TINY = "seeded-sam-tiny"


def _folder(path, n=2):
    path.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        img = rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)
        Image.fromarray(img).save(path / f"im{i}.png")
    return path


# ------------------------------------------------------------------------- identity
def test_same_weights_at_another_path_are_the_same_victim(tmp_path):
    from uadbench.zoo.models import shipped_weights

    copy = tmp_path / "elsewhere" / "w.safetensors"
    copy.parent.mkdir()
    copy.write_bytes(shipped_weights("zoo-hf-sam").read_bytes())
    default = resolve("victim", "zoo-hf-sam")
    moved = resolve("victim", f"zoo-hf-sam:checkpoint={copy}")
    assert (
        (moved.label, moved.hash) == (default.label, default.hash) == ("zoo-hf-sam", default.hash)
    )
    # other bytes are another model: another label and hash, named by their digest
    other = tmp_path / "other.safetensors"
    other.write_bytes(copy.read_bytes()[:-1] + b"x")
    changed = resolve("victim", f"zoo-hf-sam:checkpoint={other}")
    assert changed.hash != default.hash
    assert changed.label.startswith("zoo-hf-sam[weights=") and str(tmp_path) not in changed.label
    # run fields (prompt_batch) never make another victim
    assert resolve("victim", "zoo-hf-sam:prompt_batch=7").hash == default.hash


def _hf_dir(path):
    """A tiny transformers SAM saved to ``path`` (config, processor config, safetensors)."""
    from test_victims_common import hf_tiny

    model, proc = hf_tiny("sam")
    model.save_pretrained(path)
    proc.save_pretrained(path)
    return path


def test_a_local_hf_model_directory_is_identified_by_its_content(tmp_path, monkeypatch):
    """``hf:<dir>``: the same files copied to another path are the same victim (label,
    hash, key, run directory as surrogate); a changed weight file is another; a hub id
    stays an id."""
    import shutil

    from test_victims_common import write_hf_snapshot

    from uadbench.engine.plan import RunSpec

    a = _hf_dir(tmp_path / "models" / "sam-a")
    b = tmp_path / "moved" / "other-name"
    shutil.copytree(a, b)
    pa, pb = resolve("victim", f"hf:{a}"), resolve("victim", f"hf:{b}")
    assert (pa.name, pa.label, pa.hash, pa.key) == (pb.name, pb.label, pb.hash, pb.key)
    assert pa.label.startswith("hf:local[weights=") and "sam-a" not in pa.label
    assert pa.config.model_id == str(a) and pb.config.model_id == str(b)  # each runs its own
    assert pa.record()["weights_sha256"] == pb.record()["weights_sha256"]
    ds = resolve("dataset", "samples")
    assert RunSpec(ds, [], [pa], pa).default_out() == RunSpec(ds, [], [pb], pb).default_out()
    # run fields still do not count, identity fields still do
    assert resolve("victim", f"hf:{b}:prompt_batch=3").hash == pa.hash
    hq_only = resolve("victim", f"hf:{b}:hq_token_only=true")
    assert hq_only.hash != pa.hash and str(b) not in hq_only.label
    # another weight file: another victim (and another run directory as surrogate)
    (weights,) = b.glob("*.safetensors")
    raw = bytearray(weights.read_bytes())
    raw[-1] ^= 1
    weights.write_bytes(bytes(raw))
    pc = resolve("victim", f"hf:{b}")
    assert pc.hash != pa.hash and pc.label != pa.label
    assert RunSpec(ds, [], [pc], pc).default_out() != RunSpec(ds, [], [pa], pa).default_out()
    # another config.json with the same weights: another model too
    cfg = a / "config.json"
    cfg.write_text(cfg.read_text().replace("}", ', "uadbench_test": 1}', 1))
    assert resolve("victim", f"hf:{a}").hash not in (pa.hash, pc.hash)
    # a hub id is identified by the id (and its revision), not by content
    hub = tmp_path / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    write_hf_snapshot(hub, "org/sam-tiny", lambda d: shutil.copytree(a, d, dirs_exist_ok=True))
    ph = resolve("victim", "hf:org/sam-tiny")
    assert ph.name == "hf:org/sam-tiny" and ph.label.startswith("hf:org/sam-tiny")
    assert ph.record()["weights_sha256"]  # the manifest still records what the id held
    # as surrogate, a hub id names one run directory, not a nested org/ directory
    out = RunSpec(ds, [], [ph], ph).default_out(tmp_path)
    assert out.parent == tmp_path and out.name.startswith("samples-hf_org__sam-tiny-s0-")


def test_a_moved_local_hf_model_resumes_its_run(tmp_path):
    """A run with ``hf:<dir>`` as victim, rerun after the directory moved: every job is
    found finished (no second column, no re-evaluation)."""
    import shutil

    a = _hf_dir(tmp_path / "sam-a")
    data = f"folder:root={_folder(tmp_path / 'imgs', n=1)}"
    kw = dict(attacks="feature-pgd:steps=1", dataset=data, limit=1, progress=False)
    out = tmp_path / "run"
    first = api.run(victims=f"hf:{a}", out=out, **kw)
    assert first.summary.eval_done > 0 and not first.summary.failures
    b = tmp_path / "moved"
    shutil.move(a, b)
    again = api.run(victims=f"hf:{b}", out=out, **kw)
    assert again.summary.eval_done == 0 and again.summary.eval_skipped == first.summary.eval_done
    labels = {v.label for v in again.spec.victims}
    assert labels == {v.label for v in first.spec.victims} and len(labels) == 1


def test_moving_a_dataset_keeps_its_identity_and_prompts(tmp_path):
    from uadbench.engine.jobs import RunData
    from uadbench.engine.plan import RunSpec

    a = _folder(tmp_path / "a")
    b = tmp_path / "b"
    a.rename(b)
    _folder(a)  # same images at both places
    da, db = resolve("dataset", f"folder:root={a}"), resolve("dataset", f"folder:root={b}")
    assert (da.label, da.hash) == (db.label, db.hash) == ("folder", da.hash)
    sur = resolve("victim", TINY)
    pa_ = RunData(RunSpec(da, [], [], sur), tmp_path).prompts("im0.png")
    pb_ = RunData(RunSpec(db, [], [], sur), tmp_path).prompts("im0.png")
    np.testing.assert_array_equal(pa_.coords, pb_.coords)
    assert RunSpec(da, [], [], sur).default_out() == RunSpec(db, [], [], sur).default_out()
    # an identity field still counts
    assert resolve("dataset", f"folder:root={a},max_side=32").hash != da.hash


def test_run_field_defaults_keep_the_hashes_of_existing_configs():
    """A config whose run fields are at their defaults hashes as every config did before
    run fields existed: sha256 of (kind, name, every field), computed here the plain way —
    fields added later (``late_field``: EOT's) left out while at their default."""
    import dataclasses
    import hashlib
    import json

    from uadbench.config import LATE

    def plain(kind, p):
        cfg = json.loads(json.dumps(dataclasses.asdict(p.config), default=str))
        for f in dataclasses.fields(p.config):
            if f.metadata.get(LATE) and getattr(p.config, f.name) == f.default:
                del cfg[f.name]
        body = json.dumps({"kind": kind, "name": p.name, "config": cfg}, sort_keys=True)
        return hashlib.sha256(body.encode()).hexdigest()[:12]

    for kind, spec in (
        ("victim", "zoo-vit-sam"),
        ("victim", TINY),
        ("attack", "uad"),
        ("attack", "attack-sam-k"),
        ("dataset", "synthetic:n=50,seed=1"),
    ):
        p = resolve(kind, spec)
        assert p.hash == plain(kind, p), spec


def test_edited_plugin_code_is_another_cache_key_and_refused_on_resume(tmp_path, monkeypatch):
    from uadbench.engine.jobs import RunData
    from uadbench.engine.plan import RunSpec
    from uadbench.registry import _module_code_version, code_version

    mod = tmp_path / "myplug_code_v.py"
    mod.write_text("class A:\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import myplug_code_v

    v1 = code_version(myplug_code_v.A)
    mod.write_text("class A:\n    x = 1\n")
    _module_code_version.cache_clear()
    v2 = code_version(myplug_code_v.A)
    assert v1 != v2 and "src." in v1  # a source tree: the module's source digest
    atk = resolve("attack", "feature-pgd:steps=1")
    assert atk.code and atk.record()["code"] == atk.code
    spec = RunSpec(resolve("dataset", "samples"), [atk], [], resolve("victim", TINY))
    data = RunData(spec, tmp_path)
    edited = Plugin(**{**atk.__dict__, "code": atk.code + "-edited"})
    assert data.adv_file(atk, "coins") != data.adv_file(edited, "coins")
    # a run directory made by other code of an attack is not resumed into
    from uadbench.store.manifest import open_manifest

    rec = atk.record()
    out = tmp_path / "run"
    args = (spec.identity(), spec.dataset.record(), spec.surrogate.record())
    open_manifest(out, *args, [rec], [], 0, "cpu")
    with pytest.raises(RunDirError, match="code changed"):
        open_manifest(out, *args, [{**rec, "code": "x"}], [], 0, "cpu")


def test_checkpoint_digest_is_cached_by_path_size_and_mtime(tmp_path):
    from uadbench.victims import checkpoints

    f = tmp_path / "w.bin"
    f.write_bytes(b"a" * 1000)
    st = f.stat()
    d1 = checkpoints.file_digest(f)
    f.write_bytes(b"b" * 1000)  # same size; mtime put back: the cached digest is used
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    checkpoints._DIGESTS.clear()  # a new process: read from the on-disk cache
    assert checkpoints.file_digest(f) == d1
    os.utime(f, ns=(1, 1))  # another mtime: hashed again
    assert checkpoints.file_digest(f) != d1


def test_show_looks_victims_up_by_label(image_two_objects):
    """Two settings of one model in one run are two victims: each drawn with its own."""
    from uadbench.eval.prompts import sample_prompts
    from uadbench.report.panel import predict_masks

    specs = [TINY, f"{TINY}:seed=1"]
    recs = [resolve("victim", s).record() for s in specs]
    labels = [r["label"] for r in recs]
    assert labels == [TINY, f"{TINY}[seed=1]"]
    prompts = sample_prompts("t", "x", image_two_objects.shape[:2], None, None, 0)
    out = predict_masks({"victims": recs}, labels, image_two_objects, image_two_objects, prompts)
    for label, spec in zip(labels, specs):
        cm, _, note = out[label]
        assert note == "" and cm is not None
        p = resolve("victim", spec)
        np.testing.assert_array_equal(cm, p.cls(p.config).predict(image_two_objects, prompts))
    assert not np.array_equal(out[labels[0]][0], out[labels[1]][0])


# ------------------------------------------------------------------------- budgets
def test_eps_in_one_unit_everywhere():
    eight = 8 / 255
    assert parse_eps_list("8") == [pytest.approx(eight)]
    for spec in ("uad:eps=8", "uad:eps=8/255", f"uad:eps={eight!r}"):
        assert resolve("attack", spec).config.eps == pytest.approx(eight), spec
    assert resolve("attack", "uad:eps=8").hash == resolve("attack", "uad").hash
    assert expand_attacks("uad", parse_eps_list("4"))[0].config.eps == pytest.approx(4 / 255)
    assert resolve("attack", "feature-pgd:alpha=1").config.alpha == pytest.approx(1 / 255)


# ------------------------------------------------------------------------- fail fast
def test_a_command_that_fails_before_any_job_writes_no_manifest(tmp_path):
    out = tmp_path / "run"
    kw = dict(attacks="feature-pgd:steps=1", victims=TINY, limit=1, out=out, progress=False)
    with pytest.raises(ConfigError, match="root"):
        api.run(dataset="folder", **kw)
    assert not out.exists()
    res = api.run(dataset=f"folder:root={_folder(tmp_path / 'imgs')}", **kw)  # corrected
    assert res.ok and (out / "manifest.json").exists()


def test_random_bytes_checkpoint_fails_fast_with_a_clear_message(tmp_path):
    from uadbench.victims.checkpoints import read_state_dict

    f = tmp_path / "w.pth"
    f.write_bytes(np.random.default_rng(3).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(UadbenchError, match="not a checkpoint") as err:
        read_state_dict(f)
    assert "pickled" not in str(err.value)
    out = tmp_path / "run"
    with pytest.raises(ConfigError, match="zoo-hf-sam.*not a checkpoint"):
        api.run(
            attacks="feature-pgd:steps=1",
            victims=f"{TINY},zoo-hf-sam:checkpoint={f}",
            limit=1,
            out=out,
            progress=False,
        )
    assert not out.exists()  # before the manifest, before any attack


def test_unwritable_out_is_one_line_not_a_traceback(tmp_path, capsys):
    from uadbench.cli import main

    blocker = tmp_path / "file"
    blocker.write_text("x")  # a file where a directory should be (works as root too)
    args = ["run", "--attack", "feature-pgd:steps=1", "--victims", TINY, "--limit", "1"]
    rc = main([*args, "--out", str(blocker / "run"), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and "cannot write there" in err and "Traceback" not in err


def test_show_on_cuda_without_gpu_is_one_line(tmp_path, capsys):
    import torch

    from uadbench.cli import main

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    out = tmp_path / "run"
    api.run(attacks="feature-pgd:steps=1", victims=TINY, limit=1, out=out, progress=False)
    sid = api.rows(out)["sample_id"].iloc[0]
    rc = main(["show", str(out), "--sample", sid, "--device", "cuda"])
    err = capsys.readouterr().err
    assert rc == 2 and "sees no CUDA GPU" in err


def test_broken_third_party_plugin_is_reported_and_the_others_work(tmp_path, monkeypatch):
    from uadbench.attacks import ATTACKS

    (tmp_path / "brokenplug_x.py").write_text("raise RuntimeError('boom at import')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    ATTACKS.register("broken-x", "brokenplug_x:Attack", source="brokenplug")
    try:
        with pytest.raises(UadbenchError, match="broken-x.*brokenplug.*broken.*boom"):
            ATTACKS.get("broken-x")
        names = [a.name for a in expand_attacks("all")]
        assert "broken-x" not in names and "uad" in names
    finally:
        ATTACKS.unregister("broken-x")
        sys.modules.pop("brokenplug_x", None)


def test_broken_entry_point_name_leaves_the_others(monkeypatch):
    from uadbench.registry import Registry

    eps = [
        metadata.EntryPoint("dup", "a:b", "g.test"),
        metadata.EntryPoint("dup", "c:d", "g.test"),
        metadata.EntryPoint("fine", "uadbench.attacks.uad:UAD", "g.test"),
    ]
    monkeypatch.setattr(metadata, "entry_points", lambda group=None: eps)
    reg = Registry("thing", None, "g.test")
    reg.register("builtin-one", object)
    assert reg.names() == ["builtin-one", "dup", "fine"]


# ------------------------------------------------------------------------- generic code
def test_default_surrogate_is_a_registry_property(monkeypatch):
    from uadbench.engine.plan import default_surrogate
    from uadbench.victims import VICTIMS

    assert default_surrogate() == "zoo-vit-sam"  # offline: sam-vit-b has no weights here
    VICTIMS.register(
        "my-surrogate", "uadbench.victims.segment_anything:SeededSamTiny", default_surrogate=0
    )
    try:
        assert default_surrogate() == "my-surrogate"
    finally:
        VICTIMS.unregister("my-surrogate")


def test_executors_come_from_the_registry():
    from uadbench.engine import EXECUTORS
    from uadbench.engine.local import LocalExecutor

    class Mine(LocalExecutor):
        pass

    EXECUTORS.register("mine", Mine)
    try:
        assert api.make_executor("mine") is Mine
        assert api.make_executor("local") is LocalExecutor
    finally:
        EXECUTORS.unregister("mine")
    with pytest.raises(UadbenchError, match="Did you mean 'local'"):
        api.make_executor("locl")


def test_bad_output_format_fails_before_any_job(tmp_path, capsys):
    from uadbench.cli import main

    out = tmp_path / "run"
    args = ["run", "--attack", "feature-pgd:steps=1", "--victims", TINY, "--limit", "1"]
    rc = main([*args, "--out", str(out), "--no-progress", "--format", "markdwn"])
    assert rc == 2 and "--format 'markdwn'" in capsys.readouterr().err
    assert not out.exists()
