"""Victim plugins. ``VICTIMS`` maps stable ids to Victim subclasses (lazily imported)."""

from ..registry import Registry

VICTIMS: Registry = Registry("victim", "uadbench.victims.base:Victim", "uadbench.victims")

VICTIMS.register("sam-vit-b", "uadbench.victims.segment_anything:SamViTB", summary="SAM ViT-B (official .pth)")
VICTIMS.register("sam-vit-l", "uadbench.victims.segment_anything:SamViTL", summary="SAM ViT-L (official .pth)")
VICTIMS.register("sam-vit-h", "uadbench.victims.segment_anything:SamViTH", summary="SAM ViT-H (official .pth)")
VICTIMS.register("seeded-sam-tiny", "uadbench.victims.segment_anything:SeededSamTiny",
                 summary="small SAM built in code, untrained seeded weights (embedded default)")
