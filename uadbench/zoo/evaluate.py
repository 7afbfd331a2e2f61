"""Evaluating the shipped tiny zoo: clean mIoU on held-out synthetic scenes.

``uadbench zoo eval NAME`` runs :func:`evaluate` on the shipped weights (or any weights
file of that model). Training lives outside the installed package, in the source tree's
``tools/zoo/`` (``make zoo``; see docs/zoo.md), and uses this module for the evaluation
its model cards report.
"""

from __future__ import annotations

import contextlib
import difflib
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..config import check_device
from ..errors import ConfigError
from ..eval.metrics import iou as iou_pct
from ..eval.prompts import BOX, POINT, sample_prompts
from .models import ZOO, ZooVictim

#: the issue's quality bar for zoo models (clean mIoU in %, held-out synthetic scenes)
QUALITY_BAR = {"miou_point": 70.0, "miou_box": 80.0}


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run the block on ``n`` torch CPU threads (``None`` or ``n <= 0``: leave the count as it
    is), then restore the process's count, also on an error."""
    prev = torch.get_num_threads()
    if n is not None and n > 0:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(prev)


def zoo_class(name: str) -> type[ZooVictim]:
    """The victim class of zoo model ``name`` (a ConfigError listing the zoo otherwise)."""
    cls = ZOO.get(name)
    if cls is None:
        close = difflib.get_close_matches(name, list(ZOO), n=2, cutoff=0.6)
        hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
        raise ConfigError(f"unknown zoo model {name!r}.{hint} The zoo has: {', '.join(ZOO)}")
    return cls


def synthetic_dataset(n: int, seed: int, size: int, split: str):
    """The ``synthetic`` dataset (generated into its cache on first use)."""
    from ..datasets.synthetic import Synthetic

    return Synthetic(Synthetic.Config(n=n, seed=seed, size=size, split=split))


def score_with_grey(
    victim: Any, samples: Iterable[Any], dataset: str, seed: int
) -> dict[str, np.ndarray]:
    """Per prompt of the paper protocol over ``samples`` (with masks): ``iou`` against the
    ground truth, ``kind``, and the same prompts on a uniform grey image of the same size —
    ``iou_grey`` against the ground truth and ``agreement`` (IoU with the real image's mask;
    ~100 for a model that segments from the prompt alone). The grey image is encoded once
    per image size."""
    out: dict[str, list] = {"iou": [], "kind": [], "iou_grey": [], "agreement": []}
    grey_states: dict[tuple[int, ...], Any] = {}
    for s in samples:
        prompts = sample_prompts(dataset, s.id, s.hw, s.masks, s.boxes, seed=seed)
        truth = s.masks[prompts.mask_index]
        grey = np.full_like(s.image, 128)
        if grey.shape not in grey_states:
            with torch.no_grad():
                grey_states[grey.shape] = victim.embed(grey)
        pred = victim.predict(s.image, prompts)
        pred_grey = victim.predict(grey, prompts, state=grey_states[grey.shape])
        out["iou"].append(iou_pct(pred, truth))
        out["iou_grey"].append(iou_pct(pred_grey, truth))
        out["agreement"].append(iou_pct(pred, pred_grey))
        out["kind"].append(prompts.kinds)
    return {k: np.concatenate(v) for k, v in out.items()}


def evaluate(
    name: str,
    checkpoint: str | Path | None = None,
    n: int = 200,
    seed: int = 0,
    size: int = 256,
    device: str = "cpu",
    victim: Any = None,
) -> dict[str, Any]:
    """Clean mIoU (in %) of a zoo model on ``n`` held-out synthetic test scenes with the
    paper's prompts (5 points + 3 jittered boxes per mask, first 10 masks).

    Also predicts the same prompts on a uniform grey image of the same size:
    ``grey_agreement`` is the mean IoU (%) between those masks and the real image's (near
    100 for a model that segments from the prompt alone), ``miou_grey`` their mIoU.

    Returns ``{"miou_point", "miou_box", "miou", "miou_grey", "grey_agreement", "n_images",
    "n_prompts", "seconds", ...}``.
    """
    if victim is None:
        cls = zoo_class(name)
        check_device(device, f"zoo eval {name}")
        victim = cls(cls.Config(checkpoint=str(checkpoint) if checkpoint else None), device=device)
    ds = synthetic_dataset(n, seed, size, "test")
    t0 = time.perf_counter()
    sc = score_with_grey(victim, (ds.load(sid) for sid in ds.ids()), "synthetic", seed)
    a, k = sc["iou"], sc["kind"]
    return {
        "miou_point": float(a[k == POINT].mean()),
        "miou_box": float(a[k == BOX].mean()),
        "miou": float(a.mean()),
        "miou_grey": float(sc["iou_grey"].mean()),
        "grey_agreement": float(sc["agreement"].mean()),
        "n_images": len(ds),
        "n_prompts": int(len(a)),
        "seconds": time.perf_counter() - t0,
        "eval_seed": seed,
        "eval_size": size,
    }


def image_blind(ev: dict[str, Any]) -> bool:
    """Whether an :func:`evaluate` result says the masks barely depend on the image."""
    return ev.get("grey_agreement", 100.0) >= 90.0
