"""The shipped tiny zoo: every model is registered and ships its weights and card, segments
held-out synthetic scenes from the prompt and the image, loads only its own weights (a
clear error naming the file otherwise), and ``uadbench zoo eval`` measures it. Training
the zoo (tools/zoo/) is tested in test_zoo_training.py."""

from __future__ import annotations

import re
import shutil

import numpy as np
import pytest
import torch
from scipy import ndimage
from test_victims_common import assert_mask_logits_in_prompt_batches

from uadbench.cli import main
from uadbench.datasets.sa1b import SA1B
from uadbench.datasets.synthetic import generate
from uadbench.errors import MissingCheckpointError, UadbenchError
from uadbench.eval.metrics import iou
from uadbench.eval.prompts import BOX, PromptSet, sample_prompts
from uadbench.victims import VICTIMS
from uadbench.zoo import ZOO_NAMES
from uadbench.zoo.evaluate import image_blind, score_with_grey
from uadbench.zoo.models import ZOO, shipped_weights

MAX_BYTES = 8 * 1024 * 1024
#: box-prompt mIoU (%) a shipped model must reach on the 4 held-out scenes: the untrained
#: seeded-sam-tiny scores ~6 there; the shipped zoo models score 79-81 on their cards' 200
BOX_BAR = 50.0
#: clean mIoU (%) every shipped card states on >= 100 held-out scenes, points / boxes
POINT_CARD_BAR, BOX_CARD_BAR = 70.0, 80.0
#: masks on the real image vs on a grey one (same prompts): mean IoU (%) at most this (the
#: image-blind models shipped before 2026-11-25 scored ~96; the cards now say 28-30) …
IMAGE_AGREEMENT_MAX = 80.0
#: … and the real image's masks beat the grey image's on the ground truth by this many
#: mIoU points (the cards: 74-76 on the real image vs 27-29 on grey)
IMAGE_GAIN_MIN = 5.0


@pytest.fixture(scope="module")
def held_out(tmp_path_factory):
    """4 synthetic scenes from a seed no zoo model was trained or evaluated on."""
    root = tmp_path_factory.mktemp("heldout")
    generate(root, 4, seed=4242, size=(256, 256), split="test")
    ds = SA1B(SA1B.Config(root=str(root), strict=True))
    return [ds.load(i) for i in ds.ids()]


def box_miou(victim, samples) -> float:
    """Mean IoU (%) of the paper protocol's box prompts over ``samples``."""
    ious = []
    for s in samples:
        p = sample_prompts("zoo-test", s.id, s.hw, s.masks, s.boxes, seed=0)
        p = p.subset(np.flatnonzero(p.is_box))
        ious.append(iou(victim.predict(s.image, p), s.masks[p.mask_index]))
    return float(np.concatenate(ious).mean())


@pytest.fixture(scope="module")
def zoo_victims():
    return {n: VICTIMS.get(n)(None) for n in ZOO_NAMES}


def test_every_zoo_model_is_registered_and_shipped():
    assert set(ZOO_NAMES) == set(ZOO)
    for name in ZOO_NAMES:
        cls = VICTIMS.get(name)
        assert cls is ZOO[name]
        path = shipped_weights(name)
        assert path.is_file(), f"{path} missing: run `python -m tools.zoo train {name}`"
        assert path.stat().st_size <= MAX_BYTES
        st = cls.weights_status(cls.Config())
        assert st.found and st.where == str(path)


@pytest.fixture(scope="module")
def held_out_scores(zoo_victims, held_out):
    """``score_with_grey`` of a zoo model on the held-out scenes with the prompts of
    :func:`box_miou` (same dataset name and seed), computed once per model and shared by
    the tests below (each prediction pass over the scenes costs seconds)."""
    cache: dict[str, dict[str, np.ndarray]] = {}

    def scores(name: str) -> dict[str, np.ndarray]:
        if name not in cache:
            cache[name] = score_with_grey(zoo_victims[name], held_out, "zoo-test", 0)
        return cache[name]

    return scores


@pytest.mark.parametrize("name", ZOO_NAMES)
def test_zoo_model_segments_held_out_scenes(name, held_out_scores):
    sc = held_out_scores(name)
    assert sc["iou"][sc["kind"] == BOX].mean() >= BOX_BAR  # box_miou, from the shared pass


@pytest.mark.parametrize("name", ZOO_NAMES)
def test_masks_depend_on_the_image(name, held_out_scores):
    """The same prompts on a uniform grey image give other masks, and worse ones: a model
    that segments from the prompt alone (filled box, blob around the point) fails here."""
    sc = held_out_scores(name)
    real_gt, grey_gt, real_grey = sc["iou"], sc["iou_grey"], sc["agreement"]
    assert real_grey.mean() < IMAGE_AGREEMENT_MAX
    assert real_gt.mean() > grey_gt.mean() + IMAGE_GAIN_MIN


def test_untrained_model_fails_the_same_check(held_out):
    v = VICTIMS.get("seeded-sam-tiny")(None)
    assert box_miou(v, held_out) < BOX_BAR


@pytest.mark.parametrize("name", ZOO_NAMES)
def test_masks_follow_the_prompts(name, zoo_victims, held_out):
    """Points on two different objects give two different masks, each on its object."""
    v = zoo_victims[name]
    s = max(held_out, key=lambda s: np.sort(s.masks.sum((1, 2)))[-2])  # two big objects
    a, b = np.argsort(-s.masks.sum((1, 2)))[:2]
    pts = []
    for m in (a, b):  # the pixel deepest inside each mask
        dist = ndimage.distance_transform_edt(s.masks[m])
        y, x = np.unravel_index(int(np.argmax(dist)), dist.shape)
        pts.append((float(x), float(y)))
    pred = v.predict(s.image, PromptSet.from_lists(points=pts))
    assert pred.shape == (2, *s.hw) and pred.dtype == bool
    assert iou(pred[0], pred[1]) < 30.0
    assert iou(pred[0], s.masks[a]) > iou(pred[0], s.masks[b])
    assert iou(pred[1], s.masks[b]) > iou(pred[1], s.masks[a])


@pytest.mark.parametrize("name", [n for n in ZOO_NAMES if ZOO[n].is_surrogate])
def test_surrogate_features_early_exit_and_gradients(name, zoo_victims):
    v = zoo_victims[name]
    taps = v.default_taps()
    x = torch.rand(1, 3, 96, 120, requires_grad=True)
    feats = v.features(x, taps)
    assert len(feats) == len(taps)
    sum(f.square().mean() for f in feats).backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    # a shallower tap is the same tensor whether or not deeper blocks were asked for (same
    # grad mode: with and without autograd torch may pick other attention kernels, ~1e-5)
    f0 = v.features(x, taps[:1])[0].detach()
    torch.testing.assert_close(f0, feats[0].detach())
    logits = v.mask_logits(
        x.detach(), [PromptSet.from_lists(points=[(30, 40)], boxes=[(10, 10, 80, 60)])]
    )
    assert logits[0].shape[0] == 2


def test_missing_weights_name_the_file_and_the_train_command(tmp_path):
    cls = ZOO["zoo-vit-sam"]
    missing = tmp_path / "nope.safetensors"
    with pytest.raises(MissingCheckpointError) as ei:
        _ = cls(cls.Config(checkpoint=str(missing))).model
    msg = str(ei.value)
    assert (
        "\n" not in msg and str(missing) in msg and "python -m tools.zoo train zoo-vit-sam" in msg
    )


def test_corrupt_weights_name_the_file_and_the_train_command(tmp_path):
    cls = ZOO["zoo-vit-sam"]
    bad = tmp_path / "zoo-vit-sam.safetensors"
    bad.write_bytes(b"\x00\x01 not safetensors at all")
    with pytest.raises(UadbenchError) as ei:
        _ = cls(cls.Config(checkpoint=str(bad))).model
    msg = str(ei.value)
    assert "\n" not in msg and str(bad) in msg and "python -m tools.zoo train zoo-vit-sam" in msg


def test_weights_of_another_model_are_refused(tmp_path):
    cls = ZOO["zoo-hq-sam"]
    with pytest.raises(UadbenchError, match="tools.zoo train zoo-hq-sam"):
        _ = cls(cls.Config(checkpoint=str(shipped_weights("zoo-vit-sam")))).model


@pytest.mark.parametrize("name", ZOO_NAMES)
def test_model_card_states_measured_miou(name):
    card = shipped_weights(name).with_suffix(".md")
    assert card.is_file()
    text = card.read_text()
    m = re.search(r"Clean mIoU on (\d+) held-out", text)
    assert m and int(m.group(1)) >= 100
    pts = re.search(r"\| points \| (\d+\.\d) \|", text)
    box = re.search(r"\| boxes \| (\d+\.\d) \|", text)
    assert pts and box
    # issue #7's bar, as measured by `zoo train` on the card's held-out scenes
    assert float(pts.group(1)) >= POINT_CARD_BAR and float(box.group(1)) >= BOX_CARD_BAR
    assert "Below the project's quality bar" not in text
    assert f"python -m tools.zoo train {name}" in text and "wall time" in text
    # the card says whether the model looks at the image, as measured
    agree = re.search(r"agree (\d+\.\d)% \(mean IoU\)", text)
    assert agree
    blind = "The masks barely depend on the image" in text
    assert blind == image_blind({"grey_agreement": float(agree.group(1))})
    assert not blind  # every shipped model uses the image (test_masks_depend_on_the_image)


def test_run_manifest_records_the_zoo_weights_digest(tmp_path):
    """The manifest records the weights digest, which is what lets the committed
    baselines notice retrained shipped weights; the same bytes at another path are the
    same victim, other bytes another one (identity by content, #38)."""

    from uadbench.engine.plan import resolve

    shipped = resolve("victim", "zoo-vit-sam").record()["weights_sha256"]
    copy = tmp_path / "w.safetensors"
    shutil.copy(shipped_weights("zoo-vit-sam"), copy)
    default = resolve("victim", "zoo-vit-sam").record()
    same = resolve("victim", f"zoo-vit-sam:checkpoint={copy}").record()
    assert same["weights_sha256"] == shipped
    assert (same["hash"], same["label"]) == (default["hash"], default["label"])
    data = bytearray(copy.read_bytes())
    data[-1] ^= 1
    copy.write_bytes(bytes(data))
    other = resolve("victim", f"zoo-vit-sam:checkpoint={copy}").record()
    assert other["weights_sha256"] != shipped
    assert other["hash"] != same["hash"]
    assert other["label"] == f"zoo-vit-sam[weights={other['weights_sha256'][:8]}]"
    assert "weights_sha256" not in resolve("victim", "seeded-sam-tiny").record()


@pytest.mark.parametrize("name", ZOO_NAMES)
def test_zoo_mask_logits_decode_prompt_batch_prompts_per_call(name, zoo_victims):
    assert_mask_logits_in_prompt_batches(zoo_victims[name])


def test_zoo_eval_threads_runs_the_evaluation_on_that_many_threads(capsys, monkeypatch):
    """`zoo eval --threads 1` (beside a training on the other core) evaluates on one torch
    thread, gives the default run's numbers, and leaves the process's thread count as it
    was; a non-positive count is a one-line error."""
    from uadbench.zoo import evaluate as zoo_eval

    seen = []
    real = zoo_eval.evaluate

    def spy(*a, **k):
        seen.append(torch.get_num_threads())
        return real(*a, **k)

    monkeypatch.setattr(zoo_eval, "evaluate", spy)
    before = torch.get_num_threads()
    other = 1 if before != 1 else 2
    assert main(["zoo", "eval", "zoo-vit-sam", "--n", "1", "--threads", str(other)]) == 0
    with_threads = capsys.readouterr().out
    assert main(["zoo", "eval", "zoo-vit-sam", "--n", "1"]) == 0
    default = capsys.readouterr().out
    assert seen == [other, before] and torch.get_num_threads() == before
    assert re.sub(r"\(\d+s\)", "", with_threads) == re.sub(r"\(\d+s\)", "", default)
    assert "points" in default
    assert main(["zoo", "eval", "zoo-vit-sam", "--n", "1", "--threads", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "--threads 0" in err and seen == [other, before]


def test_unknown_zoo_name_says_did_you_mean(capsys):
    assert main(["zoo", "eval", "zoo-vitsam", "--n", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Did you mean 'zoo-vit-sam'" in err


def test_zoo_train_says_where_training_lives(capsys):
    """Training is not in the installed package: `uadbench zoo train` (with any flags) is a
    one-line error that points to the source tree's tools and docs, and trains nothing."""
    assert main(["zoo", "train", "zoo-vit-sam", "--steps", "3"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "make zoo" in err and "tools.zoo train" in err
    assert "docs/zoo.md" in err
