"""Which victims can run on this machine: weights found (where) or why not.

Used by ``uadbench ls victims`` and ``--victims all [--strict]``. Nothing here loads
weights, and nothing imports torch for a built-in victim: their default weights are looked
up by :func:`uadbench.victims.locate.builtin_status` (file lookups, and ``config.json``
for ``hf:`` models). A third-party victim's status comes from its class's
``weights_status`` (importing its module, and whatever that imports).
"""

from __future__ import annotations

import dataclasses
import fnmatch
from typing import Any

from ..errors import UadbenchError
from . import VICTIMS
from .locate import WeightsStatus, builtin_status, cached_hf_models


def _config(cls: Any, name: str) -> Any:
    """The default config of ``cls`` serving ``name`` (prefix entries get ``model_id``)."""
    cfg = cls.Config()
    if ":" in name and "model_id" in {f.name for f in dataclasses.fields(cfg)}:
        cfg = dataclasses.replace(cfg, model_id=name.split(":", 1)[1])
    return cfg


def victim_status(name: str) -> WeightsStatus:
    """Whether victim ``name`` (registered name, alias or ``hf:<id>``) has its weights
    here, and where (or where we looked / what to install). Raises UnknownNameError for
    an unknown name."""
    canonical = VICTIMS.canonical(name)
    entry = VICTIMS.entry(canonical)
    if entry.source == "builtin" and not entry.loaded:  # without importing its class
        status = builtin_status(canonical)
        if status is not None:
            return status
    cls = VICTIMS.get(canonical)
    return cls.weights_status(_config(cls, canonical))


def _cached_hf() -> list[str]:
    if "hf:<id>" not in VICTIMS.names(include_prefixes=True):
        return []
    return cached_hf_models()


def list_status(pattern: str | None = None) -> list[tuple[str, WeightsStatus]]:
    """(name, status) for every registered victim plus every ``hf:<id>`` of a supported
    model found in the local Hugging Face cache; ``pattern``: shell wildcard on names."""
    names = VICTIMS.names() + _cached_hf()
    if pattern:
        names = [n for n in names if fnmatch.fnmatch(n.lower(), pattern.lower())]
    out = []
    for n in names:
        try:
            st = victim_status(n)
        except UadbenchError as exc:
            st = WeightsStatus(False, "", str(exc))
        out.append((n, st))
    return out


def _reason(st: WeightsStatus) -> str:
    if st.detail.startswith("needs "):
        return st.detail
    return f"no weights (looked in {st.detail})" if st.detail else "no weights"


def available_victims(strict: bool = False) -> tuple[list[str], list[tuple[str, str]]]:
    """(usable names, [(name, reason)] skipped) for ``--victims all``.

    Usable = every registered victim whose weights are present, plus the supported
    ``hf:<id>`` models in the local Hugging Face cache. With ``strict``, any skipped
    victim raises a UadbenchError listing what is missing.
    """
    usable, skipped = [], []
    for name, st in list_status():
        if st.found:
            usable.append(name)
        else:
            skipped.append((name, _reason(st)))
    if strict and skipped:
        raise UadbenchError(
            f"--strict: {len(skipped)} victim(s) cannot run here: "
            + "; ".join(f"{n} ({r})" for n, r in skipped)
            + ". Fetch weights with `uadbench download NAME…` or drop --strict."
        )
    return usable, skipped
