"""FastSAM: everything mode + FastSAM's prompt rules, safe checkpoint reading, optional extra."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch
from test_victims_common import (
    far_prompts,
    save_ultralytics_checkpoint,
    tiny_fastsam_model,
    two_object_image,
)

from uadbench.errors import UadbenchError
from uadbench.eval.prompts import PromptSet
from uadbench.victims import VICTIMS
from uadbench.victims.fastsam import read_ultralytics_checkpoint, select_masks

needs_ultralytics = pytest.mark.skipif(
    importlib.util.find_spec("ultralytics") is None,
    reason="ultralytics (extra uadbench[fastsam]) is not installed",
)


@pytest.fixture(scope="module")
def fastsam(tmp_path_factory):
    """A loaded fastsam-s victim on a small YOLOv8-seg checkpoint, plus its file."""
    if importlib.util.find_spec("ultralytics") is None:
        pytest.skip("ultralytics (extra uadbench[fastsam]) is not installed")
    d = tmp_path_factory.mktemp("fastsam")
    path = d / "FastSAM-s.pt"
    save_ultralytics_checkpoint(tiny_fastsam_model(), path)
    cls = VICTIMS.get("fastsam-s")
    return cls(cls.Config(checkpoint=str(path))), path


def _ultralytics_prompt(victim, image, **prompt):
    """FastSAM's own selection (ultralytics FastSAMPredictor.prompt), as one union mask."""
    pred = victim._get_predictor()
    pred.args.imgsz = max(image.shape[:2])
    results = pred(source=np.ascontiguousarray(image[..., ::-1]))
    (sel,) = pred.prompt(results, **prompt)
    if sel.masks is None or len(sel) == 0:
        return np.zeros(image.shape[:2], bool)
    return sel.masks.data.bool().any(0).cpu().numpy()


@needs_ultralytics
def test_selection_matches_fastsams_own_rules(fastsam):
    victim, _ = fastsam
    img = two_object_image()
    prompts = PromptSet.from_lists(
        points=[(30.7, 40.2), (95, 50), (127, 95), (0, 0)],
        boxes=[(8, 18, 52, 62), (73.9, 28.2, 117, 72), (0, 0, 127, 95), (60, 10, 70, 20)],
    )
    ours = victim.predict(img, prompts)
    assert 0 < ours.mean() < 1
    for i in range(len(prompts)):
        x0, y0, x1, y1 = prompts.coords[i]
        if prompts.kinds[i] == "point":
            ref = _ultralytics_prompt(victim, img, points=[[x0, y0]], labels=[1])
        else:
            ref = _ultralytics_prompt(victim, img, bboxes=[[x0, y0, x1, y1]])
        np.testing.assert_array_equal(ours[i], ref, err_msg=f"prompt {i} ({prompts.kinds[i]})")


@needs_ultralytics
def test_everything_mode_settings_follow_the_paper(fastsam):
    victim, _ = fastsam
    img = np.zeros((70, 150, 3), np.uint8)
    seen = []
    hook = victim._get_predictor().model.register_forward_pre_hook(
        lambda m, a: seen.append(tuple(a[0].shape))
    )
    try:
        victim.predict(img, far_prompts())
    finally:
        hook.remove()
    assert seen == [(1, 3, 96, 160)]  # 150 → 160 wide, 70·160/150 → 75 → padded to 96, not 160
    args = victim._get_predictor().args
    assert (args.conf, args.iou, args.imgsz, args.retina_masks, args.rect) == (
        0.4,
        0.9,
        150,
        True,
        True,
    )
    assert victim._get_predictor().imgsz == [160, 160]  # stride-rounded max(H, W)


def test_no_mask_gives_empty_prediction():
    empty = torch.zeros(0, 96, 128, dtype=torch.bool)
    out = select_masks(empty, far_prompts())
    assert out.shape == (4, 96, 128) and not out.any()
    one = torch.zeros(1, 96, 128, dtype=torch.bool)
    one[0, 10:20, 10:20] = True
    out = select_masks(one, PromptSet.from_lists(points=[(100, 80), (15, 15)]))
    assert not out[0].any() and out[1].equal(one[0])  # a point outside every mask → empty


def test_box_selects_max_iou_mask_and_point_the_union():
    m = torch.zeros(3, 40, 40, dtype=torch.bool)
    m[0, 0:20, 0:20] = True  # top-left square
    m[1, 0:40, 0:40] = True  # whole image
    m[2, 5:15, 5:15] = True  # inside the square
    p = PromptSet.from_lists(
        points=[(10, 10), (30, 30)], boxes=[(0, 0, 20, 20), (4, 4, 16, 16), (0, 0, 40, 40)]
    )
    out = select_masks(m, p)
    assert out[0].equal(m[1])  # union of all three = the whole image
    assert out[1].equal(m[1])
    assert out[2].equal(m[0]) and out[3].equal(m[2]) and out[4].equal(m[1])


@needs_ultralytics
def test_checkpoint_is_read_without_unpickling_objects(fastsam):
    _, path = fastsam
    yaml, tensors = read_ultralytics_checkpoint(path)
    assert yaml["nc"] == 1 and "backbone" in yaml and "head" in yaml
    assert all(isinstance(v, torch.Tensor) for v in tensors.values())
    assert tensors["model.0.conv.weight"].dtype == torch.float16  # as saved


def test_without_ultralytics_the_entry_stays_and_says_what_to_install(monkeypatch):
    import uadbench.victims.fastsam as fs

    monkeypatch.setattr(fs, "ultralytics_available", lambda: False)
    assert "fastsam-x" in VICTIMS.names()
    cls = VICTIMS.get("fastsam")
    st = cls.weights_status(cls.Config())
    assert not st.found and st.detail.startswith("needs `pip install uadbench[fastsam]`")
    with pytest.raises(UadbenchError, match=r"pip install uadbench\[fastsam\]"):
        _ = cls().model


@needs_ultralytics
@pytest.mark.parametrize("channels", ["rgb", "bgr"])
def test_channel_order_setting(fastsam, channels):
    """A pure-red image reaches the network as red (channel 0 of its RGB input) by default;
    with ``channels="bgr"`` (the reference's setting) it arrives channel-swapped, as blue."""
    _, path = fastsam
    cls = VICTIMS.get("fastsam-s")
    victim = cls(cls.Config(checkpoint=str(path), channels=channels))
    img = np.zeros((64, 64, 3), np.uint8)
    img[..., 0] = 255
    seen = []
    hook = victim._get_predictor().model.register_forward_pre_hook(
        lambda m, a: seen.append(a[0][0, :, 32, 32].float().cpu())
    )
    try:
        victim.predict(img, far_prompts())
    finally:
        hook.remove()
    want = torch.tensor([1.0, 0.0, 0.0]) if channels == "rgb" else torch.tensor([0.0, 0.0, 1.0])
    torch.testing.assert_close(seen[0], want)


def test_channel_setting_validated():
    with pytest.raises(ValueError, match="rgb or bgr"):
        VICTIMS.get("fastsam-s").Config(channels="grb")
