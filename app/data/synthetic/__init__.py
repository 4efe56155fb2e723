"""Synthetic aerial scenes: the shipped demo's data.

Why: the dashboard must run, and its U-Net must train, without the xBD download. So every scene
is a deterministic function of ``(seed, index, size)`` that looks like a 0.5 m/pixel satellite
image of a suburb, a rural road or a coast before and after a hurricane, with building
footprints as labels. Buildings are told apart from roads and soil by their shape, roof shading
and cast shadow rather than by a unique colour (grey roofs look like asphalt, brown ones like
soil, white ones like concrete), so the segmentation task is learnable but not trivial.

The ground sampling distance is fixed at 0.5 m/pixel whatever ``size`` is: ``size`` sets the
extent (1024 px = 512 m), so buildings keep xBD-like pixel sizes in small test scenes.

Rendering is layered: a layout (roads, lots, buildings, trees, cars, shore) is drawn from a
generator seeded by ``SeedSequence([seed, index, size])`` (never global state); the ground is
textured once; each phase then paints cars, roofs and canopies through a height z-buffer,
casts shadows from that height map along the phase's own sun direction, and (post only) adds
roof damage, debris, sand overwash and flood water. Colour work is done on planar (3, H, W)
float32 planes: numpy broadcasts over a trailing axis of 3 several times slower.

Labels: ``mask`` is every building footprint in both phases (xBD keeps the polygon of a
destroyed building), rasterised with pixel (row r, col c) centred at (x=c, y=r) - the PIL and
skimage convention - so it equals the published polygons drawn by either. ``meta`` holds:
disaster, disaster_type ("wind" | "flooding"), phase, gsd (0.5), sun_azimuth and
sun_elevation (degrees, this phase), density (buildings per km²), settlement ("rural" |
"suburban" | "dense"), shoreline, n_buildings, land_* (grass, soil, sand, water, road, tree,
building: pixel fractions seen from above, summing to 1) and flooded_fraction (0 in pre).

Modules, in the order a scene is made: ``palette`` (colours and surface codes), ``geometry``
(layout records, pixel helpers), ``roads``, ``buildings`` (lots, houses, roofs, cars),
``vegetation``, ``terrain`` (the ground), ``damage`` (post phase), ``light`` (sun, shadows,
camera) and ``scene`` (layout, rendering, the public functions re-exported here).

Every step draws from its generator in a fixed order, and the shipped demo model and
embeddings were made from these scenes: a refactor must keep every draw and its order (compare
SHA-256 hashes of images, masks and building lists before and after).
"""

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
