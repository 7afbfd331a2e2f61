"""Pictures: the per-sample panel (tiles, size, masks from re-run victims), leaderboard
plots and the self-contained HTML report."""

from __future__ import annotations

import base64
import dataclasses
import io
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from uadbench.datasets import DATASETS
from uadbench.datasets.base import Dataset, Sample
from uadbench.errors import UadbenchError
from uadbench.eval.prompts import PromptSet
from uadbench.report.html import html_report
from uadbench.report.panel import (
    GAP,
    HEAD,
    INFO_W,
    VictimMasks,
    _magma,
    build_panel,
    panel_geometry,
    perturbation_tile,
    row_height,
    show,
)
from uadbench.report.plots import (
    attack_color,
    damage_table,
    image_bootstrap_ci,
    label_colors,
    plot_run,
    transfer_matrix,
)
from uadbench.store.rundir import adv_path, atomic_write_json, write_shard
from uadbench.store.schema import COLUMNS
from uadbench.victims import VICTIMS
from uadbench.victims.base import Victim


# ----------------------------------------------------------------------------- test plugins
@dataclasses.dataclass(frozen=True)
class _FolderConfig:
    root: str = ""


class _PngFolder(Dataset):
    """<root>/<id>.png, no ground truth."""

    name = "report-test-pngs"
    Config = _FolderConfig

    def ids(self) -> list[str]:
        return sorted(p.stem for p in Path(self.config.root).glob("*.png"))

    def load(self, sample_id: str) -> Sample:
        with Image.open(Path(self.config.root) / f"{sample_id}.png") as im:
            return Sample(sample_id, np.asarray(im.convert("RGB")))


class _BrightVictim(Victim):
    """Mask = bright pixels (mean > 127) inside the box, or within 6 px of the point."""

    name = "report-test-bright"

    def build(self) -> torch.nn.Module:
        return torch.nn.Identity()

    def embed(self, image: np.ndarray):
        return torch.as_tensor(image.mean(axis=2) > 127)

    def decode(self, state, prompts: PromptSet, hw):
        h, w = hw
        yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
        out = []
        for k in range(len(prompts)):
            x0, y0, x1, y1 = prompts.coords[k]
            if prompts.kinds[k] == "box":
                region = (xx >= x0) & (xx <= x1) & (yy >= y0) & (yy <= y1)
            else:
                region = (xx - x0) ** 2 + (yy - y0) ** 2 <= 36
            out.append(region & state)
        return torch.stack(out)


@pytest.fixture(autouse=True)
def _test_plugins():
    """Register this module's test dataset and victim for its tests only: the registries
    are global, and other modules parametrize over them."""
    plugins = (
        (DATASETS, "report-test-pngs", _PngFolder),
        (VICTIMS, "report-test-bright", _BrightVictim),
    )
    for reg, name, cls in plugins:
        reg.register(name, cls)
    yield
    for reg, name, _ in plugins:
        reg.unregister(name)


SEED = 3  # the run's seed: part of the adversarial cache path


def _images(h: int = 48, w: int = 64):
    rng = np.random.default_rng(0)
    clean = np.zeros((h, w, 3), np.uint8)
    clean[:, w // 2 :] = 200  # right half bright
    clean = np.clip(clean.astype(int) + rng.integers(0, 20, clean.shape), 0, 255).astype(np.uint8)
    adv = np.clip(clean.astype(int) + rng.integers(-8, 9, clean.shape), 0, 255).astype(np.uint8)
    adv[:, w // 2 :] = 60  # the attack darkens the right half: masks vanish
    return clean, adv


def _make_run(tmp_path: Path, attacks=(("uad", 8 / 255),), sweep_name: str | None = None) -> Path:
    run = tmp_path / "run"
    data = tmp_path / "data"
    data.mkdir()
    clean, adv = _images()
    Image.fromarray(clean).save(data / "s0.png")
    labels = [("clean", "clean", "", 0.0)]
    for label, eps in attacks:
        labels.append((label, sweep_name or label.split("[")[0], f"hash{len(labels)}", eps))
    rows = []
    for label, name, h, eps in labels:
        if label != "clean":
            Image.fromarray(adv).save(
                _ensure(adv_path(run, name, h, "report-test-bright", "s0", SEED))
            )
        for v_i, victim in enumerate(["report-test-bright", "no-such-victim"]):
            for j, (kind, xyxy) in enumerate(
                [
                    ("point", (50, 20, math.nan, math.nan)),
                    ("box", (34, 5, 60, 40)),
                    ("point", (10, 10, math.nan, math.nan)),
                ]
            ):
                iou = 100.0 if label == "clean" else 100.0 * eps * (j + 1) + v_i
                rows.append(
                    {
                        "dataset": "report-test-pngs",
                        "sample_id": "s0",
                        "attack": label,
                        "attack_name": name,
                        "attack_hash": h,
                        "eps": eps,
                        "surrogate": "" if label == "clean" else "report-test-bright",
                        "victim": victim,
                        "prompt_index": j,
                        "prompt_kind": kind,
                        "mask_index": j,
                        "x0": xyxy[0],
                        "y0": xyxy[1],
                        "x1": xyxy[2],
                        "y1": xyxy[3],
                        "reference": "clean",
                        "iou": iou,
                        "seconds": 0.0,
                        "seed": SEED,
                    }
                )
    write_shard(run / "rows" / "all.parquet", rows)
    atomic_write_json(
        run / "manifest.json",
        {
            "format": "uadbench-run/1",
            "kind": "run",
            "pairing": "prompt",
            "dataset": {"name": "report-test-pngs", "config": {"root": str(data)}},
            "attacks": [
                {"label": lab, "name": n, "hash": h, "config": {}, "eps": e}
                for lab, n, h, e in labels[1:]
            ],
            "victims": [
                {"name": "report-test-bright", "hash": "x"},
                {"name": "no-such-victim", "hash": "y"},
            ],
            "surrogate": "report-test-bright",
            "seed": SEED,
        },
    )
    return run


def _ensure(p: Path) -> Path:
    p.parent.mkdir(parents=True, exist_ok=True)
    return p


# ----------------------------------------------------------------------------- panel
def test_build_panel_tiles_and_size():
    clean, adv = _images()
    prompts = PromptSet.from_lists(points=[(50, 20)], boxes=[(34, 5, 60, 40)])
    masks = np.zeros((2, 48, 64), bool)
    masks[0, 10:30, 40:60] = True
    vm = VictimMasks("v", masks, np.zeros_like(masks), [90.0, 80.0], [5.0, 0.0])
    gt = np.zeros((2, 48, 64), bool)
    gt[1, 30:45, 5:20] = True
    panel, tiles = build_panel(
        clean, adv, [vm, VictimMasks("w", note="no weights")], prompts, gt_masks=gt
    )
    th, tw, scale, ph, pw = panel_geometry((48, 64), 2)
    assert (th, tw, scale) == (48, 64, 1.0)
    rh = row_height(48)
    assert (
        panel.shape
        == (ph, pw, 3)
        == (GAP + 4 * (HEAD + rh + GAP), GAP + 2 * (64 + GAP) + INFO_W + GAP, 3)
    )
    y, x, h, w = tiles["adversarial"]
    assert np.array_equal(panel[y : y + h, x : x + w], adv)
    y, x, h, w = tiles["clean"]
    assert np.array_equal(panel[y : y + h, x : x + w], clean)
    y, x, h, w = tiles["perturbation"]
    pert = panel[y : y + h, x : x + w]
    assert np.array_equal(pert, perturbation_tile(clean, adv))
    # the ground truth of the prompts' masks is drawn on the clean image, nowhere else
    y, x, h, w = tiles["ground_truth"]
    gtile = panel[y : y + h, x : x + w].astype(int)
    assert abs(gtile[40, 10] - clean[40, 10]).max() > 40 and (gtile[5, 5] == clean[5, 5]).all()

    # the clean masks are drawn on the victim's clean tile, not on the adversarial one
    def tile(name):
        y, x, h, w = tiles[name]
        return panel[y : y + h, x : x + w].astype(int)

    # (row 12, col 41) lies in mask 0 but away from the prompt markers; (45, 10) lies nowhere
    assert abs(tile("v/clean")[12, 41] - clean[12, 41]).max() > 40
    assert abs(tile("v/adversarial")[12, 41] - adv[12, 41]).max() == 0
    assert abs(tile("w/clean")[12, 41] - clean[12, 41]).max() == 0
    assert abs(tile("v/clean")[45, 10] - clean[45, 10]).max() == 0
    # downscaling: longer side at most max_side
    big = np.zeros((300, 900, 3), np.uint8)
    p2, t2 = build_panel(big, big, [], None, max_side=450)
    assert t2["adversarial"][2:] == (150, 450) and p2.shape[1] == GAP + 3 * (450 + GAP)
    assert "no ground truth" not in t2 and t2["ground_truth"][3] == 450
    with pytest.raises(UadbenchError):
        build_panel(clean, adv[:10])


def test_perturbation_map_fixed_scale_not_saturating():
    clean = np.full((1, 4, 3), 100, np.uint8)
    adv = clean.copy()
    adv[0, 1, 0] = 108  # |δ| = 8 in red only
    adv[0, 2] = (96, 104, 100)  # 4 in red and green: max over RGB = 4
    adv[0, 3, 2] = 140  # 40 > vmax: clips
    lut = _magma()
    t = perturbation_tile(clean, adv, vmax=16)
    assert (t[0, 0] == lut[0]).all() and (t[0, 1] == lut[128]).all()
    assert (t[0, 2] == lut[64]).all() and (t[0, 3] == lut[255]).all()
    # light yellow, not white; and a smaller perturbation stays darker on the same scale
    assert tuple(lut[255]) != (255, 255, 255) and lut[255].min() < 200
    assert t[0, 2].sum() < t[0, 1].sum() < t[0, 3].sum()
    # without vmax the image's own max is the top of the scale
    assert (perturbation_tile(clean, adv)[0, 3] == lut[255]).all()


def test_show_writes_png_whose_adversarial_tile_is_the_cached_image(tmp_path):
    run = _make_run(tmp_path)
    out = show(run, "s0", out=tmp_path / "panel.png")
    with Image.open(out) as im:
        panel = np.asarray(im.convert("RGB"))
    th, tw, _, ph, pw = panel_geometry((48, 64), 2)
    assert panel.shape == (ph, pw, 3)
    adv_file = adv_path(run, "uad", "hash1", "report-test-bright", "s0", SEED)
    with Image.open(adv_file) as im:
        adv = np.asarray(im.convert("RGB"))
    y, x = GAP + HEAD, GAP + (tw + GAP)
    assert np.array_equal(panel[y : y + th, x : x + tw], adv)
    rh = row_height(th)
    # row 1 = the re-run victim: its clean masks (bright pixels near the prompts) are overlaid
    # on the clean tile; on the adversarial tile the masks vanished (no overlay there)
    clean, _ = _images()
    y1 = y + 2 * (HEAD + rh + GAP)  # row 0 images, row 1 ground truth / scale
    clean_tile = panel[y1 : y1 + th, GAP : GAP + tw].astype(int)
    adv_tile = panel[y1 : y1 + th, GAP + tw + GAP : GAP + 2 * (tw + GAP) - GAP].astype(int)
    assert abs(clean_tile[20, 40] - clean[20, 40]).max() > 40  # mask overlay (the box)
    assert abs(adv_tile[20, 40] - adv[20, 40]).max() < 3
    # row 2 = unknown victim: plain tiles (no overlay) and a note
    y2 = y1 + HEAD + rh + GAP
    assert (
        abs(panel[y2 : y2 + th, GAP : GAP + tw][30:40, 0:5].astype(int) - clean[30:40, 0:5]).max()
        == 0
    )
    # default output path and errors
    assert show(run, "s0", attack="uad").parent == run / "panels"
    with pytest.raises(UadbenchError, match="no rows"):
        show(run, "nope")
    with pytest.raises(UadbenchError, match="has no rows for sample"):
        show(run, "s0", attack="tap")


# ----------------------------------------------------------------------------- plots, html
def test_plot_run_writes_vector_and_png_figures_with_one_colour_per_attack(tmp_path):
    run = _make_run(
        tmp_path,
        attacks=(("uad[eps=2/255]", 2 / 255), ("uad[eps=4/255]", 4 / 255), ("uad", 8 / 255)),
        sweep_name="uad",
    )
    paths = plot_run(run, tmp_path / "plots", dpi=100)
    names = sorted(p.name for p in paths)
    stems = ["asr50_bars", "asr50_vs_eps", "transfer_matrix"]
    assert names == sorted(f"{s}.{f}" for s in stems for f in ("pdf", "png", "svg"))
    for s in stems:
        assert (tmp_path / "plots" / f"{s}.pdf").read_bytes().startswith(b"%PDF")
        assert "<svg" in (tmp_path / "plots" / f"{s}.svg").read_text()
        with Image.open(tmp_path / "plots" / f"{s}.png") as im:
            assert im.format == "PNG" and im.size[0] > 300 and im.size[1] > 200
    # dpi is honoured: the PNG at 200 dpi is twice as wide
    hi = plot_run(run, tmp_path / "hi", formats=("png",), dpi=200)
    with Image.open(hi[0]) as a, Image.open(tmp_path / "plots" / hi[0].name) as b:
        assert abs(a.size[0] / b.size[0] - 2) < 0.05
    # uad's colour is the same in the bars (its 8/255 label) and the curves
    color = attack_color("uad").lower()
    for s in ("asr50_bars", "asr50_vs_eps"):
        assert color in (tmp_path / "plots" / f"{s}.svg").read_text().lower()
    assert attack_color("tap") != attack_color("uad") == attack_color("uad[eps=4/255]")
    shades = label_colors(["uad[eps=2/255]", "uad"], {"uad[eps=2/255]": "uad", "uad": "uad"})
    assert shades["uad"] == attack_color("uad") != shades["uad[eps=2/255]"]
    with pytest.raises(UadbenchError, match="unknown figure format"):
        plot_run(run, tmp_path / "x", formats=("gif",))


def test_damage_table_is_clean_minus_attacked_miou(tmp_path):
    from uadbench.report.leaderboard import leaderboard_table
    from uadbench.store.rundir import load_rows

    run = _make_run(tmp_path, attacks=(("uad", 8 / 255), ("tap", 4 / 255)))
    d = damage_table(leaderboard_table(load_rows(run)))
    # clean IoU 100; attacked IoU 100·eps·(j+1) + victim index over prompts j = 0, 1, 2
    for a, eps in (("uad", 8 / 255), ("tap", 4 / 255)):
        for vi, v in enumerate(["report-test-bright", "no-such-victim"]):
            assert d.loc[a, v] == pytest.approx(100 - (200 * eps + vi))
    assert transfer_matrix(leaderboard_table(load_rows(run)), "report-test-bright") is not None


def test_image_bootstrap_ci_resamples_images():
    rows = pd.DataFrame(
        {
            "dataset": "d",
            "sample_id": ["a", "a", "b", "b", "c", "c"],
            "iou": [0.0, 10.0, 90.0, 80.0, 0.0, 70.0],
        }
    )
    val, lo, hi, n = image_bootstrap_ci(rows, "asr50", n_boot=2000)
    assert n == 3 and val == pytest.approx(100 * 3 / 6)
    assert lo == pytest.approx(0.0) and hi == pytest.approx(100.0)  # all-a or all-b draws
    _, lo1, hi1, n1 = image_bootstrap_ci(rows[rows["sample_id"] == "a"], "asr50")
    assert n1 == 1 and math.isnan(lo1) and math.isnan(hi1)


def test_html_report_is_self_contained(tmp_path):
    run = _make_run(tmp_path, attacks=(("uad", 8 / 255), ("tap", 8 / 255)))
    out = html_report(run, n_boot=50)
    text = out.read_text()
    assert out == run / "report.html"
    assert '<table class="leaderboard">' in text and '<table class="compare">' in text
    assert "uad (a) vs tap (b)" in text
    imgs = re.findall(r"src='data:image/png;base64,([A-Za-z0-9+/=]+)'", text)
    assert len(imgs) == 2  # ASR bars and the transfer matrix (no sweep here)
    for b in imgs:
        with Image.open(io.BytesIO(base64.b64decode(b))) as im:
            assert im.format == "PNG"
    assert "http://" not in text and "https://" not in text and "<script" not in text
    # the run's settings: seed, surrogate, dataset, attacks' config hashes
    settings = text[text.index("id='settings'") : text.index("id='leaderboard'")]
    assert "report-test-bright" in settings and "hash1" in settings and ">3<" in settings
    assert "No failed job." in text


def test_html_report_compares_whatever_attacks_ran(tmp_path):
    run = _make_run(tmp_path, attacks=(("tap", 8 / 255), ("aa", 4 / 255), ("ilpd", 2 / 255)))
    text = html_report(run, n_boot=50).read_text()

    def pairs(text):  # (a, b) cells of the comparisons table, one family
        part = text[text.index("id='comparisons'") : text.index("id='figures'")]
        cells = re.findall(r"<td>([^<]*)</td>", part)
        return {(a, b) for a, b in zip(cells, cells[1:]) if a in ATT and b in ATT}

    ATT = {"tap", "aa", "ilpd"}
    assert pairs(text) == {("tap", "aa"), ("tap", "ilpd")}
    assert "Reference attack: <b>tap</b> (first attack)" in text and "one family" in text
    text = html_report(run, n_boot=50, reference="ilpd").read_text()
    assert pairs(text) == {("ilpd", "tap"), ("ilpd", "aa")}
    with pytest.raises(UadbenchError, match="not an attack of this run"):
        html_report(run, n_boot=50, reference="uad")


def test_html_report_privileges_no_attack_by_name(tmp_path):
    """`--attack aa,uad`: the reference is the command's first attack, not the one named
    uad (generic code names no plugin)."""
    from uadbench.report.html import pick_reference

    assert pick_reference(["uad", "aa"], ["aa", "uad"], None) == "aa"
    assert pick_reference(["uad", "aa"], [], None) == "uad"
    run = _make_run(tmp_path, attacks=(("aa", 8 / 255), ("uad", 4 / 255)))
    text = html_report(run, n_boot=50).read_text()
    assert "Reference attack: <b>aa</b> (first attack)" in text


def test_html_report_failures_say_k_of_n_images(tmp_path):
    import json

    from uadbench.report.html import of_failed

    assert of_failed(1, 2, "image") == "1 of 2 images failed"
    assert of_failed(1, 1, "image") == "1 of 1 image failed"
    run = _make_run(tmp_path, attacks=(("uad", 8 / 255),))
    man = json.loads((run / "manifest.json").read_text())
    man["samples"] = ["s0", "s1"]
    atomic_write_json(run / "manifest.json", man)
    recs = [
        {"phase": "attack", "key": {"attack": "uad", "sample": "s1"}, "error": "ValueError: x"},
        # a failure a rerun has since fixed (its rows exist): not reported
        {
            "phase": "eval",
            "key": {"victim": "report-test-bright", "attack": "uad", "sample": "s0"},
            "error": "RuntimeError: y",
        },
        {
            "phase": "eval",
            "key": {"victim": "report-test-bright", "attack": "uad", "sample": "s1"},
            "error": "UadbenchError: no adversarial image",
        },
    ]
    (run / "failures.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    text = html_report(run, n_boot=50).read_text()
    fails = text[text.index("id='failures'") :]
    assert "attack uad: 1 of 2 images failed (e.g. s1: ValueError: x)" in fails
    assert "RuntimeError" not in fails and "1 images" not in text
    assert fails.count("<li>") == 1  # the evaluation waiting on the failed attack: said once


def test_show_refuses_imported_runs(tmp_path):
    atomic_write_json(
        tmp_path / "manifest.json", {"kind": "imported", "source": "anything-unsegmentable"}
    )
    with pytest.raises(UadbenchError, match="no adversarial images"):
        show(tmp_path, "sa_1")
    assert isinstance(pd.DataFrame(columns=COLUMNS), pd.DataFrame)


def test_eps_curves_legend_lies_inside_the_figure(tmp_path):
    from uadbench.report.plots import eps_curves
    from uadbench.store.rundir import load_rows

    run = _make_run(
        tmp_path,
        attacks=(("uad[eps=2/255]", 2 / 255), ("uad[eps=4/255]", 4 / 255), ("uad", 8 / 255)),
        sweep_name="uad",
    )
    fig = eps_curves(load_rows(run), n_boot=50)
    fig.canvas.draw()
    (legend,) = fig.legends
    box, page = legend.get_window_extent(), fig.bbox
    assert page.x0 <= box.x0 and box.x1 <= page.x1 and page.y0 <= box.y0 and box.y1 <= page.y1
    # and it overlaps no panel: it sits below every axes
    assert all(box.y1 <= ax.get_window_extent().y0 for ax in fig.axes if ax.get_visible())
