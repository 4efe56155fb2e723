"""Datasets: scene loaders (synthetic, xBD, image+mask folders), tiling and the tile store."""
