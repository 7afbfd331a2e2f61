"""The CI regression gate: the committed baselines in ``results/baselines/``.

``embedded-default`` is rerun for real (its arguments come from the committed manifest,
which must equal ``scripts/make_baselines.py``'s table) with another seed: ``uadbench
check`` must pass on it and fail, naming the victim, when the attack's rows of one
victim are replaced by clean predictions. ``zoo-synthetic`` (made by the lead with
``make baselines``; skipped until it exists) gets structural checks only. Both must
still match what the current code computes for their config hashes, so a silent change
of a default turns CI red until the baselines are regenerated.

(``tests/test_report_check.py`` tests the statistics of ``check`` on simulated rows;
here everything is real runs, the real CLI and the committed files.)
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from script_helpers import load_script

from uadbench.cli import build_parser, main
from uadbench.store.rundir import atomic_write_json, load_manifest, load_rows, write_shard
from uadbench.store.schema import CLEAN, LEGACY_ROW_SCHEMA, ROW_SCHEMA

REPO = Path(__file__).resolve().parent.parent
BASELINES_DIR = REPO / "results" / "baselines"
EMBEDDED = "embedded-default"
ZOO = "zoo-synthetic"
ALPHA = 0.05  # `uadbench check`'s default


MB = load_script("make_baselines")


def baseline_dir(name: str) -> Path:
    """The committed baseline ``name``; ``embedded-default`` must exist, others may not yet."""
    d = BASELINES_DIR / name
    if not (d / "manifest.json").is_file():
        if name == EMBEDDED:
            pytest.fail(f"{d} is missing: the CI gate has no baseline; run `make baselines`")
        pytest.skip(f"{d} not generated yet (`make baselines ONLY={name}`, ~20-40 min)")
    return d


def run_args(name: str) -> list[str]:
    """The `uadbench run` arguments the committed baseline was made with."""
    return list(load_manifest(baseline_dir(name))["baseline"]["args"])


# ----------------------------------------------------------------------------- provenance
@pytest.mark.parametrize("name", list(MB.BASELINES))
def test_committed_baseline_is_what_the_script_makes(name):
    d = baseline_dir(name)
    man = load_manifest(d)
    assert man["format"] == "uadbench-run/1" and man["kind"] == "run"
    assert man["baseline"]["name"] == name
    assert man["baseline"]["args"] == list(MB.BASELINES[name]), (
        f"scripts/make_baselines.py changed the arguments of {name}; run `make baselines`"
    )
    files = sorted(p.relative_to(d).as_posix() for p in d.rglob("*") if p.is_file())
    assert files == sorted([MB.MANIFEST, MB.ROWS_FILE]), f"{d} holds files not to commit"
    if name == EMBEDDED:
        assert MB.dir_size(d) < 1 << 20


@pytest.mark.parametrize("name", list(MB.BASELINES))
def test_config_hashes_match_current_code(name):
    """Every plugin's config hash in the manifest (and in the rows) is what the current
    code computes for the same specs: a changed default must regenerate the baseline."""
    from uadbench import api

    d = baseline_dir(name)
    man = load_manifest(d)
    a = build_parser().parse_args(["run", *run_args(name)])
    spec = api.plan(a.attack, a.victims, a.dataset, a.surrogate, a.seed, a.limit, a.eps)
    hint = f"; if the change is intended, regenerate with `make baselines ONLY={name}`"
    assert man["seed"] == spec.seed
    assert man["identity"] == spec.identity(), "dataset/surrogate/prompt settings moved" + hint
    for kind, now, then in (
        ("dataset", [spec.dataset], [man["dataset"]]),
        ("surrogate", [spec.surrogate], [man["surrogate"]]),
        ("attack", spec.attacks, man["attacks"]),
        ("victim", spec.victims, man["victims"]),
    ):
        got = {p.label: p.hash for p in now}
        had = {r["label"]: r["hash"] for r in then}
        assert got == had, f"{kind} config hashes: baseline {had}, code now {got}" + hint
        if kind in ("victim", "surrogate"):  # retrained zoo weights are not in a config hash
            got = {p.label: p.record().get("weights_sha256") for p in now}
            had = {r["label"]: r.get("weights_sha256") for r in then}
            assert got == had, f"{kind} weights: baseline {had}, shipped now {got}" + hint
    rows = load_rows(d)
    assert set(rows.loc[rows["attack"] != CLEAN, "attack_hash"]) == {
        r["hash"] for r in man["attacks"]
    }
    assert set(rows["victim"]) == {r["label"] for r in man["victims"]}


def test_embedded_default_mirrors_the_offline_default():
    """Same attack, victims and surrogate as `uadbench run --attack uad --victims all`
    offline; the images must be enough for `check` to be able to fail at all."""
    from uadbench.engine.plan import default_surrogate
    from uadbench.zoo import ZOO_NAMES

    args = run_args(EMBEDDED)
    assert MB.option(args, "--attack") == "uad"
    assert set(MB.option(args, "--victims").split(",")) == {"seeded-sam-tiny", *ZOO_NAMES}
    if default_surrogate().startswith("zoo-"):  # no official SAM weights on this machine
        assert MB.option(args, "--surrogate") == default_surrogate()
    rows = load_rows(baseline_dir(EMBEDDED))
    adv = rows[rows["attack"] != CLEAN]
    n_lines = 2 * adv.groupby(["attack", "victim"]).ngroups  # mIoU and ASR@50 per pair
    n_images = adv.groupby(["attack", "victim"])["sample_id"].nunique().min()
    # the smallest adjusted p `check` can reach: its one-sided tests give at least 2**-n
    # (exact sign-flip) and 1/(B + 1) (bootstrap-t, B draws), times the family's size
    from uadbench.report.stats import family_tests

    fam = family_tests([np.ones(n_images)] * n_lines, alternative="less")
    floor = float(fam["min_p_adj"].min())
    assert floor == pytest.approx(n_lines * max(2.0**-n_images, 1 / (fam.attrs["draws"] + 1)))
    assert floor < ALPHA / 10, (
        f"{n_images} images and {n_lines} checked lines: no regression could ever be "
        f"significant (smallest Holm-adjusted p = {floor:.3g}); use more images"
    )


# ----------------------------------------------------------------------------- row validity
def assert_rows_valid(rows: pd.DataFrame, man: dict) -> None:
    """Every row obeys the schema and the run's manifest (see uadbench/store/schema.py)."""
    assert list(rows.columns) == ROW_SCHEMA.names
    strings = [f.name for f in ROW_SCHEMA if str(f.type) == "string"]
    assert (
        not rows[strings + ["iou", "eps", "prompt_index", "mask_index", "seed"]].isna().any().any()
    )
    assert rows["iou"].between(0, 100).all()
    assert rows["eps"].between(0, 1).all()
    assert (rows["seed"] == man["seed"]).all()
    assert set(rows["prompt_kind"]) <= {"point", "box"}
    assert set(rows["reference"]) <= {"gt", "clean"}
    assert (rows["prompt_index"] >= 0).all() and (rows["mask_index"] >= 0).all()
    assert (rows["seconds"] >= 0).all()
    pts, box = rows["prompt_kind"] == "point", rows["prompt_kind"] == "box"
    assert rows.loc[pts, ["x1", "y1"]].isna().all().all()
    assert rows.loc[pts | box, ["x0", "y0"]].notna().all().all()
    assert (rows.loc[box, "x1"] >= rows.loc[box, "x0"]).all()
    assert (rows.loc[box, "y1"] >= rows.loc[box, "y0"]).all()
    clean = rows["attack"] == CLEAN
    assert (rows.loc[clean, "attack_hash"] == "").all() and (rows.loc[clean, "eps"] == 0).all()
    assert (rows.loc[clean, "attack_name"] == CLEAN).all()
    eps = {r["hash"]: r["eps"] for r in man["attacks"]}
    adv = rows[~clean]
    assert np.allclose(adv["eps"], adv["attack_hash"].map(eps))
    assert (adv["surrogate"] == man["surrogate"]["label"]).all()
    key = ["victim", "transform", "attack", "attack_hash", "dataset", "sample_id", "prompt_index"]
    assert not rows.duplicated(key).any(), "a row is duplicated"
    # results are paired: every attack has the clean rows' prompts on every victim
    prompts = ["victim", "transform", "dataset", "sample_id", "prompt_index", "prompt_kind"]
    prompts += ["x0", "y0"]
    ref = rows.loc[clean, prompts].sort_values(prompts).reset_index(drop=True)
    for _, g in adv.groupby("attack"):
        pd.testing.assert_frame_equal(g[prompts].sort_values(prompts).reset_index(drop=True), ref)
    assert set(rows["sample_id"]) == set(man["samples"])


@pytest.mark.parametrize("name", list(MB.BASELINES))
def test_baseline_rows_are_valid(name):
    d = baseline_dir(name)
    schema = pq.read_schema(d / MB.ROWS_FILE).remove_metadata()
    # files written before the transform columns (LATE_COLUMNS) read as identity rows
    assert schema.equals(ROW_SCHEMA) or schema.equals(LEGACY_ROW_SCHEMA)
    assert_rows_valid(load_rows(d), load_manifest(d))


def test_zoo_synthetic_leaderboard_and_self_check(capsys):
    from uadbench.attacks import ATTACKS
    from uadbench.report.leaderboard import runs_table
    from uadbench.zoo import ZOO_NAMES

    d = baseline_dir(ZOO)
    man = load_manifest(d)
    table = runs_table([d])
    cells = set(zip(table["attack"], table["victim"]))
    attacks = [r["label"] for r in man["attacks"]]
    assert sorted(r["name"] for r in man["attacks"]) == sorted(ATTACKS.names())
    for victim in ZOO_NAMES:
        for attack in [CLEAN, *attacks]:
            assert (attack, victim) in cells, f"leaderboard has no cell {attack} × {victim}"
    assert table["n_images"].min() == len(man["samples"]) == man["dataset"]["config"]["n"]
    assert main(["leaderboard", str(d)]) == 0
    out = capsys.readouterr().out
    assert all(a in out for a in attacks) and "clean" in out
    assert main(["check", str(d), "--baseline", str(d)]) == 0
    assert "OK:" in capsys.readouterr().out


# ----------------------------------------------------------------------------- the gate
@pytest.fixture(scope="module")
def rerun(tmp_path_factory) -> Path:
    """The embedded-default baseline's configuration rerun with another seed."""
    args = run_args(EMBEDDED)
    seed = int(MB.option(args, "--seed")) + 1
    out = tmp_path_factory.mktemp("rerun") / "run"
    with pytest.MonkeyPatch.context() as mp:  # as conftest's isolation, at module scope
        mp.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("cache")))
        mp.delenv("UADBENCH_CHECKPOINTS", raising=False)
        rc = main(
            ["run", *MB.with_option(args, "--seed", str(seed)), "--out", str(out), "--no-progress"]
        )
    assert rc == 0
    return out


def _check_csv(run: Path, capsys, *extra: str) -> tuple[int, pd.DataFrame]:
    capsys.readouterr()
    rc = main(
        [
            "check",
            str(run),
            "--baseline",
            str(baseline_dir(EMBEDDED)),
            "--format",
            "csv",
            *extra,
        ]
    )
    return rc, pd.read_csv(io.StringIO(capsys.readouterr().out))


def test_rerun_with_another_seed_passes_the_gate(rerun, capsys):
    base = load_rows(baseline_dir(EMBEDDED))
    rows = load_rows(rerun)
    assert set(rows["seed"]) == {int(MB.option(run_args(EMBEDDED), "--seed")) + 1}
    assert_rows_valid(rows, load_manifest(rerun))
    # the same (victim, attack, image, prompt index) grid; another seed drew other prompts
    key = ["victim", "attack", "sample_id", "prompt_index"]
    both = base.merge(rows, on=key, suffixes=("_base", "_rerun"), validate="one_to_one")
    assert len(both) == len(base) == len(rows)
    assert (both["x0_base"] != both["x0_rerun"]).mean() > 0.5
    rc, table = _check_csv(rerun, capsys)
    assert rc == 0, table.to_string()
    adv = base[base["attack"] != CLEAN]
    pairs = set(zip(adv["attack"], adv["victim"]))
    assert set(zip(table["attack"], table["victim"])) == pairs  # nothing missing
    assert set(table["verdict"]) == {"ok"}
    assert (table["n_images"] == base["sample_id"].nunique()).all()  # paired on every image
    assert (table["n_dropped"] == 0).all()


def test_attack_that_stopped_working_on_one_victim_fails_the_gate(rerun, tmp_path, capsys):
    """The rerun's adversarial rows for the surrogate victim are replaced by that
    victim's clean predictions (the attack did nothing there): exit 1, that victim named."""
    man = load_manifest(rerun)
    victim = man["surrogate"]["label"]
    rows = load_rows(rerun)
    key = ["victim", "dataset", "sample_id", "prompt_index"]
    clean_iou = rows[rows["attack"] == CLEAN].set_index(key)["iou"]
    hit = (rows["attack"] != CLEAN) & (rows["victim"] == victim)
    assert hit.any()
    idx = pd.MultiIndex.from_frame(rows.loc[hit, key])
    rows.loc[hit, "iou"] = clean_iou.reindex(idx).to_numpy()
    assert rows["iou"].notna().all()
    bad = tmp_path / "regressed"
    atomic_write_json(bad / "manifest.json", man)
    write_shard(bad / "rows" / "all.parquet", rows.to_dict("records"))

    # Half a point tolerated, as a CI would: a 0.04-point seed effect on seeded-sam-tiny
    # (IoU ~99.7 with almost no spread) can be significant on its own (seen on an AMD EPYC
    # host); the margin applies to the displayed delta (change in damage).
    margin = ("--margin", "0.5")
    rc = main(["check", str(bad), "--baseline", str(baseline_dir(EMBEDDED)), *margin])
    out = capsys.readouterr().out
    assert rc == 1, out
    assert "FAIL:" in out
    flagged = [line for line in out.splitlines() if "REGRESSION" in line]
    assert flagged and all(victim in line for line in flagged), out
    assert any("mIoU" in line for line in flagged)
    others = [ln for ln in out.splitlines() if ln.startswith("uad ") and victim not in ln]
    assert others and all(ln.rstrip().endswith("ok") for ln in others), out
    rc, table = _check_csv(bad, capsys, *margin)
    assert rc == 1
    reg = table[table["verdict"] == "REGRESSION"]
    assert set(reg["victim"]) == {victim}
    assert (reg["delta"][reg["metric"] == "miou"] < -0.5).all()  # damage fell past the margin
    assert math.isfinite(float(reg["p_adj"].max())) and float(reg["p_adj"].max()) < ALPHA


# ----------------------------------------------------------------------------- building
def test_zoo_synthetic_is_built_attack_by_attack():
    parts = MB.attack_parts(list(MB.BASELINES[ZOO]))
    from uadbench.attacks import ATTACKS

    assert len(parts) == len(ATTACKS.names()) + 1 and parts[-1] == list(MB.BASELINES[ZOO])
    assert sorted(MB.option(p, "--attack") for p in parts[:-1]) == sorted(ATTACKS.names())
    assert all(MB.with_option(p, "--attack", "all") == parts[-1] for p in parts)


def test_an_interrupted_build_is_compacted_committed_and_resumed(tmp_path, monkeypatch, capsys):
    """A build stopped after its first attack, compacted (no images) and resumed: the
    finished attack is not rerun, the rest is, and the baseline equals the table's run."""
    args = ("--attack", "feature-pgd,aa", "--victims", "seeded-sam-tiny", "--surrogate")
    args += ("zoo-vit-sam", "--dataset", "samples:names=[astronaut]", "--seed", "0")
    monkeypatch.setitem(MB.BASELINES, "tiny", args)
    build = tmp_path / ".building-tiny"
    first = MB.attack_parts(list(args))[0]
    assert main(["run", *first, "--out", str(build), "--no-progress"]) == 0
    MB.compact_build(build)
    assert not (build / "adv").exists()
    done = {p: p.stat().st_mtime_ns for p in build.glob("rows/**/*.parquet")}
    assert done and all("feature-pgd" in str(p) or "clean" in str(p) for p in done)
    capsys.readouterr()
    final = MB.make_baseline("tiny", tmp_path, progress=False, resume=True)
    # feature-pgd (evaluated before the break): no attack job although its image is gone
    runs = [ln for ln in capsys.readouterr().out.splitlines() if "attack jobs" in ln]
    assert [ln.split(";")[0].split("jobs ")[1].split(" run")[0] for ln in runs] == ["0", "1", "0"]
    man = load_manifest(final)
    assert man["baseline"]["args"] == list(args)
    rows = load_rows(final)
    assert set(rows["attack"]) == {CLEAN, "feature-pgd", "aa"}
    assert not rows.duplicated(["victim", "attack", "sample_id", "prompt_index"]).any()
    assert not build.exists()
