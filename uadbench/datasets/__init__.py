"""Dataset plugins. ``DATASETS`` maps ids to Dataset subclasses (lazily imported)."""

from ..registry import Registry

DATASETS: Registry = Registry("dataset", "uadbench.datasets.base:Dataset", "uadbench.datasets")

DATASETS.register(
    "samples",
    "uadbench.datasets.samples:Samples",
    summary="real photographs bundled with scikit-image (no ground truth)",
)
DATASETS.register("folder", "uadbench.datasets.folder:Folder", summary="any directory of images")
DATASETS.register(
    "sa1b",
    "uadbench.datasets.sa1b:SA1B",
    aliases=("sa-1b",),
    summary="SA-1B layout: *.jpg with same-name *.json (COCO RLE masks)",
)
DATASETS.register(
    "coco",
    "uadbench.datasets.coco:COCO",
    summary="COCO instances annotation file plus its image directory",
)
DATASETS.register(
    "synthetic",
    "uadbench.datasets.synthetic:Synthetic",
    summary="seeded synthetic scenes in SA-1B format with exact masks (offline)",
)
