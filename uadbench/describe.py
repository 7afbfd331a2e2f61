"""What a plugin's options are: name, type, default, unit and meaning of every field of its
frozen-dataclass ``Config`` — for ``uadbench describe NAME`` and ``uadbench ls -v``.

Listing must not import the plugin (a model backend imports torch, which takes a second):
for a lazily registered plugin (``"package.module:Class"``, builtin or an entry point) the
config is read from the source with :mod:`ast` — the class's ``Config`` (nested, assigned,
or inherited, across modules), its fields in dataclass order (base classes first) and
their defaults as written. Only when the source cannot be read that way (a config built at
run time, a compiled module) is the plugin imported and its dataclass inspected.

Where the meaning of an option comes from, first found wins:

1. the field's metadata: ``dataclasses.field(default=..., metadata={"help": "...",
   "unit": "px"})`` (``"unit"`` is the only source of the unit column, but for a budget
   declared with ``budget_field``). A field declared with ``run_field`` (how a result is
   run, not what it is: a path, a batch size) is marked ``[run setting]``; the helpers'
   default is their first argument;
2. a string literal right after the field (an attribute docstring)::

       warp_size: int = 4
       \"\"\"Number of thin-plate-spline warps merged into the target.\"\"\"

3. the text after the field's name written as ````name```` in the docstring of the config
   class (or of one it inherits from), up to the next ````name```` or the sentence's end.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib.util
import inspect
import re
import textwrap
from pathlib import Path
from typing import Any

from .errors import UadbenchError


@dataclasses.dataclass(frozen=True)
class Option:
    """One config field as ``describe`` shows it (all strings, as they read in the source)."""

    name: str
    type: str
    default: str
    unit: str = ""
    help: str = ""
    run: bool = False  # a run field: how the result is run, not part of its identity


@dataclasses.dataclass(frozen=True)
class Description:
    """A plugin: its kind, name, summary, class docstring's first paragraph and options."""

    kind: str
    name: str
    aliases: tuple[str, ...]
    source: str
    target: str
    summary: str
    doc: str
    options: tuple[Option, ...]
    read_from: str  # "source" (ast, nothing imported) or "import"


class _Unresolved(Exception):
    """The source does not say statically (fall back to importing)."""


# ----------------------------------------------------------------------------- static
_MODULES: dict[str, tuple[ast.Module, str]] = {}


def _module_ast(module: str) -> tuple[ast.Module, str]:
    """The parsed source of ``module`` (found, not imported) and its package name."""
    if module not in _MODULES:
        try:
            spec = importlib.util.find_spec(module)
        except (ImportError, ValueError) as exc:
            raise _Unresolved(f"cannot find {module}: {exc}") from None
        if spec is None or not spec.origin or not spec.origin.endswith(".py"):
            raise _Unresolved(f"no Python source for {module}")
        tree = ast.parse(Path(spec.origin).read_text(encoding="utf-8"))
        package = module if spec.submodule_search_locations else module.rpartition(".")[0]
        _MODULES[module] = (tree, package)
    return _MODULES[module]


def _absolute(module: str | None, level: int, package: str) -> str:
    if level == 0:
        return module or ""
    base = package.split(".")
    if level > 1:
        base = base[: -(level - 1)]
    return ".".join([*base, module] if module else base)


def _find_class(module: str, name: str, depth: int = 0) -> tuple[ast.ClassDef, str]:
    """The ``ClassDef`` bound to ``name`` at the top level of ``module`` (following imports
    and simple aliases), and the module it is defined in."""
    if depth > 20:
        raise _Unresolved(f"import cycle at {module}.{name}")
    tree, package = _module_ast(module)
    for node in reversed(tree.body):  # the last binding wins
        if isinstance(node, ast.ClassDef) and node.name == name:
            return node, module
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == name for t in node.targets
        ):
            return _resolve_expr(node.value, module, depth + 1)
        if isinstance(node, ast.ImportFrom):
            for alias in node.names:
                if (alias.asname or alias.name) == name:
                    src = _absolute(node.module, node.level, package)
                    try:
                        return _find_class(src, alias.name, depth + 1)
                    except _Unresolved:
                        # ``from package import submodule`` is not a class
                        raise
    raise _Unresolved(f"no class {name} in {module}")


def _resolve_expr(expr: ast.expr, module: str, depth: int = 0) -> tuple[ast.ClassDef, str]:
    """A class named by ``expr`` (``Name`` or ``module_alias.Name``) in ``module``."""
    if isinstance(expr, ast.Name):
        return _find_class(module, expr.id, depth)
    if isinstance(expr, ast.Attribute) and isinstance(expr.value, ast.Name):
        tree, package = _module_ast(module)
        for node in tree.body:
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if (alias.asname or alias.name) == expr.value.id:
                        return _find_class(alias.name, expr.attr, depth + 1)
            if isinstance(node, ast.ImportFrom):
                for alias in node.names:
                    if (alias.asname or alias.name) == expr.value.id:
                        sub = _absolute(node.module, node.level, package) + "." + alias.name
                        return _find_class(sub, expr.attr, depth + 1)
    raise _Unresolved(f"cannot resolve {ast.unparse(expr)} in {module}")


def _config_class(cls: ast.ClassDef, module: str, depth: int = 0) -> tuple[ast.ClassDef, str]:
    """The ``Config`` of plugin class ``cls``: nested, assigned, or from a base class."""
    if depth > 20:
        raise _Unresolved("base classes too deep")
    for node in reversed(cls.body):
        if isinstance(node, ast.ClassDef) and node.name == "Config":
            return node, module
        targets = (
            node.targets
            if isinstance(node, ast.Assign)
            else [node.target]
            if isinstance(node, ast.AnnAssign) and node.value is not None
            else []
        )
        if any(isinstance(t, ast.Name) and t.id == "Config" for t in targets):
            return _resolve_expr(node.value, module)
    for base in cls.bases:
        try:
            bcls, bmod = _resolve_expr(base, module)
        except _Unresolved:
            continue
        try:
            return _config_class(bcls, bmod, depth + 1)
        except _Unresolved:
            continue
    raise _Unresolved(f"{cls.name} has no Config")


def _is_classvar(annotation: ast.expr) -> bool:
    text = ast.unparse(annotation)
    return text.startswith(("ClassVar", "typing.ClassVar"))


#: field helpers of uadbench.config (``name(default, ...)`` wrappers of dataclasses.field)
#: and the metadata keys they set: a run field (how a result is run, not what it is) and a
#: budget (written ``8`` for 8/255)
RUN_KEY, BUDGET_KEY = "uadbench_run", "uadbench_budget"
HELPER_META = {"run_field": {RUN_KEY: True}, "budget_field": {BUDGET_KEY: True}}
BUDGET_UNIT = "8 = 8/255"


def _field_call(value: ast.expr | None) -> tuple[ast.Call, str] | None:
    """``dataclasses.field(...)`` or a helper wrapping it (any function named ``*field``)."""
    if isinstance(value, ast.Call):
        fn = value.func
        name = fn.attr if isinstance(fn, ast.Attribute) else getattr(fn, "id", "")
        if name.endswith("field"):
            return value, name
    return None


def _meta_unit(meta: dict) -> str:
    return str(meta.get("unit") or (BUDGET_UNIT if meta.get(BUDGET_KEY) else ""))


def _static_fields(
    cfg: ast.ClassDef, module: str, depth: int = 0, bases: bool = True
) -> list[tuple[Option, str]]:
    """(option, the config class docstring it came with) for every field of ``cfg``, base
    classes first, a redefinition replacing the inherited field in place (dataclass order);
    ``bases=False``: the fields written in ``cfg``'s own body only."""
    if depth > 20:
        raise _Unresolved("config base classes too deep")
    out: list[tuple[Option, str]] = []
    for base in cfg.bases if bases else []:
        bcls, bmod = _resolve_expr(base, module)
        out = _merge(out, _static_fields(bcls, bmod, depth + 1))
    doc = ast.get_docstring(cfg) or ""
    own: list[tuple[Option, str]] = []
    body = cfg.body
    for i, node in enumerate(body):
        if not isinstance(node, ast.AnnAssign) or not isinstance(node.target, ast.Name):
            continue
        if _is_classvar(node.annotation):
            continue
        default, meta = "(required)", {}
        found = _field_call(node.value)
        if found is not None:
            call, helper = found
            meta = dict(HELPER_META.get(helper, {}))
            if call.args and helper != "field":  # run_field(default), budget_field(default)
                default = ast.unparse(call.args[0])
            for kw in call.keywords:
                if kw.arg == "default":
                    default = ast.unparse(kw.value)
                elif kw.arg == "default_factory":
                    default = ast.unparse(kw.value) + "()"
                elif kw.arg == "metadata":
                    try:
                        meta.update(ast.literal_eval(kw.value))
                    except (ValueError, TypeError):
                        pass
        elif node.value is not None:
            default = ast.unparse(node.value)
        attr_doc = ""
        nxt = body[i + 1] if i + 1 < len(body) else None
        if (
            isinstance(nxt, ast.Expr)
            and isinstance(nxt.value, ast.Constant)
            and isinstance(nxt.value.value, str)
        ):
            attr_doc = inspect.cleandoc(nxt.value.value)
        own.append(
            (
                Option(
                    name=node.target.id,
                    type=ast.unparse(node.annotation),
                    default=_pretty_default(default),
                    unit=_meta_unit(meta),
                    help=str(meta.get("help") or meta.get("doc") or attr_doc),
                    run=bool(meta.get(RUN_KEY)),
                ),
                doc,
            )
        )
    return _merge(out, own)


def _merge(
    base: list[tuple[Option, str]], new: list[tuple[Option, str]]
) -> list[tuple[Option, str]]:
    out = list(base)
    index = {o.name: i for i, (o, _) in enumerate(out)}
    for item in new:
        o, doc = item
        if o.name in index:  # redefined: keep the inherited meaning if it has none
            old, old_doc = out[index[o.name]]
            if not o.help and not _from_doc(o.name, doc) and (old.help or old_doc):
                item = (dataclasses.replace(o, help=old.help, unit=o.unit or old.unit), old_doc)
            out[index[o.name]] = item
        else:
            index[o.name] = len(out)
            out.append(item)
    return out


def _pretty_default(text: str) -> str:
    """A default the way a spec writes it: ``8 / 255`` → ``8/255``, ``False`` → ``false``;
    other defaults as written in the source."""
    if text.strip() in ("()", "[]"):
        return "[]"  # an empty list, as a spec writes it (taps=[2,3]) and format_value does
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if m:
        return f"{m.group(1)}/{m.group(2)}"
    return {"True": "true", "False": "false"}.get(text.strip(), text)


# ----------------------------------------------------------------------------- import
def _imported_fields(obj: Any) -> list[tuple[Option, str]]:
    """The same from a loaded plugin class (its ``Config`` inspected)."""
    cfg = getattr(obj, "Config", None)
    if cfg is None or not dataclasses.is_dataclass(cfg):
        return []
    from .config import format_value

    docs: dict[str, tuple[str, str]] = {}  # field → (attribute docstring, class docstring)
    for klass in reversed(cfg.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        cdoc = inspect.getdoc(klass) or ""
        if klass.__doc__ and klass.__doc__.startswith(klass.__name__ + "("):
            cdoc = ""  # the docstring dataclasses makes up
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
            node = tree.body[0]
            assert isinstance(node, ast.ClassDef)
            for opt, _ in _static_fields(node, "", bases=False):
                # a redefinition without a meaning keeps the inherited one
                if opt.help or _from_doc(opt.name, cdoc) or opt.name not in docs:
                    docs[opt.name] = (opt.help, cdoc)
        except (OSError, TypeError, SyntaxError, AssertionError, _Unresolved):
            for f in dataclasses.fields(klass):
                if f.name in klass.__dict__.get("__annotations__", {}):
                    docs[f.name] = ("", cdoc)
    out = []
    for f in dataclasses.fields(cfg):
        if isinstance(f.default, str):
            default = repr(f.default)  # as the source writes it
        elif f.default is not dataclasses.MISSING:
            default = _pretty_default(format_value(f.default))
        elif f.default_factory is not dataclasses.MISSING:
            default = _pretty_default(format_value(f.default_factory()))
        else:
            default = "(required)"
        typ = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
        attr_doc, cdoc = docs.get(f.name, ("", ""))
        meta = dict(f.metadata)
        out.append(
            (
                Option(
                    name=f.name,
                    type=str(typ),
                    default=default,
                    unit=_meta_unit(meta),
                    help=str(meta.get("help") or meta.get("doc") or attr_doc),
                    run=bool(meta.get(RUN_KEY)),
                ),
                cdoc,
            )
        )
    return out


# ----------------------------------------------------------------------------- meaning
def _from_doc(name: str, doc: str) -> str:
    """The words after ````name```` in ``doc`` up to the next ````other```` or the end of
    the sentence (``deform_epochs`` (T_D = 40) → ``(T_D = 40)``)."""
    if not doc:
        return ""
    flat = " ".join(doc.split())
    m = re.search(r"``" + re.escape(name) + r"``(?:\s*/\s*``\w+``)*\s*:?\s*", flat)
    if not m:
        return ""
    rest = flat[m.end() :]
    stop = len(rest)
    nxt = re.search(r"``\w+``", rest)
    if nxt and nxt.start() > 0:
        stop = nxt.start()
    end = re.search(r"(?<![ei]\.[eg])\.(\s|$)", rest)
    if end:
        stop = min(stop, end.start())
    text = rest[:stop].strip(" ,;:")
    if nxt is not None and nxt.start() == 0:  # ``a``/``b`` written together
        return ""
    return text


def _finish(options: list[tuple[Option, str]], *more_docs: str) -> tuple[Option, ...]:
    """Fill in meanings from the docstrings: the config class's (or the base class's the
    field came from), then ``more_docs`` (the plugin class's)."""
    out = []
    for o, doc in options:
        for d in (doc, *more_docs):
            if o.help:
                break
            o = dataclasses.replace(o, help=_from_doc(o.name, d))
        out.append(o)
    return tuple(out)


# ----------------------------------------------------------------------------- public
def options_of(target: Any) -> tuple[tuple[Option, ...], str, str]:
    """(options, class docstring, "source" | "import") of a plugin ``target``: a class, or a
    lazy ``"module:attr"`` reference (read from its source where possible)."""
    if isinstance(target, str):
        module, _, attr = target.partition(":")
        try:
            cls, cmod = _find_class(module, attr.split(".")[0])
            for part in attr.split(".")[1:]:
                cls = next(n for n in cls.body if isinstance(n, ast.ClassDef) and n.name == part)
            cfg, cfg_mod = _config_class(cls, cmod)
            doc = ast.get_docstring(cls) or ""
            return _finish(_static_fields(cfg, cfg_mod), doc), doc, "source"
        except (_Unresolved, StopIteration, SyntaxError, OSError):
            from .registry import _import_ref

            try:
                target = _import_ref(target)
            except Exception as exc:  # a third-party module may fail in any way
                raise UadbenchError(
                    f"cannot read the options of {target}: its source is not a plain class "
                    f"and importing it failed ({type(exc).__name__}: {exc})"
                ) from None
    doc = inspect.getdoc(target) or ""
    return _finish(_imported_fields(target), doc), doc, "import"


def describe(registry: Any, name: str) -> Description:
    """The :class:`Description` of plugin ``name`` (alias or prefix form) in ``registry``."""
    entry = registry.entry(name)
    target = entry.target
    ref = target if isinstance(target, str) else f"{target.__module__}:{target.__qualname__}"
    options, doc, how = options_of(target)
    first = doc.split("\n\n")[0].strip() if doc else ""
    return Description(
        kind=registry.kind,
        name=registry.canonical(name),
        aliases=entry.aliases,
        source=entry.source,
        target=ref,
        summary=entry.info.get("summary", ""),
        doc=" ".join(first.split()),
        options=options,
        read_from=how,
    )


def _meaning(o: Option) -> str:
    text = o.help or "-"
    return f"{text} [run setting]" if o.run else text


def format_description(d: Description, width: int = 100) -> str:
    """The text ``uadbench describe`` prints: a header and a table of options."""
    from tabulate import tabulate

    head = f"{d.kind} {d.name}"
    if d.aliases:
        head += f" (aliases: {', '.join(d.aliases)})"
    lines = [head]
    if d.summary:
        lines.append(f"  {d.summary}")
    lines.append(
        f"  class: {d.target}" + (f" [plugin: {d.source}]" if d.source != "builtin" else "")
    )
    if d.doc and d.doc != d.summary:
        lines += textwrap.wrap(d.doc, width, initial_indent="  ", subsequent_indent="  ")
    if not d.options:
        lines.append("\nno options")
        return "\n".join(lines)
    has_unit = any(o.unit for o in d.options)
    rows = [
        [o.name, o.type, o.default, *([o.unit] if has_unit else []), _meaning(o)] for o in d.options
    ]
    headers = ["option", "type", "default", *(["unit"] if has_unit else []), "meaning"]
    lines.append("")
    lines.append(
        tabulate(
            rows,
            headers=headers,
            tablefmt="simple",
            disable_numparse=True,
            maxcolwidths=[None, 18, 22, *([16] if has_unit else []), 56],
        )
    )
    if any(o.run for o in d.options):
        lines.append(
            "\n[run setting]: how it runs, not what the result is — left out of the result's "
            "identity (hashes, labels, prompt seeds), so changing it reuses finished results"
        )
    spec = f"{d.name}:{d.options[0].name}=VALUE"
    lines.append(f"\nset options in a spec: {spec}[,OTHER=VALUE...]")
    return "\n".join(lines)
