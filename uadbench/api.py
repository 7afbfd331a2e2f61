"""The Python API: the same verbs as the ``uadbench`` command.

>>> from uadbench import api
>>> result = api.run(attacks="feature-pgd", victims="all", limit=2)
>>> print(api.leaderboard(result.run_dir))
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import torch

from .config import check_device
from .engine.local import Summary
from .engine.plan import (
    RunSpec,
    check_protocol,
    check_weights,
    default_surrogate,
    expand_attacks,
    expand_victims,
    is_all,
    parse_eps_list,
    resolve,
    surrogate_first,
)
from .errors import ConfigError, UadbenchError
from .store.lock import RunLock
from .store.manifest import close_manifest, open_manifest
from .store.rundir import load_manifest, load_rows, remove_orphan_temp_files

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
) -> RunSpec:
    """Resolve names and options into a :class:`RunSpec`; loads no weight and no image.
    ``protocol``: "uadbench" or "reference" (docs/reference-differences.md)."""
    eps_list = parse_eps_list(eps) if isinstance(eps, str) else eps
    check_protocol(protocol)
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
        ds, atk, vic, sur, seed=seed, limit=limit, skipped_victims=skipped, protocol=protocol
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
) -> RunResult:
    """Attack, evaluate and store; rerunning into the same ``out`` resumes.

    Returns the run directory and a summary; ``result.ok`` is False when any job failed
    (failures are in ``failures.jsonl``).
    """
    spec = plan(attacks, victims, dataset, surrogate, seed, limit, eps, strict, protocol)
    spec.sample_ids = sample_ids
    check_device(device)
    if dtype not in DTYPES:
        raise ConfigError(f"--dtype {dtype!r}: choose one of {', '.join(DTYPES)}")
    run_dir = Path(out) if out else spec.default_out(results_root)
    with RunLock(run_dir):
        man = open_manifest(
            run_dir,
            spec.identity(),
            spec.dataset.record(),
            spec.surrogate.record(),
            [a.record() for a in spec.attacks],
            [v.record() for v in spec.victims],
            seed,
            device,
        )
        ex = make_executor(executor)(
            spec,
            run_dir,
            device=device,
            batch_size=batch_size,
            progress=progress,
            dtype=DTYPES[dtype],
            only_failed=retry_failed,
            **(executor_options or {}),
        )
        try:
            summary = ex.run()
        finally:
            # a worker killed mid-write (SIGKILL, OOM) leaves its temp file; no job runs now
            remove_orphan_temp_files(run_dir)
            close_manifest(run_dir, man, ex.summary.record(), ex.summary.sample_ids)
    return RunResult(run_dir, spec, summary)


EXECUTORS = {
    "local": "uadbench.engine.local:LocalExecutor",
    "ray": "uadbench.engine.ray_executor:RayExecutor",
}


def make_executor(name: str):
    """The executor class for ``--executor NAME``."""
    import importlib

    if name not in EXECUTORS:
        from .errors import UnknownNameError

        raise UnknownNameError("executor", name, sorted(EXECUTORS))
    module, _, attr = EXECUTORS[name].partition(":")
    try:
        return getattr(importlib.import_module(module), attr)
    except ImportError as exc:
        raise UadbenchError(
            f"--executor {name} needs an optional package ({exc}); pip install 'uadbench[{name}]'"
        ) from None


def evaluate(
    run_dir: str | Path,
    victims: str,
    device: str = "cpu",
    progress: bool = True,
    strict: bool = False,
) -> RunResult:
    """Add victims to an existing run without re-attacking (cached adversarial images)."""
    man = load_manifest(run_dir)
    if man.get("kind") != "run":
        raise UadbenchError(
            f"{run_dir} is an imported run; victims can only be added to runs made here"
        )
    ds = man["dataset"]
    ds_spec = ds["name"] + (
        ":" + ",".join(f"{k}={_fmt(v)}" for k, v in ds["config"].items()) if ds["config"] else ""
    )
    attacks = ",".join(_spec_of(a) for a in man["attacks"])
    return run(
        attacks=attacks,
        victims=victims,
        dataset=ds_spec,
        surrogate=_spec_of(man["surrogate"]),
        seed=man["seed"],
        out=run_dir,
        device=device,
        progress=progress,
        strict=strict,
        sample_ids=man.get("samples") or None,
    )


def _fmt(v: Any) -> str:
    if isinstance(v, list):
        return "[" + ",".join(_fmt(x) for x in v) + "]"
    return "none" if v is None else str(v)


def _spec_of(rec: dict[str, Any]) -> str:
    cfg = {k: v for k, v in rec["config"].items() if k != "checkpoint" or v}
    return rec["name"] + (":" + ",".join(f"{k}={_fmt(v)}" for k, v in cfg.items()) if cfg else "")


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
    return _compare(load_rows(run_dir), a, b, pairing=man.get("pairing", "prompt"), **kw)


def check(run_dir: str | Path, baseline: str | Path, **kw: Any):
    """Regression check of a run against a baseline run: ``(ok, table)``."""
    from .report.check import check as _check

    return _check(run_dir, baseline, **kw)
