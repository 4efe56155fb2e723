"""Colours and surface codes of the synthetic scenes, in one table so every painter agrees.

Roof colours overlap asphalt, soil and concrete on purpose: colour alone must not give a
building away (see the package docstring).
"""

from __future__ import annotations

import numpy as np

_F = np.float32

# Ground label codes (land-cover fractions in ``meta``).
_GRASS, _SOIL, _SAND, _WATER, _ROAD = 0, 1, 2, 3, 4

# Paved-layer codes drawn with PIL (0 = unpaved). Asphalt codes index a tone table.
_ASPHALT0, _N_ASPHALT = 1, 8
_CONCRETE, _GRAVEL, _POOL, _BARE = 50, 51, 52, 53

#: Roof colours (sRGB), material and relative frequency. Greys overlap asphalt, browns overlap
#: soil and whites overlap concrete on purpose: colour alone must not give buildings away.
_ROOFS: tuple[tuple[tuple[int, int, int], str, float], ...] = (
    ((122, 120, 117), "shingle", 0.20),
    ((80, 81, 85), "shingle", 0.13),
    ((126, 103, 85), "shingle", 0.13),
    ((158, 140, 118), "shingle", 0.07),
    ((164, 104, 82), "tile", 0.06),
    ((216, 215, 209), "metal", 0.10),
    ((184, 187, 187), "metal", 0.08),
    ((98, 115, 106), "metal", 0.04),
    ((108, 117, 131), "shingle", 0.07),
    ((132, 80, 68), "metal", 0.03),
    ((201, 188, 163), "shingle", 0.06),
)
_ROOF_CUM = np.cumsum([r[2] for r in _ROOFS]) / sum(r[2] for r in _ROOFS)
#: Sheds and barns favour metal roofs.
_ROOF_CUM_SHED = np.cumsum([r[2] * (5 if r[1] == "metal" else 1) for r in _ROOFS])
_ROOF_CUM_SHED = _ROOF_CUM_SHED / _ROOF_CUM_SHED[-1]
_FLAT_ROOFS = ((208, 208, 203), (176, 176, 172), (150, 151, 150), (228, 226, 220))
_CAR_COLOURS = (
    (226, 226, 224),
    (32, 33, 36),
    (165, 167, 170),
    (110, 112, 116),
    (150, 38, 34),
    (42, 62, 120),
    (196, 186, 160),
    (225, 225, 225),
    (60, 60, 62),
)
_DEBRIS = np.array(
    [
        (196, 172, 132),
        (150, 120, 88),
        (214, 212, 204),
        (128, 126, 122),
        (92, 78, 64),
        (176, 160, 140),
        (230, 228, 220),
        (70, 66, 62),
    ],
    dtype=_F,
)
#: Collapsed-house rubble: weathered timber, drywall, insulation, roofing, dark voids.
_RUBBLE = np.array(
    [
        (72, 66, 60),
        (104, 94, 82),
        (132, 120, 102),
        (150, 138, 120),
        (122, 118, 112),
        (170, 160, 142),
        (142, 126, 104),
        (188, 180, 164),
        (92, 86, 80),
    ],
    dtype=_F,
)
