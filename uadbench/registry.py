"""One generic registry for attacks, victims and datasets.

Entries are either objects or lazy ``"module:attr"`` strings, so that listing what
exists never imports a model backend. Third-party plugins are discovered through the
entry-point groups ``uadbench.attacks``, ``uadbench.victims`` and ``uadbench.datasets``
(``name = "package.module:Attr"``). Prefix entries (``hf:`` → any hub id) cover
families whose members cannot be listed in advance.
"""

from __future__ import annotations

import fnmatch
import functools
import hashlib
import importlib
import inspect
import logging
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Generic, TypeVar

from .errors import UadbenchError, UnknownNameError

T = TypeVar("T")
log = logging.getLogger(__name__)


@dataclass
class Entry:
    """One registered name: the object itself, or a lazy ``"module:attr"`` reference."""

    name: str
    target: Any  # object, or "module:attr" string
    aliases: tuple[str, ...] = ()
    info: dict[str, Any] = field(default_factory=dict)
    source: str = "builtin"  # "builtin" or the distribution that registered it

    @property
    def loaded(self) -> bool:
        return not isinstance(self.target, str)


def _import_ref(ref: str) -> Any:
    module, _, attr = ref.partition(":")
    if not module or not attr:
        raise UadbenchError(f"bad plugin reference {ref!r}: expected 'package.module:attr'")
    obj: Any = importlib.import_module(module)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


@functools.lru_cache(maxsize=1)
def _packages_distributions() -> dict[str, list[str]]:
    return metadata.packages_distributions()


@functools.lru_cache(maxsize=256)
def _module_code_version(module_name: str) -> str:
    module = sys.modules.get(module_name)
    file = getattr(module, "__file__", None)
    top = module_name.split(".")[0]
    dist_name, version, installed = "", "", False
    for d in _packages_distributions().get(top, []):
        try:
            dist = metadata.distribution(d)
        except metadata.PackageNotFoundError:  # pragma: no cover
            continue
        dist_name, version = dist.metadata["Name"] or d, dist.version
        if file:
            here = Path(file).resolve()
            installed = any(Path(dist.locate_file(f)).resolve() == here for f in dist.files or ())
        break
    if installed:  # a wheel's module: its version says what code it is
        return f"{dist_name}=={version}"
    digest = ""
    if file and Path(file).is_file():
        digest = hashlib.sha256(Path(file).read_bytes()).hexdigest()[:12]
    head = f"{dist_name}=={version}+" if dist_name else ""
    return f"{head}src.{digest}" if digest else f"{head}unknown"


def code_version(obj: Any) -> str:
    """The version of a plugin's code: ``dist==1.2`` for a module installed from a wheel;
    for an editable install or a source tree (where the version does not change when the
    code does) ``dist==1.2+src.<digest of the plugin's module source>``."""
    module = inspect.getmodule(obj)
    if module is None:  # pragma: no cover
        return "unknown"
    return _module_code_version(module.__name__)


class Registry(Generic[T]):
    """Names → plugin classes (or factories) of one kind.

    ``kind`` is the human word ("attack"), ``base`` the class every entry must be a
    subclass of (checked when the entry is first loaded; a ``"module:attr"`` string is
    imported only then), ``group`` the entry-point
    group scanned for third-party plugins.
    """

    def __init__(self, kind: str, base: type | str | None = None, group: str | None = None):
        self.kind = kind
        self.base = base
        self.group = group
        self._entries: dict[str, Entry] = {}
        self._aliases: dict[str, str] = {}
        self._prefixes: dict[str, Entry] = {}
        self._discovered = False

    # ------------------------------------------------------------------ registration
    def register(
        self,
        name: str,
        target: Any = None,
        *,
        aliases: tuple[str, ...] | list[str] = (),
        source: str = "builtin",
        **info: Any,
    ) -> Any:
        """Register ``target`` under ``name``; used bare or as a decorator.

        ``target`` may be a ``"module:attr"`` string (imported on first use).
        A name ending in ``:`` registers a prefix: ``hf:`` matches ``hf:<anything>``.
        """
        if target is None:

            def deco(obj: Any) -> Any:
                self.register(name, obj, aliases=aliases, source=source, **info)
                return obj

            return deco
        key = name.lower()
        entry = Entry(
            name=name, target=target, aliases=tuple(aliases), info=dict(info), source=source
        )
        if key.endswith(":"):
            if key in self._prefixes:
                raise UadbenchError(f"{self.kind} prefix {name!r} is registered twice")
            self._prefixes[key] = entry
            return target
        for k in (key, *(a.lower() for a in aliases)):
            if k in self._entries or k in self._aliases:
                raise UadbenchError(f"{self.kind} name {k!r} is registered twice")
        self._entries[key] = entry
        for a in aliases:
            self._aliases[a.lower()] = key
        if entry.loaded:
            self._check(entry, entry.target)
        return target

    def unregister(self, name: str) -> None:
        """Remove a name and its aliases (tests and interactive sessions)."""
        key = self.canonical(name).lower()
        entry = self._entries.pop(key)
        for a in entry.aliases:
            self._aliases.pop(a.lower(), None)

    def _check(self, entry: Entry, obj: Any) -> None:
        if self.base is None:
            return
        if isinstance(self.base, str):  # lazy base: listing must not import torch
            self.base = _import_ref(self.base)
        if not (isinstance(obj, type) and issubclass(obj, self.base)):
            raise UadbenchError(
                f"{self.kind} {entry.name!r} ({obj!r}) is not a subclass of {self.base.__name__}"
            )

    def discover(self) -> None:
        """Register third-party plugins from the entry-point group (once)."""
        if self._discovered or self.group is None:
            return
        self._discovered = True
        for ep in metadata.entry_points(group=self.group):
            if ep.name.lower() in self._entries or ep.name.lower() in self._aliases:
                log.warning(
                    "%s plugin %r from %s shadows nothing: name taken", self.kind, ep.name, ep.value
                )
                continue
            dist = getattr(getattr(ep, "dist", None), "name", None) or "entry point"
            try:
                self.register(ep.name, ep.value, source=dist)
            except UadbenchError as exc:  # a bad name: that plugin is left out, not the rest
                log.warning("%s plugin %r from %s left out: %s", self.kind, ep.name, dist, exc)

    # ------------------------------------------------------------------ lookup
    def canonical(self, name: str) -> str:
        """The registered name for ``name`` (alias-resolved); did-you-mean error if unknown."""
        self.discover()
        key = name.strip().lower()
        if key in self._entries:
            return self._entries[key].name
        if key in self._aliases:
            return self._entries[self._aliases[key]].name
        for prefix in self._prefixes:
            if key.startswith(prefix) and len(key) > len(prefix):
                return prefix + name.strip()[len(prefix) :]
        raise UnknownNameError(self.kind, name, self.names())

    def entry(self, name: str) -> Entry:
        key = self.canonical(name).lower()
        if key in self._entries:
            return self._entries[key]
        for prefix, e in self._prefixes.items():
            if key.startswith(prefix):
                return e
        raise UnknownNameError(self.kind, name, self.names())  # pragma: no cover

    def get(self, name: str) -> Any:
        """The plugin object for ``name``, importing a lazy entry on first use."""
        e = self.entry(name)
        if not e.loaded:
            ref = e.target
            try:
                obj = _import_ref(ref)
            except UadbenchError:
                raise
            except ImportError as exc:
                raise UadbenchError(
                    f"{self.kind} {e.name!r} needs a package that is not installed ({exc}); "
                    f"{e.info.get('install', 'install its optional extra')}"
                ) from exc
            except Exception as exc:  # a broken plugin: reported, the others still work
                first = (str(exc).strip().splitlines() or [""])[0][:200]
                where = "" if e.source == "builtin" else f" (from {e.source})"
                raise UadbenchError(
                    f"{self.kind} {e.name!r}{where} is broken: importing {ref} raised "
                    f"{type(exc).__name__}: {first}; fix or uninstall it"
                ) from None
            self._check(e, obj)
            e.target = obj
        return e.target

    def names(self, pattern: str | None = None, include_prefixes: bool = False) -> list[str]:
        """Registered names, optionally filtered by a shell wildcard (``sam-*``)."""
        self.discover()
        out = [e.name for e in self._entries.values()]
        if include_prefixes:
            out += [e.name + "<id>" for e in self._prefixes.values()]
        if pattern:
            out = [n for n in out if fnmatch.fnmatch(n.lower(), pattern.lower())]
        return sorted(out)

    def entries(self) -> Iterator[Entry]:
        self.discover()
        yield from self._entries.values()

    def __contains__(self, name: str) -> bool:
        try:
            self.canonical(name)
        except UnknownNameError:
            return False
        return True

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self.names())
