"""Leaderboard tables: numbers, best marking, ASR threshold, tidy CSV, formats, and the
anything-unsegmentable importer checked against hand-computed means of the raw JSON."""

from __future__ import annotations

import io
import json
import math
import statistics
from fractions import Fraction
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from uadbench.errors import DataError, RunDirError, UadbenchError
from uadbench.report.importers import import_anything_unsegmentable
from uadbench.report.leaderboard import leaderboard_table, render, valid_prompts
from uadbench.report.stats import compare
from uadbench.store.rundir import load_manifest, load_rows
from uadbench.store.schema import COLUMNS
from uadbench.victims import VICTIMS

# A copy of shared/fixtures/anything-unsegmentable-logs (the reference implementation's
# published per-prompt logs), kept in the repo so the test never depends on a sibling dir.
FIXTURE = Path(__file__).resolve().parent / "data" / "anything-unsegmentable-logs"


def make_rows(
    spec: dict[tuple[str, str], list[float]], kinds: list[str] | None = None, images: int = 1
) -> pd.DataFrame:
    """Rows from {(attack, victim): ious}; prompts spread round-robin over ``images``."""
    out = []
    for (attack, victim), ious in spec.items():
        for j, v in enumerate(ious):
            name, _, rest = attack.partition("[")
            eps = (
                float(Fraction(rest.rstrip("]").split("=")[1]))
                if rest
                else (0.0 if attack == "clean" else 8 / 255)
            )
            out.append(
                {
                    "dataset": "toy",
                    "sample_id": f"img{j % images}",
                    "attack": attack,
                    "attack_name": name,
                    "attack_hash": "" if attack == "clean" else "h",
                    "eps": eps,
                    "surrogate": "" if attack == "clean" else "sam-vit-b",
                    "victim": victim,
                    "prompt_index": j,
                    "prompt_kind": (kinds[j] if kinds else "point"),
                    "mask_index": 0,
                    "x0": 1.0,
                    "y0": 2.0,
                    "x1": math.nan,
                    "y1": math.nan,
                    "reference": "gt",
                    "iou": float(v),
                    "seconds": 0.1,
                    "seed": 0,
                }
            )
    return pd.DataFrame(out, columns=COLUMNS)


# ----------------------------------------------------------------------------- importer
def test_imported_fixture_equals_hand_computed_means(tmp_path):
    run = import_anything_unsegmentable(FIXTURE, tmp_path / "au")
    table = leaderboard_table(load_rows(run), by_kind=True).set_index(
        ["attack", "victim", "prompt_kind"]
    )

    # independent reading of the raw logs: plain json + statistics
    attack_ids = {
        "attack_sam_k": "attack-sam-k",
        "TAP": "tap",
        "ILPD": "ilpd",
        "AA": "aa",
        "PATA": "pata",
        "PATA++": "pata++",
        "UAD": "uad",
    }
    # FastSAM: the paper's is FastSAM-x, registered as fastsam-x with the alias fastsam
    victim_ids = {
        "samb": "sam-vit-b",
        "saml": "sam-vit-l",
        "samh": "sam-vit-h",
        "fastsam": VICTIMS.canonical("fastsam"),
    }
    raw: dict[tuple[str, str, str], list[float]] = {}
    for folder in sorted(p for p in FIXTURE.iterdir() if p.is_dir()):
        for f in sorted(folder.glob("*.json")):
            doc = json.loads(f.read_text())
            for ev in doc["evaluations"].values():
                kind = "point" if len(ev["prompt"]) == 2 else "box"
                for key, value in ev.items():
                    if key == "prompt":
                        continue
                    for k in ("all", kind):
                        raw.setdefault((attack_ids[folder.name], victim_ids[key], k), []).append(
                            value
                        )
    assert len(raw) == 7 * 4 * 3
    assert set(raw) == set(table.index)
    for key, ious in raw.items():
        line = table.loc[key]
        assert line["n_prompts"] == len(ious)
        assert abs(line["miou"] - statistics.fmean(ious)) < 1e-9
        assert abs(line["asr50"] - 100 * sum(v <= 50 for v in ious) / len(ious)) < 1e-9
        assert abs(line["asr10"] - 100 * sum(v <= 10 for v in ious) / len(ious)) < 1e-9
    # the paper's order of attacks, victims as in the manifest
    man = load_manifest(run)
    assert (
        man["pairing"] == "image"
        and man["kind"] == "imported"
        and man["source"] == "anything-unsegmentable"
    )
    assert [a["label"] for a in man["attacks"]] == [
        "attack-sam-k",
        "tap",
        "ilpd",
        "aa",
        "pata",
        "pata++",
        "uad",
    ]
    assert [v["name"] for v in man["victims"]] == [
        victim_ids[k] for k in ("fastsam", "samb", "saml", "samh")
    ]


def test_imported_rows_structure(tmp_path):
    run = import_anything_unsegmentable(FIXTURE, tmp_path / "au")
    rows = load_rows(run)
    f = FIXTURE / "UAD" / "3_UAD.json"
    doc = json.loads(f.read_text())
    mine = rows[
        (rows["attack"] == "uad") & (rows["sample_id"] == "sa_3") & (rows["victim"] == "sam-vit-b")
    ]
    mine = mine.sort_values("prompt_index")
    evs = list(doc["evaluations"].items())
    assert list(mine["prompt_index"]) == list(range(len(evs)))
    for (key, ev), (_, r) in zip(evs, mine.iterrows()):
        assert r["mask_index"] == int(key.split("_")[0][1:])
        assert r["prompt_kind"] == ("point" if len(ev["prompt"]) == 2 else "box")
        assert r["x0"] == ev["prompt"][0] and r["y0"] == ev["prompt"][1]
        if r["prompt_kind"] == "point":
            assert math.isnan(r["x1"]) and math.isnan(r["y1"])
        else:
            assert [r["x1"], r["y1"]] == ev["prompt"][2:]
        assert r["iou"] == ev["samb"]
        assert r["reference"] == "gt"


def test_imported_uad_vs_tap_as_the_data_says(tmp_path):
    """Whatever the sample says about UAD vs TAP, the leaderboard, its best marks and the
    comparison must say the same (no result is hard-coded)."""
    run = import_anything_unsegmentable(FIXTURE, tmp_path / "au")
    rows = load_rows(run)
    table = leaderboard_table(rows).set_index(["attack", "victim"])
    cmp_ = compare(rows, "uad", "tap", seed=0).set_index(["victim", "metric"])
    for v in [VICTIMS.canonical("fastsam"), "sam-vit-b", "sam-vit-l", "sam-vit-h"]:
        u, t = (
            rows[(rows.attack == "uad") & (rows.victim == v)],
            rows[(rows.attack == "tap") & (rows.victim == v)],
        )
        # the comparison's estimand: mean over images of per-image means
        hand = u.groupby("sample_id")["iou"].mean(), t.groupby("sample_id")["iou"].mean()
        assert cmp_.loc[(v, "miou"), "delta"] == pytest.approx((hand[1] - hand[0]).mean(), abs=1e-9)
        hand_asr = (
            100 * (u["iou"] <= 50).groupby(u["sample_id"]).mean()
            - 100 * (t["iou"] <= 50).groupby(t["sample_id"]).mean()
        ).mean()
        assert cmp_.loc[(v, "asr50"), "delta"] == pytest.approx(hand_asr, abs=1e-9)
        assert cmp_.loc[(v, "miou"), "n_images"] == 12
        # the column's top attack has the lowest mIoU of all seven; it is marked best only
        # when its test against the runner-up is significant after the correction
        col = table.xs(v, level="victim")
        assert set(col.index[col["top_miou"]]) == set(col.index[col["miou"] == col["miou"].min()])
        assert set(col.index[col["best_miou"]]) <= set(col.index[col["top_miou"]])
        for a in col.index[col["best_miou"]]:
            assert col.loc[a, "p_best_adj_miou"] <= 0.05 and col.loc[a, "d_best_miou"] > 0


def test_importer_errors(tmp_path):
    with pytest.raises(DataError, match="no <imgid>_<attack>.json"):
        import_anything_unsegmentable(tmp_path, tmp_path / "out")
    (tmp_path / "UAD").mkdir()
    (tmp_path / "UAD" / "1_UAD.json").write_text("{not json")
    with pytest.raises(DataError, match="1_UAD.json"):
        import_anything_unsegmentable(tmp_path, tmp_path / "out")
    (tmp_path / "UAD" / "1_UAD.json").write_text(
        json.dumps(
            {
                "imgid": 1,
                "adv_method": "UAD",
                "evaluations": {"m0_p0": {"prompt": [1, 2, 3], "samb": 5}},
            }
        )
    )
    with pytest.raises(DataError, match="expected 2 or 4"):
        import_anything_unsegmentable(tmp_path, tmp_path / "out")
    (tmp_path / "UAD" / "1_UAD.json").write_text(
        json.dumps(
            {
                "imgid": 1,
                "adv_method": "UAD",
                "evaluations": {"m2_p0": {"prompt": [1, 2], "samb": 5.5}},
            }
        )
    )
    out = import_anything_unsegmentable(tmp_path, tmp_path / "out")
    rows = load_rows(out)
    assert rows[["attack", "victim", "mask_index", "iou", "sample_id"]].values.tolist() == [
        ["uad", "sam-vit-b", 2, 5.5, "sa_1"]
    ]
    with pytest.raises(RunDirError, match="already holds a run"):
        import_anything_unsegmentable(tmp_path, out)


# ----------------------------------------------------------------------------- numbers
def test_asr_threshold_counts_iou_equal_to_threshold_as_destroyed():
    rows = make_rows({("uad", "v"): [50.0, 50.000001, 10.0, 10.0001, 90.0]})
    line = leaderboard_table(rows).iloc[0]
    assert line["asr50"] == pytest.approx(60.0)  # 50, 10, 10.0001
    assert line["asr10"] == pytest.approx(20.0)  # only 10
    assert line["miou"] == pytest.approx(np.mean([50.0, 50.000001, 10.0, 10.0001, 90.0]))
    # the comparison's ASR counts the same way
    rows2 = pd.concat([rows, make_rows({("tap", "v"): [51.0] * 5})])
    c = compare(rows2, "uad", "tap", metrics="asr50")
    assert c["delta"].iloc[0] == pytest.approx(60.0)


def test_best_marking_picks_the_right_cells():
    rows = make_rows(
        {
            ("clean", "v1"): [5.0, 5.0],  # lowest of all, but clean never competes
            ("aa", "v1"): [40.0, 40.0],  # lowest mIoU among attacks, ASR 100
            ("tap", "v1"): [0.0, 100.0],  # mIoU 50, ASR 50
            ("uad", "v1"): [45.0, 45.0],  # mIoU 45, ASR 100 (tie with aa)
            ("aa", "v2"): [60.0, 60.0],
            ("tap", "v2"): [55.0, 70.0],  # mIoU 62.5, ASR 0
            ("uad", "v2"): [30.0, 95.0],  # mIoU 62.5, ASR 50 -> best ASR on v2
        }
    )
    t = leaderboard_table(rows).set_index(["attack", "victim"])
    assert list(t.index.get_level_values(0).unique()) == ["clean", "aa", "tap", "uad"]
    assert t["top_miou"][t["top_miou"]].index.tolist() == [("aa", "v1"), ("aa", "v2")]
    assert sorted(t["top_asr50"][t["top_asr50"]].index.tolist()) == [
        ("aa", "v1"),
        ("uad", "v1"),
        ("uad", "v2"),
    ]
    assert not t.loc[("clean", "v1"), "top_miou"]
    # one image: nothing can be significant, so nothing is claimed best, and it says so
    assert not t[[f"best_{m}" for m in ("miou", "asr50", "asr10")]].any().any()
    table = leaderboard_table(rows)
    term = render(table, "terminal")
    assert "*" not in term.split("mIoU, ASR@k")[0]
    assert "no 'best' can be significant" in term


def many_images(spec: dict[tuple[str, str], float], n_img: int = 12, seed: int = 0):
    """Rows of ``n_img`` images × 6 prompts per (attack, victim) around the given mean
    IoU: an image effect shared by every attack, noise per prompt."""
    rng = np.random.default_rng(seed)
    img = rng.normal(0, 8, n_img)
    ious = {}
    for key, mean in spec.items():
        ious[key] = [
            float(np.clip(mean + img[i] + rng.normal(0, 3), 0, 100))
            for j in range(6)
            for i in range(n_img)
        ]
    return make_rows(ious, images=n_img)


def test_best_is_marked_only_where_significant_against_the_runner_up():
    rows = many_images(
        {
            ("clean", "v1"): 90.0,
            ("aa", "v1"): 40.0,  # clearly best on v1
            ("tap", "v1"): 60.0,
            ("uad", "v1"): 61.0,
            ("aa", "v2"): 50.0,  # v2: aa and uad within noise of each other
            ("tap", "v2"): 70.0,
            ("uad", "v2"): 50.5,
        }
    )
    t = leaderboard_table(rows, metrics="miou").set_index(["attack", "victim"])
    assert t.loc[("aa", "v1"), "best_miou"] and t.loc[("aa", "v1"), "runner_up_miou"] == "tap"
    assert t["best_miou"].sum() == 1
    top_v2 = t.xs("v2", level="victim")["top_miou"]
    assert top_v2.sum() == 1 and not t.xs("v2", level="victim")["best_miou"].any()
    assert t.attrs["best"]["family"] == 2  # the two columns tested
    # the same test as `compare` top vs runner-up (delta > 0: top stronger)
    c = compare(rows, "aa", "tap", victims=["v1"], metrics="miou")
    assert t.loc[("aa", "v1"), "d_best_miou"] == pytest.approx(c["delta"].iloc[0])
    md = render(leaderboard_table(rows, metrics="miou"), "markdown", "miou")
    assert md.count("**") == 2 + md.count("**bold**") * 2
    tex = render(leaderboard_table(rows, metrics="miou"), "latex", "miou")
    assert tex.count(r"\textbf{") == 1 and r"\toprule" in tex and r"\bottomrule" in tex
    assert "significantly stronger than the runner-up" in tex
    n_images = rows[["dataset", "sample_id"]].drop_duplicates().shape[0]
    assert f"unit of pairing: image, n = {n_images} images;" in md
    assert "{" not in md.split("significantly stronger")[1]  # no unformatted placeholder


def test_clean_correct_asr_n_and_ci_per_cell():
    rows = make_rows(
        {
            ("clean", "v"): [90.0, 40.0, 80.0, 70.0],  # prompt 1 was never right
            ("uad", "v"): [10.0, 5.0, 60.0, 20.0],
        },
        images=2,
    )
    t = leaderboard_table(rows, ci=True, n_boot=200).set_index("attack")
    assert t.loc["uad", "asr50"] == pytest.approx(75.0)
    assert t.loc["uad", "asr50cc"] == pytest.approx(100 * 2 / 3)  # 10, 20 of 90, 80, 70
    assert t.loc["uad", "n_cc"] == 3 and math.isnan(t.loc["clean", "asr50cc"])
    lo, hi = t.loc["uad", "miou_ci_low"], t.loc["uad", "miou_ci_high"]
    # two images (prompts round-robin: img0 holds 10 and 60, img1 5 and 20): the
    # resampled cell ranges between the two images' means
    img_means = [np.mean([10.0, 60.0]), np.mean([5.0, 20.0])]
    assert lo == pytest.approx(min(img_means)) and hi == pytest.approx(max(img_means))
    text = render(
        leaderboard_table(rows, ci=True, n_boot=200), "terminal", show_n=True, show_ci=True
    )
    assert "2/4" in text and "ASR@50 clean-correct" in text and "cluster bootstrap" in text
    assert "not an attack's success" in text


def test_object_size_split_from_box_areas():
    rows = make_rows(
        {("uad", "v"): [10.0, 20.0, 80.0, 90.0]}, kinds=["box", "point", "box", "point"]
    )
    rows["mask_index"] = [0, 0, 1, 1]
    rows.loc[0, ["x0", "y0", "x1", "y1"]] = [0, 0, 20, 20]  # 400 px: small
    rows.loc[2, ["x0", "y0", "x1", "y1"]] = [0, 0, 100, 100]  # 10000 px: large
    t = leaderboard_table(rows, by_size=True)
    got = dict(zip(t["object_size"], t["miou"]))
    assert got == {"all": 50.0, "small": 15.0, "large": 85.0}
    assert "object size" in render(t, "terminal")


def test_tidy_csv_one_line_per_attack_and_victim_full_precision():
    rows = make_rows(
        {
            ("clean", "v1"): [100 / 3, 80.0, 70.0],
            ("uad", "v1"): [1 / 3, 60.0, 20.0],
            ("uad", "v2"): [2 / 3, 1.0, 99.0],
            ("tap", "v2"): [10.0, 20.0, 30.0],
        },
        kinds=["point", "box", "point"],
    )
    table = leaderboard_table(rows)
    csv = render(table, "csv")
    back = pd.read_csv(io.StringIO(csv))
    assert list(back.columns[:6]) == ["attack", "victim", "n_prompts", "miou", "asr50", "asr10"]
    assert csv.splitlines()[0].startswith("attack,victim,n_prompts,miou,asr50,asr10")
    pairs = list(zip(back["attack"], back["victim"]))
    assert sorted(pairs) == sorted({("clean", "v1"), ("uad", "v1"), ("uad", "v2"), ("tap", "v2")})
    assert len(pairs) == len(set(pairs))
    uad1 = back[(back.attack == "uad") & (back.victim == "v1")].iloc[0]
    assert uad1["miou"] == (1 / 3 + 60.0 + 20.0) / 3  # exact round trip: full precision
    assert "26.78" in render(table, "terminal")  # 2 decimals in human formats
    # by kind: still one line per (attack, victim, kind)
    back_k = pd.read_csv(io.StringIO(render(leaderboard_table(rows, by_kind=True), "csv")))
    assert len(back_k) == 3 * len(back)
    uad1_box = back_k[
        (back_k.attack == "uad") & (back_k.victim == "v1") & (back_k.prompt_kind == "box")
    ]
    assert uad1_box["miou"].tolist() == [60.0] and uad1_box["n_prompts"].tolist() == [1]


def test_valid_only_drops_prompts_whose_clean_mask_was_wrong():
    rows = make_rows(
        {
            ("clean", "v"): [90.0, 40.0, 50.0, 80.0],  # prompts 1 and 2 were never right
            ("uad", "v"): [10.0, 5.0, 0.0, 60.0],
        }
    )
    assert valid_prompts(rows).tolist() == [True, False, False, True] * 2
    t = leaderboard_table(rows, valid_only=True).set_index("attack")
    assert t.loc["uad", "n_prompts"] == 2
    assert t.loc["uad", "asr50"] == pytest.approx(50.0)  # 10 destroyed, 60 not
    assert t.loc["clean", "asr50"] == 0.0
    assert leaderboard_table(rows).set_index("attack").loc["uad", "asr50"] == pytest.approx(75.0)
    with pytest.raises(UadbenchError, match="unavailable"):
        leaderboard_table(rows[rows.attack != "clean"], valid_only=True)
    # nothing valid at all: the lines stay, empty
    none_valid = rows.assign(iou=np.where(rows["attack"] == "clean", 10.0, rows["iou"]))
    t0 = leaderboard_table(none_valid, valid_only=True)
    assert t0["n_prompts"].tolist() == [0, 0] and t0["miou"].isna().all()
    assert "–" in render(t0, "terminal")


def test_sweep_labels_are_rows_ordered_by_eps_and_formats():
    rows = make_rows(
        {
            ("clean", "v"): [90.0],
            ("uad[eps=8/255]", "v"): [20.0],
            ("uad[eps=2/255]", "v"): [60.0],
            ("uad[eps=4/255]", "v"): [40.0],
            ("aa", "v"): [30.0],
        }
    )
    t = leaderboard_table(rows, attack_order=["aa"])
    assert t["attack"].tolist() == [
        "clean",
        "aa",
        "uad[eps=2/255]",
        "uad[eps=4/255]",
        "uad[eps=8/255]",
    ]
    assert render(t, "terminal", "miou,asr50,asr10").count("ASR@10") == 1
    with pytest.raises(UadbenchError, match="unknown metric"):
        render(t, "terminal", "miou,asr5")
    with pytest.raises(UadbenchError, match="unknown format"):
        render(t, "pdf")
    # prompt-kind lines
    t2 = leaderboard_table(
        make_rows({("uad", "v"): [10.0, 90.0]}, kinds=["point", "box"]), by_kind=True
    )
    assert t2[["prompt_kind", "miou"]].values.tolist() == [
        ["all", 50.0],
        ["point", 10.0],
        ["box", 90.0],
    ]
    assert "point" in render(t2, "markdown")


def write_run(d, rows, identity):
    from uadbench.store.rundir import atomic_write_json, write_shard

    atomic_write_json(d / "manifest.json", {"format": "uadbench-run/1", "identity": identity})
    write_shard(d / "rows" / "all.parquet", rows.to_dict("records"))
    return d


def test_runs_are_pooled_only_when_comparable_and_valid_only_is_per_run(tmp_path):
    from uadbench.report.leaderboard import runs_table

    ident = {"dataset": {"hash": "a"}, "seed": 0, "surrogate": {"hash": "s"}, "prompts": {}}
    r1 = make_rows({("clean", "v"): [90.0, 30.0], ("uad", "v"): [10.0, 20.0]})
    r2 = make_rows({("clean", "v"): [90.0, 30.0], ("tap", "v"): [40.0, 20.0]})
    a = write_run(tmp_path / "a", r1, ident)
    b = write_run(tmp_path / "b", r2, ident)
    t = runs_table([a, b]).set_index("attack")
    assert sorted(t.index) == ["clean", "tap", "uad"] and t.loc["clean", "n_prompts"] == 2
    # another seed (or dataset, surrogate, reference) is refused, or split with --split
    c = write_run(tmp_path / "c", r2.assign(seed=1), ident | {"seed": 1})
    with pytest.raises(UadbenchError, match="differ in seed"):
        runs_table([a, c])
    t = runs_table([a, c], split=True)
    assert t["pool"].nunique() == 2
    text = render(t, "terminal")
    assert text.count("pool 1:") == 1 and text.count("pool 2:") == 1
    d = write_run(tmp_path / "d", r1.assign(reference="clean"), ident)
    with pytest.raises(UadbenchError, match="reference masks"):
        runs_table([b, d])
    # the same cell in two runs is refused
    e = write_run(tmp_path / "e", r1, ident)
    with pytest.raises(UadbenchError, match="both hold uad on v"):
        runs_table([a, e])
    # valid-only judged by each run's own clean rows: in run f prompt 1 was right
    r3 = make_rows({("clean", "v"): [90.0, 95.0], ("tap", "v"): [40.0, 20.0]})
    f = write_run(tmp_path / "f", r3, ident | {"seed": 2})
    t = runs_table([a, f], split=True, valid_only=True).set_index("attack")
    assert t.loc["uad", "n_prompts"] == 1 and t.loc["tap", "n_prompts"] == 2


def test_seeds_table_mean_and_between_seed_sd(tmp_path):
    from uadbench.report.leaderboard import seeds_table

    ident = {"dataset": {"hash": "a"}, "seed": 0, "surrogate": {"hash": "s"}, "prompts": {}}
    runs = []
    for seed, uad in ((0, [10.0, 30.0]), (1, [20.0, 40.0]), (2, [60.0, 20.0])):
        rows = make_rows({("clean", "v"): [90.0, 80.0], ("uad", "v"): uad}).assign(seed=seed)
        runs.append(write_run(tmp_path / f"s{seed}", rows, ident | {"seed": seed}))
    t = seeds_table(runs).set_index("attack")
    means = [20.0, 30.0, 40.0]  # per seed mIoU of uad
    assert t.loc["uad", "miou"] == pytest.approx(np.mean(means))
    assert t.loc["uad", "miou_seed_sd"] == pytest.approx(np.std(means, ddof=1))
    assert t.loc["uad", "n_seeds"] == 3 and t.loc["clean", "miou_seed_sd"] == 0
    text = render(seeds_table(runs), "terminal", "miou")
    assert "30.00 ± 10.00" in text and "between-seed SD over 3 runs (seeds 0, 1, 2)" in text
    other = write_run(
        tmp_path / "o",
        make_rows({("uad", "v"): [1.0, 2.0]}),
        ident | {"seed": 5, "dataset": {"hash": "b"}},
    )
    with pytest.raises(UadbenchError, match="differ only in their seed"):
        seeds_table([runs[0], other])
