"""The Python API: the same verbs as the ``uadbench`` command.

>>> from uadbench import api
>>> result = api.run(attacks="feature-pgd", victims="all", limit=2)
>>> print(api.leaderboard(result.run_dir))
"""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path
from typing import Any

import torch

from .config import check_device
from .engine.local import Summary
from .engine.plan import (
    Plugin,
    RunSpec,
    check_dataset,
    check_loads,
    check_protocol,
    check_weights,
    default_surrogate,
    expand_attacks,
    expand_transforms,
    expand_victims,
    is_all,
    parse_eps_list,
    resolve,
    surrogate_first,
)
from .errors import ConfigError, RunDirError, UadbenchError
from .store.lock import RunLock
from .store.manifest import close_manifest, open_manifest
from .store.rundir import (
    compact_rows,
    load_manifest,
    load_rows,
    load_unit_rows,
    remove_orphan_temp_files,
)

log = logging.getLogger(__name__)

DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float16": torch.float16,
    "fp16": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
}


@dataclasses.dataclass
class RunResult:
    run_dir: Path
    spec: RunSpec
    summary: Summary

    @property
    def ok(self) -> bool:
        return not self.summary.failures


def plan(
    attacks: str = "feature-pgd",
    victims: str = "all",
    dataset: str = "samples",
    surrogate: str | None = None,
    seed: int = 0,
    limit: int | None = None,
    eps: str | list[float] | None = None,
    strict: bool = False,
    protocol: str = "uadbench",
    transforms: str | None = None,
) -> RunSpec:
    """Resolve names and options into a :class:`RunSpec`; loads no weight and no image.
    ``protocol``: "uadbench" or "reference" (docs/reference-differences.md).
    ``transforms``: ``identity,jpeg:q=75,…`` — what each victim sees the clean and
    adversarial images through (default: the identity alone; docs/transforms.md)."""
    eps_list = parse_eps_list(eps) if isinstance(eps, str) else eps
    check_protocol(protocol)
    tfs = expand_transforms(transforms)
    ds = resolve("dataset", dataset)
    atk = expand_attacks(attacks, eps_list, protocol)
    vic, skipped = expand_victims(victims, strict=strict, protocol=protocol)
    sur = resolve("victim", surrogate or default_surrogate(), protocol=protocol)
    if not getattr(sur.cls, "is_surrogate", False):
        raise ConfigError(
            f"victim {sur.name!r} cannot serve as a surrogate (no differentiable encoder path)"
        )
    if is_all(victims):
        vic = surrogate_first(vic, sur)
    check_weights([*vic, sur])
    if limit is not None and limit < 1:
        raise ConfigError("--limit must be at least 1")
    return RunSpec(
        ds,
        atk,
        vic,
        sur,
        seed=seed,
        limit=limit,
        skipped_victims=skipped,
        protocol=protocol,
        transforms=tfs,
    )


def run(
    attacks: str = "feature-pgd",
    victims: str = "all",
    dataset: str = "samples",
    surrogate: str | None = None,
    seed: int = 0,
    limit: int | None = None,
    out: str | Path | None = None,
    device: str = "cpu",
    dtype: str = "float32",
    eps: str | list[float] | None = None,
    batch_size: int = 1,
    strict: bool = False,
    progress: bool = True,
    results_root: str | Path = "results",
    sample_ids: list[str] | None = None,
    executor: str = "local",
    retry_failed: bool = False,
    executor_options: dict[str, Any] | None = None,
    protocol: str = "uadbench",
    transforms: str | None = None,
) -> RunResult:
    """Attack, evaluate and store; rerunning into the same ``out`` resumes. ``transforms``
    (``identity,jpeg:q=75``; default the identity alone) adds the evaluation axis:
    adversarial images are made once and each victim sees them through each transform.

    Everything checkable — names, options, device, dtype, executor, the dataset (opens,
    has the samples), every victim's weights (found, load into the architecture) and
    that ``out`` is writable — is checked before the manifest is written or any job
    runs: a command that fails there leaves nothing behind.

    Returns the run directory and a summary; ``result.ok`` is False when any job failed
    (failures are in ``failures.jsonl``).
    """
    spec = plan(
        attacks, victims, dataset, surrogate, seed, limit, eps, strict, protocol, transforms
    )
    spec.sample_ids = sample_ids
    return execute(
        spec,
        out,
        device=device,
        dtype=dtype,
        batch_size=batch_size,
        progress=progress,
        results_root=results_root,
        executor=executor,
        retry_failed=retry_failed,
        executor_options=executor_options,
    )


def execute(
    spec: RunSpec,
    out: str | Path | None = None,
    *,
    device: str = "cpu",
    dtype: str = "float32",
    batch_size: int = 1,
    progress: bool = True,
    results_root: str | Path = "results",
    executor: str = "local",
    retry_failed: bool = False,
    executor_options: dict[str, Any] | None = None,
) -> RunResult:
    """Run a planned :class:`RunSpec` (see :func:`run`, which plans it from names)."""
    seed = spec.seed
    check_device(device)
    if dtype not in DTYPES:
        raise ConfigError(f"--dtype {dtype!r}: choose one of {', '.join(DTYPES)}")
    if int(batch_size) < 1:
        raise ConfigError("--batch-size must be at least 1")
    ex_cls = make_executor(executor)
    check_loads([spec.surrogate, *spec.victims])
    check_dataset(spec)
    run_dir = Path(out) if out else spec.default_out(results_root)
    created = _make_run_dir(run_dir)
    try:
        lock = RunLock(run_dir)
        lock.acquire()
    except BaseException:
        _remove_if_empty(run_dir, created)
        raise
    try:
        try:
            ex = ex_cls(
                spec,
                run_dir,
                device=device,
                batch_size=batch_size,
                progress=progress,
                dtype=DTYPES[dtype],
                only_failed=retry_failed,
                **(executor_options or {}),
            )
            man = open_manifest(
                run_dir,
                spec.identity(),
                spec.dataset.record(),
                spec.surrogate.record(),
                [a.record() for a in spec.attacks],
                [v.record() for v in spec.victims],
                seed,
                device,
                [t.record() for t in spec.transforms],
            )
        except BaseException as exc:
            lock.release()
            _remove_if_empty(run_dir, created)
            if isinstance(exc, OSError):
                why = exc.strerror or type(exc).__name__
                raise RunDirError(f"cannot write the manifest in {run_dir} ({why})") from None
            raise
        try:
            summary = ex.run()
        finally:
            # a worker killed mid-write (SIGKILL, OOM) leaves its temp file; no job runs now
            remove_orphan_temp_files(run_dir)
            close_manifest(run_dir, man, ex.summary.record(), ex.summary.sample_ids)
        compact_rows(run_dir)  # one file per victim x attack; resumes read it
    finally:
        lock.release()
    return RunResult(run_dir, spec, summary)


def _make_run_dir(run_dir: Path) -> list[Path]:
    """Create ``run_dir`` (and missing parents); the directories created, deepest last.
    A directory that cannot be written is a one-line error, not a traceback."""
    created = []
    p = run_dir.absolute()
    while not p.exists() and p != p.parent:
        created.append(p)
        p = p.parent
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        _remove_if_empty(run_dir, created[::-1])
        why = exc.strerror or type(exc).__name__
        raise RunDirError(
            f"--out {run_dir}: cannot write there ({why}); pick a writable --out"
        ) from None
    return created[::-1]


def _remove_if_empty(run_dir: Path, created: list[Path]) -> None:
    """Remove the directories this command created (deepest first) if still empty."""
    for p in reversed(created):
        try:
            p.rmdir()
        except OSError:
            break


def make_executor(name: str):
    """The executor class for ``--executor NAME`` (from :data:`uadbench.engine.EXECUTORS`)."""
    from .engine import EXECUTORS

    return EXECUTORS.get(name)


def evaluate(
    run_dir: str | Path,
    victims: str | None = None,
    device: str = "cpu",
    progress: bool = True,
    strict: bool = False,
    transforms: str | None = None,
) -> RunResult:
    """Add victims and/or transforms to an existing run without re-attacking (cached
    adversarial images). The run's dataset, attacks and surrogate come from its manifest
    records (:meth:`Plugin.from_record`), configured as the run ran them.

    ``victims`` (default: the run's victims) are evaluated under ``transforms`` (default:
    the run's transforms, the identity alone for a run that has none recorded)."""
    if not victims and not transforms:
        raise ConfigError("eval: name --victims to add, --transforms to add, or both")
    tfs = expand_transforms(transforms) if transforms else None
    man = load_manifest(run_dir)
    if man.get("kind") != "run":
        raise UadbenchError(
            f"{run_dir} is an imported run; victims can only be added to runs made here"
        )
    # victims added later run under the run's protocol (e.g. FastSAM's channel order)
    protocol = (man.get("identity") or {}).get("protocol", "uadbench")
    sur = Plugin.from_record("victim", man["surrogate"])
    if victims:
        vic, skipped = expand_victims(victims, strict=strict, protocol=protocol)
        if is_all(victims):
            vic = surrogate_first(vic, sur)
    else:
        vic, skipped = [Plugin.from_record("victim", v) for v in man.get("victims", [])], []
        if not vic:
            raise ConfigError(f"{run_dir} has no victims yet: name them with --victims")
    check_weights(vic)
    if tfs is None:
        tfs = [Plugin.from_record("transform", t) for t in man.get("transforms", [])]
        tfs = tfs or expand_transforms(None)
    spec = RunSpec(
        Plugin.from_record("dataset", man["dataset"]),
        [Plugin.from_record("attack", a) for a in man["attacks"]],
        vic,
        sur,
        seed=man["seed"],
        sample_ids=man.get("samples") or None,
        skipped_victims=skipped,
        protocol=protocol,
        transforms=tfs,
    )
    return execute(spec, run_dir, device=device, progress=progress)


def rows(run_dir: str | Path):
    """All result rows of a run as a pandas DataFrame (see ``uadbench.store.schema``)."""
    return load_rows(run_dir)


def leaderboard(
    run_dirs: str | Path | list,
    fmt: str = "terminal",
    metrics=("miou", "asr50"),
    by_kind: bool = False,
    valid_only: bool = False,
) -> str:
    """The leaderboard of one or more runs, rendered as text (terminal, markdown, latex, csv, html)."""
    from .report.leaderboard import render, runs_table

    dirs = run_dirs if isinstance(run_dirs, list) else [run_dirs]
    return render(
        runs_table(dirs, by_kind=by_kind, valid_only=valid_only), fmt=fmt, metrics=metrics
    )


def compare(run_dir: str | Path, a: str, b: str, **kw: Any):
    """Paired image-level comparison of attacks ``a`` and ``b`` on every victim (sign-flip
    permutation test of the mean per-image difference, its inverted CI, Bonferroni over
    the lines); see :func:`uadbench.report.stats.compare`."""
    from .report.stats import compare as _compare

    man = load_manifest(run_dir)
    return _compare(load_unit_rows(run_dir), a, b, pairing=man.get("pairing", "prompt"), **kw)


def check(run_dir: str | Path, baseline: str | Path, **kw: Any):
    """Regression check of a run against a baseline run: ``(ok, table)``."""
    from .report.check import check as _check

    return _check(run_dir, baseline, **kw)
