"""Synthetic aerial scenes (the shipped demo's data); the generator lives in ``scene``."""

from app.data.synthetic.scene import (
    DISASTER,
    GSD_M,
    MIN_SIZE,
    PHASES,
    SOURCE,
    generate_pair,
    generate_scene,
    iter_synthetic,
)

__all__ = [
    "DISASTER",
    "GSD_M",
    "MIN_SIZE",
    "PHASES",
    "SOURCE",
    "generate_pair",
    "generate_scene",
    "iter_synthetic",
]
