"""gdis: semi-supervised instance segmentation by Guided Distillation."""

__version__ = "0.1.0"
