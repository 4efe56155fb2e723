"""Every failed upload shows a message in real Chromium (issue 16), and a run without its
vectors shows a message instead of a spinner.

- Before upload (``assets/upload_guard.js``): a text file, an SVG and a file over the limit are
  stopped in the browser with a message, and no callback carrying the file is sent.
- After upload: a corrupt PNG is refused by the server (``uploads.parse_upload``), and a file
  the browser let through over the limit (a page whose limit is stale) gets the server's 413,
  shown as the upload message.
- ``vectors.npy`` missing: a real ``python -m app serve --workers 2``; the Explore maps draw
  with a warning, Clusters shows an empty state, nothing spins.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.browser.conftest import LARGE_MAP, Browser
from tests.browser.lens_fixtures import lens_model, write_png  # noqa: F401 - fixture

pytestmark = [pytest.mark.browser, pytest.mark.usefixtures("lens_model")]

MODEL_TIMEOUT = 120

#: Counts the callback requests that carry an upload's contents (the guard must send none).
COUNT_POSTS = """
    if (!window.__uploadPosts) {
        window.__uploadPosts = {count: 0};
        var f = window.fetch;
        window.fetch = function (input, init) {
            if (init && typeof init.body === 'string' && init.body.indexOf('-upload.contents') >= 0) {
                window.__uploadPosts.count += 1;
            }
            return f.apply(this, arguments);
        };
    }
"""


def _over_limit(tmp_path: Path) -> Path:
    """A PNG-named file one MiB over the upload limit (sparse: costs no disk)."""
    from app import config

    path = tmp_path / "huge.png"
    with path.open("wb") as fh:
        fh.write(b"\x89PNG\r\n\x1a\n")
        fh.truncate(config.MAX_UPLOAD_BYTES + 1024 * 1024)
    return path


def _files(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    """Kind → (file, text the message must hold) for the files stopped in the browser."""
    txt = tmp_path / "notes.txt"
    txt.write_text("certainly not an image\n")
    svg = tmp_path / "drawing.svg"
    svg.write_text('<svg xmlns="http://www.w3.org/2000/svg" width="64" height="64"/>')
    return {
        "txt": (txt, "notes.txt is a .txt file; expected a PNG, JPEG, TIFF, BMP or WebP image."),
        "svg": (svg, "drawing.svg is a .svg file; expected a PNG, JPEG, TIFF, BMP or WebP image."),
        "size": (_over_limit(tmp_path), "the upload limit is 20.0 MB"),
    }


def _message(browser: Browser, box: str, timeout: float = 30) -> str:
    """The visible error message of an upload box's message element."""
    return browser.wait(lambda: browser.js(
        "var m = document.querySelector(arguments[0] + ' .lens-msg-error');"
        "return m && m.offsetParent !== null && m.innerText", box), timeout=timeout,
        what=f"a visible error message in {box}")


def _upload(browser: Browser, upload_id: str, path: Path) -> None:
    sel = f"#{upload_id} input[type=file]"
    browser.wait(lambda: browser.css(sel), what="the upload input")
    browser.css(sel)[0].send_keys(str(path))


def _posts(browser: Browser) -> int:
    return int(browser.js("return window.__uploadPosts.count"))


def _corrupt_png(tmp_path: Path) -> Path:
    good = write_png(tmp_path / "good-source.png", 64, 64).read_bytes()
    path = tmp_path / "broken.png"
    path.write_bytes(good[: len(good) // 2])  # header fine, pixel data cut off
    return path


@pytest.mark.parametrize("page, upload_id, message_id", [
    ("/segment", "segment-upload", "#segment-message"),
    ("/explain", "explain-upload", "#explain-upload-message"),
])
def test_each_rejected_kind_shows_a_message(browser: Browser, tmp_path: Path, page: str,
                                            upload_id: str, message_id: str) -> None:
    from app import config

    assert config.MAX_UPLOAD_BYTES == 20 * 1024 * 1024  # the messages below quote it
    browser.open(page)
    if page == "/explain":
        browser.wait(lambda: browser.css("#explain-source input[value=upload]"),
                     what="the image source radio")
        browser.js("document.querySelector('#explain-source input[value=upload]').click()")
        browser.wait(lambda: browser.css(f"#{upload_id}")[0].is_displayed(),
                     what="the upload box")
    browser.js(COUNT_POSTS)
    # stopped in the browser: a message, and no request with the file's contents
    for kind, (path, expected) in _files(tmp_path).items():
        _upload(browser, upload_id, path)
        _message(browser, message_id)
        browser.wait(lambda e=expected: e in browser.css(message_id)[0].text,
                     what=f"the {kind} message")  # each replaces the one before
        assert _posts(browser) == 0, kind
        browser.shot(f"upload-{upload_id}-{kind}")
    # refused by the server: a corrupt PNG
    _upload(browser, upload_id, _corrupt_png(tmp_path))
    browser.wait(lambda: "broken.png" in browser.css(message_id)[0].text,
                 timeout=MODEL_TIMEOUT, what="the server's message on the corrupt PNG")
    assert _posts(browser) >= 1  # sent (a background callback re-sends it on each poll)
    # over the limit but let through by a stale page: the 413 is shown, not swallowed
    browser.js("document.querySelector('#' + arguments[0]).parentElement"
               ".setAttribute('data-max-bytes', '999999999999')", upload_id)
    _upload(browser, upload_id, _over_limit(tmp_path))
    browser.wait(lambda: "too large" in browser.css(message_id)[0].text,
                 timeout=MODEL_TIMEOUT, what="the 413 message")
    assert "20.0 MB" in browser.css(message_id)[0].text
    # the box still works after all of this
    browser.wait(lambda: browser.css(f"#{upload_id} input[type=file]")[0].is_enabled(),
                 what="the upload box enabled again")
    good = write_png(tmp_path / "fine.png", 120, 140, seed=2)
    _upload(browser, upload_id, good)
    ok = "Segmented fine.png" if page == "/segment" else "fine.png: 140×120 px"
    browser.wait(lambda: ok in browser.css(message_id)[0].text, timeout=MODEL_TIMEOUT,
                 what="a good upload after the bad ones")
    severe = [m for m in browser.severe() if "status of 413" not in m]  # the network log line
    assert severe == [], severe


def _drop_rejected(browser: Browser, upload_id: str, name: str, data: str) -> None:
    """Drop a file on the box, as a file manager would (a synthetic drop event)."""
    browser.js("""
        var zone = document.querySelector('#' + arguments[0]);
        var dt = new DataTransfer();
        dt.items.add(new File([arguments[2]], arguments[1], {type: 'image/gif'}));
        ['dragenter', 'dragover', 'drop'].forEach(function (type) {
            zone.dispatchEvent(new DragEvent(type, {bubbles: true, cancelable: true,
                                                    dataTransfer: dt}));
        });
    """, upload_id, name, data)


def test_a_dropped_gif_is_refused_in_the_browser(browser: Browser) -> None:
    browser.open("/segment")
    browser.wait(lambda: browser.css("#segment-upload"), what="the upload box")
    browser.js(COUNT_POSTS)
    _drop_rejected(browser, "segment-upload", "anim.gif", "GIF89a")
    assert "anim.gif is a .gif file" in _message(browser, "#segment-message")
    assert _posts(browser) == 0
    assert browser.severe() == []


# --------------------------------------------------------------------------- missing vectors


@pytest.fixture()
def served_without_vectors(tmp_path: Path):
    """A real server (gunicorn, 2 workers) over a run whose vectors.npy is gone."""
    import sys

    from tests.serving import (
        fake_model_run,
        free_port,
        linked_run,
        serve_env,
        server_process,
        wait_for,
    )

    fake_model_run(tmp_path / "models", "fake-model")
    run_id = linked_run(tmp_path / "emb", tmp_path / "models", "fake-model", n=40,
                        run_id="no-vectors")
    (tmp_path / "emb" / run_id / "vectors.npy").unlink()
    port = free_port()
    env = serve_env(tmp_path / "models", tmp_path / "emb", tmp_path / "cache", port,
                    UNET_LENS_WARM_UP="0", UNET_LENS_EMBEDDINGS_RUN=run_id)
    base = f"http://127.0.0.1:{port}"
    with server_process([sys.executable, "-m", "app", "serve", "--workers", "2"], env,
                        tmp_path / "server.log") as proc:
        wait_for(f"{base}/healthz", status=None, proc=proc)
        yield base, str(tmp_path)
    shutil.rmtree(tmp_path / "cache", ignore_errors=True)


def test_missing_vectors_show_a_message_not_a_spinner(driver, served_without_vectors) -> None:
    base, tmp = served_without_vectors
    browser = Browser(driver, base, None)
    driver.get_log("browser")
    browser.open("/")
    gd = browser.graph(LARGE_MAP)  # the maps draw: they need no vectors
    assert browser.js("return arguments[0]._fullData[0].x.length", gd) == 40
    note = browser.wait(lambda: browser.js(
        "var m = document.querySelector('#explore-empty .lens-msg-warn');"
        "return m && m.innerText"), what="the missing-vectors warning")
    assert "vectors.npy is missing" in note and tmp not in note
    assert "Loading…" not in browser.css("body")[0].text
    browser.open("/clusters")
    empty = browser.wait(lambda: browser.js(
        "var m = document.querySelector('#clusters-empty .empty-state');"
        "return m && m.offsetParent !== null && m.innerText"), what="the clusters empty state")
    assert "no readable vectors" in empty and "vectors.npy is missing" in empty
    assert tmp not in empty
    severe = browser.severe()
    assert not [m for m in severe if "_dash-update-component" in m], severe
