"""Convert segment-anything checkpoints to the ``transformers`` SamModel layout.

``sam_to_hf(state_dict, config)`` renames the keys of an official ``sam_vit_*.pth``
state_dict (``segment_anything.modeling.Sam``) to those of ``transformers.SamModel`` and
checks the result against ``config``; :func:`hf_sam_config` builds the matching
``SamConfig`` from a :class:`~uadbench.victims.segment_anything.SamArch`. Together they
let the same weights run through both implementations (the tests compare their masks).

Key mapping (segment-anything → transformers):

* ``image_encoder.`` → ``vision_encoder.``; ``patch_embed.proj`` → ``patch_embed.projection``;
  ``blocks.N.norm1/norm2`` → ``layers.N.layer_norm1/layer_norm2``; ``neck.0/1/2/3`` →
  ``neck.conv1/layer_norm1/conv2/layer_norm2``.
* ``prompt_encoder.pe_layer.positional_encoding_gaussian_matrix`` →
  ``shared_image_embedding.positional_embedding`` (tied to
  ``prompt_encoder.shared_embedding.positional_embedding``); ``point_embeddings.N`` →
  ``point_embed.N``; ``mask_downscaling.0/1/3/4/6`` → ``mask_embed.conv1/layer_norm1/
  conv2/layer_norm2/conv3``.
* ``mask_decoder.transformer…normK`` → ``…layer_normK``; ``norm_final_attn`` →
  ``layer_norm_final_attn``; ``output_upscaling.0/1/3`` → ``upscale_conv1/
  upscale_layer_norm/upscale_conv2``; a K-layer MLP's ``layers.0`` / ``layers.K-1`` /
  ``layers.i`` → ``proj_in`` / ``proj_out`` / ``layers.i-1``.
* ``pixel_mean``/``pixel_std`` are dropped (the HF image processor normalises).
"""

from __future__ import annotations

import re
from typing import Any

import torch

from ..errors import UadbenchError
from .segment_anything import SamArch

_FIXED = [
    ("image_encoder.patch_embed.proj.", "vision_encoder.patch_embed.projection."),
    ("image_encoder.neck.0.", "vision_encoder.neck.conv1."),
    ("image_encoder.neck.1.", "vision_encoder.neck.layer_norm1."),
    ("image_encoder.neck.2.", "vision_encoder.neck.conv2."),
    ("image_encoder.neck.3.", "vision_encoder.neck.layer_norm2."),
    ("image_encoder.", "vision_encoder."),
    ("prompt_encoder.mask_downscaling.0.", "prompt_encoder.mask_embed.conv1."),
    ("prompt_encoder.mask_downscaling.1.", "prompt_encoder.mask_embed.layer_norm1."),
    ("prompt_encoder.mask_downscaling.3.", "prompt_encoder.mask_embed.conv2."),
    ("prompt_encoder.mask_downscaling.4.", "prompt_encoder.mask_embed.layer_norm2."),
    ("prompt_encoder.mask_downscaling.6.", "prompt_encoder.mask_embed.conv3."),
    ("prompt_encoder.point_embeddings.", "prompt_encoder.point_embed."),
    ("mask_decoder.output_upscaling.0.", "mask_decoder.upscale_conv1."),
    ("mask_decoder.output_upscaling.1.", "mask_decoder.upscale_layer_norm."),
    ("mask_decoder.output_upscaling.3.", "mask_decoder.upscale_conv2."),
    (
        "mask_decoder.transformer.norm_final_attn.",
        "mask_decoder.transformer.layer_norm_final_attn.",
    ),
]
_PE = "prompt_encoder.pe_layer.positional_encoding_gaussian_matrix"
_DROP = {"pixel_mean", "pixel_std"}
_MLP = re.compile(
    r"^(mask_decoder\.(?:output_hypernetworks_mlps\.\d+|iou_prediction_head))\.layers\.(\d+)\.(.*)$"
)


def _rename(key: str, mlp_depth: dict[str, int]) -> str:
    m = _MLP.match(key)
    if m:
        head, i, rest = m.group(1), int(m.group(2)), m.group(3)
        depth = mlp_depth[head]
        if i == 0:
            return f"{head}.proj_in.{rest}"
        if i == depth - 1:
            return f"{head}.proj_out.{rest}"
        return f"{head}.layers.{i - 1}.{rest}"
    for old, new in _FIXED:
        if key.startswith(old):
            key = new + key[len(old) :]
            break
    key = re.sub(
        r"^vision_encoder\.blocks\.(\d+)\.norm(\d)\.",
        r"vision_encoder.layers.\1.layer_norm\2.",
        key,
    )
    key = re.sub(r"^vision_encoder\.blocks\.", "vision_encoder.layers.", key)
    key = re.sub(r"^(mask_decoder\.transformer\.layers\.\d+)\.norm(\d)\.", r"\1.layer_norm\2.", key)
    return key


def rename_sam_to_hf(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Keys of a segment-anything ``Sam`` state_dict renamed for ``transformers.SamModel``,
    without checking them against a config (pixel statistics dropped)."""
    sd = {k: v for k, v in state_dict.items() if k not in _DROP}
    mlp_depth: dict[str, int] = {}
    for k in sd:
        m = _MLP.match(k)
        if m:
            mlp_depth[m.group(1)] = max(mlp_depth.get(m.group(1), 0), int(m.group(2)) + 1)
    out: dict[str, torch.Tensor] = {}
    for k, v in sd.items():
        if k == _PE:
            out["shared_image_embedding.positional_embedding"] = v
            out["prompt_encoder.shared_embedding.positional_embedding"] = v
        else:
            out[_rename(k, mlp_depth)] = v
    return out


def sam_to_hf(state_dict: dict[str, torch.Tensor], config: Any) -> dict[str, torch.Tensor]:
    """Keys of a segment-anything ``Sam`` state_dict renamed for ``transformers.SamModel``.

    ``config``: the target ``transformers.SamConfig``; the converted dict is checked against
    a model built from it (same key set, same shapes) and a mismatch raises UadbenchError.
    """
    from transformers import SamModel

    if _PE not in state_dict:
        raise UadbenchError(f"not a segment-anything SAM state_dict: no {_PE}")
    out = rename_sam_to_hf(state_dict)
    with torch.device("meta"):
        target = SamModel(config).state_dict()
    missing = sorted(set(target) - set(out))
    unexpected = sorted(set(out) - set(target))
    bad = [k for k in target if k in out and tuple(out[k].shape) != tuple(target[k].shape)]
    if missing or unexpected or bad:
        raise UadbenchError(
            f"SAM → transformers conversion does not fit the config: missing {missing[:3]}, "
            f"unexpected {unexpected[:3]}, shape mismatch {bad[:3]}"
        )
    return out


def hf_sam_config(arch: SamArch) -> Any:
    """The ``transformers.SamConfig`` of a SAM with hyperparameters ``arch``."""
    from transformers import SamConfig

    return SamConfig(
        vision_config=dict(
            hidden_size=arch.embed_dim,
            num_hidden_layers=arch.depth,
            num_attention_heads=arch.num_heads,
            global_attn_indexes=list(arch.global_attn),
            image_size=arch.img_size,
            patch_size=arch.patch_size,
            window_size=arch.window_size,
            output_channels=arch.prompt_dim,
            num_pos_feats=arch.prompt_dim // 2,
            mlp_dim=4 * arch.embed_dim,
        ),
        prompt_encoder_config=dict(
            hidden_size=arch.prompt_dim,
            image_size=arch.img_size,
            patch_size=arch.patch_size,
            mask_input_channels=16,
        ),
        mask_decoder_config=dict(
            hidden_size=arch.prompt_dim,
            mlp_dim=arch.decoder_mlp_dim,
            num_hidden_layers=arch.decoder_depth,
            num_attention_heads=arch.decoder_heads,
            iou_head_depth=3,
            iou_head_hidden_dim=arch.iou_head_hidden_dim,
        ),
    )
