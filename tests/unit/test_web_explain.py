"""The Explain page's back end (logic/explain) and callbacks on a tiny U-Net."""

from __future__ import annotations

import sys
from typing import Any

import numpy as np

from app.web import runs
from app.web.logic import explain as xp_logic
from tests.unit.lens_helpers import (  # noqa: F401 - fixtures
    call,
    flask_app_fixture,
    unet_fixture,
)
from tests.unit.lens_helpers import to_json as _json


def test_explain_callbacks(flask_app: Any) -> None:
    from app.web import ids

    xp = sys.modules["app.web.pages.explain"]
    run_id = runs.default_run_id()
    run = runs.get_run(run_id)
    tile = run.tiles["tile_id"].iat[3]
    with flask_app.server.app_context():
        out = call(xp.setup, run_id, None)
        assert out[5] == "bottleneck" and {"label": "dec1", "value": "dec1"} in out[4]
        assert call(xp.channel_range, "enc1", run_id) == 15
        assert "fixture-model" in out[1].children  # the hash differs from the manifest's
        assert call(xp.search_tiles, tile[-6:], None, run_id)[0]["value"].endswith(tile[-6:])
        fig, caption, truth, ood_line = call(xp.show_image, "tile", tile, None, "box", {}, run_id)
        assert "model fixture-model" in _json(ood_line)
        assert "its training data is not recorded" in _json(ood_line)
        layout = fig.to_plotly_json()["layout"]
        assert layout["images"][0]["source"].startswith(f"/img/{run_id}/image/")
        assert layout["dragmode"] == "drawrect" and "/true/" in _json(truth)
        pred, heat, overlay, status, message = call(
            xp.run_explain, 1, "seg-grad-cam", "bottleneck", 0, "image", {}, tile, None, "tile",
            0.5, run_id)
        assert "data:image/png;base64" in _json(heat) and "computed in" in _json(status)
        again = call(xp.run_explain, 1, "seg-grad-cam", "bottleneck", 0, "image", {}, tile, None,
                     "tile", 0.5, run_id)
        assert "from cache" in _json(again[3])
        boxless = call(xp.run_explain, 1, "grad-cam++", "bottleneck", 0, "box", {}, tile, None,
                       "tile", 0.5, run_id)
        assert "Draw a box" in _json(boxless[4])
        data, note = call(xp.pick_target, {"shapes": [{"x0": 40, "y0": 9, "x1": 5, "y1": 30}]},
                          None, tile, None, "box", {},
                          triggered=((ids.XP_IMAGE_FIG, "relayoutData", {}),))
        assert data == {"box": [5.0, 9.0, 40.0, 30.0]} and "Box" in note
        tiles = call(xp.channel_tiles, 2, run_id)
        assert len(tiles) == xp_logic.N_CHANNEL_TILES and "/explain?" in _json(tiles[0])


def test_explain_upload_says_what_the_model_was_trained_on(flask_app: Any) -> None:
    """An upload gets the out-of-distribution verdict (here: the fixture run has no guard, so
    the page says so) and the "trained on" line above the explanation."""
    import base64
    import io

    from PIL import Image

    xp = sys.modules["app.web.pages.explain"]
    run_id = runs.default_run_id()
    buf = io.BytesIO()
    Image.fromarray(np.full((40, 48, 3), 120, np.uint8)).save(buf, "PNG")
    contents = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
    with flask_app.server.app_context():
        key, msg = call(xp.take_upload, contents, "flat.png", run_id)
        assert "flat.png" in _json(msg) and key["name"] == "flat.png"
        out = call(xp.show_image, "upload", None, key, "image", {}, run_id)
    text = _json(out[3])
    assert "ood-line" in text and "no out-of-distribution guard" in text
    assert "ood-warning" not in text


def test_explain_page_helpers(flask_app: Any) -> None:
    xp = xp_logic
    assert xp.parse_box({"shapes[0].x0": 1, "shapes[0].y0": 2, "shapes[0].x1": 3,
                         "shapes[0].y1": 4}) == [1.0, 2.0, 3.0, 4.0]
    assert xp.parse_box({"xaxis.range[0]": 3}) is None and xp.parse_box(None) is None
    assert xp.parse_pixel({"points": [{"x": 3, "y": 7}]}) == [3.0, 7.0]
    assert xp.parse_pixel({}) is None
    run = runs.get_run(runs.default_run_id())
    assert xp.channel_info(run)[0] == 32
    run.manifest["representation"] = "flatten"
    try:
        channels, note = xp.channel_info(run)
        assert channels == 0 and "no per-channel values" in note
    finally:
        run.manifest["representation"] = "gap"
    top = xp.top_tiles_for_channel(run, 5, n=4)
    values = [v for _, v in top]
    assert values == sorted(values, reverse=True)
    assert len(xp.suggested_tiles(run)) == xp_logic.N_SUGGEST


