"""The HTML report in a real browser (headless Chromium): the screenshot is a non-blank
PNG of the window's size, and the laid-out page has its tables, every image decoded
(naturalWidth > 0) and nothing wider than the window, at a desktop and a narrow width.

Skipped only when no Chromium is installed and this is not CI (CI=1/true, as .ci/run
sets it): in CI a missing browser fails the test.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_report_pictures import _make_run, _test_plugins  # noqa: F401 (autouse fixture)

from uadbench.eval.perturbation import image_metrics, perturbation_path, write_perturbation_row
from uadbench.report.browser import check_page, find_chromium, screenshot
from uadbench.report.html import html_report
from uadbench.report.panel import show

IN_CI = os.environ.get("CI", "").lower() not in ("", "0", "false", "no")


@pytest.fixture(scope="module")
def chromium():
    exe = find_chromium()
    if exe is None:
        if IN_CI:
            pytest.fail("CI must run the browser test: install chromium (.ci/run does)")
        pytest.skip("no chromium on PATH (apt-get install -y chromium); required in CI")
    return exe


def _report(tmp_path: Path) -> Path:
    run = _make_run(
        tmp_path,
        attacks=(("uad[eps=2/255]", 2 / 255), ("uad[eps=4/255]", 4 / 255), ("uad", 8 / 255)),
        sweep_name="uad",
    )
    show(run, "s0", attack="uad")  # a panel in <run>/panels, embedded by the report
    clean = np.asarray(Image.open(tmp_path / "data" / "s0.png").convert("RGB"))
    adv = clean.copy()
    adv[:, :8] = np.clip(adv[:, :8].astype(int) + 8, 0, 255)
    row = {"attack": "uad", "sample_id": "s0", **image_metrics(clean, adv), "wall_seconds": 1.5}
    write_perturbation_row(perturbation_path(run, "uad-hash3", "s0"), row)
    (run / "failures.jsonl").write_text(
        '{"phase": "attack", "key": {"attack": "uad", "sample": "s9"}, "error": "E: x"}\n'
    )
    return html_report(run, n_boot=50)


def test_report_renders_in_chromium(chromium, tmp_path):
    html = _report(tmp_path)
    png = screenshot(html, tmp_path / "report.png", width=1280, height=2000)
    keep = os.environ.get("UADBENCH_SCREENSHOT_DIR")
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        shutil.copy(png, Path(keep) / "report-screenshot.png")
    with Image.open(png) as im:
        assert im.format == "PNG" and im.size == (1280, 2000)
        px = np.asarray(im.convert("RGB")).astype(float)
    # non-blank: text, tables and figures put many colours and much contrast on the page
    assert px.std() > 20 and len(np.unique(px.reshape(-1, 3), axis=0)) > 200
    assert (px < 80).all(axis=2).mean() > 0.005  # dark text is there
    for width in (1280, 760):
        page = check_page(html, width=width)
        assert page["tables"].get("leaderboard") == 1 and page["tables"].get("compare", 0) >= 2
        assert page["tables"].get("settings") == 1
        assert page["images"] >= 4  # bars, transfer matrix, eps curves, the panel
        assert page["images_loaded"] == page["images"] and min(page["image_widths"]) > 0
        assert page["scroll_width"] <= page["client_width"] == width, page
        assert page["too_wide"] == [], page
        assert page["headings"] == [
            "Settings",
            "Leaderboard",
            "Perturbation per attack",
            "Comparisons",
            "Figures",
            "Failures",
        ]


def test_browser_checks_catch_a_broken_image_and_an_overflow(chromium, tmp_path):
    html = _report(tmp_path)
    text = html.read_text()
    bad = tmp_path / "bad.html"
    bad.write_text(
        text.replace(
            "<h2 id='failures'>",
            "<img alt='x' src='data:image/png;base64,AAAA'>"
            "<div style='width:2400px'>wide</div><h2 id='failures'>",
        )
    )
    page = check_page(bad, width=1000)
    assert page["images_loaded"] == page["images"] - 1
    assert page["scroll_width"] > page["client_width"] and page["too_wide"]
