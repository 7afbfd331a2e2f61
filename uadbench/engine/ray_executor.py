"""The Ray executor: the local executor's jobs spread over a Ray cluster (``--executor ray``).

Install with ``pip install 'uadbench[ray]'``. Same jobs, same outputs (identical rows and
adversarial PNG bytes), same :class:`~uadbench.engine.local.Summary` as
:class:`~uadbench.engine.local.LocalExecutor`; only where the models run changes.

Actors. Each actor holds one loaded model at a time: the surrogate (an
:class:`~uadbench.engine.jobs.AttackWorker`) or one victim (an
:class:`~uadbench.engine.jobs.EvalWorker`). The executor starts
``n = min(model slots, max(pending attack batches, pending evaluation samples))`` actors:

* phase 1 — attacks: every actor loads the surrogate and takes attack batches
  (``--batch-size`` images of one size, formed exactly as the local executor does);
* phase 2 — evaluation, after phase 1 has finished: each actor drops the surrogate and
  loads a victim. Victims are spread over the actors (``n // victims`` each when there
  are more actors than victims, else each actor takes the next victim nobody holds when
  it is done with its own); an actor that runs out of work joins the victim with the
  most samples left (when it has at least :data:`MIN_TASKS_TO_JOIN`).

Reusing the actors across phases keeps one process per slot (no second start-up of
torch), and one GPU never holds a surrogate and a victim at once. A *model slot* is what
one actor requests: ``gpus_per_model`` GPUs (default 1 when ``device`` starts with
``cuda``, else 0) and one CPU. Slots = available GPUs // ``gpus_per_model`` on GPU,
available CPUs on CPU (torch then runs one thread per actor), counted when the run
starts; ``max_actors`` caps them (e.g. to bound host memory on a big CPU node). Inside an
actor ``cuda:N`` becomes ``cuda``: Ray sets ``CUDA_VISIBLE_DEVICES`` to the GPUs it
assigned.

Cluster. ``address`` joins an existing cluster (``ray start --head`` on one machine,
``ray start --address=HEAD:6379`` on the others, then ``--ray-address HEAD:6379``);
without it, ``ray.init()`` joins the cluster named by ``RAY_ADDRESS`` or the latest one
started on this machine, else starts a local instance with this machine's CPUs and GPUs.
A Ray instance this executor started is shut down at the end; a cluster it joined is
left running (only the connection is closed), and a Ray session the caller opened in
this process (``ray.init`` before the run) is left open.

Shared filesystem. On a multi-machine cluster every node needs uadbench and the same
plugins installed, and the run directory, the dataset and the checkpoints on a shared
filesystem at the same paths: the workers write their outputs straight into the run
directory (atomic writes, as in the local executor); the driver only plans, schedules
and records failures. Actors start in the driver's working directory when it exists
there, and see the driver's ``UADBENCH_*``, ``HF_*``, ``XDG_CACHE_HOME`` and
``TORCH_HOME`` settings.

Faults. An actor whose process dies is restarted (``max_restarts``) and the call it was
running is retried (``max_task_retries``): jobs are idempotent, since a worker checks
again whether each output exists before computing (a killed attempt may have finished
some) and every output is written atomically. An actor that dies for good is replaced
(once per slot) and its calls are retried once more on another actor; a job that still
fails is recorded in ``failures.jsonl`` like any failed job, and ``--retry-failed`` (or a
plain rerun) runs it again.

Memory. The attack worker halves a batch that runs out of memory and retries once, so
``--batch-size`` is the memory knob of attacks; for predictions the knob is the victim's
``prompt_batch`` setting (prompts per decoder call, default 128), e.g.
``--victims sam-vit-h:prompt_batch=32``.
"""

from __future__ import annotations

import collections
import dataclasses
import gc
import logging
import os
import time
from pathlib import Path
from typing import Any

import ray
import torch

from ..errors import ConfigError, UadbenchError
from .jobs import AttackWorker, EvalJob, EvalWorker, JobResult, Plan, RunData, plan_jobs
from .local import Summary, progress_bar
from .plan import CLEAN, Plugin, RunSpec, is_identity

log = logging.getLogger(__name__)

#: environment variables the actors inherit from the driver (weights, caches, offline mode)
FORWARD_ENV_PREFIXES = ("UADBENCH_", "HF_")
FORWARD_ENV = ("XDG_CACHE_HOME", "TORCH_HOME", "TRANSFORMERS_OFFLINE", "TRANSFORMERS_CACHE")

#: calls queued per actor, so that an actor never waits for the driver between jobs
INFLIGHT_PER_ACTOR = 2
#: in phase 2, an idle actor loads a second copy of a victim only when this many of its
#: samples are left
MIN_TASKS_TO_JOIN = 4

SURROGATE = "surrogate"


def _victim_key(victim: Plugin) -> str:
    return f"victim:{victim.hash}:{victim.label}"


def _actor_device(device: str, gpus: float) -> str:
    """``cuda:N`` → ``cuda`` inside an actor that Ray gave GPUs (it sees only those)."""
    if gpus > 0 and device.startswith("cuda"):
        return "cuda"
    return device


class _ModelActor:
    """A Ray actor that holds one model: the surrogate or one victim, whichever its last
    call needed (every call names its model, so a restarted actor just loads it again)."""

    def __init__(
        self,
        spec: RunSpec,
        run_dir: str,
        device: str,
        dtype: torch.dtype,
        batch_size: int,
        cwd: str,
        env: dict[str, str],
    ):
        # before any model or hub library is imported; set here rather than through a Ray
        # runtime_env, which would rule out the worker processes Ray has already started
        os.environ.update(env)
        if cwd and os.path.isdir(cwd):
            os.chdir(cwd)  # relative dataset roots mean the same as in the driver
        self.spec, self.run_dir = spec, Path(run_dir)
        self.device, self.dtype, self.batch_size = device, dtype, batch_size
        self._key: str | None = None
        self._worker: Any = None

    @ray.method(concurrency_group="control")
    def pid(self) -> int:
        """This actor's process id; answered even while a job runs."""
        return os.getpid()

    def _hold(self, key: str, make):
        if self._key != key:
            self._key = self._worker = None
            gc.collect()
            if str(self.device).startswith("cuda"):
                torch.cuda.empty_cache()
            self._worker, self._key = make(), key
        return self._worker

    def attack(self, attack: Plugin, sids: list[str]) -> JobResult:
        """Attack the ``sids`` whose adversarial image does not exist yet (a killed attempt
        may have made some; those count as done)."""
        w = self._hold(
            SURROGATE,
            lambda: AttackWorker(self.spec, self.run_dir, self.device, self.dtype, self.batch_size),
        )
        todo = [s for s in sids if not w.data.adv_file(attack, s).exists()]
        res = w.run(attack, todo) if todo else JobResult()
        res.done += len(sids) - len(todo)
        return res

    def evaluate(self, victim: Plugin, sid: str, jobs: list[EvalJob]) -> JobResult:
        """Evaluate on ``victim`` the (transform, attack or None = clean) ``jobs`` of ``sid``
        whose shard does not exist yet."""
        w = self._hold(
            _victim_key(victim),
            lambda: EvalWorker(self.spec, self.run_dir, victim, self.device, self.dtype),
        )
        todo = [(t, a) for t, a in jobs if not w.data.evaluated(victim, a, sid, t)]
        res = w.run(sid, todo) if todo else JobResult()
        res.done += len(jobs) - len(todo)
        return res


@dataclasses.dataclass
class _Task:
    """One actor call: method, arguments, and per job its failure key and output path."""

    model: str
    method: str
    args: tuple
    phase: str
    jobs: list[tuple[dict[str, Any], Path]]
    attempts: int = 0


class _Actor:
    """A live actor, the model it was last given and its calls in flight."""

    def __init__(self, handle: Any):
        self.handle, self.model, self.load = handle, None, 0


def _kill(handle: Any) -> None:
    try:
        ray.kill(handle, no_restart=True)
    except Exception:  # noqa: BLE001 - already gone
        pass


def _forwarded_env() -> dict[str, str]:
    return {
        k: v
        for k, v in os.environ.items()
        if k in FORWARD_ENV or k.startswith(FORWARD_ENV_PREFIXES)
    }


class RayExecutor:
    """Runs a :class:`RunSpec` into ``run_dir`` on a Ray cluster (see the module doc).

    ``address``: a Ray cluster to join (``HOST:PORT`` or ``auto``); None = ``ray.init()``'s
    default. ``gpus_per_model``: GPUs per actor (fractions share a GPU); default 1 on
    ``cuda`` devices, 0 on CPU. ``max_actors``: cap on the number of actors.
    ``max_restarts``: restarts of a dead actor, and retries of the call it was running.
    """

    def __init__(
        self,
        spec: RunSpec,
        run_dir: Path,
        device: str = "cpu",
        batch_size: int = 1,
        progress: bool = True,
        dtype: torch.dtype = torch.float32,
        only_failed: bool = False,
        address: str | None = None,
        gpus_per_model: float | None = None,
        max_actors: int | None = None,
        max_restarts: int = 3,
    ):
        self.spec = spec
        self.run_dir = Path(run_dir).resolve()  # workers may run elsewhere: no relative path
        self.device, self.dtype, self.progress = device, dtype, progress
        self.batch_size = max(1, int(batch_size))
        self.only_failed = only_failed
        self.address = address
        if gpus_per_model is None:
            gpus_per_model = 1.0 if device.startswith("cuda") else 0.0
        if gpus_per_model < 0:
            raise ConfigError(f"--gpus-per-model {gpus_per_model} must be >= 0 (e.g. 1 or 0.5)")
        self.gpus = float(gpus_per_model)
        if max_actors is not None and max_actors < 1:
            raise ConfigError(f"max_actors={max_actors} must be >= 1")
        self.max_actors = max_actors
        self.max_restarts = max(0, int(max_restarts))
        self.summary = Summary()
        #: the live actors (for monitoring: ``ray.get(a.handle.pid.remote())`` answers at once)
        self.actors: list[_Actor] = []
        self._replacements = 0
        self._actor_cls: Any = None

    # ------------------------------------------------------------------ cluster
    def _connect(self) -> bool:
        """Initialise Ray unless this process already did; True if we did."""
        if ray.is_initialized():
            return False
        try:
            ray.init(address=self.address, ignore_reinit_error=True, logging_level=logging.WARNING)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            where = f"--ray-address {self.address}" if self.address else "ray.init()"
            raise UadbenchError(
                f"{where}: cannot start or join a Ray cluster ({exc}); check the address "
                "printed by `ray start --head`, or leave --ray-address out for a local instance"
            ) from None
        return True

    def _slots(self) -> int:
        """How many actors the cluster can hold now (at least one)."""
        avail, total = ray.available_resources(), ray.cluster_resources()
        if self.gpus > 0:
            if total.get("GPU", 0.0) <= 0:
                raise ConfigError(
                    f"--device {self.device} asks {self.gpus:g} GPU per model but the Ray "
                    "cluster has no GPU; start its workers with GPUs or pass --gpus-per-model 0"
                )
            slots = int(avail.get("GPU", 0.0) / self.gpus + 1e-9)
        else:
            slots = int(avail.get("CPU", 0.0))
        slots = max(1, slots)
        return min(slots, self.max_actors) if self.max_actors else slots

    def _spawn(self) -> _Actor:
        if self._actor_cls is None:
            opts: dict[str, Any] = {
                "num_cpus": 1,
                "num_gpus": self.gpus,
                "max_restarts": self.max_restarts,
                "max_task_retries": self.max_restarts,
            }
            cls = ray.remote(concurrency_groups={"control": 1})(_ModelActor)
            self._actor_cls = cls.options(**opts)
        handle = self._actor_cls.remote(
            self.spec,
            str(self.run_dir),
            _actor_device(self.device, self.gpus),
            self.dtype,
            self.batch_size,
            os.getcwd(),
            _forwarded_env(),
        )
        actor = _Actor(handle)
        self.actors.append(actor)
        return actor

    def _start(self, n: int) -> None:
        """Start ``n`` actors unless some run already (the same actors serve both phases)."""
        if not self.actors and n > 0:
            self._replacements = n
            for _ in range(n):
                self._spawn()

    def _retire(self, actor: _Actor) -> None:
        """Drop an actor that died for good; start a replacement while the budget lasts."""
        if actor in self.actors:
            self.actors.remove(actor)
            _kill(actor.handle)
            if self._replacements > 0:
                self._replacements -= 1
                self._spawn()

    # ------------------------------------------------------------------ run
    def run(self) -> Summary:
        t0 = time.time()
        s = self.summary
        data = RunData(self.spec, self.run_dir)
        plan = plan_jobs(data, only_failed=self.only_failed)
        s.sample_ids, s.images = plan.ids, len(plan.ids)
        s.transforms = len(self.spec.transforms)
        s.attack_jobs, s.eval_jobs = plan.attack_total, plan.eval_total
        s.attack_skipped = plan.attack_total - plan.attack_pending
        s.eval_skipped = plan.eval_total - plan.eval_pending
        started = False
        try:
            if plan.attacks or plan.evals:
                started = self._connect()
                slots = self._slots()
                eval_tasks = self._eval_tasks(data, plan)
                n_evals = sum(map(len, eval_tasks.values()))
                if plan.attacks:
                    sur = self.spec.surrogate.label
                    with progress_bar(plan.attack_pending, f"attack ({sur})", self.progress) as bar:
                        attack_tasks = self._attack_tasks(data, plan, bar)
                        self._start(min(slots, max(len(attack_tasks), n_evals)))
                        if attack_tasks:
                            bar.set_description(f"attack ({sur}, {_n(len(self.actors), 'actor')})")
                            self._drive(data, {SURROGATE: attack_tasks}, bar)
                if eval_tasks:
                    self._start(min(slots, n_evals))
                    victims = _n(len(eval_tasks), "victim")
                    if len(self.spec.transforms) > 1:
                        victims += f" × {_n(len(self.spec.transforms), 'transform')}"
                    desc = f"eval ({victims}, {_n(len(self.actors), 'actor')})"
                    with progress_bar(plan.eval_pending, desc, self.progress) as bar:
                        self._drive(data, eval_tasks, bar, join_at=MIN_TASKS_TO_JOIN)
        finally:
            for a in self.actors:
                _kill(a.handle)
            self.actors = []
            if started:
                ray.shutdown()
            s.seconds = time.time() - t0
        log.info("%s", s.line())
        return s

    def _attack_tasks(self, data: RunData, plan: Plan, bar) -> list[_Task]:
        tasks = []
        for attack, sids in plan.attacks:
            for batch in self._batches(data, attack, sids, bar):
                jobs = [
                    ({"attack": attack.label, "sample": sid}, data.adv_file(attack, sid))
                    for sid in batch
                ]
                tasks.append(_Task(SURROGATE, "attack", (attack, batch), "attack", jobs))
        return tasks

    def _batches(self, data: RunData, attack: Plugin, sids: list[str], bar) -> list[list[str]]:
        """The local executor's batches: by image size, in size order, then ``batch_size``
        at a time (so that both executors make identical images)."""
        if self.batch_size == 1:
            return [[sid] for sid in sids]  # no image is read here: the workers load them
        groups: dict[tuple, list[str]] = collections.defaultdict(list)
        for sid in sids:
            try:
                groups[data.sample(sid).image.shape].append(sid)
            except (UadbenchError, OSError) as exc:
                key = {"attack": attack.label, "sample": sid}
                self.summary.failures.append(data.fail("attack", key, exc))
                bar.update(1)
        b = self.batch_size
        return [
            group[i : i + b]
            for shape in sorted(groups)
            for group in [groups[shape]]
            for i in range(0, len(group), b)
        ]

    def _eval_tasks(self, data: RunData, plan: Plan) -> dict[str, list[_Task]]:
        """Per victim (model key), one task per sample: all its pending evaluations."""
        out: dict[str, list[_Task]] = {}
        for victim, by_sample in plan.evals:
            model = _victim_key(victim)
            tasks = []
            for sid in plan.ids:
                if sid not in by_sample:
                    continue
                pending = by_sample[sid]
                jobs = [
                    (
                        {
                            "victim": victim.label,
                            "attack": a.label if a else CLEAN,
                            "sample": sid,
                            **({} if is_identity(t) else {"transform": t.label}),
                        },
                        data.shard_file(victim, a, sid, t),
                    )
                    for t, a in pending
                ]
                tasks.append(_Task(model, "evaluate", (victim, sid, pending), "eval", jobs))
            out[model] = tasks
        return out

    # ------------------------------------------------------------------ scheduling
    def _pick(
        self, actor: _Actor, queues: dict[str, collections.deque], join_at: int
    ) -> str | None:
        """The model whose next task ``actor`` takes: its own while it has work, else a
        model nobody holds, else the one with the most tasks left per actor holding it
        (if it has at least ``join_at`` left: loading a model costs time too)."""
        if actor.model in queues and queues[actor.model]:
            return actor.model
        holders = collections.Counter(a.model for a in self.actors if a is not actor)
        best, best_score = None, -1.0
        for model, q in queues.items():
            if not q:
                continue
            if holders[model] and len(q) < join_at:
                continue
            score = float("inf") if not holders[model] else len(q) / holders[model]
            if score > best_score:
                best, best_score = model, score
        return best

    def _drive(self, data: RunData, tasks: dict[str, list[_Task]], bar, join_at: int = 1) -> None:
        """Keep every actor fed with up to :data:`INFLIGHT_PER_ACTOR` calls (one round at
        a time, so that work spreads over the actors) and collect their results as they
        complete (``ray.wait``). ``join_at``: see :meth:`_pick`."""
        queues = {m: collections.deque(t) for m, t in tasks.items()}
        inflight: dict[Any, tuple[_Actor, _Task]] = {}

        def feed() -> None:
            for level in range(INFLIGHT_PER_ACTOR):
                for actor in list(self.actors):
                    if actor.load > level:
                        continue
                    model = self._pick(actor, queues, join_at)
                    if model is None:
                        continue
                    task = queues[model].popleft()
                    actor.model = model
                    ref = getattr(actor.handle, task.method).remote(*task.args)
                    inflight[ref] = (actor, task)
                    actor.load += 1
            if not self.actors:
                # every actor died for good and no replacement is left
                exc = UadbenchError("every Ray actor of the run died; rerun to retry")
                for q in queues.values():
                    while q:
                        self._finish(data, q.popleft(), None, exc, bar)

        feed()
        while inflight:
            ready, _ = ray.wait(list(inflight), num_returns=1)
            for ref in ready:
                actor, task = inflight.pop(ref)
                actor.load -= 1
                try:
                    res = ray.get(ref)
                except ray.exceptions.RayError as exc:
                    if isinstance(exc, ray.exceptions.RayActorError):
                        log.warning("a Ray actor died for good: %s", exc)
                        self._retire(actor)
                    task.attempts += 1
                    if task.attempts <= 1:
                        # perhaps it was only queued behind the job that killed the actor
                        queues[task.model].appendleft(task)
                    else:
                        self._finish(data, task, None, exc, bar)
                else:
                    self._finish(data, task, res, None, bar)
            feed()

    def _finish(
        self, data: RunData, task: _Task, res: JobResult | None, exc: BaseException | None, bar
    ) -> None:
        s = self.summary
        if res is None:
            # the call was lost with its actor: outputs that exist were finished anyway
            res = JobResult()
            for key, path in task.jobs:
                if path.exists():
                    res.done += 1
                else:
                    res.failures.append(data.fail(task.phase, key, exc))
        if task.phase == "attack":
            s.attack_done += res.done
        else:
            s.eval_done += res.done
        s.failures += res.failures
        bar.update(len(task.jobs))


def _n(k: int, word: str) -> str:
    return f"{k} {word}{'s' * (k != 1)}"
