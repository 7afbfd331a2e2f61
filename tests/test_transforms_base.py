"""The transform kind's base: registry, seeding, geometry, BPDA, hash-neutral late fields."""

import dataclasses

import numpy as np
import pytest
import torch

from uadbench.config import config_hash, late_field
from uadbench.engine.plan import resolve
from uadbench.transforms import TRANSFORMS
from uadbench.transforms.base import Geometry, Transform, transform_rng


def test_identity_resolves_and_returns_the_image():
    p = resolve("transform", "none")
    assert p.name == "identity" and p.label == "identity"
    img = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    t = p.cls(p.config)
    assert t.apply(img, np.random.default_rng(0)) is img
    with pytest.raises(Exception, match="Did you mean .identity."):
        TRANSFORMS.canonical("identty")


def test_transform_rng_pairs_clean_and_adversarial_but_not_samples():
    a = transform_rng(0, "img1", "abc").random(4)
    assert np.array_equal(a, transform_rng(0, "img1", "abc").random(4))
    for other in (transform_rng(1, "img1", "abc"), transform_rng(0, "img2", "abc")):
        assert not np.array_equal(a, other.random(4))
    assert not np.array_equal(a, transform_rng(0, "img1", "abd").random(4))


def test_geometry_maps_points_and_masks_back():
    # input 4x6 scaled by 0.5 and shifted by (1, 2) into a 6x8 canvas
    g = Geometry(sx=0.5, sy=0.5, tx=1.0, ty=2.0, height=6, width=8)
    assert np.allclose(g.points(np.array([[2.0, 4.0]])), [[2.0, 4.0]])
    out = np.zeros((6, 8), bool)
    out[2:4, 1:4] = True  # exactly where the input landed
    back = g.mask_back(out, 4, 6)
    assert back.all()
    out[:] = False
    out[2:4, 1:2] = True  # only the input's left third
    back = g.mask_back(out, 4, 6)
    assert back[:, :2].all() and not back[:, 2:].any()


class _Invert(Transform):
    name = "invert"

    def apply(self, image, rng):
        return 255 - image


def test_default_torch_path_is_bpda():
    x = torch.rand(2, 3, 4, 5, requires_grad=True)
    y = _Invert().torch(x, np.random.default_rng(0))
    ref = 1 - (x.detach() * 255).round() / 255
    assert torch.allclose(y, ref, atol=1e-6)
    (y * torch.arange(5.0)).sum().backward()
    assert torch.equal(x.grad, torch.arange(5.0).expand_as(x))  # straight-through


def test_late_field_keeps_the_hash_at_its_default_only():
    @dataclasses.dataclass(frozen=True)
    class Old:
        a: int = 1

    @dataclasses.dataclass(frozen=True)
    class New:
        a: int = 1
        b: int = late_field(0)

    assert config_hash("attack", "x", New()) == config_hash("attack", "x", Old())
    assert config_hash("attack", "x", New(b=2)) != config_hash("attack", "x", Old())
