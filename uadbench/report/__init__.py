"""Reports from stored result rows: leaderboards, significance tests, regression check,
importers and pictures. Tables and plots read records and never rerun models (the
per-sample panel of :mod:`uadbench.report.panel` is the one exception: masks are not
stored, so it re-runs the victims on one sample).

Names are imported lazily so that ``uadbench --help`` does not pay for scipy/matplotlib.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "leaderboard_table": "leaderboard",
    "render": "leaderboard",
    "compare": "stats",
    "render_compare": "stats",
    "holm": "stats",
    "check": "check",
    "check_rows": "check",
    "render_check": "check",
    "import_anything_unsegmentable": "importers",
    "show": "panel",
    "build_panel": "panel",
    "plot_run": "plots",
    "html_report": "html",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
