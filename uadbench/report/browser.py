"""Render an HTML report in headless Chromium: a screenshot and checks of the laid-out
page (tables present, every image decoded, nothing wider than the window).

The checks run in the page itself: a copy of the report gets a small script that, on
``load``, writes its findings as JSON into ``<pre id="uadbench-check">``, and Chromium's
``--dump-dom`` prints the DOM after it ran. The report itself carries no script.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from ..errors import UadbenchError

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")

_CHECK_JS = """
<script>
window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.images);
  var wide = [];
  var W = document.documentElement.clientWidth;
  document.querySelectorAll('body *').forEach(function (el) {
    var r = el.getBoundingClientRect();
    if (r.width > 0 && r.right > W + 1 && !el.closest('.scroll')) {
      wide.push(el.tagName.toLowerCase() + (el.className ? '.' + el.className : ''));
    }
  });
  var out = {
    viewport_width: window.innerWidth,
    client_width: W,
    scroll_width: document.documentElement.scrollWidth,
    images: imgs.length,
    images_loaded: imgs.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length,
    image_widths: imgs.map(function (i) { return i.naturalWidth; }),
    tables: {},
    headings: Array.prototype.map.call(document.querySelectorAll('h2'),
                                       function (h) { return h.textContent; }),
    too_wide: wide.slice(0, 10)
  };
  document.querySelectorAll('table').forEach(function (t) {
    var c = t.className || 'plain';
    out.tables[c] = (out.tables[c] || 0) + 1;
  });
  var pre = document.createElement('pre');
  pre.id = 'uadbench-check';
  pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
});
</script>
"""


def find_chromium() -> str | None:
    """Path of a Chromium (or Chrome) executable on PATH, or None."""
    for name in CANDIDATES:
        path = shutil.which(name)
        if path:
            return path
    return None


def _flags(width: int, height: int, profile: str) -> list[str]:
    return [
        "--headless",
        "--no-sandbox",  # CI containers run as root
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--hide-scrollbars",
        "--force-device-scale-factor=1",
        f"--user-data-dir={profile}",
        f"--window-size={width},{height}",
        "--virtual-time-budget=5000",
    ]


def _chromium(args: list[str], timeout: float) -> subprocess.CompletedProcess:
    exe = find_chromium()
    if exe is None:
        raise UadbenchError(
            "no chromium found on PATH; install it (Debian: apt-get install -y chromium)"
        )
    return subprocess.run(
        [exe, *args], capture_output=True, text=True, timeout=timeout, check=False
    )


def screenshot(
    html: str | Path, png: str | Path, width: int = 1280, height: int = 2400, timeout: float = 120
) -> Path:
    """Screenshot of the top ``width``×``height`` px of the page ``html`` into ``png``."""
    png = Path(png).resolve()
    png.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as profile:
        res = _chromium(
            [*_flags(width, height, profile), f"--screenshot={png}", Path(html).resolve().as_uri()],
            timeout,
        )
    if not png.exists():
        raise UadbenchError(f"chromium wrote no screenshot: {res.stderr.strip()[-300:]}")
    return png


def check_page(
    html: str | Path, width: int = 1280, height: int = 900, timeout: float = 120
) -> dict[str, Any]:
    """Lay out a copy of ``html`` in Chromium at ``width`` px and return what the page
    found about itself: ``images``/``images_loaded`` (naturalWidth > 0), ``tables`` per
    class, ``headings``, ``scroll_width`` vs ``client_width`` and ``too_wide`` (elements
    reaching past the window outside a horizontally scrolling box)."""
    text = Path(html).read_text()
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / "page.html"
        copy.write_text(text.replace("</body>", _CHECK_JS + "</body>", 1))
        res = _chromium(
            [*_flags(width, height, str(Path(tmp) / "profile")), "--dump-dom", copy.as_uri()],
            timeout,
        )
    start = res.stdout.find('<pre id="uadbench-check">')
    if start < 0:
        raise UadbenchError(f"chromium did not run the page's check: {res.stderr.strip()[-300:]}")
    body = res.stdout[start + len('<pre id="uadbench-check">') :]
    import html as _html

    return json.loads(_html.unescape(body[: body.index("</pre>")]))
