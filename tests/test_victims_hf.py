"""The ``hf:`` victims (transformers) and the segment-anything → transformers conversion."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from test_victims_common import (
    far_prompts,
    hf_tiny,
    make_masks_nontrivial_,
    two_object_image,
    write_hf_snapshot,
)

from uadbench.errors import UadbenchError
from uadbench.eval.metrics import iou
from uadbench.eval.prompts import PromptSet
from uadbench.victims import VICTIMS
from uadbench.victims.convert import hf_sam_config, sam_to_hf
from uadbench.victims.hf import HfVictim, cached_hf_models, resolve_hf_model
from uadbench.victims.segment_anything import TINY, SeededSamTiny
from uadbench.victims.status import available_victims, victim_status


def _smooth_image(h: int = 150, w: int = 200) -> np.ndarray:
    """Non-square, needs resizing, smooth edges (both resizers agree up to rounding)."""
    from scipy.ndimage import gaussian_filter

    img = np.full((h, w, 3), 20, np.uint8)
    img[20:90, 10:80] = (220, 30, 30)
    yy, xx = np.mgrid[:h, :w]
    img[(yy - 80) ** 2 + (xx - 150) ** 2 < 30**2] = (30, 60, 220)
    return gaussian_filter(img.astype(float), (3, 3, 0)).astype(np.uint8)


@pytest.fixture
def hub(tmp_path, monkeypatch):
    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    return cache


def _save(model, proc):
    def save(d):
        model.save_pretrained(d)
        proc.save_pretrained(d)

    return save


# ---------------------------------------------------------------------- cross-implementation parity
def test_same_weights_in_segment_anything_and_transformers_give_same_masks(hub):
    """Seeded SAM weights → sam_to_hf → SamModel in an HF cache → hf: victim; both
    preprocessing paths (segment_anything's ResizeLongestSide vs the HF image processor)
    and both decoders must agree on every prompt."""
    import transformers as T

    sam = SeededSamTiny()
    make_masks_nontrivial_(sam.model)
    cfg = hf_sam_config(TINY)
    hf_model = T.SamModel(cfg)
    hf_model.load_state_dict(sam_to_hf(sam.model.state_dict(), cfg), strict=True)
    ip = T.SamImageProcessor(
        size={"longest_edge": TINY.img_size}, pad_size={"height": 256, "width": 256}
    )
    write_hf_snapshot(hub, "uadbench-test/converted-sam", _save(hf_model, T.SamProcessor(ip)))

    cls = VICTIMS.get("hf:uadbench-test/converted-sam")
    victim = cls(cls.Config(model_id="uadbench-test/converted-sam"))
    img = _smooth_image()
    prompts = PromptSet.from_lists(
        points=[(40, 50), (150, 80), (100, 130), (5, 5)],
        boxes=[(10, 20, 80, 90), (120, 50, 180, 110), (0, 0, 199, 149)],
    )
    a, b = sam.predict(img, prompts), victim.predict(img, prompts)
    frac = a.mean(axis=(1, 2))
    assert ((frac > 0.05) & (frac < 0.95)).all(), f"trivial masks {frac}"  # non-trivial
    assert iou(a[0], a[1]) < 99  # and prompt-dependent, so agreement means something
    assert (iou(a, b) >= 99.0).all(), iou(a, b)


def test_sam_to_hf_maps_every_key_and_checks_the_config():
    sd = SeededSamTiny().model.state_dict()
    cfg = hf_sam_config(TINY)
    out = sam_to_hf(sd, cfg)
    assert (
        out["mask_decoder.iou_prediction_head.proj_out.weight"]
        is sd["mask_decoder.iou_prediction_head.layers.2.weight"]
    )
    assert (
        out["mask_decoder.output_hypernetworks_mlps.1.layers.0.bias"]
        is sd["mask_decoder.output_hypernetworks_mlps.1.layers.1.bias"]
    )
    assert (
        out["vision_encoder.layers.3.layer_norm2.weight"]
        is sd["image_encoder.blocks.3.norm2.weight"]
    )
    assert (
        out["prompt_encoder.mask_embed.conv3.bias"] is sd["prompt_encoder.mask_downscaling.6.bias"]
    )
    wrong = hf_sam_config(TINY.__class__(**{**TINY.__dict__, "depth": TINY.depth + 1}))
    with pytest.raises(UadbenchError, match="missing"):
        sam_to_hf(sd, wrong)
    with pytest.raises(UadbenchError, match="not a segment-anything"):
        sam_to_hf({"x": torch.zeros(1)}, cfg)


# ---------------------------------------------------------------------- the model's own processor
@pytest.mark.parametrize("kind", ["sam", "sam2"])
def test_prompt_scaling_matches_the_processor(kind):
    """Our prompt transform reproduces what the model's processor does with prompts."""
    model, proc = hf_tiny(kind)
    img = _smooth_image(150, 200)
    pts = [[31.5, 40.0], [190.0, 7.0]]
    boxes = [[8.0, 18.0, 52.0, 62.0], [70.0, 30.0, 199.0, 149.0]]
    enc = proc(
        images=img, input_points=[[[p] for p in pts]], input_boxes=[boxes], return_tensors="pt"
    )
    input_hw = (
        tuple(int(v) for v in enc["reshaped_input_sizes"][0])
        if "reshaped_input_sizes" in enc
        else tuple(enc["pixel_values"].shape[-2:])
    )
    ours_p = HfVictim.to_input_frame(np.array(pts), (150, 200), input_hw)
    ours_b = HfVictim.to_input_frame(np.array(boxes), (150, 200), input_hw)
    np.testing.assert_allclose(enc["input_points"][0, :, 0].numpy(), ours_p, rtol=1e-5)
    np.testing.assert_allclose(enc["input_boxes"][0].numpy(), ours_b, rtol=1e-5)


def test_preprocessing_is_the_saved_processors(hub):
    """Changing the saved processor's normalisation changes the victim's masks: the victim
    preprocesses with the model's own processor, not with defaults."""
    import transformers as T

    model, _ = hf_tiny("sam")
    ip = T.SamImageProcessor(size={"longest_edge": 256}, pad_size={"height": 256, "width": 256})
    odd = T.SamImageProcessor(
        size={"longest_edge": 256},
        pad_size={"height": 256, "width": 256},
        image_mean=[0.9, 0.1, 0.9],
    )
    write_hf_snapshot(hub, "t/std", _save(model, T.SamProcessor(ip)))
    write_hf_snapshot(hub, "t/odd", _save(model, T.SamProcessor(odd)))
    img, prompts = two_object_image(), far_prompts()
    a = HfVictim(HfVictim.Config(model_id="t/std")).predict(img, prompts)
    b = HfVictim(HfVictim.Config(model_id="t/odd")).predict(img, prompts)
    assert not np.array_equal(a, b)


def test_sam_hq_token_only_option(hub):
    model, proc = hf_tiny("sam_hq")
    write_hf_snapshot(hub, "t/hq", _save(model, proc))
    img, prompts = two_object_image(), far_prompts()
    both = HfVictim(HfVictim.Config(model_id="t/hq")).predict(img, prompts)
    hq_only = HfVictim(HfVictim.Config(model_id="t/hq", hq_token_only=True)).predict(img, prompts)
    assert not np.array_equal(both, hq_only)


# ---------------------------------------------------------------------- resolution
def test_local_path_and_revision(hub, tmp_path):
    model, proc = hf_tiny("sam")
    d = tmp_path / "local-sam"
    _save(model, proc)(d)
    st = resolve_hf_model(str(d))
    assert st.found and st.where == str(d)
    snap = write_hf_snapshot(hub, "t/rev", _save(model, proc))
    assert resolve_hf_model("t/rev").where == str(snap)
    assert resolve_hf_model("t/rev", revision=snap.name).where == str(snap)
    assert not resolve_hf_model("t/rev", revision="other-branch").found
    victim = HfVictim(HfVictim.Config(model_id=str(d)))
    assert victim.name == f"hf:{d}"
    assert victim.predict(two_object_image(), far_prompts()).shape == (4, 96, 128)


def test_unsupported_model_type_and_missing_weights_are_clear(hub):
    repo = write_hf_snapshot(
        hub, "t/bert", lambda d: (d / "config.json").write_text(json.dumps({"model_type": "bert"}))
    )
    (repo / "model.safetensors").write_bytes(b"")
    st = resolve_hf_model("t/bert")
    assert not st.found and "model_type 'bert' is not a supported" in st.detail
    with pytest.raises(UadbenchError, match="not a supported promptable segmenter"):
        _ = HfVictim(HfVictim.Config(model_id="t/bert")).model
    write_hf_snapshot(
        hub,
        "t/noweights",
        lambda d: (d / "config.json").write_text(json.dumps({"model_type": "sam"})),
    )
    st = resolve_hf_model("t/noweights")
    assert not st.found and "no config.json with weights" in st.detail


def test_cached_models_are_listed_for_victims_all(hub):
    model, proc = hf_tiny("sam")
    write_hf_snapshot(hub, "org-a/sam-small", _save(model, proc))
    write_hf_snapshot(
        hub, "org-b/bert", lambda d: (d / "config.json").write_text('{"model_type": "bert"}')
    )
    assert cached_hf_models() == ["hf:org-a/sam-small"]
    usable, skipped = available_victims()
    assert "hf:org-a/sam-small" in usable
    assert "hf:org-b/bert" not in usable + [n for n, _ in skipped]
    assert victim_status("hf:org-a/sam-small").found


@pytest.mark.parametrize("kind", ["sam2_video", "edgetam_video"])
def test_video_checkpoints_load_as_image_models(kind, hub):
    """Hub repos of SAM 2 / EdgeTAM are saved as their video models; the hf: victim loads
    their image part (what transformers maps them to for mask generation)."""
    model, proc = hf_tiny(kind)
    write_hf_snapshot(hub, f"t/{kind}", _save(model, proc))
    victim = HfVictim(HfVictim.Config(model_id=f"t/{kind}"))
    masks = victim.predict(two_object_image(), far_prompts())
    assert (
        type(victim.model).__name__
        == {"sam2_video": "Sam2Model", "edgetam_video": "EdgeTamModel"}[kind]
    )
    assert masks.shape == (4, 96, 128) and masks.dtype == bool
    # the image model inside the video checkpoint is the saved one, weight for weight
    sd = victim.model.state_dict()
    saved = model.state_dict()
    assert all(torch.equal(sd[k], saved[k]) for k in sd if k in saved)
    assert sum(k in saved for k in sd) > 0.9 * len(sd)
