from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from uadbench.attacks import ATTACKS
from uadbench.datasets import DATASETS
from uadbench.errors import UadbenchError, UnknownNameError
from uadbench.registry import Registry
from uadbench.victims import VICTIMS


class Base:
    pass


class Good(Base):
    pass


def test_register_get_alias_and_wildcards():
    import collections

    reg = Registry("thing", dict)
    reg.register("alpha-one", collections.Counter, aliases=("a1",))
    reg.register("alpha-two", "collections:OrderedDict")
    assert reg.get("A1") is collections.Counter
    assert reg.canonical("ALPHA-ONE") == "alpha-one"
    assert reg.names("alpha-*") == ["alpha-one", "alpha-two"]
    assert not reg.entry("alpha-two").loaded
    assert reg.get("alpha-two") is collections.OrderedDict  # lazy entry imported on first use


def test_did_you_mean_lists_choices():
    reg = Registry("attack", Base)
    reg.register("pata++", Good)
    reg.register("pata", Good)
    with pytest.raises(UnknownNameError) as ei:
        reg.canonical("ptaa")
    msg = str(ei.value)
    assert "Did you mean 'pata'" in msg and "Available:" in msg and "\n" not in msg


def test_duplicate_and_wrong_base_rejected():
    reg = Registry("thing", Base)
    reg.register("x", Good, aliases=("y",))
    with pytest.raises(UadbenchError):
        reg.register("y", Good)
    reg.register("bad", "collections:OrderedDict")
    with pytest.raises(UadbenchError, match="not a subclass"):
        reg.get("bad")


def test_prefix_entries():
    reg = Registry("victim", Base)
    reg.register("hf:", Good)
    assert reg.canonical("hf:facebook/sam-vit-base") == "hf:facebook/sam-vit-base"
    assert reg.get("hf:org/model") is Good
    with pytest.raises(UnknownNameError):
        reg.canonical("hf:")


def test_listing_imports_no_backend():
    code = (
        "import sys; from uadbench.victims import VICTIMS; from uadbench.attacks import ATTACKS;"
        "from uadbench.datasets import DATASETS; VICTIMS.names(); ATTACKS.names(); DATASETS.names();"
        "bad=[m for m in ('torch','segment_anything','transformers','ultralytics') if m in sys.modules];"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_builtin_registries_resolve():
    for reg in (ATTACKS, VICTIMS, DATASETS):
        for name in reg.names():
            reg.get(name)  # every lazy reference points at a real subclass


PLUGIN = '''
import dataclasses
import torch
from uadbench.attacks.base import Attack, AttackConfig

@dataclasses.dataclass(frozen=True)
class NoiseConfig(AttackConfig):
    pass

class SignNoise(Attack):
    """A third-party attack: random ±eps noise."""
    name = "sign-noise"
    Config = NoiseConfig
    def perturb(self, x, surrogate, ctx):
        g = ctx.torch_generator(x.device)
        return x + self.config.eps * (torch.randint(0, 2, x.shape, generator=g, device=x.device) * 2 - 1)
'''


@pytest.fixture
def plugin_path(tmp_path):
    """A plugin distribution installed as a dist-info directory on a path entry."""
    (tmp_path / "my_uad_plugin.py").write_text(textwrap.dedent(PLUGIN))
    dist = tmp_path / "my_uad_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: my-uad-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(
        "[uadbench.attacks]\nsign-noise = my_uad_plugin:SignNoise\n"
    )
    return tmp_path


def test_entry_point_plugin_is_discovered_and_runs(plugin_path, tmp_path):
    env = dict(os.environ, PYTHONPATH=str(plugin_path))
    ls = subprocess.run(
        [sys.executable, "-m", "uadbench.cli", "ls", "attacks"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert ls.returncode == 0, ls.stderr
    assert "sign-noise" in ls.stdout and "my-uad-plugin" in ls.stdout
    out = tmp_path / "run"
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "uadbench.cli",
            "run",
            "--attack",
            "sign-noise",
            "--victims",
            "seeded-sam-tiny",
            "--surrogate",
            "seeded-sam-tiny",
            "--limit",
            "1",
            "--out",
            str(out),
            "--no-progress",
            "--format",
            "csv",
        ],
        env=env,
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stderr
    from uadbench.store.rundir import load_rows

    rows = load_rows(out)
    assert set(rows.attack) == {"clean", "sign-noise"}
    pngs = list((out / "adv").glob("sign-noise-*/**/*.png"))
    assert len(pngs) == 1


def test_unregister_removes_name_and_aliases():
    reg = Registry("thing", dict)
    reg.register("x", dict, aliases=("ex",))
    reg.unregister("ex")
    assert "x" not in reg and "ex" not in reg
    reg.register("x", dict)  # the name is free again
