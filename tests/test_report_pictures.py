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
    build_panel,
    panel_geometry,
    perturbation_tile,
    show,
)
from uadbench.report.plots import plot_run
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
    panel, tiles = build_panel(clean, adv, [vm, VictimMasks("w", note="no weights")], prompts)
    th, tw, scale, ph, pw = panel_geometry((48, 64), 2)
    assert (th, tw, scale) == (48, 64, 1.0)
    assert (
        panel.shape
        == (ph, pw, 3)
        == (GAP + 3 * (HEAD + 48 + GAP), GAP + 2 * (64 + GAP) + INFO_W + GAP, 3)
    )
    y, x, h, w = tiles["adversarial"]
    assert np.array_equal(panel[y : y + h, x : x + w], adv)
    y, x, h, w = tiles["clean"]
    assert np.array_equal(panel[y : y + h, x : x + w], clean)
    y, x, h, w = tiles["perturbation"]
    pert = panel[y : y + h, x : x + w]
    assert np.array_equal(pert, perturbation_tile(clean, adv)) and pert.max() == 255

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
    with pytest.raises(UadbenchError):
        build_panel(clean, adv[:10])


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
    # row 1 = the re-run victim: its clean masks (bright pixels near the prompts) are overlaid
    # on the clean tile; on the adversarial tile the masks vanished (no overlay there)
    clean, _ = _images()
    y1 = y + HEAD + th + GAP
    clean_tile = panel[y1 : y1 + th, GAP : GAP + tw].astype(int)
    adv_tile = panel[y1 : y1 + th, GAP + tw + GAP : GAP + 2 * (tw + GAP) - GAP].astype(int)
    assert abs(clean_tile[20, 45] - clean[20, 45]).max() > 40  # mask overlay
    assert abs(adv_tile[20, 45] - adv[20, 45]).max() < 3
    # row 2 = unknown victim: plain tiles (no overlay) and a note
    y2 = y1 + HEAD + th + GAP
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
def test_plot_run_writes_bars_and_sweep_curves(tmp_path):
    run = _make_run(
        tmp_path,
        attacks=(("uad[eps=2/255]", 2 / 255), ("uad[eps=4/255]", 4 / 255), ("uad", 8 / 255)),
        sweep_name="uad",
    )
    paths = plot_run(run, tmp_path / "plots")
    names = sorted(p.name for p in paths)
    assert names == ["asr50_bars.png", "asr50_vs_eps_uad.png"]
    for p in paths:
        with Image.open(p) as im:
            im.verify()
        with Image.open(p) as im:
            assert im.format == "PNG" and im.size[0] > 300 and im.size[1] > 200


def test_html_report_is_self_contained(tmp_path):
    run = _make_run(tmp_path, attacks=(("uad", 8 / 255), ("tap", 8 / 255)))
    out = html_report(run, n_boot=50)
    text = out.read_text()
    assert out == run / "report.html"
    assert '<table class="leaderboard">' in text and '<table class="compare">' in text
    assert "uad (a) vs tap (b)" in text
    imgs = re.findall(r"src='data:image/png;base64,([A-Za-z0-9+/=]+)'", text)
    assert len(imgs) == 1
    with Image.open(io.BytesIO(base64.b64decode(imgs[0]))) as im:
        assert im.format == "PNG"
    assert "http://" not in text and "https://" not in text and "<script" not in text


def test_show_refuses_imported_runs(tmp_path):
    atomic_write_json(
        tmp_path / "manifest.json", {"kind": "imported", "source": "anything-unsegmentable"}
    )
    with pytest.raises(UadbenchError, match="no adversarial images"):
        show(tmp_path, "sa_1")
    assert isinstance(pd.DataFrame(columns=COLUMNS), pd.DataFrame)
