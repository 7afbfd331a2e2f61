"""`uadbench --help`, `ls` and `describe` import no torch, and `describe NAME` lists each
plugin's options (type, default, unit, meaning) read from its source — the same fields and
defaults its imported dataclass has, third-party plugins included."""

from __future__ import annotations

import ast
import dataclasses
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from uadbench.attacks import ATTACKS
from uadbench.cli import main
from uadbench.config import format_value
from uadbench.datasets import DATASETS
from uadbench.describe import describe, options_of
from uadbench.victims import VICTIMS

REPO = Path(__file__).resolve().parent.parent

LIGHT_COMMANDS = [
    ["--help"],
    ["ls", "attacks"],
    ["ls", "datasets"],
    ["ls", "transforms"],
    ["ls", "victims"],  # weights found or not, and where: looked up without torch
    ["ls", "victims", "sam-*"],
    ["ls", "attacks", "-v"],
    ["ls", "victims", "-v"],
    ["ls", "transforms", "-v"],
    ["describe", "uad"],
    ["describe", "sam-vit-b"],
    ["describe", "hf:facebook/sam-vit-base"],
    ["describe", "sa1b"],
    ["describe", "identity"],
    ["zoo", "--help"],
    ["run", "--help"],
]


def test_help_ls_and_describe_import_no_torch(tmp_path):
    """In a fresh interpreter, every listing command runs (exit 0) and leaves torch (and
    numpy-heavy backends) unimported — a module-level `import torch` reached from the CLI,
    the registry or a plugin's listing path turns this red. `ls victims` runs with a
    checkpoint found and an hf: model in the Hugging Face cache, which it must report."""
    from test_victims_common import write_hf_snapshot

    ckpt, hub = tmp_path / "ckpt", tmp_path / "hub"
    ckpt.mkdir()
    (ckpt / "sam_vit_b_01ec64.pth").write_bytes(b"x")

    def hf_model(d):
        (d / "config.json").write_text('{"model_type": "sam"}')
        (d / "model.safetensors").write_bytes(b"x")

    write_hf_snapshot(hub, "org/sam-tiny", hf_model)
    env = {**os.environ, "UADBENCH_CHECKPOINTS": str(ckpt), "HF_HUB_CACHE": str(hub)}
    code = textwrap.dedent(
        f"""
        import contextlib, io, sys
        from uadbench.cli import main
        for argv in {LIGHT_COMMANDS!r}:
            out = io.StringIO()
            with contextlib.redirect_stdout(out):
                try:
                    rc = main(argv)
                except SystemExit as exc:  # argparse's --help
                    rc = exc.code
            assert rc == 0, (argv, rc)
            assert out.getvalue().strip(), argv
            if argv == ["ls", "victims"]:
                lines = out.getvalue().splitlines()[2:]
                rows = {{r.split()[0]: r.split()[1] for r in lines if r[:1].strip()}}
                assert rows["sam-vit-b"] == "found" and rows["sam-vit-l"] == "missing", rows
                assert rows["hf:org/sam-tiny"] == "found", rows
        heavy = sorted(m for m in ("torch", "transformers", "ultralytics") if m in sys.modules)
        print("HEAVY", heavy)
        """
    )
    res = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
        env=env,
    )
    assert res.returncode == 0, res.stderr
    assert "HEAVY []" in res.stdout, res.stdout


def _literal(text: str):
    """A static default as a value, where the source wrote a literal (else None)."""
    if "/" in text and text.replace("/", "").isdigit():
        a, b = text.split("/")
        return int(a) / int(b)
    text = {"true": "True", "false": "False"}.get(text, text)
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return None


@pytest.mark.parametrize(
    ("reg", "name"),
    [(ATTACKS, n) for n in ATTACKS.names()]
    + [(DATASETS, n) for n in DATASETS.names()]
    + [(VICTIMS, n) for n in VICTIMS.names()]
    + [(VICTIMS, "hf:facebook/sam-vit-base")],
)
def test_options_read_from_source_match_the_imported_config(reg, name):
    """The source reading (bases across modules, nested or assigned Config, redefinitions)
    gives exactly the imported dataclass's fields, in order, with its defaults."""
    target = reg.entry(name).target
    ref = target if isinstance(target, str) else f"{target.__module__}:{target.__qualname__}"
    static, _, how = options_of(ref)
    assert how == "source"
    fields = dataclasses.fields(reg.get(name).Config)
    assert [o.name for o in static] == [f.name for f in fields]
    for o, f in zip(static, fields):
        value = _literal(o.default)
        if value is not None or o.default == "None":
            assert value == f.default or format_value(value) == format_value(f.default), (
                name,
                o.name,
                o.default,
                f.default,
            )


def test_describe_uad_lists_every_option_with_default_unit_and_meaning(capsys):
    assert main(["describe", "uad"]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: line for line in out.splitlines() if line and line[0].isalpha()}
    from uadbench.attacks.uad import UADConfig

    for f in dataclasses.fields(UADConfig):
        assert f.name in rows, f.name
        assert "  -  " not in rows[f.name] + "  ", f"{f.name} has no meaning"
    assert "8/255" in rows["eps"] and "in the [0, 1] pixel range" in rows["eps"]
    assert " 40 " in rows["deform_epochs"] and "(T_D)" in rows["deform_epochs"]
    assert "reference units" in rows["deform_lr"]
    assert "false" in rows["fidelity_grad"].split()  # the default, as a spec writes it
    assert "uad:eps=VALUE" in out


def test_an_unknown_name_is_a_one_line_did_you_mean(capsys):
    assert main(["describe", "uadd"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "uad" in err


THIRD_PARTY = '''
import dataclasses

from uadbench.attacks.base import Attack, AttackConfig


@dataclasses.dataclass(frozen=True)
class BlurConfig(AttackConfig):
    """Settings of the blur attack. ``sigma``: blur radius of the target image."""

    sigma: float = 1.5
    steps: int = 10
    radius: int = dataclasses.field(default=3, metadata={"help": "kernel half-width", "unit": "px"})
    passes: int = 2
    """How often the blur is applied."""


class Blur(Attack):
    Config = BlurConfig

    def perturb(self, x, surrogate, ctx):
        return x
'''


def test_a_third_party_plugin_is_described_from_its_source_without_importing_it(
    tmp_path, monkeypatch, capsys
):
    """Metadata (help + unit), an attribute docstring and the class docstring each give a
    meaning; the plugin's module is not imported to describe it."""
    pkg = tmp_path / "blurplug"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "attack.py").write_text(THIRD_PARTY)
    monkeypatch.syspath_prepend(str(tmp_path))
    ATTACKS.register("blur", "blurplug.attack:Blur", source="blurplug", summary="blurs")
    try:
        assert main(["describe", "blur", "--kind", "attack"]) == 0  # blur is also a transform
        out = capsys.readouterr().out
        assert "blurplug.attack" not in sys.modules
        rows = {line.split()[0]: line for line in out.splitlines() if line and line[0].isalpha()}
        assert [r for r in rows if r in ("eps", "alpha", "steps", "sigma", "radius", "passes")] == [
            "eps",
            "alpha",
            "steps",
            "sigma",
            "radius",
            "passes",
        ]
        assert " 10 " in rows["steps"] and "PGD steps" in rows["steps"]  # redefined in place
        assert "1.5" in rows["sigma"] and "blur radius of the target image" in rows["sigma"]
        assert " px " in rows["radius"] + " " and "kernel half-width" in rows["radius"]
        assert "How often the blur is applied" in rows["passes"]
        assert "[plugin: blurplug]" in out
        # the same from the loaded class (import path), e.g. a plugin registered as an object
        loaded = describe(ATTACKS, "blur")
        options, _, how = options_of(ATTACKS.get("blur"))
        assert how == "import" and options == loaded.options
    finally:
        ATTACKS.unregister("blur")


def test_a_config_built_at_run_time_falls_back_to_importing(tmp_path, monkeypatch):
    (tmp_path / "dynplug.py").write_text(
        textwrap.dedent(
            """
            import dataclasses
            from uadbench.attacks.base import Attack

            def _make():
                return dataclasses.make_dataclass(
                    "DynConfig", [("gain", float, dataclasses.field(default=2.0))], frozen=True
                )

            class Dyn(Attack):
                Config = _make()

                def perturb(self, x, surrogate, ctx):
                    return x
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    options, _, how = options_of("dynplug:Dyn")
    assert how == "import"
    assert [(o.name, o.default) for o in options] == [("gain", "2")]


def test_a_broken_plugin_is_reported_and_the_others_still_listed(tmp_path, monkeypatch, capsys):
    """`ls attacks -v` with a plugin whose module cannot be read (a syntax error: no source
    to parse, and the import fails) names that plugin and its error, lists every other
    attack, and exits 1; `describe` of it is a one-line error."""
    (tmp_path / "brokenplug.py").write_text("class Broken(:\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    ATTACKS.register("broken", "brokenplug:Broken", source="brokenplug")
    try:
        assert main(["ls", "attacks", "-v"]) == 1
        out = capsys.readouterr().out
        assert "attack broken\n  cannot read the options of brokenplug:Broken" in out
        assert "SyntaxError" in out
        for name in ATTACKS.names():
            assert f"attack {name}" in out
        assert main(["describe", "broken"]) == 2
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and "brokenplug:Broken" in err
    finally:
        ATTACKS.unregister("broken")


HELPERS = '''
import dataclasses

from uadbench.victims.base import VictimConfig


def run_field(default, **kw):  # as uadbench.config's: how a result is run, not what it is
    return dataclasses.field(default=default, metadata={"uadbench_run": True}, **kw)


def budget_field(default, **kw):  # as uadbench.config's: written 8 for 8/255
    return dataclasses.field(default=default, metadata={"uadbench_budget": True}, **kw)


@dataclasses.dataclass(frozen=True)
class NoisyConfig(VictimConfig):
    cache_dir: str = run_field("")
    """Where decoded masks are cached."""
    noise: float = budget_field(4 / 255)
    """Input noise added before the encoder."""


class Noisy:
    Config = NoisyConfig
'''


def test_run_and_budget_field_helpers_are_read_from_source_and_from_the_class(
    tmp_path, monkeypatch
):
    """A field declared with run_field is marked as a run setting, one declared with
    budget_field gets the budget unit, and the helper's first argument is the default —
    the same from the source (nothing imported) as from the imported class."""
    (tmp_path / "noisyplug.py").write_text(HELPERS)
    monkeypatch.syspath_prepend(str(tmp_path))
    static, _, how = options_of("noisyplug:Noisy")
    assert how == "source" and "noisyplug" not in sys.modules
    by_name = {o.name: o for o in static}
    assert by_name["cache_dir"].run and by_name["cache_dir"].default == "''"
    assert by_name["noise"].unit == "8 = 8/255" and by_name["noise"].default == "4/255"
    assert not by_name["noise"].run and "Input noise" in by_name["noise"].help
    import noisyplug

    imported, _, how = options_of(noisyplug.Noisy)
    assert how == "import"
    assert [(o.name, o.default, o.unit, o.run, o.help) for o in imported] == [
        (o.name, o.default, o.unit, o.run, o.help) for o in static
    ]
