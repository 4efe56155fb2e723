"""Component ids of the explain, evaluate and segment pages ("Dashboard II").

Same conventions as :mod:`app.web.ids` (kept in a separate module so both can be edited at the
same time; they can be merged). Plain strings are single components; ``*_CARD`` strings are
the ``type`` of pattern-matching ids.
"""

from __future__ import annotations

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
