"""Resolving a run's names into configured plugins, and planning its jobs.

Everything here happens before any weight or image is loaded, so an unknown name, a bad
option or a missing checkpoint fails the run at once with a one-line message.
"""

from __future__ import annotations

import dataclasses
import logging
import sys
from pathlib import Path
from typing import Any

from ..attacks import ATTACKS
from ..config import (
    build_config,
    config_dict,
    config_hash,
    identity_config,
    label,
    parse_budget,
    parse_spec,
    split_specs,
)
from ..datasets import DATASETS
from ..errors import ConfigError, DataError, UadbenchError
from ..eval.prompts import PromptConfig
from ..registry import code_version
from ..transforms import TRANSFORMS
from ..victims import VICTIMS

log = logging.getLogger(__name__)

CLEAN = "clean"
IDENTITY = "identity"

#: ``--protocol``: "uadbench" (default: every setting at its own default) or "reference"
#: (the reference implementation's behaviours, to reproduce the paper's table; see
#: docs/reference-differences.md). Under "reference", a plugin whose Config has one of
#: these fields gets this value unless its spec sets the field itself.
PROTOCOLS = ("uadbench", "reference")
REFERENCE_SETTINGS: dict[str, dict[str, Any]] = {
    "attack": {"attack_space": "model", "output": "reference", "di_keep": True},
    "victim": {"channels": "bgr"},
}


def check_protocol(protocol: str) -> None:
    if protocol not in PROTOCOLS:
        raise ConfigError(
            f"--protocol {protocol!r}: choose one of {', '.join(PROTOCOLS)} "
            "(reference reproduces the paper's setup; see docs/reference-differences.md)"
        )


@dataclasses.dataclass(frozen=True)
class Plugin:
    """A resolved, configured plugin: registry id, settings, display label and hash.

    ``label`` and ``hash`` derive from the config's identity fields (and, for a victim
    loading a checkpoint other than its default one, the checkpoint's content digest);
    run fields (paths, batch sizes) are in ``config`` but in neither. ``code`` is the
    plugin's code version (:func:`uadbench.registry.code_version`)."""

    kind: str
    name: str
    cls: Any
    config: Any
    label: str
    hash: str
    code: str = ""

    @property
    def key(self) -> str:
        """Directory key of its outputs: ``<name>-<hash>``."""
        return f"{self.name}-{self.hash}"

    def record(self) -> dict[str, Any]:
        rec = {
            "name": self.name,
            "label": self.label,
            "hash": self.hash,
            "config": config_dict(self.config),
            "code": self.code,
        }
        if self.kind == "attack":
            rec["eps"] = float(self.config.eps)
        if self.kind == "victim" and getattr(self.cls, "note", ""):
            rec["note"] = self.cls.note
        if self.kind == "victim" and (digest := self.cls.weights_digest(self.config)):
            rec["weights_sha256"] = digest
        return rec

    @classmethod
    def from_record(cls, kind: str, rec: dict[str, Any] | str) -> Plugin:
        """The plugin a manifest record (``{"name", "config", …}``, or a bare name)
        describes, configured as the run ran it (run fields included): the one way
        ``eval``, ``show`` and the reports turn a manifest back into plugins."""
        if isinstance(rec, str):
            rec = {"name": rec}
        name = rec.get("name")
        if not name:
            raise UadbenchError(f"a manifest {kind} record names no plugin: {rec!r}")
        plugin = _configure(kind, str(name), dict(rec.get("config") or {}))
        if rec.get("hash") and rec["hash"] != plugin.hash:
            log.warning(
                "%s %s: the manifest's hash %s is %s now (its config or the hashing changed)",
                kind,
                rec.get("label", name),
                rec["hash"],
                plugin.hash,
            )
        return plugin


REGISTRIES = {
    "attack": ATTACKS,
    "victim": VICTIMS,
    "dataset": DATASETS,
    "transform": TRANSFORMS,
}


def _configure(
    kind: str, name: str, overrides: dict[str, Any], protocol: str = "uadbench"
) -> Plugin:
    """The plugin ``name`` of ``kind`` with ``overrides``; under ``protocol="reference"``
    the reference implementation's settings fill every field the overrides leave open."""
    registry = REGISTRIES[kind]
    name = registry.canonical(name)
    cls = registry.get(name)
    cfg_cls = getattr(cls, "Config", None)
    if cfg_cls is None or not dataclasses.is_dataclass(cfg_cls):
        raise UadbenchError(f"{kind} {name!r} has no Config dataclass")  # plugin bug
    check_protocol(protocol)
    if protocol == "reference":
        have = {f.name for f in dataclasses.fields(cfg_cls)}
        for k, v in REFERENCE_SETTINGS.get(kind, {}).items():
            if k in have:
                overrides.setdefault(k, v)
    if name.endswith(":") or ":" in name:
        # prefix entries (hf:<id>) get the id as a config field named ``model_id``
        if "model_id" in {f.name for f in dataclasses.fields(cfg_cls)}:
            overrides.setdefault("model_id", name.split(":", 1)[1])
    cfg = build_config(cfg_cls, overrides, owner=f"{kind} {name}")
    extra = _weights_identity(cls, cfg) if kind == "victim" else {}
    ident_name, ident_cfg = name, cfg
    content = getattr(cls, "content_identity", None) if kind == "victim" else None
    if content is not None and (found := content(cfg)) is not None:
        ident_name, ident_cfg, extra = found  # hf:<local dir>: its content, not its path
    return Plugin(
        kind,
        ident_name,
        cls,
        cfg,
        label(ident_name, ident_cfg, {"weights": extra["weights"][:8]} if extra else None),
        config_hash(kind, ident_name, ident_cfg, extra),
        code_version(cls),
    )


def _weights_identity(cls: Any, cfg: Any) -> dict[str, str]:
    """``{"weights": digest}`` when ``cfg`` names a checkpoint whose content differs from
    the victim's default weights (or the default is not here); ``{}`` otherwise — the
    default weights, or the same bytes at another path, keep the plain identity."""
    if not getattr(cfg, "checkpoint", None):
        return {}
    try:
        digest = cls.weights_digest(cfg)
        if digest is None:
            return {}  # missing file: check_weights says so before anything runs
        default = cls.weights_digest(identity_config(cfg))
    except OSError as exc:
        raise ConfigError(f"victim {cls.name or ''}: cannot read its checkpoint ({exc})") from None
    return {} if digest == default else {"weights": digest}


def resolve(
    kind: str, spec_text: str, extra: dict[str, Any] | None = None, protocol: str = "uadbench"
) -> Plugin:
    """Resolve one ``name[:k=v,…]`` spec of ``kind`` (attack, victim, dataset) under
    ``protocol`` (see ``PROTOCOLS``)."""
    spec = parse_spec(spec_text)
    overrides = dict(spec.overrides)
    overrides.update(extra or {})
    return _configure(kind, spec.name, overrides, protocol)


def is_all(text: str) -> bool:
    """``--attack all`` / ``--victims all``."""
    return text.strip().lower() == "all"


def expand_attacks(
    text: str, eps_sweep: list[float] | None = None, protocol: str = "uadbench"
) -> list[Plugin]:
    """``uad,aa:eps=4/255`` or ``all`` → configured attacks; ``eps_sweep`` (in [0, 1])
    makes one variant per budget of every attack."""
    specs = ATTACKS.names() if is_all(text) else split_specs(text)
    if is_all(text):
        specs = [s for s in specs if _loads_or_warn(ATTACKS, s)]
    out: list[Plugin] = []
    for s in specs:
        if eps_sweep:
            for e in eps_sweep:
                out.append(resolve("attack", s, {"eps": e}, protocol))
        else:
            out.append(resolve("attack", s, protocol=protocol))
    return _dedupe(out)


def _loads_or_warn(registry: Any, name: str) -> bool:
    """Whether ``name`` imports; a broken third-party plugin is reported and left out of
    ``all`` (built-in ones are not: their errors say what to install)."""
    if registry.entry(name).source == "builtin":
        return True
    try:
        registry.get(name)
    except UadbenchError as exc:
        log.warning("left out of 'all': %s", exc)
        print(f"uadbench: warning: left out of 'all': {exc}", file=sys.stderr)
        return False
    return True


def _dedupe(plugins: list[Plugin]) -> list[Plugin]:
    seen, out = set(), []
    for p in plugins:
        if p.hash not in seen:
            seen.add(p.hash)
            out.append(p)
    return out


def expand_victims(
    text: str, strict: bool = False, protocol: str = "uadbench"
) -> tuple[list[Plugin], list[tuple[str, str]]]:
    """``sam-vit-b,hf:facebook/sam-vit-base`` or ``all`` → (victims, skipped with reasons).

    ``all`` = every registered victim whose weights are present; the rest are listed as
    skipped, or, with ``strict``, make the run fail.
    """
    if is_all(text):
        usable, skipped = available_victims(strict)
        if not usable:
            raise UadbenchError(
                "no victim has weights on this machine: "
                + "; ".join(f"{n}: {r}" for n, r in skipped)
            )
        return _dedupe([resolve("victim", n, protocol=protocol) for n in usable]), skipped
    victims = _dedupe([resolve("victim", s, protocol=protocol) for s in split_specs(text)])
    return victims, []


def expand_transforms(text: str | None) -> list[Plugin]:
    """``identity,jpeg:q=75,jpeg:q=50`` → configured transforms (duplicates dropped), in
    the order given; empty or ``None`` → the identity transform alone (the default
    evaluation). Unknown names and bad options fail here, before anything runs."""
    specs = split_specs(text) if text and text.strip() else [IDENTITY]
    if not specs:
        raise ConfigError("--transforms needs names such as identity,jpeg:q=75")
    return _dedupe([resolve("transform", s) for s in specs])


def is_identity(transform: Plugin | None) -> bool:
    """Whether ``transform`` leaves the image as it is (its rows keep the paths, labels
    and identity of runs made before the transform axis existed)."""
    return transform is None or transform.name == IDENTITY


def transform_key(transform: Plugin | None) -> str:
    """The directory key of a transform's rows: "" for identity (today's paths)."""
    return "" if is_identity(transform) else transform.key


def surrogate_first(victims: list[Plugin], surrogate: Plugin) -> list[Plugin]:
    """``--victims all`` in reading order: the surrogate first (its column is white-box,
    the others measure transfer), then the trained models, then those labelled as not
    trained (``Victim.note``); registry order within each group."""

    def group(p: Plugin) -> int:
        if p.key == surrogate.key:  # the same model with the same settings
            return 0
        return 2 if getattr(p.cls, "note", "") else 1

    return sorted(victims, key=group)  # stable


def available_victims(strict: bool) -> tuple[list[str], list[tuple[str, str]]]:
    """(names usable, [(name, reason)] skipped) over the whole victim registry
    (:func:`uadbench.victims.status.available_victims`)."""
    from ..victims.status import available_victims as _avail

    return _avail(strict)


def check_weights(plugins: list[Plugin]) -> None:
    """Fail before loading anything if a named victim's weights are missing."""
    for p in plugins:
        p.cls.weights_status(p.config).require(p.name)


def check_loads(plugins: list[Plugin]) -> None:
    """Fail before the run starts if a victim's weights file does not load into its
    architecture (random bytes, a truncated download, another model's checkpoint): each
    model is built once on the CPU and dropped. A pass is remembered per (victim, code
    version, weights digest), so a later command does not build it again."""
    from ..victims.checkpoints import remember_checked, was_checked

    seen = set()
    for p in plugins:
        digest = p.cls.weights_digest(p.config)
        if digest is None or (p.name, digest) in seen:
            continue  # built in code (or not one file): nothing to read
        seen.add((p.name, digest))
        key = f"loads|{p.name}|{p.code}|{digest}"
        if was_checked(key):
            continue
        try:
            p.cls(p.config, device="cpu").build()
        except UadbenchError as exc:
            raise ConfigError(f"victim {p.label}: {exc}") from None
        except Exception as exc:  # a backend's own error for a file it cannot use
            first = (str(exc).strip().splitlines() or [""])[0][:200]
            raise ConfigError(
                f"victim {p.label}: its weights do not load ({type(exc).__name__}: {first}); "
                "check the file (re-download it) or the victim's options"
            ) from None
        remember_checked(key)


def check_dataset(spec: RunSpec) -> None:
    """Fail before the run starts if its dataset cannot be opened (a missing or unreadable
    root, annotations that do not parse) or has none of the asked samples. One bad image
    among many is a failed job, recorded, not a refused run."""
    from .jobs import RunData

    try:
        RunData(spec, Path(".")).ids()
    except UadbenchError:
        raise
    except OSError as exc:
        raise DataError(
            f"dataset {spec.dataset.label}: cannot read it ({exc}); check its files"
        ) from None


def default_surrogate() -> str:
    """The surrogate when none is named: among the victims registered with a
    ``default_surrogate`` rank (a registry property: 1 = most preferred), the best-ranked
    whose weights are here."""
    ranked = sorted(
        (e.info["default_surrogate"], e.name)
        for e in VICTIMS.entries()
        if isinstance(e.info.get("default_surrogate"), int)
    )
    for _, name in ranked:
        try:
            cls = VICTIMS.get(name)
            if cls.weights_status(cls.Config()).found:
                return name
        except UadbenchError:
            continue
    tried = ", ".join(n for _, n in ranked) or "none registered"
    raise UadbenchError(f"no default surrogate has its weights here ({tried}): pass --surrogate")


def parse_eps_list(text: str | None) -> list[float] | None:
    """``4,8,12,16`` (in 1/255 units) or ``4/255,0.03`` → budgets in [0, 1], read as
    ``eps=`` options are (:func:`uadbench.config.parse_budget`)."""
    if not text:
        return None
    out = [parse_budget(part.strip(), "--eps") for part in text.split(",") if part.strip()]
    if not out:
        raise ConfigError("--eps needs budgets such as 4,8,12,16 (in 1/255 units)")
    return out


@dataclasses.dataclass
class RunSpec:
    """Everything that defines a run, resolved."""

    dataset: Plugin
    attacks: list[Plugin]
    victims: list[Plugin]
    surrogate: Plugin
    seed: int = 0
    limit: int | None = None
    #: explicit sample ids (e.g. those of an existing run); overrides ``limit``
    sample_ids: list[str] | None = None
    prompt_config: PromptConfig = dataclasses.field(default_factory=PromptConfig)
    skipped_victims: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    protocol: str = "uadbench"
    #: the evaluation axis: each victim sees the clean and adversarial images through
    #: each of these (the identity transform alone by default)
    transforms: list[Plugin] = dataclasses.field(
        default_factory=lambda: [resolve("transform", IDENTITY)]
    )

    def identity(self) -> dict[str, Any]:
        """What must match for two invocations to share a run directory (the manifest
        records it; ``protocol`` appears only when it is not the default). Transforms are
        not part of it: like victims, they are an evaluation axis merged into the
        manifest, so ``eval RUN --transforms`` extends a run and a run made before
        transforms existed keeps its identity and directory."""
        ident = {
            "dataset": {"name": self.dataset.name, "hash": self.dataset.hash},
            "seed": self.seed,
            "surrogate": {"name": self.surrogate.name, "hash": self.surrogate.hash},
            "prompts": dataclasses.asdict(self.prompt_config),
        }
        if self.protocol != "uadbench":
            ident["protocol"] = self.protocol
        return ident

    def default_out(self, root: str | Path = "results") -> Path:
        import hashlib
        import json

        from ..store.rundir import _safe

        h = hashlib.sha256(json.dumps(self.identity(), sort_keys=True).encode()).hexdigest()[:8]
        # one directory even for a surrogate named hf:org/model (no '/' or ':' in it)
        name = f"{self.dataset.name}-{_safe(self.surrogate.name)}-s{self.seed}-{h}"
        return Path(root) / name
