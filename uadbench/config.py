"""Plugin settings: frozen dataclasses, ``key=value`` overrides and content hashes.

Every attack, victim and dataset declares its settings as a frozen dataclass whose
defaults are the paper's. A user writes a *spec* on the command line::

    uad                                  # defaults
    uad:deform_epochs=10,warp_size=2     # overrides
    tap:eps=4/255,taps=[2,3]             # fractions and lists are understood

and :func:`build_config` turns the overrides into a validated config instance, with a
did-you-mean error for an unknown key. :func:`config_hash` names cached outputs.

A config separates **identity** fields (what a result *is*: an attack's budget, a
dataset's split) from **run** fields (how it is run: a checkpoint's path, a dataset's
root directory, a prompt batch size). A run field is declared with :func:`run_field`;
hashes, labels, file paths and prompt seeds derive from identity fields only, so the
same weights or images at another path give the same result identity.

A budget field (:func:`budget_field`) reads ``8`` as 8/255, like ``--eps 8``; ``8/255``
and fractions below 1 (``0.03``) are read as they are.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import types
import typing
from fractions import Fraction
from typing import Any, TypeVar, Union, get_args, get_origin

from .errors import ConfigError, UnknownNameError

C = TypeVar("C")


@dataclasses.dataclass(frozen=True)
class Spec:
    """A parsed ``name:key=value,…`` string."""

    name: str
    overrides: tuple[tuple[str, str], ...] = ()

    def __str__(self) -> str:
        if not self.overrides:
            return self.name
        return self.name + ":" + ",".join(f"{k}={v}" for k, v in self.overrides)


def _split_top_level(text: str, sep: str = ",") -> list[str]:
    """Split on ``sep`` outside brackets, so ``taps=[3,4],eps=8/255`` has two parts."""
    parts, depth, cur = [], 0, []
    for ch in text:
        if ch in "[(":
            depth += 1
        elif ch in "])":
            depth -= 1
        if ch == sep and depth == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    parts.append("".join(cur))
    return [p.strip() for p in parts if p.strip()]


_FIRST_OPTION = re.compile(r":(?=\s*[A-Za-z_][A-Za-z0-9_]*\s*=)")


def parse_spec(text: str) -> Spec:
    """Parse ``name[:k=v,k=v]``. A name may itself contain ``:`` (``hf:facebook/sam``) and
    so may a value (``eot_transforms=jpeg:q=50``): the options start after the first ``:``
    followed by ``key=`` (a key is a Python-style name)."""
    text = text.strip()
    if not text:
        raise ConfigError("empty plugin name")
    name, opts = text, ""
    idx = text.rfind(":")
    while idx > 0:
        tail = text[idx + 1 :]
        if "=" in tail.split(",")[0]:
            name, opts = text[:idx], tail
            # an option's value may itself be a spec (eot_transforms=jpeg:q=50): the options
            # start at the first ``:`` followed by ``key=`` of a key-shaped name
            first = _FIRST_OPTION.search(text)
            if first is not None and first.start() < idx:
                name, opts = text[: first.start()], text[first.start() + 1 :]
            break
        idx = text.rfind(":", 0, idx)
    overrides = []
    for part in _split_top_level(opts):
        if "=" not in part:
            raise ConfigError(f"bad option {part!r} in {text!r}: write key=value")
        k, v = part.split("=", 1)
        overrides.append((k.strip(), v.strip()))
    return Spec(name=name.strip(), overrides=tuple(overrides))


def split_specs(text: str) -> list[str]:
    """Split ``uad,aa:eps=4/255,tap`` into specs: a comma starts a new spec only when
    what follows is not a ``key=value`` option of the previous one."""
    out: list[str] = []
    for part in _split_top_level(text):
        if out and "=" in part.split(":")[0] and ":" in out[-1]:
            out[-1] += "," + part
        else:
            out.append(part)
    return out


# ----------------------------------------------------------------------------- fields
RUN = "uadbench_run"
BUDGET = "uadbench_budget"
LATE = "uadbench_late"


def run_field(default: Any = None, **kw: Any) -> Any:
    """A config field that says how to run, not what the result is (a path, a batch size):
    left out of hashes, labels, file paths and prompt seeds."""
    meta = {**kw.pop("metadata", {}), RUN: True}
    return dataclasses.field(default=default, metadata=meta, **kw)


def budget_field(default: float, **kw: Any) -> Any:
    """An L-infinity budget in [0, 1]; written ``8`` (1/255 units), ``8/255`` or ``0.03``."""
    meta = {**kw.pop("metadata", {}), BUDGET: True}
    return dataclasses.field(default=default, metadata=meta, **kw)


def late_field(default: Any = None, **kw: Any) -> Any:
    """An identity field added after results were published: while it is at its default it
    is left out of the config hash, so every existing result keeps its identity (and its
    run directory, cache and baselines); set, it counts like any other field."""
    meta = {**kw.pop("metadata", {}), LATE: True}
    return dataclasses.field(default=default, metadata=meta, **kw)


def run_fields(cfg_or_cls: Any) -> tuple[str, ...]:
    """Names of the run fields of a config (instance or class)."""
    if not dataclasses.is_dataclass(cfg_or_cls):
        return ()
    return tuple(f.name for f in dataclasses.fields(cfg_or_cls) if f.metadata.get(RUN))


def identity_config(cfg: Any) -> Any:
    """``cfg`` with every run field at its default: what hashes and labels are made of
    (defaults rather than absent, so a config whose run fields are at their defaults
    keeps the hash it had before run fields existed)."""
    if not dataclasses.is_dataclass(cfg):
        return cfg
    reset = {}
    for f in dataclasses.fields(cfg):
        if f.metadata.get(RUN):
            if f.default is not dataclasses.MISSING:
                reset[f.name] = f.default
            elif f.default_factory is not dataclasses.MISSING:
                reset[f.name] = f.default_factory()
    return dataclasses.replace(cfg, **reset) if reset else cfg


def _field_default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def parse_budget(raw: Any, key: str = "eps") -> float:
    """A budget in [0, 1] from the text ``8`` (1/255 units: any value >= 1 without ``/``),
    ``8/255`` or ``0.03`` — the one reading ``--eps`` and ``eps=`` options share. A
    number (not text) is taken as the fraction it is."""
    if isinstance(raw, bool):
        raise ConfigError(f"option {key}={raw!r}: expected a budget such as 8 or 8/255")
    if isinstance(raw, (int, float)):  # typed values (Python API, manifests) are fractions
        return float(raw)
    text = str(raw).strip()
    v = _parse_scalar(text, float, key)
    return v if ("/" in text or v < 1) else v / 255.0


# ----------------------------------------------------------------------------- values
def _parse_scalar(raw: str, typ: Any, key: str) -> Any:
    raw = raw.strip()
    if typ is bool:
        low = raw.lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"option {key}={raw!r}: expected true or false")
    if typ is int:
        try:
            return int(raw)
        except ValueError:
            raise ConfigError(f"option {key}={raw!r}: expected an integer") from None
    if typ is float:
        try:
            return float(Fraction(raw)) if "/" in raw else float(raw)
        except (ValueError, ZeroDivisionError):
            raise ConfigError(
                f"option {key}={raw!r}: expected a number such as 0.5 or 8/255"
            ) from None
    if typ is str or typ is Any:
        return raw
    raise ConfigError(f"option {key}: unsupported type {typ!r}")  # pragma: no cover


def parse_value(raw: Any, typ: Any, key: str) -> Any:
    """Convert a string (or JSON value) to the dataclass field type ``typ``."""
    origin = get_origin(typ)
    if origin in (Union, types.UnionType):
        args = [a for a in get_args(typ) if a is not type(None)]
        if raw is None or (isinstance(raw, str) and raw.lower() in ("none", "null", "")):
            return None
        return parse_value(raw, args[0], key)
    if typ is typing.Any:
        return raw
    if origin in (tuple, list):
        args = get_args(typ)
        elem = args[0] if args else str
        if isinstance(raw, str):
            body = raw.strip()
            if body.startswith(("[", "(")) and body.endswith(("]", ")")):
                body = body[1:-1]
            items = [p for p in _split_top_level(body, ",")] if body else []
            items = [p for part in items for p in part.split("|")]
        else:
            items = list(raw)
        return tuple(parse_value(i, elem, key) for i in items)
    if not isinstance(raw, str):
        if typ is float and isinstance(raw, (int, float)) and not isinstance(raw, bool):
            return float(raw)
        if isinstance(raw, typ):
            return raw
        raw = str(raw)
    return _parse_scalar(raw, typ, key)


def build_config(
    cls: type[C], overrides: dict[str, Any] | tuple | None = None, owner: str = ""
) -> C:
    """Instantiate the frozen dataclass ``cls`` with string or typed overrides.

    Unknown keys get a did-you-mean error naming the valid ones.
    """
    items = dict(overrides or {})
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for k, v in items.items():
        if k not in fields:
            err = UnknownNameError(f"option of {owner or cls.__name__}", k, sorted(fields))
            raise ConfigError(str(err).split(" (see")[0] + ".")
        if fields[k].metadata.get(BUDGET) and v is not None:
            kwargs[k] = parse_budget(v, k)
        else:
            kwargs[k] = parse_value(v, hints[k], k)
    try:
        cfg = cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"bad options for {owner or cls.__name__}: {exc}") from None
    return cfg


def config_dict(cfg: Any) -> dict[str, Any]:
    """JSON-safe dict of a config dataclass (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(cfg), default=str))


def config_hash(kind: str, name: str, cfg: Any, extra: dict[str, Any] | None = None) -> str:
    """Stable 12-hex-digit hash of (kind, canonical name, identity settings); run fields
    do not count. ``extra``: more identity (e.g. a checkpoint's content digest), left out
    of the payload when empty so that hashes without it stay what they were."""
    ident = identity_config(cfg)
    config = config_dict(ident)
    if dataclasses.is_dataclass(ident):
        for f in dataclasses.fields(ident):
            if f.metadata.get(LATE) and getattr(ident, f.name) == _field_default(f):
                config.pop(f.name, None)
    body: dict[str, Any] = {"kind": kind, "name": name, "config": config}
    if extra:
        body["identity"] = extra
    payload = json.dumps(body, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:12]


def changed_fields(cfg: Any, identity_only: bool = False) -> dict[str, Any]:
    """Fields whose value differs from the class default, in declaration order (with
    ``identity_only``, run fields left out)."""
    out = {}
    default = type(cfg)()
    skip = set(run_fields(cfg)) if identity_only else set()
    for f in dataclasses.fields(cfg):
        if f.name not in skip and getattr(cfg, f.name) != getattr(default, f.name):
            out[f.name] = getattr(cfg, f.name)
    return out


def format_value(v: Any) -> str:
    if isinstance(v, float):
        frac = Fraction(v).limit_denominator(1000)
        if frac.denominator in (255,) and abs(float(frac) - v) < 1e-12:
            return f"{frac.numerator}/{frac.denominator}"
        return f"{v:g}"
    if isinstance(v, (tuple, list)):
        return "[" + ",".join(format_value(x) for x in v) + "]"
    return str(v)


def label(name: str, cfg: Any, extra: dict[str, str] | None = None) -> str:
    """Display name of a configured plugin: ``uad`` or ``uad[eps=4/255]``; identity
    fields only (a checkpoint path or a dataset root never appears), then ``extra``
    items (e.g. ``weights=<digest>`` for a checkpoint other than the default)."""
    items = [f"{k}={format_value(v)}" for k, v in changed_fields(cfg, identity_only=True).items()]
    items += [f"{k}={v}" for k, v in (extra or {}).items()]
    if not items:
        return name
    return name + "[" + ",".join(items) + "]"


def check_device(device: str, what: str = "") -> Any:
    """``device`` (cpu, cuda, cuda:N, …) as a ``torch.device``, or a one-line ConfigError
    (prefixed by ``what``) saying what is wrong and what to use instead."""
    import torch

    head = f"{what}: " if what else ""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ConfigError(
            f"{head}--device {device!r} is not a torch device; use --device cpu, cuda or cuda:N"
        ) from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            f"{head}--device {device}: this torch ({torch.__version__}) sees no CUDA GPU; "
            "use --device cpu, or a CUDA build of torch on a machine with a GPU"
        )
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ConfigError(
            f"{head}--device {device}: only {torch.cuda.device_count()} CUDA device(s) here"
        )
    return dev
