"""Every surrogate's taps against forward hooks on the full model.

``Victim.features(x, taps)`` is the surrogate's own early-exit path through the encoder.
Here the model's own full forward (the library's ``ImageEncoderViT`` / ``TinyViT`` /
``SamVisionEncoder`` forward, or a plain loop written here for the zoo TinyViT whose
forward is ours) runs with a forward hook on every block, and each tapped output must be
exactly the hooked output of that block index (so a tap one block off, a positional
embedding left out, or a patch merging applied at the wrong place turns these red). The
early exit is checked too: no block after the deepest tap runs.

SAM-family random encoders start with an all-zero positional embedding, which would make
"added or not" indistinguishable; the tests fill it with noise first.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from test_victims_common import SMALL_TINY_VIT

from uadbench.victims.base import Victim
from uadbench.victims.hq import HqSamViTB, HqSamViTTiny, build_hq_sam, build_hq_sam_tiny
from uadbench.victims.mobile import MobileSam, build_mobile_sam
from uadbench.victims.segment_anything import (
    PIXEL_MEAN,
    PIXEL_STD,
    TINY,
    SeededSamTiny,
    resized_hw,
)
from uadbench.zoo.models import ZOO

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _noisy_pos_embed(model: torch.nn.Module) -> torch.nn.Module:
    enc = model.image_encoder
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        enc.pos_embed.normal_(0, 0.5)
    return model


def _seeded() -> Victim:
    v = SeededSamTiny()
    _noisy_pos_embed(v.model)
    return v


def _hq_vit() -> Victim:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = build_hq_sam(TINY).eval().requires_grad_(False)
    return HqSamViTB().use_model(_noisy_pos_embed(model))


_TINY_VIT_MODEL: dict[str, torch.nn.Module] = {}


def _tiny_vit_model(builder) -> torch.nn.Module:
    key = builder.__name__
    if key not in _TINY_VIT_MODEL:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            _TINY_VIT_MODEL[key] = builder(SMALL_TINY_VIT).eval().requires_grad_(False)
    return _TINY_VIT_MODEL[key]


def _mobile() -> Victim:
    return MobileSam().use_model(_tiny_vit_model(build_mobile_sam))


def _hq_tiny() -> Victim:
    return HqSamViTTiny().use_model(_tiny_vit_model(build_hq_sam_tiny))


SURROGATES = {
    "seeded-sam-tiny": _seeded,
    "hq-sam-vit-b-small": _hq_vit,  # segment_anything_hq's ViT
    "mobilesam": _mobile,  # TinyViT
    "hq-sam-vit-tiny": _hq_tiny,  # TinyViT
    **{name: cls for name, cls in ZOO.items()},
}

_CACHE: dict[str, Victim] = {}


def surrogate(name: str) -> Victim:
    if name not in _CACHE:
        _CACHE[name] = SURROGATES[name]()
    return _CACHE[name]


def _blocks(v: Victim) -> list[torch.nn.Module]:
    """The encoder blocks in tap order (0-based over all stages)."""
    enc = v.model.sam.vision_encoder if hasattr(v.model, "sam") else v.model.image_encoder
    if hasattr(enc, "layers") and hasattr(enc.layers[0], "blocks"):  # TinyViT stages
        return [b for layer in enc.layers for b in layer.blocks]
    if hasattr(enc, "layers"):  # transformers SamVisionEncoder
        return list(enc.layers)
    return list(enc.blocks)


def _plain_tiny_vit_trunk(enc: torch.nn.Module, z: torch.Tensor) -> torch.Tensor:
    """The zoo TinyViT trunk written out here (its forward is uadbench's own code)."""
    h = enc.patch_embed(z)
    for layer in enc.layers:
        for blk in layer.blocks:
            h = blk(h)
        if layer.downsample is not None:
            h = layer.downsample(h)
    return h


def _full_forward(v: Victim, z: torch.Tensor) -> None:
    if hasattr(v.model, "sam"):  # zoo-hf-sam: transformers' SamVisionEncoder forward
        v.model.sam.vision_encoder(z)
    elif v.name == "zoo-tinyvit-sam":
        _plain_tiny_vit_trunk(v.model.image_encoder, z)
    else:  # segment_anything(_hq) ImageEncoderViT / TinyViT forward
        v.model.image_encoder(z)


class Hooks:
    """Forward hooks on every block: ``outputs[i]`` of the last call, ``ran`` indices."""

    def __init__(self, blocks):
        self.outputs: dict[int, torch.Tensor] = {}
        self.ran: list[int] = []
        self.handles = [b.register_forward_hook(self._hook(i)) for i, b in enumerate(blocks)]

    def _hook(self, i):
        def hook(_mod, _inp, out):
            self.outputs[i] = (out[0] if isinstance(out, tuple) else out).detach().clone()
            self.ran.append(i)

        return hook

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for h in self.handles:
            h.remove()


def _input(v: Victim, b: int | None = None) -> torch.Tensor:
    """A float batch in [0, 1], not square and not at the model's size (resize + pad);
    two images, one for the TinyViTs at 1024² (the slow ones)."""
    if b is None:
        b = 1 if v.img_size > 256 else 2
    g = torch.Generator().manual_seed(0)
    return torch.rand(b, 3, 40, 56, generator=g)


def _tap_sets(n: int) -> list[list[int]]:
    """Unsorted with the first and last block; a repeated tap (early exit after block 1)."""
    return [[n - 1, 0, n // 2], [1, 1]]


@pytest.mark.parametrize("name", list(SURROGATES))
def test_taps_equal_hooked_block_outputs_of_the_full_model(name):
    v = surrogate(name)
    blocks = _blocks(v)
    assert v.num_blocks == len(blocks) >= 4
    x = _input(v)
    z, _ = v._to_model_input(x)
    with torch.no_grad(), Hooks(blocks) as full:
        _full_forward(v, z)
    assert full.ran == list(range(len(blocks)))
    for taps in _tap_sets(len(blocks)):
        with torch.no_grad(), Hooks(blocks) as seen:
            feats = v.features(x, taps)
        assert len(feats) == len(taps)
        for t, f in zip(taps, feats):
            assert f.shape[0] == x.shape[0]
            torch.testing.assert_close(f, full.outputs[t], rtol=1e-5, atol=1e-5, msg=f"tap {t}")
        # early exit: the blocks up to the deepest tap ran, each once, and none after it
        assert seen.ran == list(range(max(taps) + 1)), (taps, seen.ran)


@pytest.mark.parametrize("name", list(SURROGATES))
def test_default_taps_are_in_range_and_features_are_differentiable(name):
    v = surrogate(name)
    taps = v.default_taps()
    assert taps and 0 <= min(taps) and max(taps) < v.num_blocks
    x = _input(v, 1).requires_grad_(True)
    feats = v.features(x, taps[-1:])
    feats[0].float().square().sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_sam_vit_taps_include_the_positional_embedding():
    """Block 0's input is patch embedding + positional embedding: hooked directly."""
    v = surrogate("seeded-sam-tiny")
    enc = v.model.image_encoder
    x = _input(v, 1)
    seen = {}
    h = enc.blocks[0].register_forward_pre_hook(lambda m, a: seen.setdefault("in", a[0]))
    try:
        with torch.no_grad():
            v.features(x, [0])
    finally:
        h.remove()
    z, _ = v._to_model_input(x)
    with torch.no_grad():
        expect = enc.patch_embed(z) + enc.pos_embed
    torch.testing.assert_close(seen["in"], expect)
    assert enc.pos_embed.abs().mean() > 0.1  # the embedding is not zero here


# ---------------------------------------------------------------------- default taps
@pytest.mark.parametrize(
    "n, expect",
    [
        (12, (3, 4, 5, 6)),  # SAM ViT-B: blocks 1/4 .. 7/12 of the depth, 0-based
        (24, tuple(range(6, 14))),
        (32, tuple(range(8, 18))),
        (8, (2, 3)),
        (6, (1, 2)),
        (2, (0,)),
        (1, (0,)),
    ],
)
def test_default_taps_by_depth(n, expect):
    class Depth(SeededSamTiny):
        num_blocks = n

    assert Depth().default_taps() == expect


# ---------------------------------------------------------------------- preprocessing
@pytest.mark.parametrize(
    "h, w, long_side, expect",
    [
        (480, 640, 1024, (768, 1024)),
        (640, 480, 1024, (1024, 768)),
        (2, 3, 4, (3, 4)),  # 2·4/3 = 2.67 rounds to 3 (truncation would give 2)
        (3, 2, 4, (4, 3)),
        (5, 8, 4, (3, 4)),  # 2.5 rounds half up
        (7, 10, 4, (3, 4)),  # 2.8
        (9, 40, 4, (1, 4)),  # 0.9
        (100, 100, 256, (256, 256)),
    ],
)
def test_resized_hw_rounds_the_short_side(h, w, long_side, expect):
    assert resized_hw(h, w, long_side) == expect


def _normalised(img01: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(PIXEL_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(PIXEL_STD).view(1, 3, 1, 1)
    return (img01 * 255.0 - mean) / std


def test_float_input_at_model_size_is_normalised_exactly():
    v = surrogate("seeded-sam-tiny")
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, size=(256, 256, 3), dtype=np.uint8)
    x = torch.as_tensor(img).permute(2, 0, 1)[None].float() / 255.0
    z, hw = v._to_model_input(x)
    assert hw == (256, 256) and z.shape == (1, 3, 256, 256)
    torch.testing.assert_close(z, _normalised(x), rtol=0, atol=1e-5)
    z8, hw8 = v._uint8_to_model_input(img)
    assert hw8 == hw
    torch.testing.assert_close(z, z8, rtol=0, atol=1e-5)


@pytest.mark.parametrize("hw", [(512, 384), (96, 128)])
def test_float_input_resized_like_the_uint8_path_and_zero_padded(hw):
    """Downscaling a fine checkerboard (antialiased, like the uint8 path's PIL resize) and
    upscaling a smooth image agree with the model's own uint8 preprocessing; the padding
    (right and bottom) is zero after normalisation."""
    v = surrogate("seeded-sam-tiny")
    h, w = hw
    yy, xx = np.mgrid[:h, :w]
    if h > 256:
        img = np.where((yy + xx) % 2 == 0, 230, 20).astype(np.uint8)[..., None].repeat(3, -1)
    else:
        img = np.stack([xx * 255 // w, yy * 255 // h, (xx + yy) * 127 // (h + w)], -1)
        img = img.astype(np.uint8)
    x = torch.as_tensor(img).permute(2, 0, 1)[None].float() / 255.0
    z, (nh, nw) = v._to_model_input(x)
    assert (nh, nw) == resized_hw(h, w, 256) and z.shape == (1, 3, 256, 256)
    z8, hw8 = v._uint8_to_model_input(img)
    assert hw8 == (nh, nw)
    inside = (z - z8)[..., :nh, :nw].abs()
    assert inside.mean() < 0.03 and inside.max() < 0.2, (inside.mean(), inside.max())
    assert (z[..., nh:, :] == 0).all() and (z[..., :, nw:] == 0).all()
    # an independent resize of the same float image: torch's antialiased bilinear
    ref = F.interpolate(x, (nh, nw), mode="bilinear", align_corners=False, antialias=True)
    torch.testing.assert_close(z[..., :nh, :nw], _normalised(ref), rtol=0, atol=1e-4)


# ---------------------------------------------------------------------- encoder outputs
def test_zoo_tinyvit_embedding_equals_a_plain_forward():
    """The zoo TinyViT's own forward (``run`` without taps: trunk, tokens to a grid, neck)
    against the same steps written out here."""
    v = surrogate("zoo-tinyvit-sam")
    enc = v.model.image_encoder
    z, _ = v._to_model_input(_input(v))
    with torch.no_grad():
        h = _plain_tiny_vit_trunk(enc, z)
        b, n, c = h.shape
        side = int(round(n**0.5))
        expect = enc.neck(h.reshape(b, side, side, c).permute(0, 3, 1, 2))
        got = enc(z)
    assert got.shape == (b, 64, 32, 32)
    torch.testing.assert_close(got, expect)


def test_zoo_hf_sam_embedding_equals_the_transformers_forward():
    v = surrogate("zoo-hf-sam")
    z, _ = v._to_model_input(_input(v))
    with torch.no_grad():
        got = v._run_vision(z)[0]
        expect = v.model.sam.vision_encoder(z).last_hidden_state
    torch.testing.assert_close(got, expect)


@pytest.mark.parametrize("name", ["mobilesam", "hq-sam-vit-tiny"])
def test_out_of_range_taps_are_refused(name):
    from uadbench.errors import UadbenchError

    v = surrogate(name)
    x = _input(v)
    last = v.num_blocks - 1
    for taps in ([], [-1], [-2, 1], [v.num_blocks], [0, v.num_blocks + 3]):
        with pytest.raises(UadbenchError, match=rf"out of range 0\.\.{last}$"):
            v.features(x, taps)
