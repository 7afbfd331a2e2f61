"""README's "Writing a plugin" example works as printed: its attack registers through the
registry API, `describe` lists its options with their meanings and unit, it runs in a real
`api.run` on a tiny image, respects the budget and does what its docstring says (moves the
surrogate's features towards a grey image's); its entry-point line names that class."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from uadbench import api
from uadbench.attacks import ATTACKS
from uadbench.attacks.base import AttackContext
from uadbench.cli import main
from uadbench.victims import VICTIMS

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11

README = Path(__file__).resolve().parent.parent / "README.md"


def _section() -> str:
    text = README.read_text()
    return text[text.index("## Writing a plugin") : text.index("## Python API")]


@pytest.fixture
def example(tmp_path, monkeypatch):
    """The README's module written as my_attacks/grey.py and registered lazily by name."""
    code = re.search(r"```python\n(# my_attacks/grey\.py\n.*?)```", _section(), re.S).group(1)
    pkg = tmp_path / "my_attacks"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "grey.py").write_text(code)
    monkeypatch.syspath_prepend(str(tmp_path))
    ATTACKS.register("grey-target", "my_attacks.grey:GreyTarget", source="my-attacks")
    yield
    ATTACKS.unregister("grey-target")
    sys.modules.pop("my_attacks.grey", None)
    sys.modules.pop("my_attacks", None)


def test_the_entry_point_line_names_the_example_class():
    toml = re.search(r"```toml\n(.*?)```", _section(), re.S).group(1)
    eps = tomllib.loads(toml)["project"]["entry-points"]["uadbench.attacks"]
    assert eps == {"grey-target": "my_attacks.grey:GreyTarget"}


def test_describe_lists_the_examples_options(example, capsys):
    assert main(["describe", "grey-target"]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: line for line in out.splitlines() if line and line[0].isalpha()}
    assert "Level of the uniform target image" in rows["grey"] and "0.5" in rows["grey"]
    assert "radius of the random start" in rows["start_noise"]
    assert "[0, 1] range" in rows["start_noise"] and "1/255" in rows["start_noise"]
    assert "8/255" in rows["eps"] and "[plugin: my-attacks]" in out
    assert main(["describe", "grey-target"]) == 0 and "my_attacks.grey" not in sys.modules


def test_the_example_runs_and_moves_features_towards_grey(example, tmp_path):
    res = api.run(
        attacks="grey-target:steps=1",
        victims="seeded-sam-tiny",
        surrogate="seeded-sam-tiny",
        dataset="samples:max_side=32",
        limit=1,
        out=tmp_path / "run",
        progress=False,
    )
    assert res.ok
    rows = api.rows(res.run_dir)
    assert set(rows["attack"]) == {"clean", "grey-target[steps=1]"}, set(rows["attack"])
    # the attack itself: within the budget, and closer to the grey image's features
    cls = ATTACKS.get("grey-target")
    attack = cls(cls.Config(steps=3))
    surrogate = VICTIMS.get("seeded-sam-tiny")(None)
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (32, 48, 3), dtype=np.uint8)
    (adv,) = attack([image], surrogate, AttackContext(sample_ids=["a"], seed=0))
    diff = np.abs(adv.astype(int) - image.astype(int))
    assert 0 < diff.max() <= 8
    to_x = [torch.from_numpy(im).permute(2, 0, 1)[None].float() / 255 for im in (image, adv)]
    tap = surrogate.num_blocks - 1
    with torch.no_grad():
        grey = surrogate.features(torch.full_like(to_x[0], 0.5), [tap])[0]
        d = [float((surrogate.features(x, [tap])[0] - grey).pow(2).mean()) for x in to_x]
    assert d[1] < d[0]
    with pytest.raises(Exception, match="grey=2"):
        ATTACKS.get("grey-target").Config(grey=2.0)
