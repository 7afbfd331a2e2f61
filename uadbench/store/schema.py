"""The result row schema: one row per (sample, attack, victim, prompt).

Rows are records; every table, plot and test reads them and never reruns a model.
Clean rows have ``attack == "clean"`` and ``attack_hash == ""``.

Columns
-------
dataset       str    dataset label (``samples``, ``sa1b[root=…]`` …)
sample_id     str    sample id within the dataset
attack        str    attack label: ``clean``, ``uad``, ``uad[eps=4/255]`` …
attack_name   str    registry id of the attack (``clean`` for clean rows)
attack_hash   str    content hash of the attack config ("" for clean)
eps           float  L∞ budget of the attack in [0, 1] (0 for clean)
surrogate     str    surrogate victim id ("" for clean)
victim        str    victim id
prompt_index  int    index of the prompt within the image's PromptSet
prompt_kind   str    ``point`` or ``box``
mask_index    int    GT mask (or anchor) the prompt was drawn for
x0, y0, x1, y1 float prompt coordinates in image pixels (points: x1 = y1 = NaN)
reference     str    ``gt`` (ground-truth mask) or ``clean`` (victim's clean prediction)
iou           float  IoU in % between the victim's mask and the reference mask
seconds       float  wall time of the victim's prediction for the whole image
seed          int    run seed
transform     str    label of the transform applied to the clean and adversarial image before
                     the victim (``identity``, ``jpeg[q=75]`` …); rows written before the
                     transform axis existed lack the column and read as ``identity``
transform_hash str   content hash of the transform config ("" for identity)
"""

from __future__ import annotations

import pyarrow as pa

#: the columns that name one adversarial image: the first of every row kind
_IMAGE_KEY = [
    ("dataset", pa.string()),
    ("sample_id", pa.string()),
    ("attack", pa.string()),
    ("attack_name", pa.string()),
    ("attack_hash", pa.string()),
    ("eps", pa.float64()),
    ("surrogate", pa.string()),
]

ROW_SCHEMA = pa.schema(
    _IMAGE_KEY
    + [
        ("victim", pa.string()),
        ("prompt_index", pa.int64()),
        ("prompt_kind", pa.string()),
        ("mask_index", pa.int64()),
        ("x0", pa.float64()),
        ("y0", pa.float64()),
        ("x1", pa.float64()),
        ("y1", pa.float64()),
        ("reference", pa.string()),
        ("iou", pa.float64()),
        ("seconds", pa.float64()),
        ("seed", pa.int64()),
        ("transform", pa.string()),
        ("transform_hash", pa.string()),
    ]
)
COLUMNS = [f.name for f in ROW_SCHEMA]
CLEAN = "clean"
IDENTITY = "identity"
#: columns added after row files existed, with the value an older file's rows take
LATE_COLUMNS = {"transform": IDENTITY, "transform_hash": ""}


def unit_label(victim: str, transform: str = IDENTITY) -> str:
    """The label of an evaluation unit (victim, transform) in tables and reports: the
    victim's label under the identity transform (every run made before transforms
    existed reads the same), ``<victim> | <transform>`` otherwise."""
    return victim if transform in (IDENTITY, "", None) else f"{victim} | {transform}"


#: the schema of row files written before :data:`LATE_COLUMNS` (committed baselines)
LEGACY_ROW_SCHEMA = pa.schema([f for f in ROW_SCHEMA if f.name not in LATE_COLUMNS])

# Perturbation rows: one per adversarial image (attack job), beside the IoU rows under
# <run>/perturbation/; the columns are defined in uadbench/eval/perturbation.py.
PERTURBATION_SCHEMA = pa.schema(
    _IMAGE_KEY
    + [
        ("seed", pa.int64()),
        ("height", pa.int64()),
        ("width", pa.int64()),
        ("linf", pa.float64()),
        ("linf_255", pa.float64()),
        ("l2", pa.float64()),
        ("l2_255", pa.float64()),
        ("l2_pixel", pa.float64()),
        ("l2_pixel_255", pa.float64()),
        ("psnr", pa.float64()),
        ("ssim", pa.float64()),
        ("ms_ssim", pa.float64()),
        ("lpips", pa.float64()),
        ("wall_seconds", pa.float64()),
        ("cpu_seconds", pa.float64()),
        ("gpu_seconds", pa.float64()),
        ("peak_mem_mb", pa.float64()),
        ("peak_rss_mb", pa.float64()),
        ("batch_size", pa.int64()),
    ]
)
PERTURBATION_COLUMNS = [f.name for f in PERTURBATION_SCHEMA]
