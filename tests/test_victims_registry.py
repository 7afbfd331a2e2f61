"""Every registered victim, through the path a user hits: registry → weights_status →
build from a checkpoint in its real format → predict.

Victims with a fixed official size (SAM/HQ-SAM ViT-B/L/H, MobileSAM, Light HQ-SAM) are
tested as a twin with a small architecture of the same family; their loading code is
the registered class's. ``hf:`` is tested with small SAM, SAM-HQ, SAM 2 and EdgeTAM
models saved into a temporary Hugging Face cache tree.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from test_victims_common import (
    HF_TINY,
    assert_prompt_dependent,
    far_prompts,
    prepare,
    two_object_image,
)

from uadbench.errors import MissingCheckpointError, UadbenchError
from uadbench.victims import VICTIMS
from uadbench.victims.base import Victim
from uadbench.victims.segment_anything import SeededSamTiny

NAMES = [n for n in VICTIMS.names()] + list(HF_TINY)
_RESULTS: dict[str, dict] = {}


def _results(name: str, tmp_path_factory, monkeypatch) -> dict:
    """Load + predict once per victim (shared by the tests below)."""
    if name not in _RESULTS:
        root = tmp_path_factory.mktemp(name.replace(":", "_").replace("/", "_"))
        prep = prepare(name, root, monkeypatch)
        if prep is None:
            _RESULTS[name] = {
                "skip": "no small weights can be made for it here and none are installed"
            }
        else:
            status = prep.cls.weights_status(prep.config)
            victim = prep.cls(prep.config)
            img, prompts = two_object_image(), far_prompts()
            _RESULTS[name] = {
                "status": status,
                "where_prefix": prep.where_prefix,
                "masks": victim.predict(img, prompts),
                "reference": prep.in_memory.predict(img, prompts),
                "image": img,
                "n": len(prompts),
            }
    res = _RESULTS[name]
    if "skip" in res:
        pytest.skip(f"{name}: {res['skip']}")
    return res


@pytest.mark.parametrize("name", NAMES)
def test_weights_found_where_they_were_put(name, tmp_path_factory, monkeypatch):
    res = _results(name, tmp_path_factory, monkeypatch)
    st = res["status"]
    assert st.found, st.detail
    if st.where != "built in code":
        assert str(st.where).startswith(str(res["where_prefix"]))


@pytest.mark.parametrize("name", NAMES)
def test_one_bool_mask_per_prompt_at_image_size(name, tmp_path_factory, monkeypatch):
    res = _results(name, tmp_path_factory, monkeypatch)
    masks = res["masks"]
    assert masks.dtype == bool
    assert masks.shape == (res["n"], *res["image"].shape[:2])
    assert masks.any(), f"{name}: every mask empty"


@pytest.mark.parametrize("name", NAMES)
def test_loaded_predictions_equal_in_memory_model(name, tmp_path_factory, monkeypatch):
    res = _results(name, tmp_path_factory, monkeypatch)
    np.testing.assert_array_equal(res["masks"], res["reference"])


@pytest.mark.parametrize("name", NAMES)
def test_masks_depend_on_prompts(name, tmp_path_factory, monkeypatch):
    res = _results(name, tmp_path_factory, monkeypatch)
    assert_prompt_dependent(res["masks"], name)


class _PromptBlind(SeededSamTiny):
    """Decodes every prompt as if it were the first one."""

    name = "prompt-blind"

    def decode(self, state, prompts, hw):
        first = prompts.subset(np.zeros(len(prompts), dtype=int))
        return super().decode(state, first, hw)


def test_prompt_dependence_check_catches_a_prompt_blind_victim():
    masks = _PromptBlind().predict(two_object_image(), far_prompts())
    with pytest.raises(AssertionError, match="same mask"):
        assert_prompt_dependent(masks, "prompt-blind")


# ---------------------------------------------------------------------- missing weights
@pytest.mark.parametrize(
    "name",
    [
        "sam-vit-b",
        "hq-sam-vit-l",
        "hq-sam-vit-tiny",
        "mobilesam",
        "fastsam-x",
        "hf:facebook/sam-vit-base",
    ],
)
def test_missing_weights_one_line_error_names_places_and_download(name, tmp_path, monkeypatch):
    monkeypatch.setenv("UADBENCH_CHECKPOINTS", str(tmp_path / "ckpts"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    cls = VICTIMS.get(name)
    cfg = cls.Config(model_id=name[3:]) if name.startswith("hf:") else cls.Config()
    st = cls.weights_status(cfg)
    assert not st.found
    with pytest.raises(MissingCheckpointError) as err:
        cls(cfg).predict(two_object_image(), far_prompts())
    msg = str(err.value)
    assert "\n" not in msg
    assert f"uadbench download {cls(cfg).name}" in msg
    assert str(tmp_path) in msg  # names where it looked


def test_explicit_checkpoint_path_that_does_not_exist(tmp_path):
    cls = VICTIMS.get("mobilesam")
    missing = tmp_path / "nope.pt"
    with pytest.raises(MissingCheckpointError, match=str(missing)):
        _ = cls(cls.Config(checkpoint=str(missing))).model


def test_checkpoint_of_another_size_is_refused(tmp_path, monkeypatch):
    """A SAM checkpoint put where HQ-SAM looks: strict loading names the mismatch."""
    import torch

    monkeypatch.setenv("UADBENCH_CHECKPOINTS", str(tmp_path))
    cls = VICTIMS.get("hq-sam-vit-b")
    torch.save(SeededSamTiny().model.state_dict(), tmp_path / cls.filename)
    with pytest.raises(UadbenchError, match="does not fit victim 'hq-sam-vit-b'"):
        _ = cls().model


# ---------------------------------------------------------------------- listing stays light
def test_listing_victims_imports_no_backend():
    code = (
        "import sys; from uadbench.victims import VICTIMS; VICTIMS.names(); "
        "heavy = [m for m in ('torch', 'transformers', 'segment_anything_hq', 'ultralytics') if m in sys.modules]; "
        "print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_every_entry_is_a_victim_and_optional_backends_are_not_imported_to_load_it():
    code = (
        "import sys; from uadbench.victims import VICTIMS\n"
        "for n in VICTIMS.names(): VICTIMS.get(n)\n"
        "VICTIMS.get('hf:x/y')\n"
        "print(','.join(m for m in ('transformers', 'segment_anything_hq', 'ultralytics') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
    for n in VICTIMS.names():
        assert issubclass(VICTIMS.get(n), Victim)


def test_registered_names():
    names = set(VICTIMS.names())
    assert {
        "hq-sam-vit-b",
        "hq-sam-vit-l",
        "hq-sam-vit-h",
        "hq-sam-vit-tiny",
        "mobilesam",
        "fastsam-s",
        "fastsam-x",
    } <= names
    assert VICTIMS.canonical("fastsam") == "fastsam-x"
    assert VICTIMS.canonical("mobile-sam") == "mobilesam"
    assert VICTIMS.canonical("hf:facebook/sam-vit-base") == "hf:facebook/sam-vit-base"
