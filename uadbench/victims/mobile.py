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

from ..errors import UadbenchError
from .base import VictimConfig, WeightsStatus
from .checkpoints import find_checkpoint, load_state_dict_strict, read_state_dict
from .download import WEIGHTS
from .hq import (
    HQ_INSTALL,
    MOBILE_SAM_TINY_VIT,
    TinyVitArch,
    TinyVitSurrogate,
    build_tiny_vit,
    hq_available,
)
from .segment_anything import SamFamilyVictim


def build_mobile_sam(arch: TinyVitArch) -> torch.nn.Module:
    """A ``segment_anything`` Sam with a TinyViT encoder (MobileSAM layout), random weights."""
    from segment_anything.modeling import MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    emb = arch.img_size // 16
    return Sam(
        image_encoder=build_tiny_vit(arch),
        prompt_encoder=PromptEncoder(
            embed_dim=arch.prompt_dim,
            image_embedding_size=(emb, emb),
            input_image_size=(arch.img_size, arch.img_size),
            mask_in_chans=16,
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(
                depth=arch.decoder_depth,
                embedding_dim=arch.prompt_dim,
                mlp_dim=arch.decoder_mlp_dim,
                num_heads=arch.decoder_heads,
            ),
            transformer_dim=arch.prompt_dim,
            iou_head_depth=3,
            iou_head_hidden_dim=arch.iou_head_hidden_dim,
        ),
        pixel_mean=[123.675, 116.28, 103.53],
        pixel_std=[58.395, 57.12, 57.375],
    )


class MobileSam(TinyVitSurrogate, SamFamilyVictim):
    """MobileSAM: TinyViT-5M encoder + SAM decoder. Official checkpoint ``mobile_sam.pt``."""

    name = "mobilesam"
    arch: Any = MOBILE_SAM_TINY_VIT
    filename = WEIGHTS["mobilesam"].filename
    url = WEIGHTS["mobilesam"].url
    hf_repo: str | None = "dhkim2810/MobileSAM"

    @classmethod
    def weights_status(cls, config: VictimConfig) -> WeightsStatus:
        if not hq_available():
            return WeightsStatus(False, "", HQ_INSTALL)
        return find_checkpoint(cls.name, config.checkpoint, (cls.filename,), cls.hf_repo)

    def _build_arch(self) -> torch.nn.Module:
        """This victim's architecture with random weights."""
        return build_mobile_sam(self.arch)

    def build(self) -> torch.nn.Module:
        if not hq_available():
            raise UadbenchError(f"victim {self.name!r} {HQ_INSTALL}")
        path = self.weights_status(self.config).require(self.name)
        sd = read_state_dict(path)  # before building: a bad file fails fast
        model = self._build_arch()
        load_state_dict_strict(model, sd, path, self.name)
        return model

    def _encode_image(self, z: torch.Tensor) -> dict[str, torch.Tensor]:
        emb, _stage2 = self.model.image_encoder(z)  # this TinyViT also returns stage-2 features
        return {"emb": emb}
