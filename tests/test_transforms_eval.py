"""Transforms as an evaluation axis: the engine applies each transform to the clean and
the adversarial image alike (one seeded draw per sample), maps prompts and masks through
a transform's Geometry, reuses the adversarial images, keys rows and paths by the
transform (the identity's exactly as before), and the reports treat (victim, transform)
as the unit. The real transforms are tested in their own file; here test-only ones."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from uadbench import api
from uadbench.engine import jobs as jobs_mod
from uadbench.engine.jobs import EvalWorker, RunData, failed_keys
from uadbench.engine.plan import resolve
from uadbench.errors import UadbenchError
from uadbench.eval.prompts import PromptSet
from uadbench.report.leaderboard import leaderboard_table, runs_table
from uadbench.report.stats import compare_pairs
from uadbench.store.rundir import as_units, load_manifest, load_rows
from uadbench.store.schema import LEGACY_ROW_SCHEMA, ROW_SCHEMA
from uadbench.transforms import TRANSFORMS
from uadbench.transforms.base import Geometry, Transform, transform_rng

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY = "seeded-sam-tiny"
ATTACK = "feature-pgd:steps=1"
BASELINE = Path(__file__).resolve().parent.parent / "results" / "baselines" / "embedded-default"


# ----------------------------------------------------------------- test-only transforms
@dataclasses.dataclass(frozen=True)
class _DarkenConfig:
    level: int = 40


class Darken(Transform):
    """A fixed pixel change with an option."""

    name = "tt-darken"
    Config = _DarkenConfig

    def apply(self, image, rng):
        return np.clip(image.astype(np.int16) - self.config.level, 0, 255).astype(np.uint8)


class Noise(Transform):
    """A seeded random pixel change."""

    name = "tt-noise"
    stochastic = True

    def apply(self, image, rng):
        noise = rng.integers(-60, 61, image.shape)
        return np.clip(image.astype(np.int16) + noise, 0, 255).astype(np.uint8)


class Shift(Transform):
    """Moves pixels: a 2x nearest upscale pasted at a random offset into a larger canvas."""

    name = "tt-shift"
    stochastic = True

    def apply_geometry(self, image, rng):
        h, w = image.shape[:2]
        tx, ty = int(rng.integers(0, 9)), int(rng.integers(0, 9))
        big = np.repeat(np.repeat(image, 2, axis=0), 2, axis=1)
        canvas = np.zeros((2 * h + 8, 2 * w + 8, 3), np.uint8)
        canvas[ty : ty + 2 * h, tx : tx + 2 * w] = big
        return canvas, Geometry(2.0, 2.0, float(tx), float(ty), 2 * h + 8, 2 * w + 8)


@pytest.fixture(autouse=True)
def test_transforms():
    for cls in (Darken, Noise, Shift):
        TRANSFORMS.register(cls.name, cls)
    yield
    for cls in (Darken, Noise, Shift):
        TRANSFORMS.unregister(cls.name)


class Spy:
    """A victim that records what it is given and predicts, per prompt, a disc of radius
    4 around the prompt point (box: its centre) in the frame it sees."""

    def __init__(self):
        self.images, self.prompts = [], []

    def predict(self, image, prompts):
        self.images.append(image.copy())
        self.prompts.append(prompts)
        h, w = image.shape[:2]
        yy, xx = np.mgrid[:h, :w]
        out = np.zeros((len(prompts), h, w), bool)
        for i, c in enumerate(prompts.coords):
            x, y = (c[0], c[1]) if np.isnan(c[2]) else ((c[0] + c[2]) / 2, (c[1] + c[3]) / 2)
            out[i] = (xx - x) ** 2 + (yy - y) ** 2 <= 16
        return out


def _spy_worker(tmp_path, transforms: str):
    spec = api.plan(attacks=ATTACK, victims=TINY, limit=2, transforms=transforms)
    w = EvalWorker(spec, tmp_path, spec.victims[0])
    w.model = Spy()
    (tmp_path / "manifest.json").write_text("{}")
    return spec, w


def _write_adv(w: EvalWorker, attack, sid: str) -> np.ndarray:
    clean = w.data.sample(sid).image
    adv = (255 - clean).astype(np.uint8)  # far from the clean image: any mix-up shows
    jobs_mod.save_png(w.data.adv_file(attack, sid), adv)
    return adv


# ----------------------------------------------------------------- the engine
@pytest.mark.parametrize("name", ["tt-darken:level=40", "tt-noise"])
def test_clean_and_adversarial_both_go_through_one_seeded_draw(tmp_path, name):
    spec, w = _spy_worker(tmp_path, name)
    t, a = spec.transforms[0], spec.attacks[0]
    sids = w.data.ids()
    for sid in sids:
        adv = _write_adv(w, a, sid)
        clean = w.data.sample(sid).image
        n = len(w.model.images)
        res = w.run(sid, [(t, None), (t, a)])
        assert res.done == 2 and not res.failures
        inst = t.cls(t.config)
        want_clean = inst.apply(clean, transform_rng(spec.seed, sid, t.hash))
        want_adv = inst.apply(adv, transform_rng(spec.seed, sid, t.hash))
        seen_clean, seen_adv = w.model.images[n], w.model.images[n + 1]
        assert np.array_equal(seen_clean, want_clean)  # the clean image is transformed
        assert np.array_equal(seen_adv, want_adv)  # ... and the adversarial one, same draw
        assert not np.array_equal(seen_clean, clean)
    if name == "tt-noise":  # draws differ across samples (seeded per sample)
        a0 = Noise().apply(np.full((8, 8, 3), 128, np.uint8), transform_rng(0, sids[0], t.hash))
        a1 = Noise().apply(np.full((8, 8, 3), 128, np.uint8), transform_rng(0, sids[1], t.hash))
        assert not np.array_equal(a0, a1)
    rows = load_rows(tmp_path)
    assert set(rows["transform"]) == {t.label} and set(rows["transform_hash"]) == {t.hash}
    # the reference (no ground truth here) is the clean prediction under the same
    # transform: the clean rows are 100, and a same-image "attack" would be too
    assert (rows[rows.attack == "clean"]["iou"] == 100).all()


def test_the_noisy_draw_is_shared_so_an_unchanged_image_keeps_iou_100(tmp_path):
    """An "adversarial" image equal to the clean one, seen through a noisy transform:
    with the same draw for both, the victim sees identical images (IoU 100 against the
    clean prediction); separate draws would move the predicted masks."""
    from uadbench.victims import VICTIMS

    spec = api.plan(attacks=ATTACK, victims=TINY, limit=1, transforms="tt-noise")
    w = EvalWorker(spec, tmp_path, spec.victims[0])
    (tmp_path / "manifest.json").write_text("{}")
    t, a = spec.transforms[0], spec.attacks[0]
    sid = w.data.ids()[0]
    jobs_mod.save_png(w.data.adv_file(a, sid), w.data.sample(sid).image)
    assert w.run(sid, [(t, None), (t, a)]).done == 2
    rows = load_rows(tmp_path)
    assert (rows[rows.attack != "clean"]["iou"] == 100).all()
    assert VICTIMS.canonical(TINY)


def test_geometry_maps_prompts_in_and_masks_back(tmp_path):
    spec, w = _spy_worker(tmp_path, "tt-shift")
    t = spec.transforms[0]
    sid = w.data.ids()[0]
    image = w.data.sample(sid).image
    h, w_ = image.shape[:2]
    prompts = PromptSet(
        np.array(["point", "box"]),
        np.array([[20.0, 30.0, np.nan, np.nan], [10.0, 12.0, 30.0, 40.0]]),
        np.array([0, 0]),
        np.array([1, -1]),
    )
    masks, _ = w.predict(t, image, prompts, sid)
    rng = transform_rng(spec.seed, sid, t.hash)
    tx, ty = int(rng.integers(0, 9)), int(rng.integers(0, 9))
    seen = w.model.prompts[-1].coords
    # the victim got the prompts where the pixels went
    assert np.allclose(seen[0, :2], [2 * 20 + tx, 2 * 30 + ty])
    assert np.allclose(seen[1], [2 * 10 + tx, 2 * 12 + ty, 2 * 30 + tx, 2 * 40 + ty])
    assert w.model.images[-1].shape[:2] == (2 * h + 8, 2 * w_ + 8)
    # the masks come back in the input frame, around the original prompt points
    assert masks.shape == (2, h, w_)
    yy, xx = np.nonzero(masks[0])
    assert abs(xx.mean() - 20) < 1 and abs(yy.mean() - 30) < 1
    yy, xx = np.nonzero(masks[1])
    assert abs(xx.mean() - 20) < 1 and abs(yy.mean() - 26) < 1


def test_run_with_transforms_attacks_once_and_keys_rows_by_transform(tmp_path, monkeypatch):
    calls = []
    real = jobs_mod.AttackWorker._attack

    def counting(self, inst, batch):
        calls.extend(batch)
        return real(self, inst, batch)

    monkeypatch.setattr(jobs_mod.AttackWorker, "_attack", counting)
    out = tmp_path / "r"
    res = api.run(
        attacks=ATTACK,
        victims=TINY,
        limit=1,
        out=out,
        progress=False,
        transforms="identity,tt-darken:level=60,tt-noise",
    )
    assert res.ok and len(calls) == 1  # one adversarial image for three transforms
    assert res.summary.eval_jobs == 1 * 3 * 2 and res.summary.eval_done == 6
    assert "(3 transforms)" in res.summary.line()
    rows = load_rows(out)
    assert set(rows["transform"]) == {"identity", "tt-darken[level=60]", "tt-noise"}
    dark = resolve("transform", "tt-darken:level=60")
    assert set(rows.loc[rows["transform"] == "tt-darken[level=60]", "transform_hash"]) == {
        dark.hash
    }
    assert set(rows.loc[rows["transform"] == "identity", "transform_hash"]) == {""}
    # a clean row per transform, and the adversarial rows differ between transforms
    per = rows.groupby(["transform", "attack"]).size()
    assert len(per) == 6
    adv = rows[rows.attack != "clean"].set_index(["transform", "prompt_index"])["iou"]
    assert not np.allclose(adv["identity"].values, adv["tt-darken[level=60]"].values)
    # the identity's rows where they always were; the others beside them, keyed
    noise = resolve("transform", "tt-noise")
    names = sorted(p.name for p in (out / "rows").iterdir())
    assert names == sorted([TINY, f"{TINY}@{dark.key}", f"{TINY}@{noise.key}"])
    man = load_manifest(out)
    assert [t["label"] for t in man["transforms"]] == [
        "identity",
        "tt-darken[level=60]",
        "tt-noise",
    ]
    # resuming runs nothing; eval adds a transform without attacking again
    again = api.run(
        attacks=ATTACK,
        victims=TINY,
        limit=1,
        out=out,
        progress=False,
        transforms="identity,tt-darken:level=60,tt-noise",
    )
    assert again.summary.eval_done == 0 and again.summary.attack_done == 0
    before = load_rows(out)
    res = api.evaluate(out, transforms="tt-shift", progress=False)
    assert res.ok and len(calls) == 1 and res.summary.eval_done == 2
    after = load_rows(out)
    assert len(after) == len(before) + len(before[before["transform"] == "identity"])
    assert "tt-shift" in {t["label"] for t in load_manifest(out)["transforms"]}
    # the leaderboard has one column per (victim, transform), identity's under the victim
    table = runs_table([out])
    assert list(dict.fromkeys(table["victim"])) == [
        TINY,
        f"{TINY} | tt-darken[level=60]",
        f"{TINY} | tt-noise",
        f"{TINY} | tt-shift",
    ]
    text = api.leaderboard(out)
    assert f"{TINY} | tt-darken[level=60]" in text
    # `show --transform` draws what the victims saw under that transform
    from uadbench.report import panel

    seen = []
    real = panel.build_panel

    def spy(clean, adv, vms, prompts, **kw):
        seen.append((clean, vms))
        return real(clean, adv, vms, prompts, **kw)

    monkeypatch.setattr(panel, "build_panel", spy)
    sid = str(rows["sample_id"].iloc[0])
    p_dark = panel.show(out, sid, transform="tt-darken:level=60")
    panel.show(out, sid)
    panel.show(out, sid, transform="tt-shift")
    assert p_dark.name.endswith("tt-darken_level_60.png") or "tt-darken" in p_dark.name
    assert seen[0][0].mean() < seen[1][0].mean() - 20  # the darkened image was drawn
    # the drawn IoUs are the rows of that transform
    dark_adv = rows[(rows["transform"] == "tt-darken[level=60]") & (rows.attack != "clean")]
    assert seen[0][1][0].adv_iou[0] in set(dark_adv["iou"])
    assert seen[2][0].shape == seen[1][0].shape  # a moved image is drawn in its frame
    with pytest.raises(UadbenchError, match="no rows"):
        panel.show(out, sid, transform="tt-darken:level=5")


def test_identity_only_run_keeps_its_identity_paths_and_manifest(tmp_path):
    spec = api.plan(attacks=ATTACK, victims=TINY, limit=1)
    assert [t.name for t in spec.transforms] == ["identity"]
    # the run directory hash computed by the code before the transform axis existed
    assert spec.default_out("r").name == "samples-zoo-vit-sam-s0-9449ff51"
    out = tmp_path / "r"
    api.run(attacks=ATTACK, victims=TINY, limit=1, out=out, progress=False)
    man = load_manifest(out)
    assert "transforms" not in man and "transforms" not in man["identity"]
    a = spec.attacks[0]
    assert sorted(
        p.relative_to(out).as_posix() for p in (out / "rows").rglob("*.parquet")
    ) == sorted([f"rows/{TINY}/{a.key}.parquet", f"rows/{TINY}/clean.parquet"])
    rows = load_rows(out)
    assert set(rows["transform"]) == {"identity"} and set(rows["transform_hash"]) == {""}
    # the committed baseline's identity is what the current code gives its arguments
    base = load_manifest(BASELINE)
    assert "transforms" not in base["identity"]


def test_rows_without_the_transform_columns_read_as_identity(tmp_path):
    rows = load_rows(BASELINE)  # committed before the columns existed
    assert (
        pq.read_schema(next((BASELINE / "rows").glob("*.parquet"))).names
        == (LEGACY_ROW_SCHEMA.names)
        or "transform" in pq.read_schema(next((BASELINE / "rows").glob("*.parquet"))).names
    )
    assert list(rows.columns) == ROW_SCHEMA.names
    assert set(rows["transform"]) == {"identity"} and set(rows["transform_hash"]) == {""}
    assert as_units(rows)["victim"].equals(rows["victim"])
    # a legacy loose shard too
    one = rows.head(3)
    table = pa.Table.from_pandas(one[LEGACY_ROW_SCHEMA.names], schema=LEGACY_ROW_SCHEMA)
    (tmp_path / "rows" / "v" / "clean").mkdir(parents=True)
    (tmp_path / "manifest.json").write_text(json.dumps({"format": "uadbench-run/1"}))
    pq.write_table(table, tmp_path / "rows" / "v" / "clean" / "x.parquet")
    got = load_rows(tmp_path)
    assert list(got["transform"]) == ["identity"] * 3 and list(got["transform_hash"]) == [""] * 3


def test_failures_are_keyed_by_transform(tmp_path):
    spec = api.plan(attacks=ATTACK, victims=TINY, limit=1, transforms="identity,tt-darken")
    data = RunData(spec, tmp_path)
    ident, dark = spec.transforms
    lines = [
        {"phase": "eval", "key": {"victim": TINY, "attack": "clean", "sample": "a"}},
        {
            "phase": "eval",
            "key": {"victim": TINY, "attack": "clean", "sample": "a", "transform": dark.label},
        },
    ]
    (tmp_path / "failures.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    keys = failed_keys(tmp_path)
    assert keys == {
        ("eval", TINY, "identity", "clean", "a"),
        ("eval", TINY, dark.label, "clean", "a"),
    }
    assert data.shard_file(spec.victims[0], None, "a", dark) != data.shard_file(
        spec.victims[0], None, "a", ident
    )
    assert data.shard_file(spec.victims[0], None, "a", ident) == data.shard_file(
        spec.victims[0], None, "a"
    )


def test_unknown_transform_fails_before_anything_is_written(tmp_path):
    with pytest.raises(UadbenchError, match="tt-darken"):
        api.run(attacks=ATTACK, victims=TINY, limit=1, out=tmp_path / "r", transforms="tt-darkn")
    with pytest.raises(UadbenchError, match="level"):
        api.run(
            attacks=ATTACK, victims=TINY, limit=1, out=tmp_path / "r", transforms="tt-darken:levl=3"
        )
    assert not (tmp_path / "r").exists()


# ----------------------------------------------------------------- the reports
def _rows(ious: dict[tuple[str, str, str], float], n_img=12, n_prompt=3, seed=0):
    """Rows of victim v under identity and jpeg: per (attack, transform) a mean IoU."""
    rng = np.random.default_rng(seed)
    out = []
    for (attack, transform, victim), mean in ious.items():
        for i in range(n_img):
            for p in range(n_prompt):
                out.append(
                    {
                        "dataset": "d",
                        "sample_id": f"s{i}",
                        "attack": attack,
                        "attack_name": attack,
                        "attack_hash": "" if attack == "clean" else "h" + attack,
                        "eps": 0.0 if attack == "clean" else 8 / 255,
                        "surrogate": "" if attack == "clean" else "sur",
                        "victim": victim,
                        "prompt_index": p,
                        "prompt_kind": "point",
                        "mask_index": p,
                        "x0": 1.0,
                        "y0": 1.0,
                        "x1": np.nan,
                        "y1": np.nan,
                        "reference": "clean",
                        "iou": float(np.clip(mean + rng.normal(0, 3), 0, 100)),
                        "seconds": 0.1,
                        "seed": 0,
                        "transform": transform,
                        "transform_hash": "" if transform == "identity" else "t" + transform,
                    }
                )
    return pd.DataFrame(out)


def test_leaderboard_and_compare_keep_transforms_apart():
    rows = _rows(
        {
            ("clean", "identity", "v"): 100,
            ("a", "identity", "v"): 10,
            ("b", "identity", "v"): 60,
            ("clean", "jpeg[q=75]", "v"): 100,
            ("a", "jpeg[q=75]", "v"): 90,
            ("b", "jpeg[q=75]", "v"): 30,
        }
    )
    t = leaderboard_table(as_units(rows)).set_index(["attack", "victim"])
    assert t.loc[("a", "v"), "miou"] < 20 and t.loc[("a", "v | jpeg[q=75]"), "miou"] > 80
    assert t.loc[("b", "v"), "miou"] > 50 and t.loc[("b", "v | jpeg[q=75]"), "miou"] < 40
    assert t.loc[("clean", "v | jpeg[q=75]"), "n_prompts"] == 36
    c = compare_pairs(as_units(rows), [("a", "b")], metrics=["miou"], n_perm=200)
    c = c.set_index("victim")
    # a beats b (lower mIoU; delta + = a stronger) on the plain victim, b beats a under
    # JPEG: each unit compared within itself, never pooled
    assert c.loc["v", "delta"] > 30 and c.loc["v | jpeg[q=75]", "delta"] < -30


def test_check_pairs_baseline_and_run_by_victim_and_transform():
    from uadbench.report.check import check_rows

    cells = {
        ("clean", "identity", "v"): 100,
        ("a", "identity", "v"): 10,
        ("clean", "jpeg[q=75]", "v"): 100,
        ("a", "jpeg[q=75]", "v"): 15,
    }
    base = as_units(_rows(cells, n_img=16))
    # the attack stopped working under JPEG only (its mIoU there went back up)
    cur = as_units(_rows({**cells, ("a", "jpeg[q=75]", "v"): 85}, n_img=16, seed=1))
    ok, table = check_rows(cur, base, n_perm=2000)
    verdict = table.drop_duplicates(["victim", "verdict"]).set_index("victim")["verdict"]
    assert not ok
    assert verdict["v | jpeg[q=75]"] == "REGRESSION" and verdict["v"] != "REGRESSION"
