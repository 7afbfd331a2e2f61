"""Hugging Face ``transformers`` promptable segmenters as victims: ``hf:<hub id or path>``.

Supported model types (``model_type`` in the repo's ``config.json``) and the classes
used, when the installed ``transformers`` has them:

==============  ================  ====================  ================================
model_type      model class       processor class       e.g.
==============  ================  ====================  ================================
sam             SamModel          SamProcessor          facebook/sam-vit-base, -large,
                                                        -huge; Zigeng/SlimSAM-uniform-77
sam_hq          SamHQModel        SamHQProcessor        syscv-community/sam-hq-vit-base
sam2,           Sam2Model         Sam2Processor         facebook/sam2.1-hiera-tiny
sam2_video
edgetam,        EdgeTamModel      Sam2Processor         yonigozlan/EdgeTAM-hf
edgetam_video
sam3_tracker    Sam3TrackerModel  Sam3TrackerProcessor  (SAM 3 promptable segmentation)
==============  ================  ====================  ================================

The model class is the one ``transformers`` maps the model type to for mask generation
(``AutoModelForMaskGeneration``; ``*_video`` checkpoints load as their image model).

A hub id is resolved in the LOCAL Hugging Face cache only (``$HF_HUB_CACHE`` /
``$HF_HOME/hub`` / ``~/.cache/huggingface/hub``, read at call time; snapshot of
``refs/<revision>``); a path may point at any ``save_pretrained`` directory. Nothing is
ever downloaded here (``uadbench download hf:<id>`` does that). Loading uses
``local_files_only=True``, ``use_safetensors=True`` when the directory has safetensors
(``.bin`` files are read by transformers with ``torch.load(weights_only=True)``), and
never remote code.

Prediction uses the model's own image processor (resize, normalise, pad as saved with
the model) and its ``post_process_masks``; prompts are scaled to the processor's input
frame exactly as the processor does (checked against it in the tests). All point prompts
go through one forward call of the prompt encoder + mask decoder and all box prompts
through another (points and boxes have different token counts in these models), against
an image embedding computed once per image. Single-mask output (``multimask_output=False``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import UadbenchError
from ..eval.prompts import PromptSet
from .base import Victim, VictimConfig
from .locate import (
    FAMILIES,
    HF_PREFIX,
    HfFamily,
    WeightsStatus,
    cached_hf_models,
    hf_weight_files,
    is_local_model,
    locate_hf_model,
    read_model_type,
    resolve_hf_model,
    unsupported_message,
)

__all__ = [
    "FAMILIES",
    "HF_PREFIX",
    "HfConfig",
    "HfFamily",
    "HfVictim",
    "LOCAL_NAME",
    "cached_hf_models",
    "hf_weight_files",
    "model_dir_digest",
    "read_model_type",
    "resolve_hf_model",
]


#: the registry name of every ``hf:<local dir>`` victim: its content digest tells them apart
LOCAL_NAME = HF_PREFIX + "local"


def model_dir_digest(d: Path) -> str:
    """SHA-256 (hex) identifying a transformers model directory by content: of each file
    that decides its predictions — ``config.json``, the processor's config
    (``preprocessor_config.json``, ``processor_config.json``) when present, and the weight
    files transformers loads (:func:`hf_weight_files`) — by file name and content digest
    (:func:`uadbench.victims.checkpoints.file_digest`, remembered between commands)."""
    from .checkpoints import file_digest

    files = [d / "config.json"]
    files += [d / n for n in ("preprocessor_config.json", "processor_config.json")]
    files = [f for f in files if f.is_file()] + hf_weight_files(d)
    lines = "".join(f"{f.name}\t{file_digest(f)}\n" for f in files)
    return hashlib.sha256(lines.encode()).hexdigest()


@dataclasses.dataclass(frozen=True)
class HfConfig(VictimConfig):
    """``model_id``: hub id or local directory (set from the name ``hf:<model_id>``);
    ``revision``: branch or commit of the cached snapshot; ``hq_token_only``: SAM-HQ only,
    use only the HQ token's mask."""

    model_id: str = ""
    revision: str = "main"
    hq_token_only: bool = False


class HfVictim(Victim):
    """A promptable segmenter from ``transformers`` (see the module docstring)."""

    name = HF_PREFIX
    Config = HfConfig

    def __init__(
        self,
        config: Any = None,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
    ):
        super().__init__(config, device, dtype)
        if self.config.model_id:
            self.name = HF_PREFIX + self.config.model_id
        self._processor: Any = None
        self._family: HfFamily | None = None

    @classmethod
    def weights_status(cls, config: HfConfig) -> WeightsStatus:
        return resolve_hf_model(config.model_id, config.revision)

    @classmethod
    def weights_digest(cls, config: HfConfig) -> str | None:
        """Content digest of the model directory (:func:`model_dir_digest`, first 16 hex
        digits), hub snapshot or local directory; None when it is not found."""
        where, _ = locate_hf_model(config.model_id, config.revision)
        return None if where is None else model_dir_digest(where)[:16]

    @classmethod
    def content_identity(cls, config: HfConfig) -> tuple[str, HfConfig, dict[str, str]] | None:
        """``hf:<local dir>`` is identified by what the directory holds, not where it is:
        the name ``hf:local``, ``model_id`` left out, and the directory's content digest
        (a copy elsewhere gives the same label, hash and run directory; a changed weight
        file another). A hub id stays its own identity (None)."""
        if not is_local_model(config.model_id):
            return None
        digest = cls.weights_digest(config)
        if digest is None:  # no model there: check_weights says so before anything runs
            return None
        return LOCAL_NAME, dataclasses.replace(config, model_id=""), {"weights": digest}

    # ------------------------------------------------------------------ loading
    def build(self) -> torch.nn.Module:
        import transformers

        path, searched = locate_hf_model(self.config.model_id, self.config.revision)
        if path is None:
            WeightsStatus(False, "", searched).require(self.name)
        if read_model_type(path) not in FAMILIES:
            raise UadbenchError(f"victim {self.name!r}: {unsupported_message(path)}")
        family = FAMILIES[read_model_type(path)]
        model_cls = getattr(transformers, "AutoModelForMaskGeneration", None)
        proc_cls = getattr(transformers, family.processor_class, None)
        if (
            getattr(transformers, family.model_class, None) is None
            or model_cls is None
            or proc_cls is None
        ):
            raise UadbenchError(
                f"victim {self.name!r} needs transformers.{family.model_class}, which the installed "
                f"transformers {transformers.__version__} lacks; upgrade transformers"
            )
        kwargs: dict[str, Any] = {"local_files_only": True, "trust_remote_code": False}
        if any(path.glob("*.safetensors")):
            kwargs["use_safetensors"] = True
        try:
            model = model_cls.from_pretrained(str(path), **kwargs)
        except (OSError, ValueError, RuntimeError, pickle.UnpicklingError) as exc:
            first = (
                str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
            )
            raise UadbenchError(f"{path}: cannot load {family.model_class} ({first})") from None
        if (
            type(model).__name__ != family.model_class
        ):  # pragma: no cover - transformers remapped it
            raise UadbenchError(
                f"{path}: transformers loaded a {type(model).__name__}, expected {family.model_class}"
            )
        try:
            self._processor = proc_cls.from_pretrained(
                str(path), local_files_only=True, trust_remote_code=False
            )
        except (OSError, ValueError) as exc:
            raise UadbenchError(
                f"{path}: cannot load the model's processor ({str(exc).splitlines()[0][:160]}); "
                "the directory needs its preprocessor_config.json"
            ) from None
        self._family = family
        return model

    @property
    def processor(self) -> Any:
        _ = self.model  # builds (and loads the processor) on first use
        return self._processor

    # ------------------------------------------------------------------ prediction
    def embed(self, image: np.ndarray) -> dict[str, Any]:
        """Run the image processor and the vision encoder once; remember the frame sizes."""
        enc = self.processor.image_processor(images=image, return_tensors="pt")
        pv = enc["pixel_values"].to(self.device, self.dtype)
        if "reshaped_input_sizes" in enc:
            input_hw = tuple(int(v) for v in enc["reshaped_input_sizes"][0])
        else:
            input_hw = tuple(int(v) for v in pv.shape[-2:])
        emb = self.model.get_image_embeddings(pv)
        kind = self._family.embedding
        if kind == "hq":
            kwargs = {
                "image_embeddings": emb[0],
                "intermediate_embeddings": emb[1],
                "hq_token_only": bool(self.config.hq_token_only),
            }
        else:
            kwargs = {"image_embeddings": emb}
        return {"forward": kwargs, "input_hw": input_hw}

    def _post(
        self, low: torch.Tensor, hw: tuple[int, int], input_hw: tuple[int, int]
    ) -> torch.Tensor:
        """Low-res logits (1, n, 1, h, w) → bool (n, H, W) with the processor's post-processing."""
        proc = self.processor
        if self._family.reshaped_sizes:
            masks = proc.post_process_masks(
                low.float(), [list(hw)], [list(input_hw)], binarize=True
            )
        else:
            masks = proc.post_process_masks(low.float(), [list(hw)], binarize=True)
        return masks[0][:, 0].bool()

    @staticmethod
    def to_input_frame(
        coords: np.ndarray, hw: tuple[int, int], input_hw: tuple[int, int]
    ) -> np.ndarray:
        """Prompt coordinates (n, 2k) as XY pairs in image pixels → the processor's input
        frame (the resized, unpadded image of size ``input_hw``), scaled as the HF
        processors scale them."""
        sx, sy = input_hw[1] / hw[1], input_hw[0] / hw[0]
        scale = np.array([sx, sy] * (coords.shape[-1] // 2))
        return np.asarray(coords, dtype=np.float64) * scale

    def decode(
        self, state: dict[str, Any], prompts: PromptSet, hw: tuple[int, int]
    ) -> torch.Tensor:
        input_hw = state["input_hw"]
        out = torch.zeros(len(prompts), *hw, dtype=torch.bool, device=self.device)
        coords = np.asarray(prompts.coords, dtype=np.float64)
        pidx, bidx = np.flatnonzero(prompts.is_point), np.flatnonzero(prompts.is_box)
        dev = dict(dtype=self.dtype, device=self.device)
        if len(pidx):  # all points in one forward: (1, n, 1, 2) with labels (1, n, 1)
            pts = torch.as_tensor(self.to_input_frame(coords[pidx, :2], hw, input_hw), **dev)
            labels = torch.as_tensor(prompts.labels[pidx], device=self.device)
            res = self.model(
                **state["forward"],
                input_points=pts[None, :, None],
                input_labels=labels[None, :, None],
                multimask_output=False,
            )
            masks = self._post(res.pred_masks, hw, input_hw)
            out[torch.as_tensor(pidx, device=self.device)] = masks.to(self.device)
        if len(bidx):  # all boxes in one forward: (1, n, 4)
            boxes = torch.as_tensor(self.to_input_frame(coords[bidx], hw, input_hw), **dev)
            res = self.model(**state["forward"], input_boxes=boxes[None], multimask_output=False)
            masks = self._post(res.pred_masks, hw, input_hw)
            out[torch.as_tensor(bidx, device=self.device)] = masks.to(self.device)
        return out
