"""Training the tiny zoo models on synthetic scenes (CPU-friendly). Not part of the installed
package: run it from a source checkout as ``python -m tools.zoo train NAME`` (one model) or
``make zoo`` (the whole zoo); the shipped models are loaded by :mod:`uadbench.zoo.models` and
evaluated by :mod:`uadbench.zoo.evaluate`.

Recipe (same for every zoo model; per-model step counts in :data:`RECIPES`):

- data: ``synthetic`` scenes (``uadbench.datasets.synthetic``), split ``train``, 256²,
  loaded once into memory (masks as one label map per image: synthetic masks are
  disjoint); the held-out evaluation uses split ``test`` (an independent stream).
- each step: ``batch_images`` images, each encoded once, ``prompts_per_image`` prompts
  decoded against it in one call (forward and backward run over :data:`MICRO_BATCH`
  images at a time, gradients accumulated: the step's gradient, faster) — half single
  positive points drawn uniformly from a mask (the evaluation protocol), half boxes: the
  mask's box scaled by U[0.9, 1.1] per side (the protocol) or, for a third of them, by
  U[0.8, 1.2] and shifted by up to 5% (robustness). Random horizontal flips.
- loss: binary cross-entropy + dice between the low-resolution mask logits (the
  decoder's 4× upscaled grid) and the ground-truth mask area-downsampled to that grid;
  optionally (``group_weight``, ``--group-loss``) an instance-grouping loss on the image
  embedding (:func:`grouping_loss`), a dense signal that gets a from-scratch encoder off
  the prompt-only solution sooner; students add MSE to the teacher's embeddings and,
  optionally (``mask_distill``, ``--mask-distill``), EdgeSAM's prompt-in-the-loop term:
  BCE + dice to the teacher's mask probabilities for the same prompts.
- students (``teacher``): MobileSAM-style, their prompt encoder and decoder start from the
  teacher's, optionally after ``distill_steps`` of decoupled distillation (the encoder only
  regresses the teacher's embeddings: no prompts, no decoder); or HQ-SAM-style
  (``freeze_teacher``): every teacher tensor copied and frozen, only the additions train.
- AdamW (lr 2e-3, weight decay 0.01), linear warm-up then cosine decay, gradient
  clipping at 1; ``torch.manual_seed`` and deterministic algorithms, so a seed
  reproduces the weights (on the same torch build and thread count).
- weights saved as float16 safetensors, with a model card (``<name>.md``).
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import math
import platform
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from uadbench.config import check_device
from uadbench.errors import ConfigError, DataError
from uadbench.eval.prompts import BOX, POINT, PromptSet
from uadbench.store.rundir import atomic_write_bytes
from uadbench.zoo.evaluate import (  # noqa: F401 (evaluate, score_with_grey: part of the API)
    QUALITY_BAR,
    evaluate,
    image_blind,
    score_with_grey,
    synthetic_dataset,
    torch_threads,
    zoo_class,
)
from uadbench.zoo.models import ZooVictim

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Settings of one training run (all have defaults; see module docstring)."""

    steps: int = 800
    seed: int = 0
    batch_images: int = 6
    prompts_per_image: int = 24
    lr: float = 2e-3
    weight_decay: float = 0.01
    warmup: int = 100
    train_images: int = 4000
    data_seed: int = 0
    image_size: int = 256
    threads: int = 1
    log_every: int = 50
    #: zoo model whose image embeddings the encoder is distilled towards (MobileSAM-style)
    #: and whose prompt encoder / mask decoder initialise ours where shapes match; "" = none
    teacher: str = ""
    distill_weight: float = 1.0
    #: weight of the auxiliary instance-grouping loss on the image embedding
    #: (:func:`grouping_loss`); 0 = off
    group_weight: float = 0.0
    #: HQ-SAM-style: copy every teacher tensor whose name and shape match (image encoder
    #: included) and freeze it; only the rest (HQ-SAM's additions) trains
    freeze_teacher: bool = False
    #: MobileSAM's decoupled distillation before the ``steps`` prompted steps: this many
    #: steps in which the encoder only regresses the teacher's image embeddings (MSE; no
    #: prompts, no decoder), ``distill_batch`` images each, with their own warm-up and
    #: cosine schedule
    distill_steps: int = 0
    distill_batch: int = 16
    #: peak learning rate of the decoupled distillation phase (0: ``lr``, as both phases
    #: had before it existed); ``lr`` is then the prompted phase's
    distill_lr: float = 0.0
    #: weights file of this model to start from instead of a random initialisation (a warm
    #: restart: fresh optimizer, warm-up and schedule); "" = random
    init: str = ""
    #: mixed precision of the forward passes: "" = float32 throughout; "bf16" = bfloat16
    #: autocast (weights, optimizer, gradients and losses stay float32) — ~1.7× faster on a
    #: CPU with AVX512-BF16 (zoo-vit-sam's encoder, one thread) and on recent GPUs
    amp: str = ""
    #: EdgeSAM's prompt-in-the-loop distillation: weight of BCE + dice between the
    #: student's mask logits and the teacher's mask probabilities for the same prompts, in
    #: the prompted steps (beside the ground-truth loss); 0 = off
    mask_distill: float = 0.0
    #: a recipe in rounds: the warm restarts that follow this run, in order, each starting
    #: from the weights the one before it ended with (as ``init``), with a fresh optimizer,
    #: warm-up and schedule (:func:`round_configs`) — e.g. a second decoupled distillation
    #: once the first one's cosine has run out. Their seed, data, threads and teacher are
    #: this run's; () = one round
    then: tuple[TrainConfig, ...] = ()

    @property
    def total_steps(self) -> int:
        """Steps of this run alone (its rounds in ``then`` not counted): distillation, then
        prompted."""
        return self.distill_steps + self.steps


#: the settings every round of a recipe in rounds (``TrainConfig.then``) takes from the
#: first: what makes the rounds one run (``zoo train --seed`` etc. reach all of them)
RUN_WIDE = ("seed", "train_images", "data_seed", "image_size", "threads", "teacher", "log_every")


#: the ``zoo train`` flag of each TrainConfig field a command line can set (besides --seed
#: and --threads)
FLAGS = {
    "steps": "--steps",
    "train_images": "--train-images",
    "batch_images": "--batch-images",
    "prompts_per_image": "--prompts",
    "lr": "--lr",
    "data_seed": "--data-seed",
    "group_weight": "--group-loss",
    "teacher": "--teacher",
    "freeze_teacher": "--freeze-teacher",
    "distill_steps": "--distill-steps",
    "distill_batch": "--distill-batch",
    "distill_lr": "--distill-lr",
    "init": "--init",
    "amp": "--amp",
    "mask_distill": "--mask-distill",
}


def reshapes_round(field: str) -> bool:
    """Whether setting TrainConfig ``field`` changes a round rather than the whole run
    (:data:`RUN_WIDE`; ``init`` is the first round's start): such a flag makes ``zoo
    train`` of a recipe in rounds train its first round alone."""
    return field not in RUN_WIDE and field != "init"


def round_configs(cfg: TrainConfig) -> list[TrainConfig]:
    """The rounds of ``cfg`` as one-round configs: ``cfg`` itself, then each of
    ``cfg.then`` with the run-wide settings (:data:`RUN_WIDE`) of ``cfg``. The ``init`` of a
    later round is set when it starts (the weights file of the round before)."""
    run = {f: getattr(cfg, f) for f in RUN_WIDE}
    return [dataclasses.replace(cfg, then=())] + [
        dataclasses.replace(r, then=(), **run) for r in cfg.then
    ]


def config_json(cfg: TrainConfig) -> Any:
    """``cfg`` as its JSON value (what training states and weights record), so that a
    saved config and a live one compare equal when their settings are."""
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


def saved_config(text: str | None) -> dict[str, Any] | None:
    """A config a training state or weights file recorded (JSON ``text``), comparable with
    :func:`config_json`: a field added since it was saved counts at its default (what that
    run used). None when there is none or it is unreadable."""
    try:
        return {**config_json(TrainConfig()), **json.loads(text or "")}
    except (TypeError, ValueError):
        return None


def _distill_again(distill_steps: int) -> TrainConfig:
    """A later round of a student's recipe: decoupled distillation again for
    ``distill_steps`` at peak lr 1e-3, then 300 prompted steps at 3e-4 (grouping loss on)."""
    return TrainConfig(
        steps=300, lr=3e-4, group_weight=1.0, distill_steps=distill_steps, distill_lr=1e-3
    )


#: default training settings per zoo model. zoo-vit-sam trains from scratch; the others are
#: built on it. Every recipe from scratch adds the auxiliary grouping loss (``group_weight``):
#: without it every model here sits for ~2000 steps on a prompt-only solution (filled box,
#: blob around the point) before it starts to use the image; with it all of them use the
#: image (cards). zoo-vit-sam takes 48 images × 12 prompts per step in bfloat16 autocast:
#: more scenes per step was the lever that paid most (held-out points / boxes after 2000
#: steps: 12 images 68.7 / 77.4, 24 images 70.2 / 78.6, 48 images — the shipped one — in the
#: card), ~8.5 s per step on 2 threads with tcmalloc. zoo-hq-sam is built as HQ-SAM is on
#: SAM: the teacher's weights copied and frozen, only HQ-SAM's additions trained. The two
#: students first regress the teacher's image embeddings alone (MobileSAM's decoupled
#: distillation), then train on prompts with the teacher's decoder copied. Their lever is
#: the embedding MSE to the teacher (each distillation phase ended with it still falling when
#: the cosine ran out), so both train in rounds (``then``), each a warm restart that distils
#: again at half the peak lr and then fine-tunes on prompts at lr 3e-4 (held-out points /
#: boxes after each round, 200 scenes: zoo-hf-sam 69.0 / 78.9, 69.4 / 78.9, 71.1 / 79.8, then
#: the card; zoo-tinyvit-sam 68.0 / 77.3, 69.6 / 78.8, 71.2 / 79.2, then the card). zoo-hf-sam's second
#: round is a short bf16 warm restart on 24 scenes × 12 prompts per step (more scenes per
#: step, the teacher's lever, was worth +0.4 / +0.0 to it; its distill_lr is unused).
RECIPES: dict[str, TrainConfig] = {
    "zoo-vit-sam": TrainConfig(
        steps=2000,
        batch_images=48,
        prompts_per_image=12,
        group_weight=1.0,
        threads=2,
        amp="bf16",
    ),
    "zoo-hq-sam": TrainConfig(steps=400, teacher="zoo-vit-sam", freeze_teacher=True, amp="bf16"),
    "zoo-tinyvit-sam": TrainConfig(
        steps=600,
        teacher="zoo-vit-sam",
        group_weight=1.0,
        distill_steps=800,
        then=(_distill_again(500), _distill_again(800), _distill_again(1400)),
    ),
    "zoo-hf-sam": TrainConfig(
        steps=800,
        teacher="zoo-vit-sam",
        group_weight=1.0,
        distill_steps=1000,
        lr=5e-4,
        distill_lr=2e-3,
        then=(
            TrainConfig(
                steps=150,
                batch_images=24,
                prompts_per_image=12,
                lr=3e-4,
                group_weight=1.0,
                distill_lr=2e-3,
                amp="bf16",
            ),
            _distill_again(600),
            _distill_again(800),
        ),
    ),
}


class TrainingPaused(Exception):
    """Raised by :func:`train` when its time budget (``max_minutes``) ran out: the training
    state is saved (``path``, at ``step`` of ``total``) and ``--resume`` continues it."""

    def __init__(self, path: Path, step: int, total: int):
        super().__init__(f"paused at step {step}/{total}; state in {path}")
        self.path, self.step, self.total = path, step, total


# ---------------------------------------------------------------------------- data
@dataclasses.dataclass
class TrainingSet:
    """Synthetic scenes in memory. ``images`` uint8 (N, H, W, 3); ``labels`` uint8
    (N, H, W) with 0 = background and k = mask k-1; ``boxes[i]`` float (n_i, 4) XYXY."""

    images: np.ndarray
    labels: np.ndarray
    boxes: list[np.ndarray]

    def __len__(self) -> int:
        return len(self.images)


def load_training_set(n: int, seed: int, size: int, split: str = "train") -> TrainingSet:
    """Load ``n`` synthetic scenes of split ``split`` into memory (see :class:`TrainingSet`)."""
    ds = synthetic_dataset(n, seed, size, split)
    images = np.zeros((n, size, size, 3), np.uint8)
    labels = np.zeros((n, size, size), np.uint8)
    boxes = []
    for i, sid in enumerate(ds.ids()):
        s = ds.load(sid)
        if s.masks is None or not len(s.masks):
            raise DataError(f"{s.source}: a training scene without masks")
        if s.masks.sum(0).max() > 1:
            raise DataError(
                f"{s.source}: overlapping masks; the zoo trainer expects disjoint masks"
            )
        images[i] = s.image
        for k, m in enumerate(s.masks):
            labels[i][m] = k + 1
        boxes.append(np.asarray(s.boxes, np.float64))
    return TrainingSet(images, labels, boxes)


def sample_training_prompts(
    rng: np.random.Generator, labels: np.ndarray, boxes: np.ndarray, k: int
) -> tuple[PromptSet, np.ndarray]:
    """``k`` prompts for one image: (PromptSet, the mask index each prompt targets).

    Half points uniform in a uniformly chosen mask, half jittered boxes (see module doc).
    """
    h, w = labels.shape
    n_masks = len(boxes)
    target = rng.integers(0, n_masks, size=k)
    is_point = np.arange(k) < k // 2
    kinds, coords = [], []
    for j in range(k):
        mi = int(target[j])
        if is_point[j]:
            ys, xs = np.nonzero(labels == mi + 1)
            p = int(rng.integers(len(xs)))
            kinds.append(POINT)
            coords.append([float(xs[p]), float(ys[p]), np.nan, np.nan])
        else:
            x0, y0, x1, y1 = boxes[mi]
            cx, cy, bw, bh = (x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0
            if rng.random() < 1 / 3:
                sw, sh = rng.uniform(0.8, 1.2, 2)
                cx += rng.uniform(-0.05, 0.05) * bw
                cy += rng.uniform(-0.05, 0.05) * bh
            else:
                sw, sh = rng.uniform(0.9, 1.1, 2)
            b = [cx - bw * sw / 2, cy - bh * sh / 2, cx + bw * sw / 2, cy + bh * sh / 2]
            b = [
                min(max(b[0], 0), w - 1),
                min(max(b[1], 0), h - 1),
                min(max(b[2], 0), w - 1),
                min(max(b[3], 0), h - 1),
            ]
            kinds.append(BOX)
            coords.append(b)
    kinds_arr = np.array(kinds, dtype="<U5")
    ps = PromptSet(
        kinds_arr,
        np.array(coords, np.float64).reshape(k, 4),
        target.astype(np.int64),
        np.where(kinds_arr == POINT, 1, -1).astype(np.int64),
    )
    return ps, target


def _targets(labels: torch.Tensor, target: np.ndarray, size: tuple[int, int]) -> torch.Tensor:
    """Soft targets (P, h, w) in [0, 1]: each prompt's mask area-downsampled to ``size``."""
    ids = torch.as_tensor(target + 1, dtype=labels.dtype, device=labels.device)
    masks = (labels[None] == ids[:, None, None]).float()[:, None]
    return F.adaptive_avg_pool2d(masks, size)[:, 0] if masks.shape[-2:] != size else masks[:, 0]


def seg_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """BCE + dice, averaged over prompts. ``logits`` and ``target`` (P, h, w)."""
    bce = F.binary_cross_entropy_with_logits(logits, target)
    p = torch.sigmoid(logits).flatten(1)
    t = target.flatten(1)
    dice = 1 - (2 * (p * t).sum(1) + 1) / (p.sum(1) + t.sum(1) + 1)
    return bce + dice.mean()


def grouping_loss(
    emb: torch.Tensor,
    labels: torch.Tensor,
    purity: float = 0.75,
    radius: float = 3.0,
    pull: float = 0.5,
    push: float = 3.0,
) -> torch.Tensor:
    """Auxiliary instance-grouping loss on image embeddings (a discriminative loss in the
    manner of De Brabandere et al. 2017), which gives the encoder a dense signal from the
    label maps instead of only through the decoder.

    ``emb`` (B, C, h, w); ``labels`` (B, H, W) integer label maps (0 = background, which
    counts as one more region), H and W multiples of h and w. Per image, the embedding
    cells whose image area is at least ``purity`` one label, as unit vectors scaled to
    ``radius``: each is pulled to within ``pull`` of its label's mean, and the means of
    different labels are pushed at least ``push`` apart (squared hinges). Mean over images;
    0 when every image is grouped that well."""
    b, _, h, w = emb.shape
    n = int(labels.max()) + 1
    onehot = F.one_hot(labels.long(), n).permute(0, 3, 1, 2).float()
    frac = F.adaptive_avg_pool2d(onehot, (h, w))  # (B, n, h, w) label fractions per cell
    e = F.normalize(emb.float(), dim=1) * radius
    total = emb.new_zeros((), dtype=torch.float32)
    for i in range(b):
        share, lab = frac[i].max(0)
        pure = share >= purity
        ids = lab[pure].unique()
        means = []
        for k in ids:
            cells = e[i][:, pure & (lab == k)]
            mu = cells.mean(1, keepdim=True)
            total = total + F.relu((cells - mu).norm(dim=0) - pull).pow(2).mean() / len(ids)
            means.append(mu[:, 0])
        if len(means) > 1:
            m = torch.stack(means)
            d = (m[:, None] - m[None]).pow(2).sum(-1).add(1e-12).sqrt()  # finite grad at 0
            off = ~torch.eye(len(means), dtype=torch.bool, device=d.device)
            total = total + F.relu(push - d[off]).pow(2).mean()
    return total / b


# ---------------------------------------------------------------------------- training
#: ``TrainConfig.amp`` values and the autocast dtype of each ("" = no autocast)
AMP_DTYPES: dict[str, torch.dtype | None] = {"": None, "bf16": torch.bfloat16}


def autocast(device: torch.device, amp: str) -> Any:
    """The forward passes' autocast context for ``TrainConfig.amp`` on ``device`` (a no-op
    for ``""``). Losses are computed from float32 casts of its outputs."""
    dtype = AMP_DTYPES[amp]
    return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)


#: images per forward/backward pass within a training step; the step's gradient is
#: accumulated over its ``batch_images`` images (the same gradient up to rounding). On a
#: CPU smaller passes are faster: one step of the 32×32-token teacher, 12 images × 12
#: prompts on 2 threads, 5.4 s in one pass, 3.7 s in passes of 3, 3.9 s of 1.
MICRO_BATCH = 3


def step_loss(
    victim: ZooVictim,
    x: torch.Tensor,
    prompt_sets: list[PromptSet],
    labels: list[torch.Tensor],
    targets: list[np.ndarray],
    cfg: TrainConfig,
    teacher: ZooVictim | None = None,
) -> torch.Tensor:
    """The training loss of images ``x`` (B, 3, H, W) in [0, 1] with their prompts, label
    maps and each prompt's mask index: segmentation loss averaged over images, plus the
    distillation MSE to ``teacher``'s embeddings, the weighted mask distillation
    (``cfg.mask_distill``) and the weighted grouping loss (all means over the images too)."""
    emb, logits = victim.forward_train(x, prompt_sets)
    loss = torch.zeros((), device=x.device)
    for lg, lab_t, tgt in zip(logits, labels, targets):
        loss = loss + seg_loss(lg.float(), _targets(lab_t, tgt, tuple(lg.shape[-2:])))
    loss = loss / len(logits)
    distill_emb = emb.requires_grad and teacher is not None
    if teacher is not None and (distill_emb or cfg.mask_distill > 0):
        # one teacher pass serves both distillation terms
        t_emb, t_logits = teacher_pass(teacher, x, prompt_sets if cfg.mask_distill > 0 else ())
        if cfg.mask_distill > 0:
            loss = loss + cfg.mask_distill * mask_distill_loss(logits, t_logits)
        if distill_emb:
            loss = loss + cfg.distill_weight * distill_loss(emb, t_emb)
    if emb.requires_grad:  # a frozen encoder (``freeze_teacher``) has nothing to learn here
        if cfg.group_weight > 0:
            loss = loss + cfg.group_weight * grouping_loss(emb, torch.stack(labels))
    return loss


def mask_distill_loss(
    logits: Sequence[torch.Tensor], teacher_logits: Sequence[torch.Tensor]
) -> torch.Tensor:
    """EdgeSAM's prompt-in-the-loop distillation term: BCE + dice (:func:`seg_loss`) between
    each image's student mask logits (P_i, h, w) and the teacher's mask probabilities for
    the same prompts (resized to the student's grid if they differ), averaged over images."""
    total = logits[0].new_zeros((), dtype=torch.float32)
    for lg, tl in zip(logits, teacher_logits, strict=True):
        tl = tl.float()
        if tl.shape[-2:] != lg.shape[-2:]:
            tl = F.interpolate(tl[:, None], lg.shape[-2:], mode="bilinear")[:, 0]
        total = total + seg_loss(lg.float(), torch.sigmoid(tl))
    return total / len(logits)


def teacher_pass(
    teacher: ZooVictim, x: torch.Tensor, prompts: Sequence[PromptSet] = ()
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """``teacher``'s (image embeddings, mask logits per image for ``prompts``) on images
    ``x`` (B, 3, H, W) in [0, 1], without gradients: the distillation targets."""
    with torch.no_grad():
        return teacher.forward_train(x, list(prompts))


def distill_loss(emb: torch.Tensor, t_emb: torch.Tensor) -> torch.Tensor:
    """MSE between a student's image embeddings ``emb`` (B, C, h, w) and the teacher's
    ``t_emb`` on the same images (:func:`teacher_pass`)."""
    return F.mse_loss(emb.float(), t_emb.float())


@dataclasses.dataclass
class TrainResult:
    name: str
    weights: Path
    card: Path
    seconds: float
    config: TrainConfig
    eval: dict[str, Any] | None
    params: int
    # steps continued from a compact state or on another thread count
    approximate_resumes: tuple[int, ...] = ()
    device: str = "cpu"
    #: a recipe in rounds (``TrainConfig.then``): each round's result, in order
    rounds: tuple[TrainResult, ...] = ()


def train(
    name: str,
    config: TrainConfig | None = None,
    out_dir: str | Path = ".",
    eval_images: int = 200,
    eval_seed: int = 0,
    progress: Callable[[str], None] | None = None,
    teacher_checkpoint: str | Path | None = None,
    resume: bool = False,
    save_every: int = 100,
    max_minutes: float | None = None,
    device: str = "cpu",
) -> TrainResult:
    """Train zoo model ``name`` from scratch; write ``<out_dir>/<name>.safetensors`` and
    ``<name>.md``. ``eval_images`` held-out synthetic test images are evaluated with the
    paper's prompt protocol at the end (0 skips it). With ``config.teacher``, the teacher's
    weights come from ``teacher_checkpoint`` (default: the shipped file).

    Every ``save_every`` steps the whole training state (weights, optimizer, random
    generators, step) goes to ``<out_dir>/<name>.train-state.pt``; with ``resume`` training
    continues from it and ends with the same weights as an uninterrupted run (long runs
    can be split over several sessions or survive Ctrl-C). Beside it goes a compact copy
    (``<name>.train-state.compact.pt``, half the size, see :func:`compact_train_state`) to
    carry a run to another machine; ``resume`` falls back to it, approximately, when the
    full state is missing. Both files are removed at the end.
    With ``max_minutes``, the first step that ends after that many minutes of training (data
    loading not counted) saves the state and raises :class:`TrainingPaused`: a time-boxed
    share of a run that ``resume`` continues.

    ``device`` (``"cpu"``, ``"cuda"``, ``"cuda:1"``, …) holds the model, teacher and batches;
    the training state is saved device-independently and resumes on any device.

    A recipe in rounds (``config.then``, :func:`round_configs`) trains round after round,
    each a warm restart from the weights of the one before: round ``k``'s weights, card and
    training state go to ``<out_dir>/<name>.round-<k>/`` (removed at the end), the last
    round's to ``out_dir``; ``resume`` keeps the rounds that finished and continues the one
    that did not. The weights are those of the rounds run one by one with ``init``."""
    cls = zoo_class(name)
    cfg = config or RECIPES.get(name, TrainConfig())
    rounds = round_configs(cfg)
    for r in rounds:  # every round's settings fail now, not after the first rounds trained
        check_config(name, r)
    dev = check_device(device, f"zoo train {name}")
    if max_minutes is not None and max_minutes <= 0:
        raise ConfigError(f"zoo train {name}: --max-minutes must be > 0, got {max_minutes:g}")
    job = _Job(name, cls, eval_seed, progress or (lambda s: log.info("%s", s)))
    job.teacher_checkpoint, job.save_every, job.device = teacher_checkpoint, save_every, dev
    out = Path(out_dir).expanduser()
    if len(rounds) > 1:
        return _train_rounds(job, cfg, rounds, out, eval_images, resume, max_minutes)
    return _train_one(job, cfg, out, eval_images, resume, max_minutes)


@dataclasses.dataclass
class _Job:
    """What every round of one :func:`train` call shares, and what it loads once for all of
    them: the training scenes and the teacher (their settings are run-wide,
    :data:`RUN_WIDE`)."""

    name: str
    cls: type[ZooVictim]
    eval_seed: int
    say: Callable[[str], None]
    teacher_checkpoint: str | Path | None = None
    save_every: int = 100
    device: torch.device = torch.device("cpu")
    data: TrainingSet | None = None
    teacher: ZooVictim | None = None

    def load(self, cfg: TrainConfig) -> tuple[TrainingSet, ZooVictim | None]:
        """The training scenes and teacher of ``cfg``, loaded on the first call."""
        if self.data is None:
            self.say(
                f"loading {cfg.train_images} synthetic training scenes (seed {cfg.data_seed}, "
                f"{cfg.image_size}px)"
            )
            self.data = load_training_set(cfg.train_images, cfg.data_seed, cfg.image_size)
            if cfg.teacher:
                tcls = zoo_class(cfg.teacher)
                ck = str(self.teacher_checkpoint) if self.teacher_checkpoint else None
                self.teacher = tcls(tcls.Config(checkpoint=ck), device=str(self.device))
                _ = self.teacher.model  # load now: a missing teacher fails before training
        return self.data, self.teacher


def _train_one(
    job: _Job,
    cfg: TrainConfig,
    out: Path,
    eval_images: int,
    resume: bool,
    max_minutes: float | None,
) -> TrainResult:
    """:func:`train` of one round (see there)."""
    name, dev, say = job.name, job.device, job.say
    out.mkdir(parents=True, exist_ok=True)
    prev_det = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    state_path = train_state_path(out, name)
    try:
        with torch_threads(cfg.threads):
            # a state that cannot be resumed fails now, not after loading the data
            resume_state = read_train_state(state_path, cfg) if resume else None
            data, teacher = job.load(cfg)
            t0 = time.perf_counter()
            deadline = None if max_minutes is None else t0 + 60 * max_minutes
            model, before, approx = _fit(
                job.cls, data, cfg, say, teacher, state_path, resume_state, job.save_every,
                deadline, dev,
            )  # fmt: skip
            seconds = before + time.perf_counter() - t0
    finally:
        torch.use_deterministic_algorithms(prev_det)
    weights = out / f"{name}.safetensors"
    save_weights(model, weights, _weights_record(name, cfg, seconds, approx))
    # only now that the weights are on disk: a crash in between must not lose the run
    for done in (state_path, compact_state_path(state_path)):
        done.unlink(missing_ok=True)
    params = sum(p.numel() for p in model.parameters())
    result = TrainResult(
        name, weights, out / f"{name}.md", seconds, cfg, None, params, approx, str(dev)
    )
    if eval_images > 0:
        say(f"evaluating on {eval_images} held-out synthetic test images")
        result.eval = evaluate(
            name, checkpoint=weights, n=eval_images, seed=job.eval_seed, device=str(dev)
        )
        say(
            f"held-out mIoU: points {result.eval['miou_point']:.1f}, boxes {result.eval['miou_box']:.1f}"
        )
    write_card(result)
    return result


def _weights_record(
    name: str, cfg: TrainConfig, seconds: float, approx: tuple[int, ...]
) -> dict[str, str]:
    """The metadata a weights file carries: the model, its training settings (a recipe in
    rounds: all of them), minutes and approximate resumes (:func:`weights_metadata`)."""
    meta = {
        "name": name,
        "train_config": json.dumps(dataclasses.asdict(cfg)),
        "train_seconds": f"{seconds:.1f}",
    }
    if approx:
        meta["approximate_resumes"] = json.dumps(approx)
    return meta


def round_dir(out: Path, name: str, k: int) -> Path:
    """Where round ``k`` (not the last) of a recipe in rounds keeps its files."""
    return out / f"{name}.round-{k}"


def has_progress(out: Path, name: str) -> bool:
    """Whether ``--resume`` has something of ``name`` to continue in ``out``: a training
    state (full or compact), or a round of a recipe in rounds (its weights or state)."""
    if resumable_state(train_state_path(out, name)) is not None:
        return True
    return any(
        (d / f"{name}.safetensors").is_file() or resumable_state(train_state_path(d, name))
        for d in out.glob(f"{name}.round-*")
    )


def weights_metadata(path: Path) -> dict[str, str]:
    """The metadata :func:`train` wrote into a weights file (``train_config`` etc.)."""
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        return dict(f.metadata() or {})


def approximate_steps(meta: dict[str, str], offset: int = 0) -> tuple[int, ...]:
    """The steps at which the run behind weights metadata ``meta`` (:func:`weights_metadata`)
    continued approximately, counted from ``offset`` (its round's first step in a recipe)."""
    return tuple(offset + s for s in json.loads(meta.get("approximate_resumes", "[]")))


def _finished_round(name: str, weights: Path, cfg: TrainConfig, offset: int) -> TrainResult:
    """The result of a round whose weights a previous, interrupted run left, checked to be
    this round's (a :class:`ConfigError` otherwise)."""
    meta = weights_metadata(weights)
    if saved_config(meta.get("train_config")) != config_json(cfg):
        raise ConfigError(
            f"--resume: {weights} was trained with other settings than this round's; rerun "
            f"with the same flags as the interrupted run, or delete {weights.parent} to "
            "train the round again"
        )
    approx = approximate_steps(meta, offset)
    seconds = float(meta.get("train_seconds", 0.0))
    return TrainResult(name, weights, weights.with_suffix(".md"), seconds, cfg, None, 0, approx)


def _train_rounds(
    job: _Job,
    cfg: TrainConfig,
    rounds: list[TrainConfig],
    out: Path,
    eval_images: int,
    resume: bool,
    max_minutes: float | None,
) -> TrainResult:
    """:func:`train` of a recipe in rounds (see there); ``rounds`` are
    ``round_configs(cfg)``."""
    name, say = job.name, job.say
    cfg = dataclasses.replace(cfg, then=tuple(rounds[1:]))  # as trained, run-wide settings in
    n = len(rounds)
    deadline = None if max_minutes is None else time.perf_counter() + 60 * max_minutes
    done: list[TrainResult] = []
    init, offset = rounds[0].init, 0
    for k, r in enumerate(rounds, 1):
        r = dataclasses.replace(r, init=init)
        last = k == n
        where = out if last else round_dir(out, name, k)
        weights = where / f"{name}.safetensors"
        if resume and not last and weights.is_file():
            done.append(_finished_round(name, weights, r, offset))
            say(f"round {k}/{n}: finished before ({weights})")
        else:
            say(f"round {k}/{n}: {_round_text(r)}")
            # the first round resumes as a one-round run would (nothing to resume: an
            # error); a later one starts afresh when the run stopped before it saved a state
            again = resume and (k == 1 or resumable_state(train_state_path(where, name)))
            left = None if deadline is None else max(deadline - time.perf_counter(), 1e-6) / 60
            try:
                res = _train_one(job, r, where, eval_images if last else 0, bool(again), left)
            except TrainingPaused as p:
                total = sum(x.total_steps for x in rounds)
                raise TrainingPaused(p.path, offset + p.step, total) from None
            res.approximate_resumes = tuple(offset + s for s in res.approximate_resumes)
            done.append(res)
        init, offset = str(weights), offset + r.total_steps
    final = done[-1]
    result = dataclasses.replace(
        final,
        seconds=sum(x.seconds for x in done),
        config=cfg,
        approximate_resumes=tuple(s for x in done for s in x.approximate_resumes),
        rounds=tuple(done),
    )
    record_recipe(result)
    for k in range(1, n):  # only now: the final weights and card are on disk
        shutil.rmtree(round_dir(out, name, k), ignore_errors=True)
    return result


def record_recipe(result: TrainResult) -> None:
    """Make the last round's weights and card those of the whole recipe in rounds
    ``result`` (``result.config`` with its rounds, summed minutes): the weights' metadata
    rewritten, tensors unchanged, and the card written."""
    meta = weights_metadata(result.weights)
    meta.update(
        _weights_record(result.name, result.config, result.seconds, result.approximate_resumes)
    )
    _save_safetensors(load_safetensors(result.weights), result.weights, meta)
    write_card(result)


def check_config(name: str, cfg: TrainConfig) -> None:
    """A :class:`ConfigError` saying what to change when one round's settings ``cfg`` cannot
    train zoo model ``name``."""
    no_steps = cfg.steps < 1 and not (cfg.steps == 0 and cfg.distill_steps > 0)
    if no_steps or cfg.batch_images < 1 or cfg.prompts_per_image < 2 or cfg.train_images < 1:
        raise ConfigError(
            f"zoo train {name}: steps, batch_images, train_images must be >= 1, prompts >= 2 "
            "(steps may be 0 after --distill-steps)"
        )
    if cfg.distill_steps < 0 or (cfg.distill_steps and cfg.distill_batch < 1):
        raise ConfigError(f"zoo train {name}: --distill-steps must be >= 0, --distill-batch >= 1")
    if cfg.distill_lr < 0 or cfg.lr <= 0:
        raise ConfigError(f"zoo train {name}: --lr must be > 0 and --distill-lr >= 0 (0: --lr)")
    if cfg.init and not Path(cfg.init).expanduser().is_file():
        raise ConfigError(
            f"zoo train {name}: --init {cfg.init}: no such weights file; give the "
            f"{name}.safetensors a previous `zoo train {name}` wrote"
        )
    if cfg.amp not in AMP_DTYPES:
        raise ConfigError(
            f"zoo train {name}: --amp {cfg.amp!r} is not one of "
            f"{', '.join(repr(a) for a in AMP_DTYPES)}"
        )
    if cfg.freeze_teacher and cfg.distill_steps:
        raise ConfigError(
            f"zoo train {name}: --distill-steps trains the encoder, which --freeze-teacher "
            "freezes; drop one of them"
        )
    if cfg.mask_distill < 0:
        raise ConfigError(f"zoo train {name}: --mask-distill must be >= 0 (0: off)")
    needs_teacher = [
        (cfg.freeze_teacher, "--freeze-teacher", "--no-freeze-teacher"),
        (cfg.distill_steps, "--distill-steps", "--distill-steps 0"),
        (cfg.mask_distill, "--mask-distill", "--mask-distill 0"),
    ]
    first = next(((w, u) for on, w, u in needs_teacher if on), None)
    if first and not cfg.teacher:
        what, undo = first
        raise ConfigError(
            f"zoo train {name}: {what} needs a teacher; name one with --teacher or add {undo}"
        )


def init_from_teacher(
    cls: type[ZooVictim],
    model: torch.nn.Module,
    teacher: torch.nn.Module,
    encoder: bool = False,
) -> list[str]:
    """Copy the teacher's prompt-encoder and mask-decoder tensors into ``model`` (of zoo
    class ``cls``) wherever the name — translated by ``cls.from_sam_keys`` — and shape match;
    the image encoder's too only with ``encoder`` (HQ-SAM-style students). Returns the
    names copied (``model``'s)."""
    tsd = {
        k: v
        for k, v in teacher.state_dict().items()
        if encoder or not k.startswith("image_encoder.")
    }
    tsd = cls.from_sam_keys(tsd)
    own = model.state_dict()
    take = {k: tsd[k].to(own[k].dtype) for k in own if k in tsd and tsd[k].shape == own[k].shape}
    model.load_state_dict(take, strict=False)
    return sorted(take)


def _sample_batch(
    rng: np.random.Generator,
    data: TrainingSet,
    labels_all: torch.Tensor,
    n: int,
    prompts: int,
) -> tuple[list[np.ndarray], list[torch.Tensor], list[PromptSet], list[np.ndarray]]:
    """``n`` random training images, each flipped horizontally with probability 1/2:
    (images (H, W, 3) uint8, label maps, ``prompts`` training prompts per image and the mask
    each targets; both lists empty when ``prompts`` is 0)."""
    idx = rng.integers(0, len(data), size=n)
    flips = rng.random(n) < 0.5
    imgs, labs, prompt_sets, targets = [], [], [], []
    for i, flip in zip(idx, flips):
        img, lab, bxs = data.images[i], data.labels[i], data.boxes[i]
        lab_t = labels_all[i]
        if flip:
            w = img.shape[1]
            img, lab = img[:, ::-1], lab[:, ::-1]
            lab_t = lab_t.flip(-1)
            bxs = bxs.copy()
            bxs[:, [0, 2]] = w - bxs[:, [2, 0]]
        imgs.append(np.ascontiguousarray(img))
        labs.append(lab_t)
        if prompts:
            ps, tgt = sample_training_prompts(rng, lab, bxs, prompts)
            prompt_sets.append(ps)
            targets.append(tgt)
    return imgs, labs, prompt_sets, targets


def _fit(
    cls: type[ZooVictim],
    data: TrainingSet,
    cfg: TrainConfig,
    say: Callable[[str], None],
    teacher: ZooVictim | None = None,
    state_path: Path | None = None,
    resume_state: dict[str, Any] | None = None,
    save_every: int = 100,
    deadline: float | None = None,
    device: torch.device | str = "cpu",
) -> tuple[torch.nn.Module, float, tuple[int, ...]]:
    """Train; returns (model in eval mode, seconds spent in earlier resumed segments, the
    steps at which the run was continued from a compact state, approximately).
    Past ``deadline`` (a ``time.perf_counter()`` value) the state is saved after the step
    and :class:`TrainingPaused` raised (unless that step was the last)."""
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    device = torch.device(device)
    model = cls.new_model().to(device)
    if teacher is not None:
        copied = init_from_teacher(cls, model, teacher.model, encoder=cfg.freeze_teacher)
        if cfg.freeze_teacher:
            frozen = set(copied)
            for k, prm in model.named_parameters():
                prm.requires_grad_(k not in frozen)
            n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
            say(
                f"copied and froze {len(copied)} tensors of {teacher.name} (its image encoder "
                f"included); training the other {n_train:,} parameters"
            )
        else:
            say(
                f"initialised {len(copied)} decoder/prompt-encoder tensors from {teacher.name}; "
                "distilling its embeddings"
            )
    if cfg.init:
        from uadbench.victims.checkpoints import load_state_dict_file

        load_state_dict_file(model, Path(cfg.init).expanduser(), cls.name)
        say(f"starting from the weights in {cfg.init}")
    # train through its differentiable path
    victim = cls(cls.Config(), device=str(device)).use_model(model)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    opt = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": cfg.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=cfg.lr,
        betas=(0.9, 0.999),
    )
    total = cfg.total_steps

    def lr_at(step: int) -> float:  # warm-up then cosine, per phase
        n, k, peak = (
            (cfg.distill_steps, step, cfg.distill_lr or cfg.lr)
            if step < cfg.distill_steps
            else (cfg.steps, step - cfg.distill_steps, cfg.lr)
        )
        warm = max(1, min(cfg.warmup, n // 5))
        if k < warm:
            return peak * (k + 1) / warm
        t = (k - warm) / max(1, n - warm)
        return peak * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * t)))

    labels_all = torch.from_numpy(data.labels)
    t0 = time.perf_counter()
    run_loss = None
    start, before = 0, 0.0
    approx: tuple[int, ...] = ()
    if resume_state is not None:
        start, run_loss, before = restore_train_state(resume_state, model, opt, rng)
        approx = tuple(resume_state.get("approximate_resumes", ()))
        threads_then = resume_state.get("threads_then")  # set by read_train_state
        if resume_state.get("compact") or threads_then is not None:
            approx += (start,)  # once, whichever of the two made it approximate
        if resume_state.get("compact"):
            say(
                f"resuming approximately at step {start}/{total} from the compact state "
                f"{compact_state_path(state_path)} (no full state {state_path.name}): weights "
                "exact, AdamW second moments rounded to bfloat16, first moments restart at 0"
            )
        else:
            say(f"resuming at step {start}/{total} from {state_path}")
        if threads_then is not None:
            say(
                f"--threads {cfg.threads} now, {threads_then} before step "
                f"{start}: the run continues approximately (float sums in another order)"
            )
    for step in range(start, total):
        distilling = step < cfg.distill_steps
        n_img = cfg.distill_batch if distilling else cfg.batch_images
        imgs, labs, prompt_sets, targets = _sample_batch(
            rng, data, labels_all, n_img, 0 if distilling else cfg.prompts_per_image
        )
        x = torch.from_numpy(np.stack(imgs)).to(device).permute(0, 3, 1, 2).float().div_(255.0)
        labs = [lab.to(device) for lab in labs]
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        opt.zero_grad(set_to_none=True)
        loss = 0.0
        for s in range(0, len(imgs), MICRO_BATCH):
            part = slice(s, s + MICRO_BATCH)
            share = len(imgs[part]) / len(imgs)  # every term is a mean over images
            with autocast(device, cfg.amp):
                if distilling:
                    emb = victim.forward_train(x[part], [])[0]
                    micro = share * distill_loss(emb, teacher_pass(teacher, x[part])[0])
                else:
                    micro = share * step_loss(
                        victim, x[part], prompt_sets[part], labs[part], targets[part], cfg, teacher
                    )
            micro.backward()
            loss += micro.item()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        run_loss = loss if run_loss is None else 0.95 * run_loss + 0.05 * loss
        if step + 1 == cfg.distill_steps:
            say(f"decoupled distillation done (embedding MSE {run_loss:.4f}); prompted steps next")
            run_loss = None  # the prompted loss is on another scale
        elif (step + 1) % cfg.log_every == 0 or step + 1 == total:
            el = time.perf_counter() - t0
            what = "distill" if distilling else "loss"
            say(f"step {step + 1}/{total} {what} {run_loss:.4f} lr {lr_at(step):.2e} {el:.0f}s")
        pause = (
            state_path is not None
            and deadline is not None
            and step + 1 < total
            and time.perf_counter() >= deadline
        )
        if state_path is not None and (pause or (save_every > 0 and (step + 1) % save_every == 0)):
            el = before + time.perf_counter() - t0
            save_train_state(state_path, cfg, model, opt, rng, step + 1, run_loss, el, approx)
        if pause:
            say(f"time budget used: state saved at step {step + 1}/{total}")
            raise TrainingPaused(state_path, step + 1, total)
    model.eval()
    return model, before, approx


def save_train_state(
    path: Path,
    cfg: TrainConfig,
    model: torch.nn.Module,
    opt: torch.optim.Optimizer,
    rng: np.random.Generator,
    step: int,
    run_loss: float | None,
    seconds: float,
    approximate_resumes: tuple[int, ...] = (),
) -> None:
    """Write everything :func:`read_train_state` and :func:`restore_train_state` need to
    continue bit-identically, atomically, and its :func:`compact_train_state` copy beside
    it (:func:`compact_state_path`)."""
    state = {
        "config": json.dumps(dataclasses.asdict(cfg), sort_keys=True),
        "step": step,
        "run_loss": run_loss,
        "seconds": seconds,
        "model": model.state_dict(),
        "optimizer": opt.state_dict(),
        "numpy_rng": json.dumps(rng.bit_generator.state),
        "torch_rng": torch.get_rng_state(),
        "approximate_resumes": list(approximate_resumes),
    }
    _save_atomically(state, path)
    _save_atomically(compact_train_state(state), compact_state_path(path))


def _save_atomically(obj: Any, path: Path) -> None:
    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())


def train_state_path(out: Path, name: str) -> Path:
    """Where :func:`train` keeps zoo model ``name``'s training state in ``out``."""
    return out / f"{name}.train-state.pt"


def compact_state_path(state_path: Path) -> Path:
    """``<name>.train-state.pt`` -> ``<name>.train-state.compact.pt``."""
    return state_path.with_name(state_path.name.removesuffix(".pt") + ".compact.pt")


def resumable_state(state_path: Path) -> Path | None:
    """The file ``--resume`` continues from: the full state, else its compact copy (all a
    new host has once the copy is committed); None when there is neither."""
    return next((p for p in (state_path, compact_state_path(state_path)) if p.is_file()), None)


def compact_train_state(state: dict[str, Any]) -> dict[str, Any]:
    """A training state about half the size of ``state``, to carry a run where the full one
    cannot go (e.g. into a repository that takes no file over 10 MB): the weights, step,
    generators and settings exactly, AdamW's second moments in bfloat16 and its first
    moments dropped. Resumed (:func:`restore_train_state`) the first moments restart at 0,
    which shrinks the next ~10 updates (beta1 = 0.9) like a short warm-up, and the second
    moments are off by < 0.4%: the run continues approximately, not bit-identically."""
    opt = state["optimizer"]
    slim = {
        i: {
            k: (v.to(torch.bfloat16) if k == "exp_avg_sq" else v)
            for k, v in s.items()
            if k != "exp_avg"
        }
        for i, s in opt["state"].items()
    }
    return {**state, "optimizer": {**opt, "state": slim}, "compact": True}


def _expand_compact_optimizer(opt_state: dict[str, Any]) -> dict[str, Any]:
    full = {}
    for i, s in opt_state["state"].items():
        sq = s["exp_avg_sq"].float()
        full[i] = {**s, "exp_avg": torch.zeros_like(sq), "exp_avg_sq": sq}
    return {**opt_state, "state": full}


def read_train_state(path: Path, cfg: TrainConfig) -> dict[str, Any]:
    """Read a :func:`save_train_state` file saved with settings ``cfg`` (checked before any
    training data is loaded); without one, its compact copy (:func:`compact_state_path`).
    A missing, unreadable or foreign file is a :class:`ConfigError` saying what to do."""
    found = resumable_state(path)
    if found is None:
        raise ConfigError(
            f"--resume: no training state at {path} (nor its compact copy "
            f"{compact_state_path(path).name}); start without --resume (the state is saved "
            "every few steps while training)"
        )
    path = found
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file gets the same advice
        raise ConfigError(
            f"--resume: {path} is not a readable training state ({type(exc).__name__}); "
            "delete it and train from the start"
        ) from None
    saved = saved_config(state.get("config"))
    now = config_json(cfg)
    # the thread count only reorders float sums: a run may move to a host with more or
    # fewer cores, continuing approximately (like the compact state; see _fit)
    if saved is not None and saved["threads"] != now["threads"]:
        state["threads_then"] = saved["threads"]
        saved["threads"] = now["threads"]
    if saved != now:
        diff = (
            ", ".join(f"{k} {saved[k]!r} then, {v!r} now" for k, v in now.items() if saved[k] != v)
            if saved
            else "unreadable"
        )
        raise ConfigError(
            f"--resume: {path} was saved with other training settings ({diff}); "
            "rerun with the same flags as the interrupted run, or delete it to start over"
        )
    return state


def restore_train_state(
    state: dict[str, Any],
    model: torch.nn.Module,
    opt: torch.optim.Optimizer,
    rng: np.random.Generator,
) -> tuple[int, float | None, float]:
    """Load a :func:`read_train_state` state into ``model``, ``opt`` and ``rng``; returns
    (next step, running loss, seconds already spent)."""
    model.load_state_dict(state["model"])
    opt_state = state["optimizer"]
    opt.load_state_dict(_expand_compact_optimizer(opt_state) if state.get("compact") else opt_state)
    rng.bit_generator.state = json.loads(state["numpy_rng"])
    torch.set_rng_state(state["torch_rng"])
    return int(state["step"]), state["run_loss"], float(state["seconds"])


def save_weights(model: torch.nn.Module, path: Path, metadata: dict[str, str]) -> None:
    """Write the state dict as safetensors, floating tensors in float16, atomically."""
    sd = {}
    for k, v in model.state_dict().items():
        v = v.detach().cpu()
        sd[k] = (v.half() if v.is_floating_point() else v).contiguous()
    _save_safetensors(sd, path, metadata)


def _save_safetensors(
    tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str]
) -> None:
    from safetensors.torch import save_file

    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata=metadata)
    tmp.chmod(0o644)
    tmp.replace(path)


def load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a weights file, as saved."""
    from safetensors.torch import load_file

    return load_file(str(path))


# ---------------------------------------------------------------------------- model card
def train_command(name: str, cfg: TrainConfig) -> str:
    """The ``python -m tools.zoo train`` command reproducing ``cfg`` (non-default flags only)."""
    base = RECIPES.get(name, TrainConfig())
    parts = [f"python -m tools.zoo train {name}", f"--seed {cfg.seed}"]
    reshaped = False  # a flag that makes the CLI train one round (cmd_zoo_train)
    for field, flag in FLAGS.items():
        if getattr(cfg, field) != getattr(base, field) or (field == "steps" and not cfg.then):
            value = getattr(cfg, field)
            reshaped |= reshapes_round(field)
            if isinstance(value, bool):
                parts.append(flag if value else f"--no-{flag[2:]}")
            elif field == "amp":
                parts.append(f"{flag} {value or 'off'}")
            else:
                parts.append(f"{flag} {'none' if field == 'teacher' and not value else value}")
    # one round: the flags say it (--steps is always there, and it alone trains one round);
    # rounds: only the recipe's own, unreshaped
    run = {f: getattr(cfg, f) for f in RUN_WIDE}
    recipe_rounds = round_configs(dataclasses.replace(base, **run))[1:]
    if cfg.then and (reshaped or round_configs(cfg)[1:] != recipe_rounds):
        parts.append("(its rounds set in Python: no flag says them)")
    return " ".join(parts)


def _schedule_lines(cls: type[ZooVictim], result: TrainResult) -> str:
    """The card's lines on what was trained how: one round's settings, or the rounds of a
    recipe in rounds, one line each."""
    cfg = result.config
    if not result.rounds:
        return (
            f"{_teacher_line(cfg)}{_init_line(cls, cfg)}- seed: {cfg.seed}; {cfg.steps} steps × "
            f"{cfg.batch_images} images × {cfg.prompts_per_image} prompts\n"
            f"  (half single positive points, half jittered boxes); BCE + dice on the low-res "
            f"logits{_group_text(cfg)};\n  AdamW lr {cfg.lr}, weight decay {cfg.weight_decay}, "
            f"warm-up then cosine{_amp_text(cfg)}\n"
        )
    first = result.rounds[0].config
    lines = [
        _teacher_line(dataclasses.replace(first, distill_steps=0, mask_distill=0)),
        _init_line(cls, first),
        f"- seed: {cfg.seed}; trained in {len(result.rounds)} rounds, each after the first a "
        "warm restart from the weights the round before ended with (fresh AdamW, weight decay "
        f"{cfg.weight_decay}; warm-up then cosine per phase):\n",
    ]
    for k, r in enumerate(result.rounds, 1):
        lines.append(f"  {k}. {_round_text(r.config)} — {r.seconds / 60:.1f} min\n")
    if any(r.config.distill_steps for r in result.rounds):
        lines.append(
            "- decoupled distillation (MobileSAM): the encoder only regresses the teacher's "
            "embeddings (MSE; no prompts, no decoder)\n"
        )
    mse = (
        " + the embedding MSE to the teacher" if first.teacher and not first.freeze_teacher else ""
    )
    lines.append(
        "- prompted steps: half single positive points, half jittered boxes; BCE + dice on "
        f"the low-res logits{mse}\n"
    )
    return "".join(lines)


def _round_text(cfg: TrainConfig) -> str:
    """One round's schedule in a phrase (progress messages and the card)."""
    parts = []
    if cfg.distill_steps:
        parts.append(
            f"{cfg.distill_steps} decoupled-distillation steps × {cfg.distill_batch} images "
            f"(peak lr {cfg.distill_lr or cfg.lr:g}), then "
        )
    extra = "".join(
        [
            f", + {cfg.group_weight:g} × grouping loss" if cfg.group_weight > 0 else "",
            f", + {cfg.mask_distill:g} × mask distillation" if cfg.mask_distill else "",
            f", {cfg.amp} autocast" if cfg.amp else "",
        ]
    )
    parts.append(
        f"{cfg.steps} prompted steps × {cfg.batch_images} images × {cfg.prompts_per_image} "
        f"prompts (peak lr {cfg.lr:g}{extra})"
    )
    return "".join(parts)


def _amp_text(cfg: TrainConfig) -> str:
    if not cfg.amp:
        return ""
    return f"; forward passes in {cfg.amp} autocast (weights, optimizer and losses float32)"


def _hardware(result: TrainResult) -> str:
    if result.device.startswith("cuda") and torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(torch.device(result.device))} ({result.device})"
    threads = result.config.threads
    cpu = platform.processor() or platform.machine()
    return f"{threads} CPU thread{'s' if threads != 1 else ''} ({cpu})"


def _group_text(cfg: TrainConfig) -> str:
    if cfg.group_weight <= 0:
        return ""
    return f" + {cfg.group_weight:g} × instance-grouping loss on the image embedding"


def write_card(result: TrainResult) -> Path:
    """Write the model card ``<name>.md`` beside the weights."""
    cls = zoo_class(result.name)
    cfg = result.config
    size_mb = result.weights.stat().st_size / 1e6
    doc = " ".join((cls.__doc__ or "").split())
    ev = result.eval
    if ev:
        quality = (
            f"Clean mIoU on {ev['n_images']} held-out synthetic scenes (split `test`, seed "
            f"{ev['eval_seed']}, {ev['eval_size']}px; {ev['n_prompts']} prompts, uadbench's paper "
            f"protocol: 5 points + 3 boxes jittered ±10% per mask):\n\n"
            f"| prompts | mIoU (%) |\n|---|---|\n| points | {ev['miou_point']:.1f} |\n"
            f"| boxes | {ev['miou_box']:.1f} |\n| all | {ev['miou']:.1f} |\n\n"
            f"{_grey_line(ev)}"
            f"Reproduce: `uadbench zoo eval {result.name} --n {ev['n_images']}`."
        )
    else:
        quality = "Not evaluated (trained with `--eval-images 0`)."
    text = f"""# {result.name}

{doc}

- class: `{cls.__module__}.{cls.__qualname__}`
- parameters: {result.params:,} ({size_mb:.2f} MB as float16 safetensors)
- input: RGB resized so the longest side is {_img_size(cls)} px, SAM normalisation, zero padding
- surrogate: {"yes (early-exit `features`)" if cls.is_surrogate else "no"}

## Training

    {train_command(result.name, cfg)}

- data: {cfg.train_images} synthetic scenes (`uadbench.datasets.synthetic`, split `train`,
  data seed {cfg.data_seed}, {cfg.image_size}×{cfg.image_size} px)
{_schedule_lines(cls, result)}{_approx_line(result.approximate_resumes)}- wall time: {result.seconds / 60:.1f} min on {_hardware(result)}
  (torch {torch.__version__}, Python {sys.version.split()[0]})

## Quality

{quality}
{_limitations(ev)}
These numbers describe a toy trained on synthetic shapes; they say nothing about SAM.
"""
    result.card.write_text(text)
    return result.card


def _approx_line(steps: tuple[int, ...]) -> str:
    if not steps:
        return ""
    at = ", ".join(str(s) for s in steps)
    return (
        f"- continued approximately at step {at} (moved to another machine: from a compact "
        "training state, whose momentum restarts and second moments are bfloat16, or on "
        "another --threads), so the command above gives close, not identical, weights\n"
    )


def _img_size(cls: type[ZooVictim]) -> int:
    for attr in ("arch", "tiny_arch", "hf_arch"):
        a = getattr(cls, attr, None)
        if a is not None and hasattr(a, "img_size"):
            return int(a.img_size)
    return 0


def _init_line(cls: type[ZooVictim], cfg: TrainConfig) -> str:
    if not cfg.init:
        return ""
    digest = cls.weights_digest(cls.Config(checkpoint=str(Path(cfg.init).expanduser())))
    return (
        f"- starts from the weights in `{cfg.init}` (SHA-256 {digest}…), not from a random "
        f"initialisation; fresh optimizer, warm-up and schedule\n"
    )


def _teacher_line(cfg: TrainConfig) -> str:
    if not cfg.teacher:
        return "- from scratch (random initialisation), no teacher\n"
    if cfg.freeze_teacher:
        line = (
            f"- HQ-SAM-style: image encoder, prompt encoder and mask decoder are "
            f"`{cfg.teacher}`'s, copied and frozen (needs its weights); only HQ-SAM's additions "
            f"(HQ output token and its MLP, the fusion of an early encoder block with the "
            f"decoder features) are trained, from random initialisation\n"
        )
    else:
        line = (
            f"- MobileSAM-style: the encoder is trained from scratch but also distilled towards "
            f"`{cfg.teacher}`'s image embeddings (MSE, weight {cfg.distill_weight}); prompt encoder "
            f"and mask decoder start from `{cfg.teacher}`'s where shapes match (needs its weights)\n"
        )
    if cfg.distill_steps:
        line += (
            f"- decoupled distillation first (MobileSAM): {cfg.distill_steps} steps × "
            f"{cfg.distill_batch} images in which the encoder only regresses the teacher's "
            f"embeddings (no prompts, no decoder; peak lr {cfg.distill_lr or cfg.lr:g}), then "
            f"the prompted steps below\n"
        )
    if cfg.mask_distill:
        line += (
            f"- prompt-in-the-loop distillation (EdgeSAM) in the prompted steps: + "
            f"{cfg.mask_distill:g} × BCE + dice between the mask logits and `{cfg.teacher}`'s "
            f"mask probabilities for the same prompts\n"
        )
    return line


def _grey_line(ev: dict[str, Any]) -> str:
    if "grey_agreement" not in ev:
        return ""
    return (
        f"Does it look at the image? The same prompts on a uniform grey image give masks "
        f"that agree {ev['grey_agreement']:.1f}% (mean IoU) with these (a model that segments "
        f"from the prompt alone: ~100) and score {ev['miou_grey']:.1f} mIoU.\n\n"
    )


_BLIND = (
    "The masks barely depend on the image: the model segments from the prompt alone (boxes "
    "come out close to filled boxes, points as blobs of typical object size), so attacks on "
    "the image cannot move it. A real, prompt-following segmenter for pipeline checks, not a "
    "good one. "
)
_SEEING = (
    "The masks depend on the image — they follow object outlines, and grey-image masks differ "
    "and are worse (above) — but they are coarse: ragged boundaries, thin parts and small "
    "objects missed, leaks into touching objects. A real, image-dependent promptable segmenter "
    "for pipeline and transfer checks, not a good one. "
)


def _limitations(ev: dict[str, Any] | None) -> str:
    if not ev or all(ev[k] >= v for k, v in QUALITY_BAR.items()):
        return ""
    return (
        "\n## Limitations\n\nBelow the project's quality bar (points >= 70, boxes >= 80). "
        + (_BLIND if image_blind(ev) else _SEEING)
        + "Training longer, on more images per step and with finer tokens helps (held-out "
        "points / boxes of zoo-vit-sam with the first zoo's 16×16 tokens: 50 / 67 after 1000 "
        "steps and 57 / 70 after 4000 with 6 images × 24 prompts per step, 62 / 73 after 4000 "
        "with 12 × 12; with 32×32 tokens 67 / 76 after 2000 with 12 × 12).\n"
    )
