"""Victim plugins. ``VICTIMS`` maps stable ids to Victim subclasses (lazily imported)."""

from ..registry import Registry

VICTIMS: Registry = Registry("victim", "uadbench.victims.base:Victim", "uadbench.victims")

VICTIMS.register(
    "sam-vit-b",
    "uadbench.victims.segment_anything:SamViTB",
    summary="SAM ViT-B (official .pth)",
    default_surrogate=1,  # the paper's surrogate, when its weights are here
)
VICTIMS.register(
    "sam-vit-l", "uadbench.victims.segment_anything:SamViTL", summary="SAM ViT-L (official .pth)"
)
VICTIMS.register(
    "sam-vit-h", "uadbench.victims.segment_anything:SamViTH", summary="SAM ViT-H (official .pth)"
)
VICTIMS.register(
    "seeded-sam-tiny",
    "uadbench.victims.segment_anything:SeededSamTiny",
    summary="small SAM built in code, untrained seeded weights (embedded default)",
    default_surrogate=3,
)

# HQ-SAM and MobileSAM need the `hq` extra (segment_anything_hq); FastSAM the `fastsam`
# extra (ultralytics). Their modules import those packages only when a model is built,
# so these entries always load and `weights_status` says what is missing.
_HQ = "pip install uadbench[hq]"
VICTIMS.register(
    "hq-sam-vit-b",
    "uadbench.victims.hq:HqSamViTB",
    summary="HQ-SAM ViT-B (official .pth)",
    install=_HQ,
)
VICTIMS.register(
    "hq-sam-vit-l",
    "uadbench.victims.hq:HqSamViTL",
    summary="HQ-SAM ViT-L (official .pth)",
    install=_HQ,
)
VICTIMS.register(
    "hq-sam-vit-h",
    "uadbench.victims.hq:HqSamViTH",
    summary="HQ-SAM ViT-H (official .pth)",
    install=_HQ,
)
VICTIMS.register(
    "hq-sam-vit-tiny",
    "uadbench.victims.hq:HqSamViTTiny",
    aliases=("light-hq-sam",),
    summary="Light HQ-SAM: TinyViT encoder + HQ decoder (official .pth)",
    install=_HQ,
)
VICTIMS.register(
    "mobilesam",
    "uadbench.victims.mobile:MobileSam",
    aliases=("mobile-sam",),
    summary="MobileSAM: TinyViT encoder + SAM decoder (official mobile_sam.pt)",
    install=_HQ,
)
VICTIMS.register(
    "fastsam-s",
    "uadbench.victims.fastsam:FastSamS",
    summary="FastSAM-s (YOLOv8s-seg, everything mode + prompt selection)",
    install="pip install uadbench[fastsam]",
)
VICTIMS.register(
    "fastsam-x",
    "uadbench.victims.fastsam:FastSamX",
    aliases=("fastsam",),
    summary="FastSAM-x (YOLOv8x-seg, everything mode + prompt selection; the UAD paper's)",
    install="pip install uadbench[fastsam]",
)
VICTIMS.register(
    "hf:",
    "uadbench.victims.hf:HfVictim",
    summary="transformers SAM / SAM-HQ / SAM 2 / EdgeTAM / SAM 3 tracker from the local HF cache or a path",
)

# The tiny zoo: small victims of several architectures trained by the project itself
# (weights ship in uadbench/zoo/*.safetensors; tools/zoo/, `make zoo`, rebuilds them).
VICTIMS.register(
    "zoo-vit-sam",
    "uadbench.zoo.models:ZooViTSam",
    summary="tiny zoo: toy SAM (ViT + SAM decoder) trained on synthetic scenes; default surrogate",
    default_surrogate=2,
)
VICTIMS.register(
    "zoo-hq-sam",
    "uadbench.zoo.models:ZooHQSam",
    summary="tiny zoo: toy HQ-SAM (ViT + MaskDecoderHQ) trained on synthetic scenes",
)
VICTIMS.register(
    "zoo-tinyvit-sam",
    "uadbench.zoo.models:ZooTinyViTSam",
    summary="tiny zoo: toy MobileSAM (TinyViT encoder) trained on synthetic scenes",
)
VICTIMS.register(
    "zoo-hf-sam",
    "uadbench.zoo.models:ZooHFSam",
    summary="tiny zoo: toy transformers SamModel trained on synthetic scenes",
)
