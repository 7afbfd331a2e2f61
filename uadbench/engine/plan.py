"""Resolving a run's names into configured plugins, and planning its jobs.

Everything here happens before any weight or image is loaded, so an unknown name, a bad
option or a missing checkpoint fails the run at once with a one-line message.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

from ..attacks import ATTACKS
from ..config import build_config, config_dict, config_hash, label, parse_spec, split_specs
from ..datasets import DATASETS
from ..errors import ConfigError, UadbenchError
from ..eval.prompts import PromptConfig
from ..victims import VICTIMS

log = logging.getLogger(__name__)

CLEAN = "clean"

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
    """A resolved, configured plugin: registry id, settings, display label and hash."""

    kind: str
    name: str
    cls: Any
    config: Any
    label: str
    hash: str

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
        }
        if self.kind == "attack":
            rec["eps"] = float(self.config.eps)
        if self.kind == "victim" and getattr(self.cls, "note", ""):
            rec["note"] = self.cls.note
        if self.kind == "victim" and (digest := self.cls.weights_digest(self.config)):
            rec["weights_sha256"] = digest
        return rec


def resolve(
    kind: str, spec_text: str, extra: dict[str, Any] | None = None, protocol: str = "uadbench"
) -> Plugin:
    """Resolve one ``name[:k=v,…]`` spec of ``kind`` (attack, victim, dataset) under
    ``protocol`` (see ``PROTOCOLS``)."""
    registry = {"attack": ATTACKS, "victim": VICTIMS, "dataset": DATASETS}[kind]
    spec = parse_spec(spec_text)
    name = registry.canonical(spec.name)
    cls = registry.get(name)
    overrides = dict(spec.overrides)
    overrides.update(extra or {})
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
    hashed_cfg = cfg
    if kind == "victim" and hasattr(cfg, "checkpoint"):
        # where the weights live is not part of a victim's identity
        hashed_cfg = dataclasses.replace(cfg, checkpoint=None)
    return Plugin(kind, name, cls, cfg, label(name, cfg), config_hash(kind, name, hashed_cfg))


def is_all(text: str) -> bool:
    """``--attack all`` / ``--victims all``."""
    return text.strip().lower() == "all"


def expand_attacks(
    text: str, eps_sweep: list[float] | None = None, protocol: str = "uadbench"
) -> list[Plugin]:
    """``uad,aa:eps=4/255`` or ``all`` → configured attacks; ``eps_sweep`` (in [0, 1])
    makes one variant per budget of every attack."""
    specs = ATTACKS.names() if is_all(text) else split_specs(text)
    out: list[Plugin] = []
    for s in specs:
        if eps_sweep:
            for e in eps_sweep:
                out.append(resolve("attack", s, {"eps": e}, protocol))
        else:
            out.append(resolve("attack", s, protocol=protocol))
    return _dedupe(out)


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
    """(names usable, [(name, reason)] skipped) over the whole victim registry."""
    try:
        from ..victims.status import available_victims as _avail
    except ImportError:
        _avail = None
    if _avail is not None:
        return _avail(strict)
    usable, skipped = [], []
    for name in VICTIMS.names():
        try:
            cls = VICTIMS.get(name)
            st = cls.weights_status(cls.Config())
        except UadbenchError as exc:
            skipped.append((name, str(exc)))
            continue
        if st.found:
            usable.append(name)
        else:
            skipped.append((name, f"no weights (looked in {st.detail})"))
    if strict and skipped:
        raise UadbenchError(
            "--strict: victims without weights: " + "; ".join(n for n, _ in skipped)
        )
    return usable, skipped


def check_weights(plugins: list[Plugin]) -> None:
    """Fail before loading anything if a named victim's weights are missing."""
    for p in plugins:
        p.cls.weights_status(p.config).require(p.name)


def default_surrogate() -> str:
    """The paper's surrogate (SAM ViT-B) when its weights are here, else the best
    embedded model available."""
    for name in ("sam-vit-b", "zoo-vit-sam", "seeded-sam-tiny"):
        if name in VICTIMS:
            cls = VICTIMS.get(name)
            if cls.weights_status(cls.Config()).found:
                return name
    raise UadbenchError("no surrogate available: pass --surrogate NAME")  # pragma: no cover


def parse_eps_list(text: str | None) -> list[float] | None:
    """``4,8,12,16`` (in 1/255 units) or ``4/255,0.03`` → budgets in [0, 1]."""
    if not text:
        return None
    from ..config import parse_value

    out = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        v = parse_value(part, float, "eps")
        out.append(v if ("/" in part or v < 1) else v / 255.0)
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

    def identity(self) -> dict[str, Any]:
        """What must match for two invocations to share a run directory (the manifest
        records it; ``protocol`` appears only when it is not the default)."""
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

        h = hashlib.sha256(json.dumps(self.identity(), sort_keys=True).encode()).hexdigest()[:8]
        return Path(root) / f"{self.dataset.name}-{self.surrogate.name}-s{self.seed}-{h}"
