"""The explore page's back end: a selection's tiles and its CSV export.

The maps, colourings and neighbour search it shares with other pages are in
:mod:`app.web.logic.tiles`.
"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

CSV_COLUMNS = (
    "tile_id", "scene_id", "split", "phase", "disaster", "source", "cluster", "iou", "precision",
    "recall", "f1", "true_fraction", "pred_fraction", "building_count", "ood_score",
)



def known_ids(index: dict[str, int], ids: Any) -> list[str]:
    """The ids of a browser-supplied list that the run knows, deduplicated, in order."""
    if not isinstance(ids, list):
        return []
    seen: set[str] = set()
    out = []
    for tid in ids:
        if isinstance(tid, str) and tid in index and tid not in seen:
            seen.add(tid)
            out.append(tid)
    return out


def selection_csv(tiles: pd.DataFrame, index: dict[str, int], ids: list[str]) -> str:
    """CSV of the selected tiles: tile_id first, then metadata and metrics."""
    rows = [index[t] for t in known_ids(index, ids)]
    cols = [c for c in CSV_COLUMNS if c in tiles]
    buf = io.StringIO()
    tiles.iloc[rows][cols].to_csv(buf, index=False, float_format="%.4f")
    return buf.getvalue()


