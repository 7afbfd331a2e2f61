"""``uadbench download``: file:// URLs and a monkeypatched hub fetch only — never the network."""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import urllib.request

import pytest

import uadbench.victims.download as dl
from uadbench.errors import UadbenchError, UnknownNameError
from uadbench.victims import VICTIMS
from uadbench.victims.status import victim_status

# victim classes read their file names from the table when first imported: import them
# before any test patches the table
for _name in dl.WEIGHTS:
    VICTIMS.get(_name)


@pytest.fixture(autouse=True)
def _no_network(monkeypatch):
    """Any non-file URL opened by the downloader fails the test."""
    real = urllib.request.urlopen

    def guarded(url, *a, **k):
        assert str(url).startswith("file:"), f"test tried to reach the network: {url}"
        return real(url, *a, **k)

    monkeypatch.setattr(urllib.request, "urlopen", guarded)


@pytest.fixture
def source(tmp_path, monkeypatch):
    """A fake mobile_sam.pt served from a file:// URL, registered in the table with its md5."""
    data = b"not really weights " * 1000
    src = tmp_path / "server" / "mobile_sam.pt"
    src.parent.mkdir()
    src.write_bytes(data)
    spec = dataclasses.replace(
        dl.WEIGHTS["mobilesam"], url=src.as_uri(), md5=hashlib.md5(data).hexdigest(), size=len(data)
    )
    monkeypatch.setitem(dl.WEIGHTS, "mobilesam", spec)
    dest = tmp_path / "ckpts"
    monkeypatch.setenv("UADBENCH_CHECKPOINTS", str(dest))
    return data, dest


def test_download_into_first_checkpoint_dir_then_the_victim_finds_it(source):
    data, dest = source
    (path,) = dl.download(["mobile-sam"])  # aliases resolve
    assert path == dest / "mobile_sam.pt" and path.read_bytes() == data
    assert not list(dest.glob("*.part"))
    st = victim_status("mobilesam")
    assert st.found and st.where == str(path)


def test_bad_hash_saves_nothing(source, monkeypatch):
    _, dest = source
    bad = dataclasses.replace(dl.WEIGHTS["mobilesam"], md5="0" * 32)
    monkeypatch.setitem(dl.WEIGHTS, "mobilesam", bad)
    with pytest.raises(UadbenchError, match="failed verification.*md5") as exc:
        dl.download(["mobilesam"])
    assert "\n" not in str(exc.value)
    assert list(dest.iterdir()) == []  # neither the file nor a .part
    (path,) = dl.download(["mobilesam"], verify=False)
    assert path.is_file()


def test_bad_size_and_sha256_are_checked(source, monkeypatch):
    data, dest = source
    spec = dl.WEIGHTS["mobilesam"]
    monkeypatch.setitem(dl.WEIGHTS, "mobilesam", dataclasses.replace(spec, size=len(data) + 1))
    with pytest.raises(UadbenchError, match="size"):
        dl.download(["mobilesam"])
    good = hashlib.sha256(data).hexdigest()
    monkeypatch.setitem(dl.WEIGHTS, "mobilesam", dataclasses.replace(spec, sha256=good))
    assert dl.download(["mobilesam"])[0].is_file()


def test_present_file_is_kept_and_corrupt_one_replaced(source, monkeypatch):
    data, dest = source
    dl.download(["mobilesam"])
    monkeypatch.setattr(dl, "_open_url", lambda url: pytest.fail("downloaded again"))
    dl.download(["mobilesam"])
    (dest / "mobile_sam.pt").write_bytes(b"truncated")
    monkeypatch.undo()  # restores _open_url (and the env/table: redo those)
    monkeypatch.setenv("UADBENCH_CHECKPOINTS", str(dest))
    spec = dataclasses.replace(
        dl.WEIGHTS["mobilesam"],
        url=(dest.parent / "server" / "mobile_sam.pt").as_uri(),
        md5=hashlib.md5(data).hexdigest(),
    )
    monkeypatch.setitem(dl.WEIGHTS, "mobilesam", spec)
    (path,) = dl.download(["mobilesam"])
    assert path.read_bytes() == data


def test_unreachable_url_is_a_clear_error(tmp_path, monkeypatch):
    spec = dataclasses.replace(dl.WEIGHTS["fastsam-s"], url=(tmp_path / "missing.pt").as_uri())
    monkeypatch.setitem(dl.WEIGHTS, "fastsam-s", spec)
    with pytest.raises(UadbenchError, match="could not download"):
        dl.download(["fastsam-s"], dest_dir=tmp_path / "d")
    assert not (tmp_path / "d" / "FastSAM-s.pt").exists()


def test_names_are_checked_before_anything_is_fetched(source, monkeypatch):
    monkeypatch.setattr(dl, "_open_url", lambda url: pytest.fail("fetched before validating names"))
    with pytest.raises(UnknownNameError, match="Did you mean 'mobilesam'"):
        dl.download(["mobilesam", "mobilesan"])
    with pytest.raises(UadbenchError, match="no downloadable weights"):
        dl.download(["mobilesam", "seeded-sam-tiny"])


def test_hf_download_goes_to_the_hf_cache_and_respects_offline(tmp_path, monkeypatch):
    import huggingface_hub

    cache = tmp_path / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UadbenchError, match="HF_HUB_OFFLINE"):
        dl.download(["hf:facebook/sam-vit-base"])
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    calls = []

    def fake_snapshot(repo_id, cache_dir, allow_patterns):
        calls.append((repo_id, cache_dir, allow_patterns))
        snap = cache / "snap"
        snap.mkdir(parents=True, exist_ok=True)
        (snap / "model.safetensors").write_bytes(b"x")
        return str(snap)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot)
    (path,) = dl.download(["hf:facebook/sam-vit-base"])
    assert calls == [("facebook/sam-vit-base", str(cache), list(dl.HF_PATTERNS))]
    assert "*.bin" not in dl.HF_PATTERNS and "*.pth" not in dl.HF_PATTERNS  # safetensors only


def test_cli_subcommand(source):
    data, dest = source
    parser = argparse.ArgumentParser(prog="uadbench")
    dl.add_download_command(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["download", "mobilesam", "--dir", str(dest / "other")])
    assert args.func(args) == 0
    assert (dest / "other" / "mobile_sam.pt").read_bytes() == data


def test_table_agrees_with_the_victim_classes():
    """One file name per victim everywhere (registry key → weights file)."""
    for name, spec in dl.WEIGHTS.items():
        cls = VICTIMS.get(name)
        assert getattr(cls, "filename", None) == spec.filename, name
        if getattr(cls, "url", None):
            assert cls.url == spec.url, name
        assert spec.url.startswith("https://"), name
    for name in VICTIMS.names():
        if getattr(VICTIMS.get(name), "filename", ""):
            assert name in dl.WEIGHTS, (
                f"{name} loads a file but `uadbench download {name}` cannot fetch it"
            )
