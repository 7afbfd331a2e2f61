"""The local executor: one process, models loaded once each, every job resumable.

Phases: (1) attack jobs on the surrogate write adversarial PNGs into the cache;
(2) per victim, evaluation jobs write one Parquet shard per (victim, attack config,
sample), clean rows included. A job whose output exists is skipped, so a killed run
resumes where it stopped; a job that raises is recorded in ``failures.jsonl`` and the
run goes on.
"""

from __future__ import annotations

import dataclasses
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
from tqdm.auto import tqdm

from ..attacks.base import AttackContext
from ..errors import DataError, UadbenchError
from ..eval.metrics import iou
from ..eval.prompts import PromptSet, sample_prompts
from ..store.rundir import FAILURES, adv_path, atomic_write_bytes, shard_path, write_shard
from .plan import CLEAN, Plugin, RunSpec

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Summary:
    attack_jobs: int = 0
    attack_done: int = 0
    attack_skipped: int = 0  # already cached
    eval_jobs: int = 0
    eval_done: int = 0
    eval_skipped: int = 0
    failures: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    seconds: float = 0.0
    images: int = 0
    sample_ids: list[str] = dataclasses.field(default_factory=list)

    def record(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["failures"] = len(self.failures)
        d.pop("sample_ids")
        return d

    def line(self) -> str:
        rate = self.images / self.seconds if self.seconds > 0 else 0.0
        return (
            f"attack jobs {self.attack_done} run + {self.attack_skipped} cached of {self.attack_jobs}; "
            f"eval jobs {self.eval_done} run + {self.eval_skipped} done before of {self.eval_jobs}; "
            f"{len(self.failures)} failed; {self.seconds:.1f} s wall ({rate:.2f} images/s)"
        )


def save_png(path: Path, image: np.ndarray) -> None:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())


def load_png(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"), dtype=np.uint8)


class LocalExecutor:
    """Runs a :class:`RunSpec` into ``run_dir``; see the module docstring."""

    def __init__(
        self,
        spec: RunSpec,
        run_dir: Path,
        device: str = "cpu",
        batch_size: int = 1,
        progress: bool = True,
        dtype: torch.dtype = torch.float32,
    ):
        self.spec, self.run_dir, self.device, self.dtype = spec, Path(run_dir), device, dtype
        self.batch_size = max(1, int(batch_size))
        self.progress = progress
        self.summary = Summary()
        self.dataset = spec.dataset.cls(spec.dataset.config)
        self._samples: dict[str, Any] = {}
        self._ids: list[str] | None = None

    # ------------------------------------------------------------------ data
    def ids(self) -> list[str]:
        if self._ids is None:
            ids = list(self.dataset.ids())
            if not ids:
                raise DataError(
                    f"dataset {self.spec.dataset.label} is empty: check its root/pattern"
                )
            if self.spec.sample_ids is not None:
                known = set(ids)
                missing = [i for i in self.spec.sample_ids if i not in known]
                if missing:
                    raise DataError(
                        f"dataset {self.spec.dataset.label} no longer has samples {missing[:3]}"
                    )
                ids = list(self.spec.sample_ids)
            self._ids = ids[: self.spec.limit] if self.spec.limit else ids
        return self._ids

    def sample(self, sid: str):
        if sid not in self._samples:
            if len(self._samples) > 64:
                self._samples.clear()
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
        """A random other image of the dataset (targets/competitors of attacks)."""
        pool = [i for i in self.dataset.ids() if i != exclude] or [exclude]
        return self.dataset.load(pool[int(rng.integers(len(pool)))]).image

    # ------------------------------------------------------------------ bookkeeping
    def fail(self, phase: str, key: dict[str, Any], exc: BaseException) -> None:
        rec = {
            "phase": phase,
            "key": key,
            "error": f"{type(exc).__name__}: {exc}",
            "traceback": traceback.format_exc(),
            "time": time.time(),
        }
        self.summary.failures.append(rec)
        path = self.run_dir / FAILURES
        with open(path, "a") as f:
            f.write(json.dumps(rec) + "\n")
        log.error("%s job %s failed: %s", phase, key, rec["error"])

    def bar(self, total: int, desc: str):
        return tqdm(
            total=total,
            desc=desc,
            unit="job",
            disable=not self.progress,
            dynamic_ncols=True,
            leave=True,
        )

    def adv_file(self, attack: Plugin, sid: str) -> Path:
        return adv_path(
            self.run_dir, attack.name, attack.hash, self.spec.surrogate.label, sid, self.spec.seed
        )

    def load_victim(self, p: Plugin):
        return p.cls(p.config, device=self.device, dtype=self.dtype)

    # ------------------------------------------------------------------ phases
    def run(self) -> Summary:
        t0 = time.time()
        ids = self.ids()
        self.summary.sample_ids = ids
        self.run_attacks(ids)
        self.run_evals(ids)
        self.summary.seconds = time.time() - t0
        self.summary.images = len(ids)
        return self.summary

    def run_attacks(self, ids: list[str]) -> None:
        todo = [(a, sid) for a in self.spec.attacks for sid in ids]
        self.summary.attack_jobs = len(todo)
        pending = [(a, sid) for a, sid in todo if not self.adv_file(a, sid).exists()]
        self.summary.attack_skipped = len(todo) - len(pending)
        if not pending:
            return
        surrogate = self.load_victim(self.spec.surrogate)
        with self.bar(len(pending), f"attack ({self.spec.surrogate.label})") as bar:
            for attack in self.spec.attacks:
                sids = [sid for a, sid in pending if a is attack]
                self._attack_batches(attack, sids, surrogate, bar)
        del surrogate

    def _attack_batches(self, attack: Plugin, sids: list[str], surrogate, bar) -> None:
        inst = attack.cls(attack.config)
        groups: dict[tuple, list[str]] = defaultdict(list)
        for sid in sids:
            try:
                groups[self.sample(sid).image.shape].append(sid)
            except (UadbenchError, OSError) as exc:
                self.fail("attack", {"attack": attack.label, "sample": sid}, exc)
                bar.update(1)
        for shape in sorted(groups):
            group = groups[shape]
            for start in range(0, len(group), self.batch_size):
                batch = group[start : start + self.batch_size]
                ctx = AttackContext(
                    sample_ids=batch,
                    seed=self.spec.seed,
                    prompts=[self.prompts(s) for s in batch] if inst.uses_prompts else None,
                    draw_image=self.draw_image,
                )
                try:
                    advs = inst([self.sample(s).image for s in batch], surrogate, ctx)
                    for sid, adv in zip(batch, advs):
                        save_png(self.adv_file(attack, sid), adv)
                    self.summary.attack_done += len(batch)
                except KeyboardInterrupt:
                    raise
                except Exception as exc:  # recorded, reported, exit code non-zero
                    for sid in batch:
                        self.fail("attack", {"attack": attack.label, "sample": sid}, exc)
                bar.update(len(batch))

    def _rows(
        self,
        sid: str,
        attack: Plugin | None,
        victim: Plugin,
        prompts: PromptSet,
        ious: np.ndarray,
        reference: str,
        seconds: float,
    ) -> list[dict[str, Any]]:
        base = {
            "dataset": self.spec.dataset.label,
            "sample_id": sid,
            "attack": attack.label if attack else CLEAN,
            "attack_name": attack.name if attack else CLEAN,
            "attack_hash": attack.hash if attack else "",
            "eps": float(attack.config.eps) if attack else 0.0,
            "surrogate": self.spec.surrogate.label if attack else "",
            "victim": victim.label,
            "reference": reference,
            "seconds": seconds,
            "seed": self.spec.seed,
        }
        rows = []
        for i in range(len(prompts)):
            x0, y0, x1, y1 = (float(v) for v in prompts.coords[i])
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

    def run_evals(self, ids: list[str]) -> None:
        for victim in self.spec.victims:
            jobs = [(None, sid) for sid in ids] + [
                (a, sid) for a in self.spec.attacks for sid in ids
            ]
            self.summary.eval_jobs += len(jobs)
            pending = [
                (a, sid)
                for a, sid in jobs
                if not shard_path(self.run_dir, victim.label, a.key if a else CLEAN, sid).exists()
            ]
            self.summary.eval_skipped += len(jobs) - len(pending)
            if not pending:
                continue
            model = self.load_victim(victim)
            by_sample: dict[str, list] = defaultdict(list)
            for a, sid in pending:
                by_sample[sid].append(a)
            with self.bar(len(pending), f"eval {victim.label}") as bar:
                for sid in ids:
                    if sid in by_sample:
                        self._eval_sample(model, victim, sid, by_sample[sid], bar)
            del model

    def _eval_sample(self, model, victim: Plugin, sid: str, attacks: list, bar) -> None:
        try:
            sample = self.sample(sid)
            prompts = self.prompts(sid)
            t = time.time()
            clean_masks = model.predict(sample.image, prompts)
            clean_seconds = time.time() - t
        except KeyboardInterrupt:
            raise
        except Exception as exc:
            for a in attacks:
                self.fail(
                    "eval",
                    {"victim": victim.label, "attack": a.label if a else CLEAN, "sample": sid},
                    exc,
                )
            bar.update(len(attacks))
            return
        if sample.has_gt:
            ref, ref_kind = sample.masks[prompts.mask_index], "gt"
        else:
            ref, ref_kind = clean_masks, "clean"
        for a in attacks:
            key = a.key if a else CLEAN
            try:
                if a is None:
                    masks, secs = clean_masks, clean_seconds
                else:
                    adv_file = self.adv_file(a, sid)
                    if not adv_file.exists():
                        raise UadbenchError(
                            f"no adversarial image for {a.label} (its attack job failed)"
                        )
                    t = time.time()
                    masks = model.predict(load_png(adv_file), prompts)
                    secs = time.time() - t
                rows = self._rows(sid, a, victim, prompts, iou(masks, ref), ref_kind, secs)
                write_shard(shard_path(self.run_dir, victim.label, key, sid), rows)
                self.summary.eval_done += 1
            except KeyboardInterrupt:
                raise
            except Exception as exc:
                self.fail(
                    "eval",
                    {"victim": victim.label, "attack": a.label if a else CLEAN, "sample": sid},
                    exc,
                )
            bar.update(1)
