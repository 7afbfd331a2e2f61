"""The declared dependencies are the ones the package imports: nothing unused (kornia was),
nothing undeclared, and the optional backends pinned to the range they are tested with."""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11

REPO = Path(__file__).resolve().parent.parent

#: import name → distribution name, where they differ
DIST = {
    "PIL": "pillow",
    "huggingface_hub": "huggingface-hub",
    "skimage": "scikit-image",
    "segment_anything": "segment-anything",
    "segment_anything_hq": "segment-anything-hq",
    "pytorch_msssim": "pytorch-msssim",
}
#: declared for a dependency that imports them without declaring them (see pyproject.toml)
FOR_OTHERS = {"torchvision", "timm"}


def _project() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def _dist(req: str) -> str:
    return re.split(r"[\s\[<>=!~;]", req, maxsplit=1)[0].lower()


def _imports(root: Path) -> set[str]:
    """Top-level third-party modules imported anywhere under ``root`` (lazily or not)."""
    out = set()
    for path in root.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                out |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                out.add(node.module.split(".")[0])
    return {m for m in out if m not in sys.stdlib_module_names and m != "uadbench"}


def test_every_core_dependency_is_imported_and_every_import_declared():
    project = _project()
    core = {_dist(r) for r in project["dependencies"]}
    extras = {_dist(r) for reqs in project["optional-dependencies"].values() for r in reqs}
    imported = {DIST.get(m, m).lower() for m in _imports(REPO / "uadbench")}
    assert not imported - core - extras, "imported but not declared"
    assert not core - imported - FOR_OTHERS, "declared but imported nowhere"
    assert "kornia" not in core | extras


def test_ultralytics_is_pinned_below_the_next_untested_minor():
    (req,) = _project()["optional-dependencies"]["fastsam"]
    assert _dist(req) == "ultralytics"
    assert re.search(r">=\s*8\.\d+", req) and re.search(r"<\s*8\.\d+", req), req


def test_the_manifest_records_versions_of_declared_packages_only():
    """Every package whose version a run's manifest records is one uadbench depends on
    (kornia, imported nowhere, was recorded), and the backends that move results are in."""
    from uadbench.store.manifest import _versions

    project = _project()
    declared = {_dist(r) for r in project["dependencies"]}
    declared |= {_dist(r) for reqs in project["optional-dependencies"].values() for r in reqs}
    import importlib.metadata as md

    asked = set(_versions()) - {"python", "uadbench"}
    assert asked <= declared, asked - declared
    for pkg in ("torch", "transformers", "segment-anything-hq", "ultralytics"):
        try:
            md.version(pkg)
        except md.PackageNotFoundError:
            continue
        assert pkg in asked, pkg
