"""Weights discovery for ``uadbench ls victims`` and ``--victims all [--strict]``."""

from __future__ import annotations

import pytest
from test_victims_common import write_hf_snapshot

from uadbench.errors import UadbenchError, UnknownNameError
from uadbench.victims import VICTIMS
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
    import uadbench.victims.locate as locate

    real = locate.package_available
    monkeypatch.setattr(locate, "package_available", lambda m: m != "ultralytics" and real(m))
    reasons = dict(available_victims()[1])
    assert reasons["fastsam-x"].startswith("needs `pip install uadbench[fastsam]`")


def test_list_status_pattern(places):
    names = [n for n, _ in list_status("hq-sam-*")]
    assert names == ["hq-sam-vit-b", "hq-sam-vit-h", "hq-sam-vit-l", "hq-sam-vit-tiny"]


# ---------------------------------------------------------------------- one answer, two paths
def _class_status(name: str):
    """What the victim's class says (the path a run takes, which imports torch)."""
    cls = VICTIMS.get(name)
    cfg = cls.Config(model_id=name[3:]) if name.startswith("hf:") else cls.Config()
    return cls.weights_status(cfg)


def _setups(ckpt, hub):
    """Places weights can be in, one after another: none; every default checkpoint file
    in the checkpoint dir; HQ-SAM / MobileSAM only in the HF cache; an hf: model."""
    from uadbench.victims.locate import BUILTIN

    yield "nothing"
    for spec in BUILTIN.values():
        if spec.filename:
            (ckpt / spec.filename).write_bytes(b"x")
    yield "checkpoint dir"
    for f in ckpt.iterdir():
        f.unlink()
    write_hf_snapshot(hub, "lkeab/hq-sam", lambda d: (d / "sam_hq_vit_tiny.pth").write_bytes(b"x"))
    write_hf_snapshot(hub, "dhkim2810/MobileSAM", lambda d: (d / "mobile_sam.pt").write_bytes(b"x"))

    def hf_model(d):
        (d / "config.json").write_text('{"model_type": "sam"}')
        (d / "model.safetensors").write_bytes(b"x")

    write_hf_snapshot(hub, "org/sam-tiny", hf_model)
    yield "hf cache"


def test_listing_without_torch_says_what_each_victim_class_says(places, monkeypatch):
    """`ls victims` answers from uadbench.victims.locate (no torch); a run asks the victim
    class. For every built-in victim, and an optional backend present or not, both agree:
    a file name, search place or backend check changed in one place only turns this red."""
    import uadbench.victims.locate as locate
    from uadbench.victims import VICTIMS as REG

    ckpt, hub = places
    real = locate.package_available
    for missing in ("", "segment_anything_hq", "ultralytics"):
        monkeypatch.setattr(locate, "package_available", lambda m, x=missing: m != x and real(m))
        for setup in _setups(ckpt, hub):
            names = [*REG.names(), "hf:org/sam-tiny", "hf:org/absent"]
            for name in names:
                light = locate.builtin_status(name)
                assert light is not None, name
                assert light == _class_status(name), (missing, setup, name)
    assert locate.builtin_status("not-a-builtin") is None
    assert set(locate.BUILTIN) == set(REG.names()), "a built-in victim without a torch-free lookup"


def test_a_third_party_victim_is_asked_through_its_class(places):
    """A victim the torch-free table does not know (a plugin) answers through its class's
    ``weights_status``; one that fails to import is reported in its row, the rest listed."""
    from uadbench.victims.locate import WeightsStatus
    from uadbench.victims.segment_anything import SeededSamTiny

    class Plugged(SeededSamTiny):
        name = "plugged-sam"

        @classmethod
        def weights_status(cls, config):
            return WeightsStatus(False, "", "needs the plugged weights")

    VICTIMS.register("plugged-sam", Plugged, source="plugged-dist")
    VICTIMS.register("broken-sam", "no_such_module_xyz:Victim", source="broken-dist")
    try:
        st = victim_status("plugged-sam")
        assert not st.found and st.detail == "needs the plugged weights"
        rows = dict(list_status())
        assert rows["plugged-sam"].detail == "needs the plugged weights"
        assert not rows["broken-sam"].found and "needs a package" in rows["broken-sam"].detail
        assert rows["sam-vit-b"].detail  # the others are still listed
    finally:
        VICTIMS.unregister("plugged-sam")
        VICTIMS.unregister("broken-sam")
