"""Segmentation metrics, in percent as in the paper.

IoU of two bool masks is |A ∩ B| / |A ∪ B| × 100; two empty masks agree perfectly
(100). mIoU is the mean over prompts; ASR@k is the percentage of prompts whose IoU is
at most k ("destroyed masks"; k = 50 and 10 in the paper).
"""

from __future__ import annotations

import numpy as np


def iou(pred: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """IoU in % between bool masks of shape (..., H, W); returns shape (...)."""
    pred = np.asarray(pred, dtype=bool)
    ref = np.asarray(ref, dtype=bool)
    if pred.shape != ref.shape:
        raise ValueError(f"mask shapes differ: {pred.shape} vs {ref.shape}")
    inter = np.logical_and(pred, ref).sum(axis=(-2, -1), dtype=np.int64)
    union = np.logical_or(pred, ref).sum(axis=(-2, -1), dtype=np.int64)
    out = np.where(union > 0, inter / np.maximum(union, 1), 1.0)
    return out * 100.0


def miou(ious) -> float:
    a = np.asarray(ious, dtype=np.float64)
    return float(a.mean()) if a.size else float("nan")


def asr(ious, threshold: float = 50.0) -> float:
    """% of prompts with IoU ≤ threshold."""
    a = np.asarray(ious, dtype=np.float64)
    return float((a <= threshold).mean() * 100.0) if a.size else float("nan")
