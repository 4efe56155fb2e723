"""Component ids, in one place so callbacks, pages and browser tests agree.

Plain strings are single components; ``*_TYPE`` strings are the ``type`` of pattern-matching ids
(``{"type": MAP, "index": "large"}``).
"""

from __future__ import annotations

# ---------------------------------------------------------------- shell (navbar, run picker)
URL = "url"
RUN = "run-picker"
RUN_LABEL = "run-label"
NAV_LINK = "nav-link"  # pattern type, index = page path

# ---------------------------------------------------------------- explore page
EX_METHOD = "explore-method"
EX_COLOUR = "explore-colour"
EX_METRIC = "explore-metric"
EX_SUBTITLE = "explore-subtitle"
EX_EMPTY = "explore-empty"
EX_MAP = "explore-map"  # pattern type, index = "large" | "pca" | "tsne" | "umap"
EX_MAP_TITLE = "explore-map-title"  # pattern type, index = "pca" | "tsne" | "umap"
EX_LARGE_TITLE = "explore-large-title"
EX_TOOLTIP = "explore-tooltip"  # pattern type, same indices
EX_SELECTED = "explore-selected-ids"  # dcc.Store: list of tile ids
EX_TILE = "explore-tile"  # dcc.Store: the clicked tile id
EX_DETAIL = "explore-detail"
EX_GALLERY = "explore-gallery"  # prefix of a gallery block (see ``gallery_ids``)
EX_DOWNLOAD_BTN = "explore-download-button"
EX_DOWNLOAD = "explore-download"
EX_CONTENT = "explore-content"
EX_BUILT = "explore-built"  # dcc.Store: what the maps were last built with (run, method, colour)
EX_ENLARGE = "explore-enlarge"  # pattern type, index = method
EX_SMALL_PANEL = "explore-small-panel"  # pattern type, index = method

# ---------------------------------------------------------------- clusters page
CL_K = "clusters-k"
CL_METHOD = "clusters-method"
CL_SUBTITLE = "clusters-subtitle"
CL_EMPTY = "clusters-empty"
CL_ELBOW = "clusters-elbow"
CL_SIL_K = "clusters-silhouette-vs-k"
CL_SIL_SAMPLES = "clusters-silhouette-samples"
CL_MAP = "clusters-map"
CL_MAP_TOOLTIP = "clusters-map-tooltip"
CL_CONTENT = "clusters-content"
CL_BUILT = "clusters-built"  # dcc.Store: what the map was last built with
CL_TABLE = "clusters-table"
CL_LABEL = "clusters-truth-label"  # which known label the table compares clusters with
CL_CARDS = "clusters-cards"
CL_CLUSTER = "clusters-selected-cluster"  # dcc.Store: {"k": k, "cluster": c}
CL_GALLERY = "clusters-gallery"  # prefix of a gallery block
CL_NOTE = "clusters-note"

# ---------------------------------------------------------------- pattern types shared by pages
TILE_CARD = "tile-card"  # index = "<context>|<tile id>", a clickable gallery/neighbour card
CLUSTER_CARD = "cluster-card"  # index = cluster number


def gallery_ids(prefix: str) -> dict[str, str]:
    """Ids of one paginated gallery block: grid, pager buttons, page label, page store."""
    return {
        "grid": f"{prefix}-grid",
        "title": f"{prefix}-title",
        "prev": f"{prefix}-prev",
        "next": f"{prefix}-next",
        "label": f"{prefix}-page-label",
        "page": f"{prefix}-page",
    }
