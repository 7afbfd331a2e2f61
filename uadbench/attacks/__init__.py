"""Attack plugins. ``ATTACKS`` maps stable ids to Attack subclasses (lazily imported)."""

from ..registry import Registry

ATTACKS: Registry = Registry("attack", "uadbench.attacks.base:Attack", "uadbench.attacks")

ATTACKS.register(
    "uad",
    "uadbench.attacks.uad:UAD",
    summary="UAD: deformation target (thin-plate splines) + feature simulation (CVPR 2024)",
)
ATTACKS.register(
    "attack-sam",
    "uadbench.attacks.attack_sam:AttackSam",
    summary="Attack-SAM: ClipMSE on the mask logits of the evaluation prompts",
)
ATTACKS.register(
    "attack-sam-k",
    "uadbench.attacks.attack_sam:AttackSamK",
    summary="Attack-SAM with K=400 random point prompts (prompt-agnostic)",
)
ATTACKS.register(
    "feature-pgd",
    "uadbench.attacks.feature_pgd:FeaturePGD",
    aliases=("fpgd",),
    summary="untargeted feature PGD on encoder taps",
)
ATTACKS.register(
    "tap",
    "uadbench.attacks.transfer:TAP",
    summary="TAP: power-transformed feature distance + smoothness (ECCV 2018)",
)
ATTACKS.register(
    "ilpd",
    "uadbench.attacks.transfer:ILPD",
    summary="ILPD: TAP on mixed features, gamma=0.5 (NeurIPS 2023)",
)
ATTACKS.register(
    "aa",
    "uadbench.attacks.transfer:AA",
    aliases=("activation-attack",),
    summary="activation attack: features towards a random dataset image (CVPR 2019)",
)
ATTACKS.register(
    "pata",
    "uadbench.attacks.transfer:PATA",
    summary="PATA: AA minus a feature-dominance term vs a random competitor",
)
ATTACKS.register(
    "pata++",
    "uadbench.attacks.transfer:PATAPlusPlus",
    aliases=("pata-pp",),
    summary="PATA with a fresh competitor image at every iteration",
)
