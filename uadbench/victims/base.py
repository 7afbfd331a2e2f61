"""Victim base class: one promptable segmenter behind one interface.

A backend writes three things: how to load its model (:meth:`Victim.build`), how to
embed one uint8 image with the model's own preprocessing (:meth:`Victim.embed`), and
how to decode a batch of prompts against that embedding (:meth:`Victim.decode`). The
base owns the uint8 boundary, prompt batching and the output format.

A victim that can serve as a **surrogate** (``is_surrogate = True``) also implements
:meth:`Victim.features` — a differentiable path from a float image in [0, 1] at the
image's own resolution to the outputs of named encoder blocks, running only up to the
deepest block asked for — and :meth:`Victim.mask_logits` for prompt-level attacks.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from ..config import run_field
from ..errors import DataError
from ..eval.prompts import PromptSet

# torch-free weights lookup (uadbench ls victims); re-exported for victim authors
from .locate import WeightsStatus as WeightsStatus
from .locate import checkpoint_dirs as checkpoint_dirs


def resized_hw(h: int, w: int, long_side: int) -> tuple[int, int]:
    """Size after scaling the longest side to ``long_side`` (SAM's ResizeLongestSide)."""
    scale = long_side / max(h, w)
    return int(h * scale + 0.5), int(w * scale + 0.5)


@dataclasses.dataclass(frozen=True)
class VictimConfig:
    """Settings every victim has. ``checkpoint``: explicit weights path (overrides search).
    ``prompt_batch``: prompts per decoder call (in :meth:`Victim.predict` and in the
    differentiable :meth:`Victim.mask_logits`). Both are run fields: a checkpoint is
    identified by its content (:meth:`Victim.weights_digest`), not by where it sits."""

    checkpoint: str | None = run_field(None)
    prompt_batch: int = run_field(128)


class Victim(ABC):
    """A promptable segmentation model.

    ``predict(image, prompts)`` takes an RGB uint8 image (H, W, 3) and a
    :class:`PromptSet` of P prompts (points XY and boxes XYXY in image pixels) and
    returns P single-mask predictions, bool (P, H, W).
    """

    name: ClassVar[str] = ""
    Config: ClassVar[type] = VictimConfig
    is_surrogate: ClassVar[bool] = False
    #: a short note printed with results (e.g. "untrained, seeded weights")
    note: ClassVar[str] = ""

    def __init__(
        self,
        config: Any = None,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
    ):
        self.config = config if config is not None else self.Config()
        self.device = torch.device(device)
        self.dtype = dtype
        self._model: torch.nn.Module | None = None

    # ------------------------------------------------------------------ weights
    @classmethod
    def weights_status(cls, config: Any) -> WeightsStatus:
        """Where the weights are. Must not load them. Default: built in code."""
        return WeightsStatus(True, "built in code")

    @classmethod
    def weights_digest(cls, config: Any) -> str | None:
        """A content digest of the weights ``config`` loads (first 16 hex digits of the
        file's SHA-256, remembered by path, size and mtime): what identifies the weights,
        wherever they sit. The run manifest records it, so a baseline can tell that a model
        was retrained. None when the weights are built in code, not found, or not one file.
        Must not load the model."""
        status = cls.weights_status(config)
        if not status.found or not Path(status.where).is_file():
            return None
        from .checkpoints import file_digest

        return file_digest(status.where)[:16]

    @classmethod
    def content_identity(cls, config: Any) -> tuple[str, Any, dict[str, str]] | None:
        """For a victim whose *name* would carry where its weights sit (``hf:<local dir>``):
        ``(name, config, extra)`` to identify its results by instead — a path-free name,
        the config with the path at its default, and ``{"weights": <content digest>}`` —
        so a copy of the same files elsewhere is the same result. None (the default): the
        registry name and config identify it (a checkpoint path is a run field already)."""
        return None

    @property
    def model(self) -> torch.nn.Module:
        if self._model is None:
            m = self.build()
            m.eval().requires_grad_(False)
            self._model = m.to(device=self.device, dtype=self.dtype)
        return self._model

    def use_model(self, model: torch.nn.Module) -> Victim:
        """Run ``model`` (already built, on this victim's device and dtype, used as it is:
        not put in eval mode or frozen) instead of building one; returns ``self``. For the
        zoo trainer, which trains through the victim's own differentiable path, and for
        victims that differ only in settings such as ``prompt_batch`` sharing one load."""
        self._model = model
        return self

    @abstractmethod
    def build(self) -> torch.nn.Module:
        """Construct the model and load its weights (raise MissingCheckpointError)."""

    # ------------------------------------------------------------------ prediction
    @abstractmethod
    def embed(self, image: np.ndarray) -> Any:
        """Model-specific state for one RGB uint8 image (e.g. encoder embeddings)."""

    @abstractmethod
    def decode(self, state: Any, prompts: PromptSet, hw: tuple[int, int]) -> torch.Tensor:
        """Masks for a batch of prompts: bool tensor (P, H, W) at the image's size."""

    @torch.no_grad()
    def predict(self, image: np.ndarray, prompts: PromptSet, state: Any = None) -> np.ndarray:
        """One mask per prompt: bool array (P, H, W). ``image`` is RGB uint8 (H, W, 3);
        ``state``: its :meth:`embed` output when the caller already has it."""
        if not (
            isinstance(image, np.ndarray)
            and image.dtype == np.uint8
            and image.ndim == 3
            and image.shape[2] == 3
        ):
            raise DataError(
                f"victim {self.name}: image must be an RGB uint8 array (H, W, 3), got "
                f"{getattr(image, 'dtype', type(image))} {getattr(image, 'shape', '')}"
            )
        h, w = image.shape[:2]
        out = np.zeros((len(prompts), h, w), dtype=bool)
        if len(prompts) == 0:
            return out
        if state is None:
            state = self.embed(image)
        for idx in self._prompt_batches(len(prompts)):
            masks = self.decode(state, prompts.subset(idx), (h, w))
            out[idx] = masks.cpu().numpy().astype(bool)
        return out

    # ------------------------------------------------------------------ surrogate
    @property
    def num_blocks(self) -> int:
        raise NotImplementedError(f"victim {self.name} cannot serve as a surrogate")

    def default_taps(self) -> tuple[int, ...]:
        """Blocks from 1/4 to 7/12 of the depth (3..6 for a 12-block ViT), 0-based."""
        n = self.num_blocks
        lo, hi = n // 4, (7 * n) // 12 - 1
        return tuple(range(lo, max(lo, hi) + 1))

    def features(self, x: torch.Tensor, taps: Sequence[int]) -> list[torch.Tensor]:
        """Encoder block outputs at ``taps`` for float images ``x`` (B, 3, H, W) in [0, 1].

        Differentiable in ``x``; runs the encoder only up to ``max(taps)``.
        """
        raise NotImplementedError(f"victim {self.name} cannot serve as a surrogate")

    def model_frame(self, hw: tuple[int, int]) -> tuple[int, int] | None:
        """Size (h, w) an (H, W) image has inside the surrogate's input frame — its longest
        side scaled to the model's ``img_size``, before padding — or None for a surrogate
        that runs at the image's own size. An image of this size goes through
        :meth:`features` unresized (``attack_space=model`` attacks there)."""
        size = getattr(self, "img_size", None)
        return resized_hw(int(hw[0]), int(hw[1]), int(size)) if size else None

    def mask_logits(self, x: torch.Tensor, prompts: Sequence[PromptSet]) -> list[torch.Tensor]:
        """Low-resolution mask logits per image: list of (P_i, h, w) tensors, differentiable in x."""
        raise NotImplementedError(f"victim {self.name} has no differentiable mask path")

    def _in_prompt_batches(
        self, prompts: PromptSet, logits_for: Callable[[PromptSet], torch.Tensor]
    ) -> torch.Tensor:
        """``logits_for(prompts)`` (P, h, w), computed ``config.prompt_batch`` prompts per
        decoder call and concatenated — the same values as one call. For the differentiable
        path: a SAM decoder's per-prompt tensors grow with prompts × image tokens, and on a
        CPU the backward pass over Attack-SAM-K's 400 prompts takes 1.2–1.4× less time in
        batches of 128 than as one call with 32×32 image tokens
        (``tests/benchmarks/test_bench_mask_logits.py``)."""
        if len(prompts) <= self._prompt_batch_size:
            return logits_for(prompts)
        return torch.cat(
            [logits_for(prompts.subset(idx)) for idx in self._prompt_batches(len(prompts))]
        )

    @property
    def _prompt_batch_size(self) -> int:
        return max(1, int(self.config.prompt_batch))

    def _prompt_batches(self, n: int) -> Iterator[np.ndarray]:
        """Indices of ``n`` prompts in consecutive batches of ``config.prompt_batch``."""
        step = self._prompt_batch_size
        for start in range(0, n, step):
            yield np.arange(start, min(start + step, n))

    def describe(self) -> str:
        return self.name + (f" ({self.note})" if self.note else "")
