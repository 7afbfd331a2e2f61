"""Every registered attack, tested by being registered (budget, effect, objective, seeds),
plus the baselines' specifics. Runs on the tiny stand-in surrogate of attack_helpers."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
from attack_helpers import (
    FakePool,
    TinyViTSurrogate,
    make_context,
    one_thread,  # noqa: F401 (autouse: one torch thread)
    random_image,
    sign_noise_images,
    to_float,
)

from uadbench.attacks import ATTACKS
from uadbench.attacks.attack_sam import AttackSamK, clip_mse
from uadbench.attacks.base import Attack, AttackContext
from uadbench.attacks.feature_pgd import (
    draw_other_images,
)
from uadbench.attacks.transfer import PATA, TAP, dominance, power_transform
from uadbench.config import build_config, config_hash
from uadbench.errors import ConfigError
from uadbench.eval.prompts import PromptSet

NAMES = ATTACKS.names()
#: name → registered by uadbench itself (not an installed plugin)
BUILTIN = {e.name: e.source == "builtin" for e in ATTACKS.entries()}
#: few steps so that the whole file stays fast
FAST = {"steps": 6, "deform_epochs": 4, "est_fidelity_iter": 2, "k": 40}


def make_attack(name: str, **over):
    cls = ATTACKS.get(name)
    fields = {f.name for f in dataclasses.fields(cls.Config)}
    opts = {k: v for k, v in {**FAST, **over}.items() if k in fields}
    return cls(build_config(cls.Config, opts, owner=name))


@pytest.fixture(scope="module")
def surrogate():
    return TinyViTSurrogate()


@pytest.fixture(scope="module")
def images():
    a = random_image(64, 64, 1)
    b = random_image(64, 64, 2)
    b[:16] = 255  # saturated rows: the budget must also respect [0, 255]
    b[-16:] = 0
    return [a, b]


def run(name, images, surrogate, seed=0, pool=None, **over):
    attack = make_attack(name, **over)
    ctx = make_context(["img-a", "img-b"][: len(images)], images, seed=seed, pool=pool)
    return attack, ctx, attack(images, surrogate, ctx)


class RecordingSurrogate(TinyViTSurrogate):
    """The tiny surrogate, keeping every input that carries a gradient: the iterates an
    attack differentiates through (clean, target and competitor features are computed
    without one)."""

    def __init__(self):
        super().__init__()
        self.iterates: list[torch.Tensor] = []

    def _seen(self, x: torch.Tensor) -> None:
        if x.requires_grad:
            self.iterates.append(x.detach().clone())

    def features(self, x, taps):
        self._seen(x)
        return super().features(x, taps)

    def mask_logits(self, x, prompts):
        self._seen(x)
        return super().mask_logits(x, prompts)

    def point_group_logits(self, x, points):
        self._seen(x)
        return super().point_group_logits(x, points)


def objective_of(attack, surrogate, ctx, clean: torch.Tensor):
    """The attack's own declared objective (lower = the attack did its job), or a skip for
    an attack that declares none (a third-party plugin)."""
    score = attack.objective(surrogate, clean, ctx)
    if score is None:
        pytest.skip(f"attack {attack.name!r} declares no objective()")
    return score


# ----------------------------------------------------------------------------- registry-wide
@pytest.mark.parametrize("name", NAMES)
def test_every_iterate_stays_in_the_budget_and_the_saved_image_uses_it(name, images):
    """Observed inside the attack (the base's final clip would hide an attack that left the
    ball): every input the attack differentiates through is within ε of the clean image and
    in [0, 1]; the saved image uses the whole integer budget."""
    surrogate = RecordingSurrogate()
    _, _, out = run(name, images, surrogate, eps=3 / 255, alpha=1 / 255)
    clean = to_float(images)
    for z in surrogate.iterates:
        assert z.shape == clean.shape
        assert (z - clean).abs().max() <= 3 / 255 + 1e-6 and z.min() >= 0 and z.max() <= 1
    for c, adv in zip(images, out):
        assert adv.dtype == np.uint8 and adv.shape == c.shape
        assert np.abs(adv.astype(int) - c.astype(int)).max() == 3  # reaches the budget


@pytest.mark.parametrize("name", NAMES)
def test_changes_the_image_and_moves_its_objective(name, images, surrogate):
    attack, ctx, out = run(name, images, surrogate)
    for clean, adv in zip(images, out):
        assert np.abs(adv.astype(int) - clean.astype(int)).mean() > 1.0
    clean = to_float(images)
    score = objective_of(attack, surrogate, ctx, clean)
    obj_adv = score(to_float(out))
    obj_noise = score(to_float(sign_noise_images(images, attack.config.eps)))
    obj_clean = score(clean)
    assert torch.all(obj_adv < obj_noise), (obj_adv, obj_noise)
    assert torch.all(obj_adv < obj_clean), (obj_adv, obj_clean)


def test_builtin_attacks_declare_their_objective_and_randomness():
    """What lets the registry-wide tests run without per-name branches."""
    for name in [n for n in NAMES if BUILTIN[n]]:
        cls = ATTACKS.get(name)
        assert cls.objective is not Attack.objective, name
        assert cls.uses_randomness in (True, False), name


@pytest.mark.parametrize("name", NAMES)
def test_seeded(name, images, surrogate):
    one = run(name, images, surrogate, seed=1)[2]
    again = run(name, images, surrogate, seed=1)[2]
    other = run(name, images, surrogate, seed=2)[2]
    assert all(np.array_equal(a, b) for a, b in zip(one, again))
    same = all(np.array_equal(a, b) for a, b in zip(one, other))
    declared = ATTACKS.get(name).uses_randomness
    if declared is not None:
        assert same == (not declared)


@pytest.mark.parametrize("name", NAMES)
def test_result_does_not_depend_on_batch_mates(name, images, surrogate):
    """Randomness is per sample: image b attacked alone ≈ attacked in a batch with a."""
    both = run(name, images, surrogate)[2]
    attack = make_attack(name)
    ctx = AttackContext(
        ["img-b"], 0, [make_context(["x", "y"], images).prompts[1]], FakePool().draw_image
    )
    alone = attack([images[1]], surrogate, ctx)[0]
    # float batching may flip the sign of a few tiny gradient entries, nothing more
    assert np.mean(alone == both[1]) > 0.9


@pytest.mark.parametrize("name", NAMES)
def test_config_round_trip(name):
    cls = ATTACKS.get(name)
    cfg = build_config(cls.Config, {"eps": "4/255", "alpha": "1/255", "steps": "7"})
    assert math.isclose(cfg.eps, 4 / 255) and cfg.steps == 7
    assert config_hash("attack", name, cfg) == config_hash(
        "attack", name, build_config(cls.Config, {"eps": "4/255", "alpha": "1/255", "steps": "7"})
    )
    assert (
        cls.__doc__
        and "Example" in cls.__doc__
        and "Threat model" in (cls.__doc__ + (cls.__mro__[1].__doc__ or ""))
    )


def test_amp_option_validated():
    with pytest.raises(ConfigError):
        build_config(ATTACKS.get("tap").Config, {"amp": "fp8"})


@pytest.mark.parametrize("name", ["feature-pgd", "attack-sam-k"])
def test_bf16_autocast_runs_on_cpu(name, images, surrogate):
    out = run(name, images, surrogate, amp="bf16")[2]
    assert np.abs(out[0].astype(int) - images[0].astype(int)).max() == 8


# ----------------------------------------------------------------------------- specifics
def test_attack_sam_needs_prompts(images, surrogate):
    with pytest.raises(ConfigError, match="prompt"):
        make_attack("attack-sam")(images, surrogate, AttackContext(["a", "b"]))


@pytest.mark.parametrize("name", ["aa", "pata", "pata++"])
def test_dataset_attacks_need_draw_image(name, images, surrogate):
    assert ATTACKS.get(name).uses_dataset
    with pytest.raises(ConfigError, match="draw"):
        make_attack(name)(images, surrogate, AttackContext(["a", "b"]))


def test_clip_mse_only_pushes_logits_above_the_clip():
    m = torch.tensor([[-12.0, -10.0, -4.0, 2.0]], requires_grad=True)
    loss = clip_mse(m, -10.0)
    assert torch.isclose(loss, torch.tensor((6.0**2 + 12.0**2) / 4))
    loss.backward()
    assert (
        m.grad[0, 0] == 0 and m.grad[0, 1] == 0 and (m.grad[0, 2:] > 0).all()
    )  # descent lowers them
    assert clip_mse(torch.full((2, 3), -11.0), -10.0) == 0


def test_attack_sam_leaves_an_image_without_prompts_alone(images, surrogate):
    ctx = make_context(["img-a", "img-b"], images)
    ctx.prompts = [ctx.prompts[0], PromptSet.from_lists()]
    out = make_attack("attack-sam")(images, surrogate, ctx)
    assert np.abs(out[0].astype(int) - images[0].astype(int)).mean() > 1
    assert np.array_equal(out[1], images[1])


def test_attack_sam_k_points():
    ctx = AttackContext(["s"], seed=3)
    ps = AttackSamK().prompts_for(torch.zeros(1, 3, 30, 50), ctx)[0]
    assert len(ps) == 400 and ps.is_point.all() and (ps.labels == 1).all()
    xy = ps.coords[:, :2]
    assert xy[:, 0].min() >= 0 and xy[:, 0].max() <= 49 and xy[:, 1].max() <= 29
    assert len({tuple(p) for p in xy}) == 400  # distinct pixels
    assert xy[:, 0].std() > 10  # spread over the whole image, not a corner
    tiny = AttackSamK().prompts_for(torch.zeros(1, 3, 10, 10), ctx)[0]
    assert len(tiny) == 100  # fewer pixels than K


def test_targets_come_from_the_dataset_resized_and_seeded():
    pool = FakePool()
    ctx = AttackContext(["pool0", "pool1"], seed=4, draw_image=pool.draw_image)
    t1 = draw_other_images(ctx, (33, 47), torch.device("cpu"))
    t2 = draw_other_images(ctx, (33, 47), torch.device("cpu"))
    assert t1.shape == (2, 3, 33, 47) and 0 <= t1.min() and t1.max() <= 1
    assert torch.equal(t1, t2)
    # never the image itself: pool0's target is not pool0 (resize pool0 and compare)
    own = torch.nn.functional.interpolate(
        torch.from_numpy(pool.images["pool0"]).permute(2, 0, 1)[None].float() / 255,
        size=(33, 47),
        mode="bilinear",
        antialias=True,
        align_corners=False,
    )
    assert not torch.allclose(t1[0], own[0], atol=1e-3)


def test_pata_pp_draws_a_fresh_competitor_every_step(images, surrogate):
    calls = {}
    for name in ("pata", "pata++"):
        pool = FakePool()
        run(name, images[:1], surrogate, pool=pool, steps=5)
        calls[name] = pool.calls
    assert calls["pata"] == 2  # one target + one competitor
    assert calls["pata++"] == 1 + 5  # one target + one competitor per step


def test_pata_dominance_regulariser():
    a = [torch.tensor([[1.0, 0.0]])]
    c = [torch.tensor([[0.0, 1.0]])]
    assert torch.allclose(dominance(a, c), torch.tensor([0.0]), atol=1e-6)  # equal shares
    big = [torch.tensor([[3.0, 0.0]])]
    assert dominance(big, c) > 0.5  # adversarial features dominate the mix
    assert PATA.Config().pata_lambda == 0.1


def test_tap_smoothness_penalty_scaled_to_the_encoder_frame():
    tap = TAP()
    x = torch.zeros(1, 3, 96, 96)
    d = torch.full_like(x, 3 / 255)
    own = tap.smoothness(x, x + d, frame=96)
    sam = tap.smoothness(x, x + d, frame=1024)
    std = torch.tensor([58.395, 57.12, 57.375])
    expected = 0.01 * (3 / std).sum() * 32 * 32  # Σ over 3 channels × 32×32 pooled cells
    assert torch.allclose(own, expected.reshape(1), rtol=1e-5)
    assert torch.allclose(sam / own, torch.tensor((1024 / 96) ** 2), rtol=1e-5)


def test_power_transform_has_finite_gradient_at_zero():
    z = torch.tensor([0.0, 4.0, -9.0], requires_grad=True)
    out = power_transform(z, 0.5)
    assert torch.allclose(out, torch.tensor([0.0, 2.0, -3.0]))
    out.sum().backward()
    assert torch.isfinite(z.grad).all()


@pytest.fixture(scope="module")
def seeded_sam_tiny():
    from uadbench.victims import VICTIMS

    return VICTIMS.get("seeded-sam-tiny")(device="cpu")


@pytest.mark.parametrize("name", NAMES)
def test_runs_on_seeded_sam_tiny(name, seeded_sam_tiny):
    """Integration with the real SAM surrogate path (2 steps only)."""
    img = [random_image(48, 64, 7)]
    attack = make_attack(name, steps=2, deform_epochs=2, est_fidelity_iter=1, k=16, alpha=1 / 255)
    out = attack(img, seeded_sam_tiny, make_context(["img-a"], img))[0]
    diff = np.abs(out.astype(int) - img[0].astype(int))
    assert diff.mean() > 0.5
    if BUILTIN[name]:  # (a plugin need not step by α)
        # two steps of α = 1 level (+ TAP's Gaussian start, + rounding) inside the ε = 8
        # ball: the final clip to 8 would not show a step of ε, this bound does
        assert diff.max() <= 4


PLUGIN = '''
import dataclasses
import torch
from uadbench.attacks.base import Attack, AttackConfig, AttackContext


@dataclasses.dataclass(frozen=True)
class NoiseConfig(AttackConfig):
    pass


class PluginNoise(Attack):
    """A third-party attack with no objective() and no uses_randomness: ±eps noise drawn
    per image.

    Threat model: L∞. Example: uadbench run --attack plugin-noise"""

    name = "plugin-noise"
    Config = NoiseConfig

    def perturb(self, x, surrogate, ctx):
        rows = []
        for sid in ctx.sample_ids:
            g = AttackContext([sid], ctx.seed).torch_generator(x.device)
            rows.append(torch.randint(0, 2, x.shape[1:], generator=g, device=x.device))
        return x + self.config.eps * (torch.stack(rows) * 2 - 1)
'''


def test_a_plugin_without_objective_does_not_break_the_registry_wide_tests(tmp_path):
    """An installed attack plugin (entry point) that declares neither objective() nor
    uses_randomness: this file's registry-wide tests run on it and pass or skip."""
    import os
    import subprocess
    import sys
    import textwrap
    from pathlib import Path

    (tmp_path / "uad_noise_plugin.py").write_text(textwrap.dedent(PLUGIN))
    dist = tmp_path / "uad_noise_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: uad-noise-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(
        "[uadbench.attacks]\nplugin-noise = uad_noise_plugin:PluginNoise\n"
    )
    here = Path(__file__).resolve()
    path = os.pathsep.join([str(tmp_path), str(here.parents[1]), os.environ.get("PYTHONPATH", "")])
    res = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs", str(here)]
        + ["-k", "plugin-noise"],
        env=dict(os.environ, PYTHONPATH=path),
        cwd=here.parent,
        capture_output=True,
        text=True,
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-2000:]
    assert "passed" in res.stdout and "failed" not in res.stdout
    assert "declares no objective" in res.stdout  # skipped, not silently passed
