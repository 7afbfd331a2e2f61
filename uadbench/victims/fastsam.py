"""FastSAM (Zhao et al., "Fast Segment Anything", 2023) through ``ultralytics``.

Optional: ``pip install uadbench[fastsam]``. Without ``ultralytics`` the victims stay
registered and listable; ``weights_status`` says what to install.

FastSAM is a YOLOv8-seg model that segments *everything*; prompts select among its
masks. As in the UAD paper's evaluation (``UAD.md``):

* everything mode once per image: confidence 0.4, NMS IoU 0.9, inference size
  ``max(H, W)`` (rounded up to the model stride by ultralytics; letterboxed to the nearest
  stride multiple, not to a square, as in FastSAM's release), masks at the original
  resolution (``retina_masks``), in float32, via ultralytics' own ``FastSAMPredictor``;
* a **point** selects every mask containing it (FastSAM's rule; the prediction is their
  union), a **box** the one mask with the highest IoU with the box (FastSAM's rule:
  mask area inside the box / (box area + mask area − that));
* no mask at all (nothing detected, or no mask contains the point) → an empty mask,
  which scores IoU 0 against a non-empty reference.

Checkpoints (``FastSAM-s.pt``, ``FastSAM-x.pt``) are ultralytics training checkpoints:
a pickled model object. They are never unpickled as such: :func:`read_ultralytics_checkpoint`
reads them with an unpickler under which every class or function named in the file is an
inert placeholder (only torch's tensor-rebuild functions, ``OrderedDict`` and ``set`` are
real), so nothing in the file can execute. The architecture is rebuilt from the plain
``yaml`` dict stored in the checkpoint and the tensors are loaded strictly.
"""

from __future__ import annotations

import _compat_pickle
import dataclasses
import os
import pickle
import types
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import UadbenchError
from ..eval.prompts import PromptSet
from . import locate
from .base import Victim, VictimConfig
from .checkpoints import load_state_dict_strict
from .download import WEIGHTS
from .locate import FASTSAM_INSTALL, WeightsStatus, find_checkpoint


def ultralytics_available() -> bool:
    return locate.package_available("ultralytics")  # one switch for tests


def import_ultralytics() -> None:
    """Import ultralytics offline: no connectivity probe, telemetry or pip auto-install."""
    if not ultralytics_available():
        raise UadbenchError(f"FastSAM victims {FASTSAM_INSTALL}")
    # no connectivity probe / telemetry / pip auto-install from a benchmark harness
    os.environ.setdefault("YOLO_OFFLINE", "1")
    os.environ.setdefault("YOLO_AUTOINSTALL", "false")
    import ultralytics  # noqa: F401


# ---------------------------------------------------------------------- safe reading
class _Inert:
    """Placeholder for any class or function named in a pickle: it records the arguments
    and state it is given and never runs anything."""

    _qualname = "?"

    def __new__(cls, *args: Any, **kwargs: Any) -> _Inert:
        obj = object.__new__(cls)
        obj.__dict__["_args"] = args
        obj.__dict__["_state"] = None
        obj.__dict__["_items"] = []
        return obj

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        self.__dict__["_state"] = state

    # list/dict subclasses are rebuilt with APPENDS / SETITEMS
    def append(self, item: Any) -> None:
        self.__dict__["_items"].append(item)

    def extend(self, items: Any) -> None:
        self.__dict__["_items"].extend(items)

    def __setitem__(self, key: Any, value: Any) -> None:
        self.__dict__["_items"].append((key, value))

    def __repr__(self) -> str:
        return f"<inert {self._qualname}>"


_REAL = {
    ("torch._utils", "_rebuild_tensor_v2"),
    ("torch._utils", "_rebuild_tensor"),
    ("torch._utils", "_rebuild_parameter"),
    ("torch._utils", "_rebuild_parameter_with_state"),
    ("collections", "OrderedDict"),
    ("builtins", "set"),
    ("builtins", "frozenset"),
}


class _InertUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        # protocol-2 pickles name Python 2 modules (``__builtin__.set``)
        if (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        if (module, name) in _REAL:
            return super().find_class(module, name)
        return type(name, (_Inert,), {"_qualname": f"{module}.{name}"})


_inert_pickle = types.SimpleNamespace(
    Unpickler=_InertUnpickler,
    load=lambda f, **kw: _InertUnpickler(f, **kw).load(),
    __name__="uadbench_inert_pickle",
)


def _module_tensors(obj: Any, prefix: str, out: dict[str, torch.Tensor]) -> None:
    state = obj.__dict__.get("_state") if isinstance(obj, _Inert) else None
    if not isinstance(state, dict):
        raise UadbenchError(f"unexpected object at {prefix or 'model'!r}: not a module")
    skip = state.get("_non_persistent_buffers_set") or set()
    for k, v in (state.get("_parameters") or {}).items():
        if isinstance(v, torch.Tensor):
            out[prefix + k] = v
    for k, v in (state.get("_buffers") or {}).items():
        if isinstance(v, torch.Tensor) and k not in skip:
            out[prefix + k] = v
    for k, v in (state.get("_modules") or {}).items():
        if v is not None:
            _module_tensors(v, f"{prefix}{k}.", out)


def read_ultralytics_checkpoint(path: str | Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """(architecture yaml dict, state_dict) of an ultralytics ``.pt`` checkpoint, read
    without executing anything in the file (see the module docstring)."""
    path = Path(path)
    try:
        ckpt = torch.load(
            str(path), map_location="cpu", weights_only=False, pickle_module=_inert_pickle
        )
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError, TypeError) as exc:
        first = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        raise UadbenchError(
            f"{path}: not a readable ultralytics checkpoint ({first}); re-download it"
        ) from None
    model = None
    if isinstance(ckpt, dict):
        model = ckpt.get("ema") or ckpt.get("model")
    state = model.__dict__.get("_state") if isinstance(model, _Inert) else None
    yaml = state.get("yaml") if isinstance(state, dict) else None
    if not isinstance(yaml, dict):
        raise UadbenchError(
            f"{path}: not an ultralytics model checkpoint (no model with an architecture yaml); "
            "FastSAM victims need FastSAM-s.pt / FastSAM-x.pt"
        )
    tensors: dict[str, torch.Tensor] = {}
    _module_tensors(model, "", tensors)
    return yaml, tensors


def build_from_checkpoint(path: str | Path, name: str) -> torch.nn.Module:
    """The ultralytics SegmentationModel described by the checkpoint, weights loaded (fp32)."""
    import_ultralytics()
    from ultralytics.nn.tasks import SegmentationModel

    yaml, tensors = read_ultralytics_checkpoint(path)
    model = SegmentationModel(
        cfg=dict(yaml), ch=int(yaml.get("channels", 3)), nc=yaml.get("nc"), verbose=False
    )
    tensors = {k: v.float() if v.is_floating_point() else v for k, v in tensors.items()}
    load_state_dict_strict(model, tensors, path, name)
    return model


# ---------------------------------------------------------------------- prompt selection
def select_masks(masks: torch.Tensor, prompts: PromptSet) -> torch.Tensor:
    """FastSAM's prompt rules on everything-mode masks (N, H, W) bool → (P, H, W) bool.

    Point: union of the masks containing the point (pixel = coordinates truncated to int,
    clipped to the image). Box: the mask maximising |mask ∩ box| / (|box| + |mask| − |mask ∩ box|),
    box corners truncated to int and clipped. No masks → all-empty output.
    """
    n, h, w = masks.shape
    out = torch.zeros(len(prompts), h, w, dtype=torch.bool, device=masks.device)
    if n == 0 or len(prompts) == 0:
        return out
    coords = np.asarray(prompts.coords, dtype=np.float64)
    pidx, bidx = np.flatnonzero(prompts.is_point), np.flatnonzero(prompts.is_box)
    flat = masks.reshape(n, h * w)
    if len(pidx):
        xs = torch.as_tensor(coords[pidx, 0].astype(np.int64).clip(0, w - 1), device=masks.device)
        ys = torch.as_tensor(coords[pidx, 1].astype(np.int64).clip(0, h - 1), device=masks.device)
        hit = masks[:, ys, xs].T.float()  # (p, N): mask contains point
        out[torch.as_tensor(pidx, device=masks.device)] = ((hit @ flat.float()) > 0).reshape(
            -1, h, w
        )
    if len(bidx):
        b = coords[bidx].astype(np.int64)
        x0, x1 = (torch.as_tensor(b[:, i].clip(0, w), device=masks.device) for i in (0, 2))
        y0, y1 = (torch.as_tensor(b[:, i].clip(0, h), device=masks.device) for i in (1, 3))
        integ = torch.zeros(n, h + 1, w + 1, dtype=torch.int64, device=masks.device)
        integ[:, 1:, 1:] = masks.long().cumsum(1).cumsum(2)
        inside = integ[:, y1, x1] - integ[:, y0, x1] - integ[:, y1, x0] + integ[:, y0, x0]  # (N, b)
        full = flat.long().sum(1)[:, None]
        box_area = ((y1 - y0) * (x1 - x0))[None]
        ratio = inside.double() / (box_area + full - inside).double()
        best = torch.nan_to_num(ratio, nan=-1.0).argmax(0)
        out[torch.as_tensor(bidx, device=masks.device)] = masks[best]
    return out


def ultralytics_input(image: np.ndarray, channels: str = "rgb") -> np.ndarray:
    """The array to hand ultralytics for an RGB uint8 image: ultralytics reads arrays as
    BGR, so "rgb" (true colours) swaps to BGR; "bgr" hands the RGB array as it is (the
    reference's channel swap)."""
    if channels == "bgr":
        return np.ascontiguousarray(image)
    return np.ascontiguousarray(image[..., ::-1])


# ---------------------------------------------------------------------- victims
@dataclasses.dataclass(frozen=True)
class FastSamConfig(VictimConfig):
    """Everything-mode settings of the UAD evaluation: ``conf`` 0.4, NMS ``iou`` 0.9,
    ``imgsz`` 0 = max(H, W) of each image, ``retina_masks`` (masks at image resolution).
    ``channels``: "rgb" (default: the model sees the image's true colours) or "bgr" (the
    reference's setting: it handed RGB arrays to ultralytics, which reads arrays as BGR,
    so the paper's FastSAM column saw channel-swapped images)."""

    conf: float = 0.4
    iou: float = 0.9
    imgsz: int = 0
    retina_masks: bool = True
    max_det: int = 300
    channels: str = "rgb"

    def __post_init__(self) -> None:
        if self.channels not in ("rgb", "bgr"):
            raise ValueError(f"channels={self.channels!r} must be rgb or bgr")


class FastSamVictim(Victim):
    """FastSAM through ultralytics (see the module docstring)."""

    Config = FastSamConfig
    filename: str = ""
    url: str = ""

    def __init__(
        self,
        config: Any = None,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
    ):
        super().__init__(config, device, dtype)
        self._predictor: Any = None

    @classmethod
    def weights_status(cls, config: VictimConfig) -> WeightsStatus:
        if not ultralytics_available():
            return WeightsStatus(False, "", FASTSAM_INSTALL)
        return find_checkpoint(cls.name, config.checkpoint, (cls.filename,))

    def build(self) -> torch.nn.Module:
        if not ultralytics_available():
            raise UadbenchError(f"victim {self.name!r} {FASTSAM_INSTALL}")
        path = self.weights_status(self.config).require(self.name)
        return build_from_checkpoint(path, self.name)

    def _get_predictor(self) -> Any:
        if self._predictor is None:
            import_ultralytics()
            from ultralytics.models.fastsam import FastSAMPredictor

            cfg = self.config
            pred = FastSAMPredictor(
                overrides=dict(
                    conf=cfg.conf,
                    iou=cfg.iou,
                    retina_masks=cfg.retina_masks,
                    max_det=cfg.max_det,
                    # minimal (stride-multiple) letterbox padding, as FastSAM's own
                    # ultralytics 8.0 predictor did, instead of padding to a square
                    rect=True,
                    device=str(self.device),
                    verbose=False,
                    save=False,
                    mode="predict",
                    task="segment",
                )
            )
            pred.setup_model(self.model, verbose=False)
            self._predictor = pred
        return self._predictor

    def embed(self, image: np.ndarray) -> dict[str, Any]:
        """Everything-mode masks of the image: bool (N, H, W) (N may be 0)."""
        h, w = image.shape[:2]
        pred = self._get_predictor()
        pred.args.imgsz = int(self.config.imgsz) or max(h, w)
        result = pred(source=ultralytics_input(image, self.config.channels))[0]
        if result.masks is None or len(result) == 0:
            return {"masks": torch.zeros(0, h, w, dtype=torch.bool, device=self.device)}
        masks = result.masks.data
        if tuple(masks.shape[1:]) != (h, w):
            from ultralytics.utils.ops import scale_masks

            masks = scale_masks(masks[None].float(), (h, w))[0] > 0.5
        return {"masks": masks.bool().to(self.device)}

    def decode(
        self, state: dict[str, Any], prompts: PromptSet, hw: tuple[int, int]
    ) -> torch.Tensor:
        return select_masks(state["masks"], prompts)


class FastSamS(FastSamVictim):
    """FastSAM-s (YOLOv8s-seg). Checkpoint ``FastSAM-s.pt``."""

    name = "fastsam-s"
    filename = WEIGHTS["fastsam-s"].filename
    url = WEIGHTS["fastsam-s"].url


class FastSamX(FastSamVictim):
    """FastSAM-x (YOLOv8x-seg), the FastSAM of the UAD paper. Checkpoint ``FastSAM-x.pt``."""

    name = "fastsam-x"
    filename = WEIGHTS["fastsam-x"].filename
    url = WEIGHTS["fastsam-x"].url
