"""The local executor: one process, each model loaded once, every job resumable.

Phase 1 runs the pending attack jobs on the surrogate; phase 2, per victim, the pending
evaluation jobs (clean rows included). Jobs whose output exists are skipped, so a
killed run resumes where it stopped; a job that raises is recorded and the run goes on.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from .jobs import AttackWorker, EvalWorker, JobResult, RunData, plan_jobs
from .plan import RunSpec


@dataclasses.dataclass
class Summary:
    attack_jobs: int = 0
    attack_done: int = 0
    attack_skipped: int = 0  # cached from an earlier invocation
    eval_jobs: int = 0
    eval_done: int = 0
    eval_skipped: int = 0
    failures: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    seconds: float = 0.0
    images: int = 0
    sample_ids: list[str] = dataclasses.field(default_factory=list)
    transforms: int = 1  # evaluation transforms: eval jobs = victims × transforms × …

    def record(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["failures"] = len(self.failures)
        d.pop("sample_ids")
        return d

    def line(self) -> str:
        if self.attack_done or self.eval_done:
            rate = self.images / self.seconds if self.seconds > 0 else 0.0
            speed = f"{self.seconds:.1f} s wall ({rate:.2f} images/s)"
        else:
            speed = f"{self.seconds:.1f} s wall (nothing left to run)"
        axis = f" ({self.transforms} transforms)" if self.transforms > 1 else ""
        return (
            f"attack jobs {self.attack_done} run + {self.attack_skipped} cached of {self.attack_jobs}; "
            f"eval jobs{axis} {self.eval_done} run + {self.eval_skipped} done before of {self.eval_jobs}; "
            f"{len(self.failures)} failed; {speed}"
        )


def progress_bar(total: int, desc: str, enabled: bool):
    return tqdm(total=total, desc=desc, unit="job", disable=not enabled, dynamic_ncols=True)


class LocalExecutor:
    """Runs a :class:`RunSpec` into ``run_dir`` in this process."""

    def __init__(
        self,
        spec: RunSpec,
        run_dir: Path,
        device: str = "cpu",
        batch_size: int = 1,
        progress: bool = True,
        dtype: torch.dtype = torch.float32,
        only_failed: bool = False,
    ):
        self.spec, self.run_dir = spec, Path(run_dir)
        self.only_failed = only_failed
        self.device, self.dtype, self.batch_size, self.progress = (
            device,
            dtype,
            batch_size,
            progress,
        )
        self.summary = Summary()

    def run(self) -> Summary:
        t0 = time.time()
        data = RunData(self.spec, self.run_dir)
        plan = plan_jobs(data, only_failed=self.only_failed)
        s = self.summary
        s.sample_ids, s.images = plan.ids, len(plan.ids)
        s.transforms = len(self.spec.transforms)
        s.attack_jobs, s.eval_jobs = plan.attack_total, plan.eval_total
        s.attack_skipped = plan.attack_total - plan.attack_pending
        s.eval_skipped = plan.eval_total - plan.eval_pending
        try:
            if plan.attacks:
                worker = AttackWorker(
                    self.spec, self.run_dir, self.device, self.dtype, self.batch_size
                )
                worker.data = data
                with progress_bar(
                    plan.attack_pending, f"attack ({self.spec.surrogate.label})", self.progress
                ) as bar:
                    for attack, sids in plan.attacks:
                        self._add(worker.run(attack, sids, on_done=bar.update), "attack")
                del worker
            for victim, by_sample in plan.evals:
                ew = EvalWorker(self.spec, self.run_dir, victim, self.device, self.dtype)
                ew.data = data
                desc = f"eval {victim.label}"
                if len(self.spec.transforms) > 1:
                    desc += f" × {len(self.spec.transforms)} transforms"
                with progress_bar(
                    sum(len(a) for a in by_sample.values()), desc, self.progress
                ) as bar:
                    for sid in plan.ids:
                        if sid in by_sample:
                            self._add(ew.run(sid, by_sample[sid]), "eval")
                            bar.update(len(by_sample[sid]))
                del ew
        finally:
            s.seconds = time.time() - t0
        return s

    def _add(self, res: JobResult, phase: str) -> None:
        if phase == "attack":
            self.summary.attack_done += res.done
        else:
            self.summary.eval_done += res.done
        self.summary.failures += res.failures
