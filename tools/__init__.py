"""Developer tools of the source tree (not installed with the package): run them from the
repository root, e.g. ``python -m tools.zoo train NAME`` or ``make zoo``."""
