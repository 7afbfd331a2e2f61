"""MobileSAM (Zhang et al., "Faster Segment Anything", 2023) as a victim and surrogate.

A TinyViT image encoder distilled from SAM ViT-H, with SAM's own prompt encoder and
mask decoder. The encoder is the maintained TinyViT of ``segment_anything_hq`` (extra
``uadbench[hq]``); prompt encoder and decoder are ``segment_anything``'s. The official
``mobile_sam.pt`` of the MobileSAM release (also in the ``dhkim2810/MobileSAM`` hub repo)
is a plain state_dict whose keys (``image_encoder.layers.0.blocks.0.conv1.c.weight``,
``prompt_encoder.…``, ``mask_decoder.…``) match this module tree exactly; it is read
with ``torch.load(weights_only=True)`` and loaded strictly.
"""

from __future__ import annotations

from typing import Any

import torch

from .download import WEIGHTS
from .hq import (
    HQ_INSTALL,
    MOBILE_SAM_TINY_VIT,
    TinyVitArch,
    TinyVitSurrogate,
    build_tiny_vit,
    hq_available,
)
from .locate import BUILTIN
from .segment_anything import CheckpointVictim, build_sam


def build_mobile_sam(arch: TinyVitArch) -> torch.nn.Module:
    """A ``segment_anything`` Sam with a TinyViT encoder (MobileSAM layout), random weights."""
    return build_sam(arch, image_encoder=build_tiny_vit(arch))


class MobileSam(TinyVitSurrogate, CheckpointVictim):
    """MobileSAM: TinyViT-5M encoder + SAM decoder. Official checkpoint ``mobile_sam.pt``."""

    name = "mobilesam"
    arch: Any = MOBILE_SAM_TINY_VIT
    filename = WEIGHTS["mobilesam"].filename
    url = WEIGHTS["mobilesam"].url
    hf_repo: str | None = BUILTIN["mobilesam"].hf_repo

    @classmethod
    def requires(cls) -> tuple[bool, str]:
        return hq_available(), HQ_INSTALL

    def _build_arch(self) -> torch.nn.Module:
        """This victim's architecture with random weights."""
        return build_mobile_sam(self.arch)

    def _encode_image(self, z: torch.Tensor) -> dict[str, torch.Tensor]:
        emb, _stage2 = self.model.image_encoder(z)  # this TinyViT also returns stage-2 features
        return {"emb": emb}
