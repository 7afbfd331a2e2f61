"""Attack plugins. ``ATTACKS`` maps stable ids to Attack subclasses (lazily imported)."""

from ..registry import Registry

ATTACKS: Registry = Registry("attack", "uadbench.attacks.base:Attack", "uadbench.attacks")

ATTACKS.register("feature-pgd", "uadbench.attacks.feature_pgd:FeaturePGD", aliases=("fpgd",),
                 summary="untargeted feature PGD on encoder taps")
