"""Component ids, in one place so callbacks, pages and browser tests agree.

Plain strings are single components; ``*_TYPE`` and ``*_CARD`` strings are the ``type`` of
pattern-matching ids (``{"type": MAP, "index": "large"}``). Prefixes: ``XP_`` explain, ``EV_``
evaluate, ``SG_`` segment.
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
EX_MAP = "explore-map"  # pattern type, index = "large" or a registered map method
EX_MAP_TITLE = "explore-map-title"  # pattern type, index = a registered map method
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

# ---------------------------------------------------------------- explain page (/explain)
XP_SUBTITLE = "explain-subtitle"
XP_EMPTY = "explain-empty"
XP_CONTENT = "explain-content"
XP_WARNING = "explain-warning"
XP_SOURCE = "explain-source"  # RadioItems: "tile" | "upload"
XP_TILE = "explain-tile"  # Dropdown of stored tile ids (searched on the server)
XP_TILE_ROW = "explain-tile-row"
XP_UPLOAD = "explain-upload"
XP_UPLOAD_ROW = "explain-upload-row"
XP_UPLOAD_MSG = "explain-upload-message"
XP_UPLOAD_KEY = "explain-upload-key"  # dcc.Store: cache key of the decoded upload
XP_OOD = "explain-ood"  # above the results: trained on, out-of-distribution verdict / score
XP_SUGGEST = "explain-suggestions"
XP_SUGGEST_CARD = "explain-suggest-card"  # pattern type, index = tile id
XP_METHOD = "explain-method"
XP_LAYER = "explain-layer"
XP_CHANNEL = "explain-channel"
XP_CHANNEL_ROW = "explain-channel-row"
XP_TARGET = "explain-target"
XP_TARGET_HINT = "explain-target-hint"
XP_TARGET_STORE = "explain-target-store"  # dcc.Store: {"box": [x0, y0, x1, y1]} / {"pixel": [x, y]}
XP_RUN = "explain-run"  # the "Explain" button
XP_IMAGE_FIG = "explain-image-figure"  # the picked image (draw a box / click a pixel)
XP_TRUTH = "explain-truth"
XP_PRED = "explain-pred"
XP_HEAT = "explain-heat"
XP_OVERLAY = "explain-overlay"
XP_OVERLAY_BASE = "explain-overlay-base"
XP_OVERLAY_TOP = "explain-overlay-top"
XP_OPACITY = "explain-opacity"
XP_STATUS = "explain-status"
XP_MESSAGE = "explain-message"
XP_CH_CHANNEL = "explain-channel-explorer-channel"
XP_CH_NOTE = "explain-channel-explorer-note"
XP_CH_TILES = "explain-channel-explorer-tiles"
XP_AM_RUN = "explain-actmax-run"
XP_AM_CANCEL = "explain-actmax-cancel"
XP_AM_PROGRESS = "explain-actmax-progress"
XP_AM_IMAGE = "explain-actmax-image"
XP_AM_STATUS = "explain-actmax-status"

# ---------------------------------------------------------------- evaluate page (/evaluate)
EV_SUBTITLE = "evaluate-subtitle"
EV_EMPTY = "evaluate-empty"
EV_CONTENT = "evaluate-content"
EV_WARNING = "evaluate-warning"
EV_START = "evaluate-start"  # dcc.Store written by the page load: triggers the pass
EV_READY = "evaluate-ready"  # dcc.Store: {"key": cache key, ...} once the pass is done
EV_PROGRESS = "evaluate-progress"
EV_PROGRESS_LABEL = "evaluate-progress-label"
EV_PROGRESS_BOX = "evaluate-progress-box"
EV_THRESHOLD = "evaluate-threshold"
EV_METRICS = "evaluate-metrics"
EV_BUILDINGS = "evaluate-buildings"
EV_PR = "evaluate-pr"
EV_CURVE = "evaluate-iou-curve"
EV_CONFUSION = "evaluate-confusion"
EV_GROUPS = "evaluate-groups"
EV_DAMAGE = "evaluate-damage"
EV_TABLE = "evaluate-table"
EV_DETAIL = "evaluate-detail"

# ---------------------------------------------------------------- segment page (/segment)
SG_EMPTY = "segment-empty"
SG_WARNING = "segment-warning"
SG_UPLOAD = "segment-upload"
SG_MESSAGE = "segment-message"
SG_PROGRESS = "segment-progress"
SG_PROGRESS_BOX = "segment-progress-box"
SG_RESULT = "segment-result"  # dcc.Store: summary of the last good upload (key, name, size)
SG_SUMMARY = "segment-summary"
SG_IMAGES = "segment-images"
SG_MASK_IMG = "segment-mask-image"
SG_GRADCAM = "segment-gradcam"
SG_BASELINES = "segment-baselines"
SG_DOWNLOAD_BTN = "segment-download-button"
SG_DOWNLOAD = "segment-download"
SG_MAP_METHOD = "segment-map-method"
SG_MAP = "segment-map"
SG_MAP_NOTE = "segment-map-note"
SG_NEIGHBOURS = "segment-neighbours"
SG_CONTENT = "segment-content"

# ---------------------------------------------------------------- any result (segment, explain)
OOD_WARNING = "ood-warning"  # "unlike every tile the model was trained on" (only when it is)
OOD_LINE = "ood-line"  # what the model was trained on + the out-of-distribution score
