"""Result rows for the statistics tests, built from per-image IoU lists (no torch: the
stats and check mutation areas run with ``--noconftest``)."""

from __future__ import annotations

from uadbench.store.schema import COLUMNS


def prompt_rows(attack: str, per_image: dict[str, list[float]], victim: str = "v") -> list[dict]:
    """One row per prompt: image ``sid`` gets a point prompt of IoU ``x`` for each ``x`` of
    ``per_image[sid]`` (dataset "d", reference "gt", every other column 0)."""
    return [
        dict.fromkeys(COLUMNS, 0)
        | {
            "dataset": "d",
            "sample_id": sid,
            "attack": attack,
            "victim": victim,
            "prompt_index": j,
            "prompt_kind": "point",
            "reference": "gt",
            "iou": float(x),
        }
        for sid, ious in per_image.items()
        for j, x in enumerate(ious)
    ]
