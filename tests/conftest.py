"""Shared fixtures. Tests never download anything: HF offline, no checkpoints dir."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(autouse=True)
def _isolated_caches(tmp_path_factory, monkeypatch):
    """Point every cache at an empty temp dir so no test sees a user's real weights."""
    cache = tmp_path_factory.mktemp("cache")
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    monkeypatch.delenv("UADBENCH_CHECKPOINTS", raising=False)
    yield


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.fixture
def image_two_objects() -> np.ndarray:
    """A 96×128 RGB uint8 image: dark background, a red square left, a blue disc right."""
    img = np.full((96, 128, 3), 20, np.uint8)
    img[20:60, 10:50] = (220, 30, 30)
    yy, xx = np.mgrid[:96, :128]
    img[(yy - 50) ** 2 + (xx - 95) ** 2 < 20**2] = (30, 60, 220)
    return img


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models run fastest on one thread, and far faster on a shared, busy machine
    (intra-op threads wait on each other); restored afterwards. Use per module with
    ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
