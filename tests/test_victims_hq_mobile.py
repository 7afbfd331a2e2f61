"""HQ-SAM and MobileSAM: official checkpoint layouts, HQ decoding, surrogate paths."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_victims_common import (
    SMALL_TINY_VIT,
    assert_mask_logits_in_prompt_batches,
    far_prompts,
    random_model,
    tiny_twin,
    two_object_image,
)

from uadbench.errors import UadbenchError
from uadbench.victims import VICTIMS
from uadbench.victims.hq import MOBILE_SAM_TINY_VIT, build_hq_sam, build_hq_sam_tiny
from uadbench.victims.mobile import build_mobile_sam
from uadbench.victims.segment_anything import SAM_B


def _meta(fn, arch):
    """State-dict layout without allocating (TinyViT's init needs real tensors)."""
    if "tiny" in fn.__name__ or fn is build_mobile_sam:
        return fn(arch).state_dict()
    with torch.device("meta"):
        return fn(arch).state_dict()


def test_mobilesam_module_tree_has_the_official_key_layout():
    """Key names and shapes of the released ``mobile_sam.pt`` (TinyViT-5M + SAM decoder)."""
    sd = _meta(build_mobile_sam, MOBILE_SAM_TINY_VIT)
    expect = {
        "image_encoder.patch_embed.seq.0.c.weight": (32, 3, 3, 3),
        "image_encoder.layers.0.blocks.0.conv1.c.weight": (256, 64, 1, 1),
        "image_encoder.layers.1.blocks.0.attn.attention_biases": (4, 49),
        "image_encoder.layers.2.blocks.5.attn.qkv.weight": (480, 160),
        "image_encoder.layers.3.blocks.1.local_conv.c.weight": (320, 1, 3, 3),
        "image_encoder.head.weight": (1000, 320),
        "image_encoder.neck.0.weight": (256, 320, 1, 1),
        "prompt_encoder.pe_layer.positional_encoding_gaussian_matrix": (2, 128),
        "mask_decoder.output_hypernetworks_mlps.3.layers.2.weight": (32, 256),
        "mask_decoder.iou_prediction_head.layers.2.weight": (4, 256),
    }
    for k, shape in expect.items():
        assert tuple(sd[k].shape) == shape, k
    assert not any("attention_bias_idxs" in k for k in sd)  # non-persistent in the release too
    n = sum(v.numel() for k, v in sd.items() if "running" not in k and "num_batches" not in k)
    assert 9.5e6 < n < 10.5e6  # TinyViT-5M (+ unused 1000-class head) + 4M SAM decoder


def test_hq_sam_module_tree_has_the_official_key_layout():
    sd = _meta(build_hq_sam, SAM_B)
    assert tuple(sd["mask_decoder.hf_token.weight"].shape) == (1, 256)
    assert tuple(sd["mask_decoder.hf_mlp.layers.2.weight"].shape) == (32, 256)
    assert tuple(sd["mask_decoder.compress_vit_feat.0.weight"].shape) == (768, 256, 2, 2)
    assert tuple(sd["mask_decoder.embedding_maskfeature.3.weight"].shape) == (32, 64, 3, 3)
    assert tuple(sd["image_encoder.blocks.11.attn.rel_pos_h"].shape) == (127, 64)
    tiny = _meta(build_hq_sam_tiny, MOBILE_SAM_TINY_VIT)
    assert tuple(tiny["mask_decoder.compress_vit_feat.0.weight"].shape) == (160, 256, 2, 2)


def _loaded(name, tmp_path, monkeypatch, seed=0, **cfg):
    monkeypatch.setenv("UADBENCH_CHECKPOINTS", str(tmp_path))
    twin = tiny_twin(VICTIMS.get(name))
    torch.save(random_model(twin, seed).state_dict(), tmp_path / twin.filename)
    return twin(twin.Config(**cfg))


def test_hq_token_only_changes_the_masks(tmp_path, monkeypatch):
    img, prompts = two_object_image(), far_prompts()
    both = _loaded("hq-sam-vit-b", tmp_path, monkeypatch).predict(img, prompts)
    hq_only = _loaded("hq-sam-vit-b", tmp_path, monkeypatch, hq_token_only=True).predict(
        img, prompts
    )
    assert both.shape == hq_only.shape and not np.array_equal(both, hq_only)


def test_hq_decoder_reads_the_early_encoder_features(tmp_path, monkeypatch):
    """HQ-SAM's extra input: zeroing the intermediate features must change the masks."""
    victim = _loaded("hq-sam-vit-l", tmp_path, monkeypatch)
    img, prompts = two_object_image(), far_prompts()
    state = victim.embed(img)
    a = victim.decode(state, prompts, img.shape[:2])
    state["interm"] = torch.zeros_like(state["interm"])
    b = victim.decode(state, prompts, img.shape[:2])
    assert not torch.equal(a, b)


@pytest.mark.parametrize("name", ["hq-sam-vit-h", "mobilesam"])
def test_surrogate_features_early_exit_and_gradients(name, tmp_path, monkeypatch):
    victim = _loaded(name, tmp_path, monkeypatch)
    enc = victim.model.image_encoder
    blocks = (
        list(enc.blocks)
        if hasattr(enc, "blocks")
        else [b for layer in enc.layers for b in layer.blocks]
    )
    assert victim.num_blocks == len(blocks)
    ran = []
    hooks = [
        b.register_forward_hook(lambda m, i, o, k=k: ran.append(k)) for k, b in enumerate(blocks)
    ]
    neck = enc.neck.register_forward_hook(lambda m, i, o: ran.append("neck"))
    x = torch.rand(1, 3, 48, 64, requires_grad=True)
    try:
        feats = victim.features(x, [2, 1])
    finally:
        for h in [*hooks, neck]:
            h.remove()
    assert ran == [0, 1, 2]  # nothing after the deepest tap, no neck
    assert len(feats) == 2 and feats[0].shape != () and feats[0].ndim >= 3
    feats[0].float().square().mean().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_hq_mask_logits_per_image_and_differentiable(tmp_path, monkeypatch):
    victim = _loaded("hq-sam-vit-b", tmp_path, monkeypatch)
    x = torch.rand(2, 3, 48, 64, requires_grad=True)
    one = far_prompts()
    logits = victim.mask_logits(x, [one, one.subset(np.array([0, 3]))])
    assert [t.shape[0] for t in logits] == [4, 2]
    (logits[0].sum() + logits[1].sum()).backward()
    assert x.grad[0].abs().sum() > 0 and x.grad[1].abs().sum() > 0
    with torch.no_grad():  # image 1's logits come from image 1's features
        alone = victim.mask_logits(x[1:].detach(), [one.subset(np.array([0, 3]))])[0]
    torch.testing.assert_close(alone, logits[1].detach(), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", ["sam-vit-b", "hq-sam-vit-b", "mobilesam"])
def test_mask_logits_decode_prompt_batch_prompts_per_call(name, tmp_path, monkeypatch):
    """Attack-SAM-K sends 400 prompts per image through the differentiable path; they
    are decoded `prompt_batch` at a time with the same logits and gradients as one call."""
    assert_mask_logits_in_prompt_batches(_loaded(name, tmp_path, monkeypatch))


def test_small_tinyvit_is_still_tinyvit():
    """The test stand-in differs from MobileSAM's encoder only in widths/depths."""
    a, b = SMALL_TINY_VIT, MOBILE_SAM_TINY_VIT
    assert (a.img_size, a.prompt_dim, a.embed_dims[-1]) == (
        b.img_size,
        b.prompt_dim,
        b.embed_dims[-1],
    )


def test_without_segment_anything_hq_entries_stay_and_say_what_to_install(monkeypatch):
    import uadbench.victims.hq as hq
    import uadbench.victims.mobile as mobile

    monkeypatch.setattr(hq, "hq_available", lambda: False)
    monkeypatch.setattr(mobile, "hq_available", lambda: False)
    for name in ("hq-sam-vit-b", "hq-sam-vit-tiny", "mobilesam"):
        cls = VICTIMS.get(name)
        st = cls.weights_status(cls.Config())
        assert not st.found and "pip install uadbench[hq]" in st.detail
        with pytest.raises(UadbenchError, match=r"pip install uadbench\[hq\]"):
            _ = cls().model
