from __future__ import annotations

import dataclasses

import pytest

from uadbench.config import build_config, config_hash, label, parse_spec, split_specs
from uadbench.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class Cfg:
    eps: float = 8 / 255
    steps: int = 40
    taps: tuple[int, ...] = ()
    fidelity_grad: bool = False
    mode: str = "patch"
    ckpt: str | None = None


def test_parse_spec_with_options_and_prefixed_names():
    s = parse_spec("uad:deform_epochs=10,warp_size=2")
    assert s.name == "uad" and s.overrides == (("deform_epochs", "10"), ("warp_size", "2"))
    s = parse_spec("hf:facebook/sam-vit-base")
    assert s.name == "hf:facebook/sam-vit-base" and s.overrides == ()
    s = parse_spec("hf:facebook/sam-vit-base:prompt_batch=8")
    assert s.name == "hf:facebook/sam-vit-base" and s.overrides == (("prompt_batch", "8"),)
    s = parse_spec("tap:taps=[3,4,5],eps=4/255")
    assert dict(s.overrides) == {"taps": "[3,4,5]", "eps": "4/255"}


def test_split_specs_keeps_options_with_their_attack():
    assert split_specs("uad,aa,tap") == ["uad", "aa", "tap"]
    assert split_specs("uad:deform_epochs=10,warp_size=2,aa") == [
        "uad:deform_epochs=10,warp_size=2",
        "aa",
    ]
    assert split_specs("uad:taps=[3,4],aa:eps=4/255") == ["uad:taps=[3,4]", "aa:eps=4/255"]


def test_build_config_types():
    c = build_config(
        Cfg,
        {"eps": "4/255", "steps": "7", "taps": "[3,4]", "fidelity_grad": "true", "ckpt": "none"},
    )
    assert c.eps == pytest.approx(4 / 255) and c.steps == 7 and c.taps == (3, 4)
    assert c.fidelity_grad is True and c.ckpt is None
    assert build_config(Cfg, {"taps": "3|4|5"}).taps == (3, 4, 5)


def test_build_config_errors_are_one_line_with_suggestion():
    with pytest.raises(ConfigError) as ei:
        build_config(Cfg, {"step": "3"}, owner="attack uad")
    assert "Did you mean 'steps'" in str(ei.value) and "\n" not in str(ei.value)
    with pytest.raises(ConfigError, match="expected an integer"):
        build_config(Cfg, {"steps": "many"})
    with pytest.raises(ConfigError, match="true or false"):
        build_config(Cfg, {"fidelity_grad": "maybe"})


def test_hash_is_content_based_and_label_shows_changes():
    a, b = Cfg(), build_config(Cfg, {"eps": "8/255"})
    assert config_hash("attack", "x", a) == config_hash("attack", "x", b)
    c = build_config(Cfg, {"eps": "4/255"})
    assert config_hash("attack", "x", a) != config_hash("attack", "x", c)
    assert config_hash("attack", "x", a) != config_hash("attack", "y", a)
    assert label("x", a) == "x"
    assert label("x", c) == "x[eps=4/255]"
