"""Jobs and the workers that run them; shared by every executor.

Two kinds of job, each writing one output atomically so that a run resumes exactly:

* attack job (attack config × sample) → an adversarial PNG in the cache, made on the
  surrogate by an :class:`AttackWorker`;
* evaluation job (victim × transform × attack config or ``clean`` × sample) → one Parquet
  shard of per-prompt rows, made by an :class:`EvalWorker` that holds one loaded victim.
  The transform (``--transforms``; the identity alone by default) is applied to the clean
  and to the adversarial image alike, with the same seeded draw, right before the victim;
  the adversarial image is the attack job's, whatever the transform.

:func:`plan_jobs` lists what is still to do; a job whose output exists is done. A worker
never raises for a job: it records the failure in ``failures.jsonl`` and returns it.
"""

from __future__ import annotations

import dataclasses
import fcntl
import io
import json
import logging
import time
import traceback
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..attacks.base import AttackContext
from ..errors import DataError, UadbenchError
from ..eval.metrics import iou
from ..eval.perturbation import (
    AttackTimer,
    image_metrics,
    perturbation_path,
    write_perturbation_row,
)
from ..eval.prompts import PromptSet, sample_prompts
from ..store.rundir import (
    FAILURES,
    _safe,
    adv_path,
    atomic_write_bytes,
    code_key,
    compacted_samples,
    shard_path,
    write_shard,
)
from ..transforms.base import Geometry, transform_rng
from .plan import CLEAN, IDENTITY, Plugin, RunSpec, is_identity, transform_key

#: one evaluation job of a sample on a victim: (transform, attack or None = clean)
EvalJob = tuple[Plugin, "Plugin | None"]

log = logging.getLogger(__name__)


def save_png(path: Path, image: np.ndarray) -> None:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())


def load_png(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"), dtype=np.uint8)


def is_oom(exc: BaseException) -> bool:
    return isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc).lower()


@dataclasses.dataclass
class JobResult:
    """What a worker did for one call: jobs finished and failure records."""

    done: int = 0
    failures: list[dict[str, Any]] = dataclasses.field(default_factory=list)

    def add(self, other: JobResult) -> None:
        self.done += other.done
        self.failures += other.failures


@dataclasses.dataclass
class Plan:
    """Pending work. ``attacks``: per attack, the sample ids still to attack.
    ``evals``: per victim, per sample id, the (transform, attack or None = clean) jobs to
    evaluate."""

    ids: list[str]
    attacks: list[tuple[Plugin, list[str]]]
    evals: list[tuple[Plugin, dict[str, list[EvalJob]]]]
    attack_total: int
    eval_total: int

    @property
    def attack_pending(self) -> int:
        return sum(len(s) for _, s in self.attacks)

    @property
    def eval_pending(self) -> int:
        return sum(len(a) for _, by in self.evals for a in by.values())


class RunData:
    """Dataset access, prompts and bookkeeping of one run, as seen by a worker."""

    def __init__(self, spec: RunSpec, run_dir: Path):
        self.spec, self.run_dir = spec, Path(run_dir)
        self.dataset = spec.dataset.cls(spec.dataset.config)
        self._samples: dict[str, Any] = {}
        self._compacted: dict[tuple[str, str], frozenset[str]] = {}
        self._all_ids: list[str] | None = None

    def all_ids(self) -> list[str]:
        if self._all_ids is None:
            self._all_ids = list(self.dataset.ids())
        return self._all_ids

    def ids(self) -> list[str]:
        """The run's sample ids: explicit ones, else the dataset's first ``limit``."""
        ids = self.all_ids()
        if not ids:
            raise DataError(f"dataset {self.spec.dataset.label} is empty: check its root/pattern")
        if self.spec.sample_ids is not None:
            known = set(ids)
            missing = [i for i in self.spec.sample_ids if i not in known]
            if missing:
                raise DataError(
                    f"dataset {self.spec.dataset.label} no longer has samples {missing[:3]}"
                )
            ids = list(self.spec.sample_ids)
        return ids[: self.spec.limit] if self.spec.limit else ids

    def sample(self, sid: str):
        if sid not in self._samples:
            if len(self._samples) >= 32:
                self._samples.pop(next(iter(self._samples)))
            self._samples[sid] = self.dataset.load(sid).validate()
        return self._samples[sid]

    def prompts(self, sid: str) -> PromptSet:
        s = self.sample(sid)
        return sample_prompts(
            self.spec.dataset.label,
            sid,
            s.hw,
            s.masks,
            s.boxes,
            self.spec.seed,
            self.spec.prompt_config,
        )

    def draw_image(self, rng: np.random.Generator, exclude: str) -> np.ndarray:
        """A random other image of the dataset (targets and competitors of attacks)."""
        pool = [i for i in self.all_ids() if i != exclude] or [exclude]
        return self.dataset.load(pool[int(rng.integers(len(pool)))]).image

    def adv_file(self, attack: Plugin, sid: str) -> Path:
        sur = self.spec.surrogate
        return adv_path(
            self.run_dir,
            attack.name,
            attack.hash,
            sur.label,
            sid,
            self.spec.seed,
            code_key(attack.code, sur.code),
        )

    def shard_file(
        self, victim: Plugin, attack: Plugin | None, sid: str, transform: Plugin | None = None
    ) -> Path:
        return shard_path(
            self.run_dir,
            victim.label,
            attack.key if attack else CLEAN,
            sid,
            transform_key(transform),
        )

    def evaluated(
        self, victim: Plugin, attack: Plugin | None, sid: str, transform: Plugin | None = None
    ) -> bool:
        """Whether the rows of (victim, transform, attack or clean, sample) are stored: a
        loose shard, or the sample in the compacted file (:func:`compact_rows`)."""
        if self.shard_file(victim, attack, sid, transform).exists():
            return True
        key = (victim.label, attack.key if attack else CLEAN, transform_key(transform))
        if key not in self._compacted:
            self._compacted[key] = compacted_samples(self.run_dir, *key)
        return _safe(sid) in self._compacted[key]

    def fail(self, phase: str, key: dict[str, Any], exc: BaseException) -> dict[str, Any]:
        """Record a failed job in ``failures.jsonl`` (appends are locked: several
        workers may share the run directory)."""
        rec = {
            "phase": phase,
            "key": key,
            "error": f"{type(exc).__name__}: {exc}",
            "traceback": "".join(traceback.format_exception(exc)),
            "time": time.time(),
        }
        with open(self.run_dir / FAILURES, "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            f.write(json.dumps(rec) + "\n")
            fcntl.flock(f, fcntl.LOCK_UN)
        log.error("%s job %s failed: %s", phase, key, rec["error"])
        return rec


def failed_keys(run_dir: Path) -> set[tuple[str, ...]]:
    """Keys of the jobs recorded in ``failures.jsonl``: ("attack", label, sample) and
    ("eval", victim, transform, label, sample) (a record without a transform, written
    before the axis existed, is the identity's)."""
    path = Path(run_dir) / FAILURES
    out: set[tuple[str, ...]] = set()
    if not path.exists():
        return out
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue  # a line cut by a kill
        k = rec.get("key", {})
        if rec.get("phase") == "attack":
            out.add(("attack", k.get("attack"), k.get("sample")))
        else:
            out.add(
                (
                    "eval",
                    k.get("victim"),
                    k.get("transform", IDENTITY),
                    k.get("attack"),
                    k.get("sample"),
                )
            )
    return out


def plan_jobs(data: RunData, only_failed: bool = False) -> Plan:
    """Everything still to do for the run (outputs that do not exist yet); with
    ``only_failed``, just the jobs recorded in ``failures.jsonl`` (and the evaluations
    that wait on a failed attack)."""
    spec = data.spec
    ids = data.ids()
    failed = failed_keys(data.run_dir) if only_failed else set()
    failed_attacks = {(k[1], k[2]) for k in failed if k[0] == "attack"}
    attacks = []
    for a in spec.attacks:
        # an image is needed while some victim still has to be evaluated on it: a run
        # directory whose adversarial images were deleted (to save space, or to commit its
        # rows alone) resumes without redoing attacks whose evaluations are all recorded
        todo = [
            sid
            for sid in ids
            if not data.adv_file(a, sid).exists()
            and (
                not spec.victims
                or any(
                    not data.evaluated(v, a, sid, t) for v in spec.victims for t in spec.transforms
                )
            )
        ]
        if only_failed:
            todo = [sid for sid in todo if (a.label, sid) in failed_attacks]
        if todo:
            attacks.append((a, todo))
    evals = []
    for v in spec.victims:
        by: dict[str, list[EvalJob]] = defaultdict(list)
        for sid in ids:
            for t in spec.transforms:
                for a in [None, *spec.attacks]:
                    if data.evaluated(v, a, sid, t):
                        continue
                    label = a.label if a else CLEAN
                    if (
                        only_failed
                        and ("eval", v.label, t.label, label, sid) not in failed
                        and (label, sid) not in failed_attacks
                    ):
                        continue
                    by[sid].append((t, a))
        if by:
            evals.append((v, dict(by)))
    n = len(ids)
    per_victim = len(spec.transforms) * (1 + len(spec.attacks))
    return Plan(ids, attacks, evals, n * len(spec.attacks), n * len(spec.victims) * per_victim)


class AttackWorker:
    """Holds the surrogate; runs attack jobs in batches of same-size images."""

    def __init__(
        self,
        spec: RunSpec,
        run_dir: Path,
        device: str = "cpu",
        dtype=torch.float32,
        batch_size: int = 1,
    ):
        self.data = RunData(spec, run_dir)
        self.device, self.dtype, self.batch_size = device, dtype, max(1, int(batch_size))
        self._surrogate = None

    @property
    def surrogate(self):
        if self._surrogate is None:
            s = self.data.spec.surrogate
            self._surrogate = s.cls(s.config, device=self.device, dtype=self.dtype)
        return self._surrogate

    def run(self, attack: Plugin, sids: list[str], on_done=None) -> JobResult:
        """Attack ``sids`` with ``attack``; ``on_done(n)`` is called as jobs finish."""
        res = JobResult()
        inst = attack.cls(attack.config)
        groups: dict[tuple, list[str]] = defaultdict(list)
        for sid in sids:
            try:
                groups[self.data.sample(sid).image.shape].append(sid)
            except (UadbenchError, OSError) as exc:
                res.failures.append(
                    self.data.fail("attack", {"attack": attack.label, "sample": sid}, exc)
                )
                on_done and on_done(1)
        for shape in sorted(groups):
            group = groups[shape]
            for start in range(0, len(group), self.batch_size):
                batch = group[start : start + self.batch_size]
                res.add(self._batch(inst, attack, batch))
                on_done and on_done(len(batch))
        return res

    def _batch(self, inst, attack: Plugin, batch: list[str]) -> JobResult:
        try:
            advs = self._attack(inst, batch)
        except KeyboardInterrupt:
            raise
        except Exception as exc:
            if is_oom(exc) and len(batch) > 1:
                # out of memory: halve the batch and retry once before recording a failure
                log.warning("out of memory on a batch of %d; retrying in halves", len(batch))
                if self.device.startswith("cuda"):
                    torch.cuda.empty_cache()
                half = len(batch) // 2
                res = JobResult()
                for part in (batch[:half], batch[half:]):
                    try:
                        self._save(attack, part, self._attack(inst, part))
                        res.done += len(part)
                    except KeyboardInterrupt:
                        raise
                    except Exception as exc2:  # recorded, reported, exit code non-zero
                        for sid in part:
                            res.failures.append(
                                self.data.fail(
                                    "attack", {"attack": attack.label, "sample": sid}, exc2
                                )
                            )
                return res
            return JobResult(
                0,
                [
                    self.data.fail("attack", {"attack": attack.label, "sample": s}, exc)
                    for s in batch
                ],
            )
        self._save(attack, batch, advs)
        return JobResult(len(batch))

    def _attack(self, inst, batch: list[str]) -> list[np.ndarray]:
        ctx = AttackContext(
            sample_ids=batch,
            seed=self.data.spec.seed,
            prompts=[self.data.prompts(s) for s in batch] if inst.uses_prompts else None,
            draw_image=self.data.draw_image,
        )
        with AttackTimer(self.device) as timer:
            advs = inst([self.data.sample(s).image for s in batch], self.surrogate, ctx)
        self._cost = timer.per_image(len(batch))
        return advs

    def _save(self, attack: Plugin, batch: list[str], advs: list[np.ndarray]) -> None:
        for sid, adv in zip(batch, advs):
            # the perturbation row first: the PNG marks the job done, so a kill between
            # the two reruns the job (rewriting the same row), never leaves a PNG without it
            record_perturbation(self.data, attack, sid, adv, getattr(self, "_cost", {}))
            save_png(self.data.adv_file(attack, sid), adv)


def record_perturbation(
    data: RunData, attack: Plugin, sid: str, adv: np.ndarray, cost: dict[str, Any]
) -> None:
    """Write the perturbation row of one adversarial image (norms, PSNR, SSIM, MS-SSIM,
    LPIPS where available, the attack's cost per image) atomically to
    ``<run>/perturbation/<attack>-<hash>/<sample>.parquet``. A metric that cannot be
    computed is logged, never fails the attack job."""
    try:
        clean = data.sample(sid).image
        row = {
            "dataset": data.spec.dataset.label,
            "sample_id": sid,
            "attack": attack.label,
            "attack_name": attack.name,
            "attack_hash": attack.hash,
            "eps": float(getattr(attack.config, "eps", float("nan"))),
            "surrogate": data.spec.surrogate.label,
            "seed": data.spec.seed,
            "height": int(adv.shape[0]),
            "width": int(adv.shape[1]),
            **image_metrics(clean, adv),
            **cost,
        }
        write_perturbation_row(perturbation_path(data.run_dir, attack.key, sid), row)
    except Exception as exc:  # metrics are a report, the adversarial image is the job
        log.warning("perturbation metrics of %s on %s not recorded: %s", attack.label, sid, exc)


def map_prompts(prompts: PromptSet, geometry: Geometry | None) -> PromptSet:
    """``prompts`` (pixels of the original image) in the frame of a transformed image:
    points and both box corners through ``geometry`` (unchanged when it is None)."""
    if geometry is None:
        return prompts
    c = np.asarray(prompts.coords, dtype=np.float64)
    coords = np.concatenate([geometry.points(c[:, :2]), geometry.points(c[:, 2:])], axis=1)
    return PromptSet(prompts.kinds, coords, prompts.mask_index, prompts.labels)


def through(
    t: Plugin, image: np.ndarray, seed: int, sid: str, inst: Any = None
) -> tuple[np.ndarray, Geometry | None]:
    """``image`` through transform ``t`` with the draw of (run seed, sample, transform)
    (:func:`transform_rng`): the same for the clean and every adversarial image of a
    sample, so they stay paired. Returns the uint8 image and its Geometry (None: the
    pixels stayed where they were)."""
    if is_identity(t):
        return image, None
    inst = inst if inst is not None else t.cls(t.config)
    out, geometry = inst.apply_geometry(image, transform_rng(seed, sid, t.hash))
    out = np.asarray(out)
    if out.dtype != np.uint8 or out.ndim != 3 or out.shape[2] != 3:
        raise UadbenchError(
            f"transform {t.label} returned {out.dtype} {out.shape}, not a uint8 (H, W, 3) image"
        )
    if geometry is None and out.shape != image.shape:
        raise UadbenchError(
            f"transform {t.label} changed the image size {image.shape[:2]} → "
            f"{out.shape[:2]} without a Geometry saying where the pixels went"
        )
    return out, geometry


def predict_through(
    model: Any,
    t: Plugin,
    image: np.ndarray,
    prompts: PromptSet,
    seed: int,
    sid: str,
    inst: Any = None,
) -> tuple[np.ndarray, float]:
    """``model``'s masks (P, H, W) of ``image`` seen through transform ``t`` (:func:`through`),
    in the frame of ``image``, and the prediction's wall time: a transform that moves
    pixels has the prompts mapped into its output and the masks mapped back."""
    h, w = image.shape[:2]
    image, geometry = through(t, image, seed, sid, inst)
    t0 = time.time()
    masks = model.predict(image, map_prompts(prompts, geometry))
    secs = time.time() - t0
    if geometry is not None:
        masks = (
            np.stack([geometry.mask_back(m, h, w) for m in masks])
            if len(masks)
            else (np.zeros((0, h, w), dtype=bool))
        )
    return masks, secs


class EvalWorker:
    """Holds one victim; evaluates the clean and adversarial images of a sample, each
    through the run's transforms."""

    def __init__(
        self, spec: RunSpec, run_dir: Path, victim: Plugin, device: str = "cpu", dtype=torch.float32
    ):
        self.data = RunData(spec, run_dir)
        self.victim = victim
        self.model = victim.cls(victim.config, device=device, dtype=dtype)
        self._transforms: dict[str, Any] = {}

    def _transform(self, t: Plugin):
        if t.hash not in self._transforms:
            self._transforms[t.hash] = t.cls(t.config)
        return self._transforms[t.hash]

    def predict(
        self, t: Plugin, image: np.ndarray, prompts: PromptSet, sid: str
    ) -> tuple[np.ndarray, float]:
        """The victim's masks (P, H, W) of ``image`` seen through transform ``t``, in the
        frame of ``image``, and the prediction's wall time (:func:`predict_through`)."""
        return predict_through(
            self.model, t, image, prompts, self.data.spec.seed, sid, self._transform(t)
        )

    def run(self, sid: str, jobs: list[EvalJob | Plugin | None]) -> JobResult:
        """Evaluate ``jobs`` ((transform, attack or None = clean); a bare attack is the
        identity's) on sample ``sid``: one shard each. The reference of an image without
        ground truth is the victim's clean prediction under the same transform."""
        res = JobResult()
        v = self.victim
        ident = None
        pairs: list[EvalJob] = []
        for j in jobs:
            if isinstance(j, tuple):
                pairs.append(j)
            else:
                ident = ident or next(
                    (t for t in self.data.spec.transforms if is_identity(t)), None
                )
                if ident is None:
                    from .plan import resolve

                    ident = resolve("transform", IDENTITY)
                pairs.append((ident, j))

        def key(t, a):
            k = {"victim": v.label, "attack": a.label if a else CLEAN, "sample": sid}
            if not is_identity(t):
                k["transform"] = t.label
            return k

        by_t: dict[str, list[EvalJob]] = defaultdict(list)
        order: dict[str, Plugin] = {}
        for t, a in pairs:
            order.setdefault(t.hash, t)
            by_t[t.hash].append((t, a))
        try:  # the sample and its prompts once, whatever the transforms
            sample = self.data.sample(sid)
            prompts = self.data.prompts(sid)
        except KeyboardInterrupt:
            raise
        except Exception as exc:
            res.failures += [self.data.fail("eval", key(t, a), exc) for t, a in pairs]
            return res
        adv_images: dict[str, np.ndarray] = {}  # read once, seen through every transform
        for th, t in order.items():
            todo = by_t[th]
            try:
                clean_masks, clean_seconds = self.predict(t, sample.image, prompts, sid)
            except KeyboardInterrupt:
                raise
            except Exception as exc:
                res.failures += [self.data.fail("eval", key(t, a), exc) for _, a in todo]
                continue
            if sample.has_gt:
                ref, ref_kind = sample.masks[prompts.mask_index], "gt"
            else:
                ref, ref_kind = clean_masks, "clean"
            for _, a in todo:
                try:
                    if a is None:
                        masks, secs = clean_masks, clean_seconds
                    else:
                        if a.key not in adv_images:
                            adv_file = self.data.adv_file(a, sid)
                            if not adv_file.exists():
                                raise UadbenchError(
                                    f"no adversarial image for {a.label} (its attack job failed)"
                                )
                            adv_images[a.key] = load_png(adv_file)
                        masks, secs = self.predict(t, adv_images[a.key], prompts, sid)
                    rows = self._rows(sid, a, prompts, iou(masks, ref), ref_kind, secs, t)
                    write_shard(self.data.shard_file(v, a, sid, t), rows)
                    res.done += 1
                except KeyboardInterrupt:
                    raise
                except Exception as exc:
                    res.failures.append(self.data.fail("eval", key(t, a), exc))
        return res

    def _rows(
        self,
        sid: str,
        attack: Plugin | None,
        prompts: PromptSet,
        ious: np.ndarray,
        reference: str,
        seconds: float,
        transform: Plugin | None = None,
    ) -> list[dict[str, Any]]:
        spec = self.data.spec
        base = {
            "dataset": spec.dataset.label,
            "sample_id": sid,
            "attack": attack.label if attack else CLEAN,
            "attack_name": attack.name if attack else CLEAN,
            "attack_hash": attack.hash if attack else "",
            "eps": float(attack.config.eps) if attack else 0.0,
            "surrogate": spec.surrogate.label if attack else "",
            "victim": self.victim.label,
            "reference": reference,
            "seconds": seconds,
            "seed": spec.seed,
            "transform": IDENTITY if is_identity(transform) else transform.label,
            "transform_hash": "" if is_identity(transform) else transform.hash,
        }
        rows = []
        for i in range(len(prompts)):
            x0, y0, x1, y1 = (float(c) for c in prompts.coords[i])
            rows.append(
                {
                    **base,
                    "prompt_index": i,
                    "prompt_kind": str(prompts.kinds[i]),
                    "mask_index": int(prompts.mask_index[i]),
                    "x0": x0,
                    "y0": y0,
                    "x1": x1,
                    "y1": y1,
                    "iou": float(ious[i]),
                }
            )
        return rows
