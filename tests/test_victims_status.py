"""Weights discovery for ``uadbench ls victims`` and ``--victims all [--strict]``."""

from __future__ import annotations

import pytest
from test_victims_common import write_hf_snapshot

from uadbench.errors import UadbenchError, UnknownNameError
from uadbench.victims.checkpoints import find_checkpoint, hf_cache_dir
from uadbench.victims.status import available_victims, list_status, victim_status


@pytest.fixture
def places(tmp_path, monkeypatch):
    ckpt, hub = tmp_path / "ckpts", tmp_path / "hub"
    ckpt.mkdir()
    hub.mkdir()
    monkeypatch.setenv("UADBENCH_CHECKPOINTS", str(ckpt))
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    return ckpt, hub


def test_status_found_where_and_missing_where_looked(places):
    ckpt, _ = places
    st = victim_status("sam-vit-l")
    assert not st.found and str(ckpt / "sam_vit_l_0b3195.pth") in st.detail
    (ckpt / "sam_vit_l_0b3195.pth").write_bytes(b"x")
    st = victim_status("sam-vit-l")
    assert st.found and st.where == str(ckpt / "sam_vit_l_0b3195.pth")
    assert victim_status("seeded-sam-tiny").found
    with pytest.raises(UnknownNameError, match="Did you mean 'mobilesam'"):
        victim_status("mobilsam")


def test_search_order_dir_then_hf_cache(places):
    ckpt, hub = places
    write_hf_snapshot(hub, "lkeab/hq-sam", lambda d: (d / "sam_hq_vit_b.pth").write_bytes(b"x"))
    st = victim_status("hq-sam-vit-b")
    assert st.found and st.where.startswith(str(hub))
    (ckpt / "sam_hq_vit_b.pth").write_bytes(b"x")
    assert victim_status("hq-sam-vit-b").where == str(ckpt / "sam_hq_vit_b.pth")
    explicit = ckpt / "elsewhere.pth"
    explicit.write_bytes(b"x")
    assert find_checkpoint(
        "hq-sam-vit-b", str(explicit), ["sam_hq_vit_b.pth"], "lkeab/hq-sam"
    ).where == str(explicit)


def test_hf_cache_location_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HUGGINGFACE_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hfhome"))
    assert hf_cache_dir() == tmp_path / "hfhome" / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "c"))
    assert hf_cache_dir() == tmp_path / "c"


def test_victims_all_and_strict(places, monkeypatch):
    ckpt, _ = places
    (ckpt / "mobile_sam.pt").write_bytes(b"x")
    usable, skipped = available_victims()
    assert "seeded-sam-tiny" in usable and "mobilesam" in usable
    reasons = dict(skipped)
    assert "sam-vit-h" in reasons and str(ckpt / "sam_vit_h_4b8939.pth") in reasons["sam-vit-h"]
    assert not set(usable) & set(reasons)
    with pytest.raises(UadbenchError) as exc:
        available_victims(strict=True)
    msg = str(exc.value)
    assert "\n" not in msg and "sam-vit-h" in msg and "uadbench download" in msg
    assert "mobilesam (" not in msg


def test_missing_optional_backend_is_the_reason(places, monkeypatch):
    import uadbench.victims.fastsam as fs

    monkeypatch.setattr(fs, "ultralytics_available", lambda: False)
    reasons = dict(available_victims()[1])
    assert reasons["fastsam-x"].startswith("needs `pip install uadbench[fastsam]`")


def test_list_status_pattern(places):
    names = [n for n, _ in list_status("hq-sam-*")]
    assert names == ["hq-sam-vit-b", "hq-sam-vit-h", "hq-sam-vit-l", "hq-sam-vit-tiny"]
