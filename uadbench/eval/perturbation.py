"""Size and visibility of a perturbation, per adversarial image, and what the attack cost.

Every number is computed on the stored uint8 images (what the victims saw), clean ``x``
and adversarial ``x'``, both RGB (H, W, 3); ``δ = x' − x``.

============== =========================================================================
column         meaning
============== =========================================================================
linf           max |δ| over all pixels and channels, image scaled to [0, 1]
linf_255       the same in 0–255 units (an integer for uint8 images)
l2             ‖δ‖₂ over all H·W·3 values, image scaled to [0, 1]
l2_255         the same in 0–255 units
l2_pixel       ‖δ‖₂ / √(H·W): L2 per pixel (RGB vector), [0, 1] scale — comparable
               across image sizes
l2_pixel_255   the same in 0–255 units
psnr           10·log10(255² / mean(δ²)) in dB over all values; ``inf`` when x' = x
ssim           SSIM (Wang et al. 2004; 11×11 Gaussian window σ = 1.5, K = 0.01, 0.03,
               data range 255, valid windows only), mean of the three channels'
               (pytorch-msssim); NaN below 11 px
ms_ssim        MS-SSIM (5 scales, the standard weights), mean over channels
               (pytorch-msssim); NaN when the shorter side is ≤ 160 px (5 scales need it)
lpips          LPIPS (AlexNet) when the ``lpips`` package and its AlexNet weights are
               already on this machine; else NaN. Nothing is downloaded.
wall_seconds   wall time of the attack step that made the image, divided by the
               images in its batch
cpu_seconds    CPU time of this process (all threads) over that step, per image
gpu_seconds    CUDA time of that step, per image (CUDA events); NaN on CPU
peak_mem_mb    peak CUDA memory allocated during the step (MiB); NaN on CPU
peak_rss_mb    peak resident memory of the process so far (MiB, ``ru_maxrss``): an upper
               bound for the step, not its own use
batch_size     images attacked together in that step
============== =========================================================================

Rows live beside the IoU rows, one Parquet file per attack job:
``<run>/perturbation/<attack>-<hash>/<sample>.parquet`` (schema
:data:`uadbench.store.schema.PERTURBATION_SCHEMA`). :func:`perturbation_summary` gives
the per-attack means a leaderboard prints.
"""

from __future__ import annotations

import math
import resource
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..errors import UadbenchError

PERTURBATION_DIR = "perturbation"
#: metric id -> (display label, format, lower = less visible perturbation)
PERTURBATION_METRICS: dict[str, tuple[str, str, bool]] = {
    "linf_255": ("L∞ (/255)", "{:.2f}", True),
    "linf": ("L∞", "{:.4f}", True),
    "l2_255": ("L2 (0–255)", "{:.0f}", True),
    "l2": ("L2", "{:.2f}", True),
    "l2_pixel_255": ("L2/pixel (0–255)", "{:.2f}", True),
    "l2_pixel": ("L2/pixel", "{:.4f}", True),
    "psnr": ("PSNR (dB)", "{:.2f}", False),
    "ssim": ("SSIM", "{:.4f}", False),
    "ms_ssim": ("MS-SSIM", "{:.4f}", False),
    "lpips": ("LPIPS", "{:.4f}", True),
    "wall_seconds": ("wall s/img", "{:.2f}", True),
    "cpu_seconds": ("CPU s/img", "{:.2f}", True),
    "gpu_seconds": ("GPU s/img", "{:.2f}", True),
    "peak_mem_mb": ("peak GPU MiB", "{:.0f}", True),
}
_ALIASES = {"l2pp": "l2_pixel_255", "msssim": "ms_ssim", "linf255": "linf_255", "l2255": "l2_255"}


def _pair(clean: np.ndarray, adv: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    clean, adv = np.asarray(clean), np.asarray(adv)
    if clean.shape != adv.shape:
        raise UadbenchError(f"clean image {clean.shape} and adversarial {adv.shape} differ in size")
    if clean.ndim == 2:
        clean, adv = clean[..., None], adv[..., None]
    return clean.astype(np.float64), adv.astype(np.float64)


def norms(clean: np.ndarray, adv: np.ndarray) -> dict[str, float]:
    """L∞, L2, L2 per pixel (each in [0, 1] and 0–255 units) and PSNR of uint8 images."""
    x, y = _pair(clean, adv)
    d = y - x
    h, w = d.shape[:2]
    linf = float(np.abs(d).max()) if d.size else 0.0
    l2 = float(np.sqrt(np.sum(d * d)))
    mse = float(np.mean(d * d))
    return {
        "linf_255": linf,
        "linf": linf / 255.0,
        "l2_255": l2,
        "l2": l2 / 255.0,
        "l2_pixel_255": l2 / math.sqrt(h * w),
        "l2_pixel": l2 / 255.0 / math.sqrt(h * w),
        "psnr": math.inf if mse == 0 else 10.0 * math.log10(255.0**2 / mse),
    }


def _nchw(img: np.ndarray):
    import torch

    t = torch.from_numpy(np.ascontiguousarray(img, dtype=np.float64))
    if t.ndim == 2:
        t = t[..., None]
    return t.permute(2, 0, 1)[None]


def ssim(clean: np.ndarray, adv: np.ndarray) -> float:
    """SSIM of two uint8 images (data range 255), channels averaged; NaN below 11 px."""
    from pytorch_msssim import ssim as _ssim

    if min(np.asarray(clean).shape[:2]) < 11:
        return math.nan
    return float(_ssim(_nchw(clean), _nchw(adv), data_range=255.0, size_average=True))


def ms_ssim(clean: np.ndarray, adv: np.ndarray) -> float:
    """MS-SSIM of two uint8 images (data range 255, 5 scales); NaN when the shorter side
    is ≤ 160 px."""
    from pytorch_msssim import ms_ssim as _ms_ssim

    if min(np.asarray(clean).shape[:2]) <= 160:
        return math.nan
    return float(_ms_ssim(_nchw(clean), _nchw(adv), data_range=255.0, size_average=True))


# ----------------------------------------------------------------------------- LPIPS
_LPIPS: list[Any] = []


def lpips_available() -> bool:
    """True when the ``lpips`` package is installed and torchvision's AlexNet weights are
    already in torch's hub cache (LPIPS would otherwise download them)."""
    try:
        import importlib.util

        if importlib.util.find_spec("lpips") is None:
            return False
        import torch

        ckpt = Path(torch.hub.get_dir()) / "checkpoints"
        return any(ckpt.glob("alexnet-*.pth"))
    except Exception:
        return False


def lpips(clean: np.ndarray, adv: np.ndarray) -> float:
    """LPIPS (AlexNet) distance, or NaN when :func:`lpips_available` is false."""
    if not lpips_available():
        return math.nan
    import torch

    if not _LPIPS:
        import lpips as _lp

        _LPIPS.append(_lp.LPIPS(net="alex", verbose=False).eval())
    with torch.no_grad():
        a = _nchw(clean).float() / 127.5 - 1
        b = _nchw(adv).float() / 127.5 - 1
        return float(_LPIPS[0](a, b).mean())


def image_metrics(clean: np.ndarray, adv: np.ndarray) -> dict[str, float]:
    """Every image metric of this module for one (clean, adversarial) pair."""
    out = norms(clean, adv)
    out["ssim"] = ssim(clean, adv)
    out["ms_ssim"] = ms_ssim(clean, adv)
    out["lpips"] = lpips(clean, adv)
    return out


# ----------------------------------------------------------------------------- cost
class AttackTimer:
    """Context manager timing one attack step on ``device``: wall, process CPU, CUDA time
    and peak CUDA memory. :meth:`per_image` divides by the images of the batch."""

    def __init__(self, device: str = "cpu"):
        self.cuda = str(device).startswith("cuda")
        self.device = device
        self.wall = self.cpu = self.gpu = self.peak_mb = math.nan

    def __enter__(self) -> AttackTimer:
        if self.cuda:
            import torch

            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._ev = (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
            self._ev[0].record()
        self._t, self._c = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc) -> None:
        if self.cuda:
            import torch

            self._ev[1].record()
            torch.cuda.synchronize(self.device)
            self.gpu = self._ev[0].elapsed_time(self._ev[1]) / 1000.0
            self.peak_mb = torch.cuda.max_memory_allocated(self.device) / 2**20
        self.wall = time.perf_counter() - self._t
        self.cpu = time.process_time() - self._c

    def per_image(self, n: int) -> dict[str, float]:
        n = max(1, int(n))
        return {
            "wall_seconds": self.wall / n,
            "cpu_seconds": self.cpu / n,
            "gpu_seconds": self.gpu / n,
            "peak_mem_mb": self.peak_mb,
            "peak_rss_mb": peak_rss_mb(),
            "batch_size": n,
        }


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, MiB (NaN where unknown)."""
    try:
        kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    except (OSError, ValueError):
        return math.nan
    return kb / 2**20 if sys.platform == "darwin" else kb / 1024


# ----------------------------------------------------------------------------- storage
def perturbation_path(run_dir: str | Path, attack_key: str, sample_id: str) -> Path:
    """``<run>/perturbation/<attack>-<hash>/<sample>.parquet``."""
    from ..store.rundir import _safe

    return Path(run_dir) / PERTURBATION_DIR / _safe(attack_key) / f"{_safe(sample_id)}.parquet"


def write_perturbation_row(path: Path, row: dict[str, Any]) -> None:
    """Write one perturbation row (:data:`PERTURBATION_SCHEMA`) as Parquet, atomically."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from ..store.rundir import atomic_write_bytes
    from ..store.schema import PERTURBATION_COLUMNS, PERTURBATION_SCHEMA

    table = pa.Table.from_pylist(
        [{c: row.get(c) for c in PERTURBATION_COLUMNS}], schema=PERTURBATION_SCHEMA
    )
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    atomic_write_bytes(path, sink.getvalue().to_pybytes())


def load_perturbations(run_dir: str | Path) -> pd.DataFrame:
    """Every perturbation row of a run (empty with the schema's columns when none)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from ..store.schema import PERTURBATION_COLUMNS, PERTURBATION_SCHEMA

    files = sorted((Path(run_dir) / PERTURBATION_DIR).glob("**/*.parquet"))
    if not files:
        return pd.DataFrame(
            {
                c: pd.Series(dtype=PERTURBATION_SCHEMA.field(c).type.to_pandas_dtype())
                for c in PERTURBATION_COLUMNS
            }
        )
    return pa.concat_tables(
        [pq.read_table(f, schema=PERTURBATION_SCHEMA) for f in files]
    ).to_pandas()


def parse_perturbation_metrics(text: str | None) -> tuple[str, ...]:
    """``"linf,psnr,ssim"`` -> column ids; ``linf`` means ``linf_255`` and ``l2`` means
    ``l2_255`` (what papers print). Unknown ids raise :class:`UadbenchError`."""
    if not text:
        return ()
    out = []
    for t in text.split(","):
        t = t.strip().lower().replace("-", "_")
        if not t:
            continue
        t = {"linf": "linf_255", "l2": "l2_255", "l2_pixel": "l2_pixel_255"}.get(t, t)
        t = _ALIASES.get(t, t)
        if t not in PERTURBATION_METRICS:
            raise UadbenchError(
                f"unknown metric {t!r}; choose from miou, asr50, asr10 or, per attack, linf, "
                "l2, l2_pixel, psnr, ssim, ms_ssim, lpips, wall_seconds, cpu_seconds, "
                "gpu_seconds, peak_mem_mb"
            )
        out.append(t)
    return tuple(dict.fromkeys(out))


def perturbation_summary(
    run_dir: str | Path | pd.DataFrame,
    metrics: tuple[str, ...] | None = None,
    order: list[str] | None = None,
) -> pd.DataFrame:
    """Per attack label: ``n_images`` and the mean of each metric over its adversarial
    images (PSNR: mean over images with a finite PSNR; ``psnr_identical`` counts images
    the attack left unchanged). Columns ``attack``, ``n_images``, then the metrics.
    Accepts a run directory or the frame of :func:`load_perturbations`."""
    df = run_dir if isinstance(run_dir, pd.DataFrame) else load_perturbations(run_dir)
    cols = list(metrics) if metrics else list(PERTURBATION_METRICS)
    if df.empty:
        return pd.DataFrame(columns=["attack", "n_images", *cols])
    out = []
    for attack, g in df.groupby("attack", sort=False):
        rec: dict[str, Any] = {"attack": attack, "n_images": int(g["sample_id"].nunique())}
        for c in cols:
            v = g[c].astype(float).replace([np.inf, -np.inf], np.nan)
            rec[c] = float(v.mean()) if v.notna().any() else math.nan
        if "psnr" in cols:
            rec["psnr_identical"] = int(np.isinf(g["psnr"].astype(float)).sum())
        out.append(rec)
    res = pd.DataFrame(out)
    if order is None and not isinstance(run_dir, pd.DataFrame):
        from ..report.leaderboard import manifest_orders
        from ..store.rundir import load_manifest

        order = manifest_orders(load_manifest(run_dir))[0]
    if order:
        rank = {a: i for i, a in enumerate(order)}
        res = res.iloc[sorted(range(len(res)), key=lambda i: rank.get(res["attack"][i], 1e9))]
    return res.reset_index(drop=True)


def summary_columns(summary: pd.DataFrame, metrics: tuple[str, ...]) -> pd.DataFrame:
    """The summary with display labels as column names, numbers formatted (for tables)."""
    out = pd.DataFrame({"attack": summary["attack"], "images": summary["n_images"]})
    for m in metrics:
        label, fmt, _ = PERTURBATION_METRICS[m]
        out[label] = [("n/a" if v != v else fmt.format(v)) for v in summary[m]]
    return out


def split_metrics(text: str | None) -> tuple[str | None, tuple[str, ...]]:
    """Split a ``--metrics`` list into the IoU metrics (text for the leaderboard's own
    parser; None = its default when none was named) and the perturbation metrics."""
    if not text:
        return text, ()
    iou, pert = [], []
    for t in (x.strip() for x in text.split(",")):
        if not t:
            continue
        key = t.lower().replace("@", "").replace("-", "")
        (iou if key in ("miou", "asr50", "asr10") or key.startswith("asr") else pert).append(t)
    return (",".join(iou) or None), parse_perturbation_metrics(",".join(pert))


def perturbation_table(runs, metrics: tuple[str, ...], fmt: str = "terminal") -> str:
    """The per-attack perturbation table of run directories (means over adversarial
    images) in a leaderboard format; "" when no metric is asked for."""
    if not metrics:
        return ""
    from ..report.stats import render_frame

    frames = [load_perturbations(r) for r in runs]
    df = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
    title = "Perturbation per attack (mean over adversarial images)"
    if df.empty:
        note = "no perturbation rows (runs made before they were recorded, or imported)"
        return "" if fmt == "csv" else f"\n{title}: {note}\n"
    from ..report.leaderboard import manifest_orders
    from ..store.rundir import load_manifest

    order: list[str] = []
    for r in runs:
        order += [a for a in manifest_orders(load_manifest(r))[0] if a not in order]
    table = summary_columns(perturbation_summary(df, metrics, order), metrics)
    return ("" if fmt == "csv" else "\n") + render_frame(
        table, fmt, None if fmt == "csv" else title
    )


__all__ = [
    "AttackTimer",
    "PERTURBATION_DIR",
    "PERTURBATION_METRICS",
    "image_metrics",
    "load_perturbations",
    "lpips",
    "lpips_available",
    "ms_ssim",
    "norms",
    "parse_perturbation_metrics",
    "perturbation_path",
    "perturbation_summary",
    "perturbation_table",
    "split_metrics",
    "ssim",
    "write_perturbation_row",
]
