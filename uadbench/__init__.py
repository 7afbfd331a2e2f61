"""uadbench: adversarial robustness benchmarks for promptable segmentation models."""

__version__ = "0.1.0"
