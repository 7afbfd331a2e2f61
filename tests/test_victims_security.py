"""Checkpoints are untrusted: a file whose unpickling would run code is refused, with a
one-line error, and the code does not run (its marker file is never created)."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from test_victims_common import tiny_twin

from uadbench.errors import UadbenchError
from uadbench.victims import VICTIMS
from uadbench.victims.checkpoints import read_state_dict
from uadbench.victims.fastsam import read_ultralytics_checkpoint


class _Evil:
    """Unpickling calls exec(), which writes the marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('pwned')",))


def _crafted(path, marker, wrap=lambda evil: {"model": evil}):
    torch.save(wrap(_Evil(marker)), path)
    assert path.is_file() and not marker.exists()
    return path


def _one_line(exc) -> str:
    msg = str(exc.value)
    assert "\n" not in msg
    return msg


def test_pickle_payload_in_pth_is_refused(tmp_path):
    marker = tmp_path / "marker"
    path = _crafted(tmp_path / "sam_vit_b_01ec64.pth", marker)
    with pytest.raises(UadbenchError) as exc:
        read_state_dict(path)
    assert "refused to load" in _one_line(exc)
    assert not marker.exists()


@pytest.mark.parametrize("name", ["sam-vit-b", "hq-sam-vit-b", "mobilesam"])
def test_victim_refuses_crafted_checkpoint(name, tmp_path, monkeypatch):
    monkeypatch.setenv("UADBENCH_CHECKPOINTS", str(tmp_path))
    cls = VICTIMS.get(name)
    if name == "sam-vit-b":  # same loading code, without building a 90M-parameter ViT first
        cls = tiny_twin(cls)
    marker = tmp_path / "marker"
    _crafted(
        tmp_path / cls.filename, marker, wrap=lambda evil: {"model": {"image_encoder.x": evil}}
    )
    with pytest.raises(UadbenchError) as exc:
        _ = cls().model
    assert str(tmp_path / cls.filename) in _one_line(exc)
    assert not marker.exists()


def test_fastsam_reader_never_runs_pickled_code(tmp_path):
    marker = tmp_path / "marker"
    path = _crafted(tmp_path / "FastSAM-x.pt", marker)
    with pytest.raises(UadbenchError) as exc:
        read_ultralytics_checkpoint(path)
    assert "not an ultralytics model checkpoint" in _one_line(exc)
    assert not marker.exists()
    # nested deeper, inside what looks like a module's state
    path = _crafted(
        tmp_path / "FastSAM-s.pt", marker, wrap=lambda evil: {"model": [evil], "ema": None}
    )
    with pytest.raises(UadbenchError):
        read_ultralytics_checkpoint(path)
    assert not marker.exists()


@pytest.mark.skipif(
    importlib.util.find_spec("ultralytics") is None, reason="ultralytics not installed"
)
def test_fastsam_victim_refuses_crafted_checkpoint(tmp_path, monkeypatch):
    monkeypatch.setenv("UADBENCH_CHECKPOINTS", str(tmp_path))
    marker = tmp_path / "marker"
    _crafted(tmp_path / "FastSAM-x.pt", marker)
    with pytest.raises(UadbenchError) as exc:
        _ = VICTIMS.get("fastsam-x")().model
    _one_line(exc)
    assert not marker.exists()


def test_hf_pytorch_bin_with_payload_is_refused(tmp_path, monkeypatch):
    """A hub directory with a crafted pytorch_model.bin: transformers reads .bin files
    with weights_only=True; the victim reports one line and nothing runs."""
    import transformers as T
    from test_victims_common import hf_tiny

    model, proc = hf_tiny("sam")
    d = tmp_path / "repo"
    model.config.save_pretrained(d)
    proc.save_pretrained(d)
    marker = tmp_path / "marker"
    torch.save({"vision_encoder.pos_embed": _Evil(marker)}, d / "pytorch_model.bin")
    assert T.SamModel  # transformers is importable
    cls = VICTIMS.get("hf:x/y")
    with pytest.raises(UadbenchError) as exc:
        _ = cls(cls.Config(model_id=str(d))).model
    _one_line(exc)
    assert not marker.exists()
