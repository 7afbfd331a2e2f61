"""Expectation over transformation in the attacks: the settings parse and stay out of the
hash at their defaults, a step's gradient is the mean over distinct draws, eot off is the
plain attack, prompts move with a geometric draw."""

import dataclasses

import numpy as np
import pytest
import torch
from attack_helpers import TinyViTSurrogate, make_context, random_image

from uadbench.attacks.base import Attack, AttackConfig, AttackContext, to_tensor
from uadbench.config import config_hash
from uadbench.engine.plan import expand_attacks, resolve
from uadbench.errors import ConfigError
from uadbench.transforms.base import Geometry, Transform


def build(spec: str) -> Attack:
    p = resolve("attack", spec)
    return p.cls(p.config)


# ----------------------------------------------------------------------------- settings
def test_attack_lists_with_eot_specs_parse():
    plugins = expand_attacks("uad:eot=4,eot_transforms=jpeg:q=50,aa")
    assert [p.name for p in plugins] == ["uad", "aa"]
    assert plugins[0].config.eot == 4 and plugins[0].config.eot_transforms == ("jpeg:q=50",)
    (p,) = expand_attacks("tap:eot=2,eot_transforms=jpeg:q=75|blur:sigma=1")
    assert p.config.eot_transforms == ("jpeg:q=75", "blur:sigma=1")
    (p,) = expand_attacks("tap:eot=2,eot_transforms=[random-resize-pad:min_scale=0.5,fill=3]")
    assert p.config.eot_transforms == ("random-resize-pad:min_scale=0.5,fill=3",)
    # a victim name with a colon still parses
    assert resolve("victim", "sam-vit-b").name == "sam-vit-b"


@pytest.mark.parametrize(
    "spec,msg",
    [
        ("uad:eot=4", "needs eot_transforms"),
        ("uad:eot_transforms=jpeg", "eot=0"),
        ("uad:eot=2,eot_transforms=jpg", "Did you mean 'jpeg'"),
        ("uad:eot=2,eot_transforms=jpeg:q=0", "1..100"),
        ("feature-pgd:eot=-1,eot_transforms=jpeg", ">= 0"),
    ],
)
def test_bad_eot_settings_are_one_line_errors_up_front(spec, msg):
    with pytest.raises(ConfigError, match=msg) as err:
        resolve("attack", spec)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("name", ["uad", "feature-pgd", "attack-sam", "tap"])
def test_eot_at_its_default_keeps_the_hash(name):
    cfg = resolve("attack", name).config
    fields = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)}
    fields.pop("eot"), fields.pop("eot_transforms")
    # the same config class without the two late fields hashes alike
    bare = dataclasses.make_dataclass(
        "Bare", [(k, type(v), dataclasses.field(default=v)) for k, v in fields.items()], frozen=True
    )
    assert config_hash("attack", name, cfg) == config_hash("attack", name, bare())
    on = dataclasses.replace(cfg, eot=2, eot_transforms=("jpeg:q=75",))
    assert config_hash("attack", name, on) != config_hash("attack", name, cfg)


# ----------------------------------------------------------------------------- the maths
class _Linear(Attack):
    """One signed step on the linear loss Σ w·z of what the surrogate sees."""

    name = "linear-test"

    def __init__(self, config, w: torch.Tensor):
        super().__init__(config)
        self.w = w

    def perturb(self, x, surrogate, ctx):
        return self.pgd(x, lambda z: (z * self.w).flatten(1).sum(1), steps=1)


class _Plain:
    device = torch.device("cpu")


def test_a_step_follows_the_sign_of_the_mean_of_per_draw_gradients():
    """eot=2 over [blur, resize]: each step uses each transform once (the draws cycle through
    the list), so the step is sign(∇(w·blur(x)) + ∇(w·resize(x))), computed here by hand."""
    img = random_image(24, 32, 1)
    x = to_tensor([img], torch.device("cpu"))
    w = torch.randn(x.shape, generator=torch.Generator().manual_seed(0))
    cfg = AttackConfig(eot=2, eot_transforms=("blur:sigma=1.5", "resize:scale=0.5"))
    adv = _Linear(cfg, w)([img], _Plain(), AttackContext(["a"]))[0]

    grads = []
    for spec in cfg.eot_transforms:
        p = resolve("transform", spec)
        z = x.clone().requires_grad_(True)
        (p.cls(p.config).torch(z, np.random.default_rng(0)) * w).sum().backward()
        grads.append(z.grad)
    step = (grads[0] + grads[1]).sign()
    expected = (x + 2 / 255 * step).clamp(0, 1)
    want = (expected[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    assert np.array_equal(adv, want)
    # and the mean differs from either draw alone: a single-draw step would be caught
    for g in grads:
        assert (g.sign() != step).any()


class _Recorder(TinyViTSurrogate):
    """Records what the attack's loss feeds the encoder."""

    def __init__(self):
        super().__init__(depth=2)
        self.seen: list[torch.Tensor] = []

    def features(self, x, taps):
        if x.requires_grad:
            self.seen.append(x.detach().clone())
        return super().features(x, taps)


def test_eot_averages_over_distinct_seeded_draws():
    img = random_image(32, 32, 2)
    spec = "feature-pgd:steps=2,eot=4,eot_transforms=random-resize-pad:min_scale=0.5,taps=[0,1]"
    sur = _Recorder()
    adv = build(spec)([img], sur, AttackContext(["a"], seed=0))
    assert len(sur.seen) == 8  # 2 steps x 4 draws
    step1 = sur.seen[:4]
    for i in range(4):
        for j in range(i):
            assert not torch.equal(step1[i], step1[j])  # N draws, N different images
    assert not torch.equal(sur.seen[0], sur.seen[4])  # fresh draws every step
    again = build(spec)([img], _Recorder(), AttackContext(["a"], seed=0))
    other = build(spec)([img], _Recorder(), AttackContext(["a"], seed=1))
    assert np.array_equal(adv, again)
    assert not np.array_equal(adv, other)


@pytest.mark.parametrize("name", ["feature-pgd", "uad", "attack-sam"])
def test_eot_off_and_eot_over_identity_are_the_plain_attack_bit_for_bit(name):
    img = random_image(32, 32, 3)
    ctx = make_context(["a"], [img])
    small = "steps=2" if name != "uad" else "steps=2,deform_epochs=2,est_fidelity_iter=1"
    plain = build(f"{name}:{small}")([img], TinyViTSurrogate(depth=2), ctx)
    ident = build(f"{name}:{small},eot=1,eot_transforms=identity")
    assert np.array_equal(ident([img], TinyViTSurrogate(depth=2), ctx), plain)
    blurred = build(f"{name}:{small},eot=1,eot_transforms=blur:sigma=2")
    assert not np.array_equal(blurred([img], TinyViTSurrogate(depth=2), ctx), plain)


class _Shift(Transform):
    """Moves the image right by 4 px (a geometric transform with a known Geometry)."""

    name = "shift-test"
    differentiable = True

    def torch_geometry(self, x, rng):
        y = torch.nn.functional.pad(x[..., :-4], (4, 0))
        h, w = x.shape[-2:]
        return y, [Geometry(1.0, 1.0, 4.0, 0.0, h, w)] * x.shape[0]


def test_prompts_move_with_a_geometric_draw(monkeypatch):
    img = random_image(32, 32, 4)
    ctx = make_context(["a"], [img])
    sur = TinyViTSurrogate(depth=2)
    got = []
    real = sur.mask_logits

    def spy(x, prompts):
        got.append(prompts[0].coords.copy())
        return real(x, prompts)

    monkeypatch.setattr(sur, "mask_logits", spy)
    attack = build("attack-sam:steps=1,eot=1,eot_transforms=identity")
    monkeypatch.setattr(
        "uadbench.attacks.base.eot_transforms", lambda specs: [_Shift()] * len(specs)
    )
    attack([img], sur, ctx)
    moved = ctx.prompts[0].coords + np.array([4.0, 0.0, 4.0, 0.0])
    assert got and all(np.allclose(c, moved, equal_nan=True) for c in got)


def test_eot_keeps_device_and_dtype_of_the_input():
    """No device is hard-coded: the mean gradient lives where the iterate does."""
    x = torch.rand(2, 3, 16, 16, dtype=torch.float64, requires_grad=True)
    a = _Linear(AttackConfig(eot=2, eot_transforms=("blur", "random-resize-pad")), None)
    ts = [resolve("transform", s).cls() for s in ("blur", "random-resize-pad")]
    a._eot = (2, ts, [np.random.default_rng(0), np.random.default_rng(1)])
    loss, g = a.loss_grad(x, lambda z: z.flatten(1).sum(1))
    assert g.dtype == torch.float64 and g.device == x.device and loss.shape == (2,)


def test_eot_draws_do_not_depend_on_batch_mates():
    imgs = [random_image(32, 32, 8), random_image(32, 32, 9)]
    spec = "feature-pgd:steps=3,eot=2,eot_transforms=random-resize-pad|jpeg,taps=[0,1]"
    both = build(spec)(imgs, TinyViTSurrogate(depth=2), AttackContext(["a", "b"]))[1]
    alone = build(spec)(imgs[1:], TinyViTSurrogate(depth=2), AttackContext(["b"]))[0]
    # float batching may flip the sign of a few tiny gradient entries, nothing more
    assert np.mean(alone == both) > 0.9


@pytest.mark.parametrize("name", ["uad", "attack-sam-k", "tap"])
def test_eot_runs_in_the_model_frame_of_a_sam_surrogate(name):
    """seeded-sam-tiny shrinks the image into its input frame (attack_space=model): EOT
    transforms what the surrogate sees there; the budget still holds."""
    from uadbench.victims import VICTIMS

    sur = VICTIMS.get("seeded-sam-tiny")(device="cpu")
    img = random_image(120, 320, 7)  # larger than its 256-px input: shrunk to 96 x 256
    opts = "steps=2,eot=2,eot_transforms=random-resize-pad|jpeg:q=50"
    extra = {"uad": ",deform_epochs=2,est_fidelity_iter=1", "attack-sam-k": ",k=4"}
    attack = build(f"{name}:{opts}{extra.get(name, '')}")
    assert attack.frame(sur, (120, 320)) == (96, 256)  # the model-frame path is exercised
    out = attack([img], sur, make_context(["a"], [img]))[0]
    d = np.abs(out.astype(int) - img.astype(int))
    assert d.max() <= 8 and d.any()


class _RecordAll(TinyViTSurrogate):
    """Records every encoder input: (requires grad, image)."""

    def __init__(self):
        super().__init__(depth=2)
        self.seen: list[tuple[bool, torch.Tensor]] = []

    def features(self, x, taps):
        self.seen.append((x.requires_grad, x.detach().clone()))
        return super().features(x, taps)


@pytest.mark.parametrize("name", ["feature-pgd", "tap", "uad"])
def test_clean_references_get_the_same_draw_as_the_iterate(name):
    """Under EOT the loss compares f(T(x_adv)) with f(T(x)) for the same draw T: each
    iterate the encoder sees is followed by the clean image under the same resize-and-pad
    (same canvas, same padding), not by the untransformed clean image."""
    img = random_image(32, 40, 5)
    small = "steps=2" if name != "uad" else "steps=2,deform_epochs=1"
    spec = f"{name}:{small},eot=3,eot_transforms=[random-resize-pad:min_scale=0.4,fill=255]"
    sur = _RecordAll()
    build(spec)([img], sur, make_context(["a"], [img]))
    pairs = [
        (z, sur.seen[i + 1][1])
        for i, (grad, z) in enumerate(sur.seen[:-1])
        if grad and not sur.seen[i + 1][0]
    ]
    assert len(pairs) >= 6  # every draw of every step
    x = to_tensor([img], torch.device("cpu"))
    pads = set()
    for adv, ref in pairs:
        pad = (ref == 1.0).all(1)  # where the canvas shows the fill
        assert pad.any() and torch.equal(pad, (adv == 1.0).all(1))
        assert (adv - ref).abs().max() <= 8 / 255 + 1e-6  # the same draw, the same place
        assert not torch.equal(ref, x)
        pads.add(pad.numpy().tobytes())
    assert len(pads) > 1  # and the draws differ


class _ShiftByDraw(Transform):
    """Moves the image right by a drawn 2..9 px (a per-image geometry)."""

    name = "shift-by-draw-test"

    def torch_geometry(self, x, rng):
        s = int(rng.integers(2, 10))
        h, w = x.shape[-2:]
        return torch.nn.functional.pad(x[..., :-s], (s, 0)), [Geometry(1.0, 1.0, s, 0.0, h, w)]


def test_prompts_of_a_batch_with_a_prompt_less_image_get_their_own_image_s_draw(monkeypatch):
    from uadbench.eval.prompts import PromptSet

    imgs = [random_image(32, 32, 10), random_image(32, 32, 11)]
    ctx = make_context(["a", "b"], imgs)
    ctx.prompts[0] = PromptSet.from_lists()  # image a has no prompt: attack-sam skips it
    sur = TinyViTSurrogate(depth=2)
    got, real = [], sur.mask_logits

    def spy(x, prompts):
        got.append((x.detach().clone(), prompts[0].coords.copy()))
        return real(x, prompts)

    monkeypatch.setattr(sur, "mask_logits", spy)
    monkeypatch.setattr(
        "uadbench.attacks.base.eot_transforms", lambda specs: [_ShiftByDraw()] * len(specs)
    )
    build("attack-sam:steps=1,eot=3,eot_transforms=identity")(imgs, sur, ctx)
    assert len(got) == 3
    for x, coords in got:
        # the shift of image b in this draw: its first columns are the zero padding
        s = int((x[0].abs().sum((0, 1)) == 0).sum())
        moved = ctx.prompts[1].coords + np.array([s, 0.0, s, 0.0])
        assert np.allclose(coords, moved, equal_nan=True)


# ----------------------------------------------------------------------------- pinned
class _Gain(Transform):
    """A differentiable test transform: z -> k·z (exact torch path)."""

    name = "gain-test"
    differentiable = True

    def __init__(self, k: float):
        super().__init__()
        self.k = k

    def apply(self, image, rng):
        return image

    def torch(self, x, rng):
        return x * self.k


def test_loss_grad_returns_the_mean_loss_and_the_mean_gradient_of_the_draws():
    """eot=2 over [2·z, 3·z] on the loss Σ w·z: loss = 2.5·Σ w·x per image (the mean over
    the draws, not over the batch) and gradient = 2.5·w (a mean, not a sum)."""
    x = torch.rand(3, 3, 4, 5, requires_grad=True)
    w = torch.randn(3, 3, 4, 5, generator=torch.Generator().manual_seed(1))
    a = _Linear(AttackConfig(eot=2, eot_transforms=("identity",)), w)
    a._eot = (2, [_Gain(2.0), _Gain(3.0)], [np.random.default_rng(i) for i in range(3)])
    loss, g = a.loss_grad(x, lambda z: (z * w).flatten(1).sum(1))
    want = 2.5 * (x.detach() * w).flatten(1).sum(1)
    assert loss.shape == (3,) and torch.allclose(loss, want, atol=1e-5)
    assert torch.allclose(g, 2.5 * w, atol=1e-6)


@pytest.mark.parametrize("n,k", [(3, 2), (6, 3)])  # N not / a multiple of the list's length
def test_eot_draws_follow_the_documented_recipe(n, k):
    """Per image: the transform order is whole permutations of the list drawn until there
    are N (no more), then N seeds in [0, 2**63) from the same generator — re-implemented."""
    ts = [f"t{i}" for i in range(k)]
    a = _Linear(AttackConfig(eot=n, eot_transforms=("identity",)), None)
    a._eot = (n, ts, [np.random.default_rng(5), np.random.default_rng(6)])
    got = a.eot_draws()
    want = []
    for s in (5, 6):
        rng = np.random.default_rng(s)
        order = [int(i) for _ in range(-(-n // k)) for i in rng.permutation(k)]
        seeds = rng.integers(0, 2**63, size=n)
        want.append([(ts[order[d]], int(seeds[d])) for d in range(n)])
    assert got == [tuple(p[d] for p in want) for d in range(n)]


class _Move(Transform):
    """Shrinks nothing, only reports a Geometry (so the frame mapping can be read)."""

    name = "move-test"

    def torch_geometry(self, x, rng):
        h, w = x.shape[-2:]
        return x, [Geometry(0.5, 0.75, 8.0, 4.0, h, w)] * x.shape[0]


def test_a_draw_s_geometry_is_carried_into_the_surrogate_s_frame():
    """With attack_space=model the draw is applied at the image's own size (16×24) and the
    result resized into the frame (8×6: fy = 0.5, fx = 0.25): a point p of the frame moves
    to s·p + (fx·tx, fy·ty), the scales unchanged."""
    a = _Linear(AttackConfig(eot=1, eot_transforms=("identity",)), None)
    a._eot_full = (lambda z: z, (8, 6))
    x = torch.rand(1, 3, 16, 24)
    y, geos = a.eot_apply(x, ((_Move(), 0),))
    assert y.shape[-2:] == (8, 6)
    assert geos == [Geometry(0.5, 0.75, 8.0 * 0.25, 4.0 * 0.5, 8, 6)]


def test_moved_prompt_sets_scale_then_shift_both_corners():
    from uadbench.attacks.base import _move
    from uadbench.eval.prompts import PromptSet

    p = PromptSet(
        np.array(["point", "box"]),
        np.array([[4.0, 8.0, np.nan, np.nan], [2.0, 4.0, 6.0, 12.0]]),
        np.array([0, 1]),
        np.array([1, -1]),
    )
    q = _move(p, Geometry(0.5, 0.25, 3.0, 2.0, 10, 10))
    want = np.array([[5.0, 4.0, np.nan, np.nan], [4.0, 3.0, 6.0, 5.0]])
    np.testing.assert_allclose(q.coords, want)
    assert list(q.kinds) == ["point", "box"] and list(q.labels) == [1, -1]
