"""Building the dashboard in tests, one app after another in the same process.

Pages register their callbacks with ``dash.callback`` into Dash's module-level lists when
``Dash(...)`` imports them, and Dash hands those lists to the first app that serves a request.
``create_app`` serves itself that first request (``main._finish_dash_setup``), so each app has
taken its own callbacks before the next one re-imports the pages.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from dash import Dash

from app.web import runs
from app.web.main import create_app


def built_app(*args: Any, **kwargs: Any) -> Dash:
    """``create_app(...)``, which has already taken its pages' callbacks."""
    return create_app(*args, **kwargs)


@contextlib.contextmanager
def runs_restored() -> Iterator[None]:
    """Restore the process-wide default runs afterwards: ``create_app`` sets them, and a
    session-wide server built earlier (``live_server``) reads them on every request."""
    saved = dict(runs._settings)
    try:
        yield
    finally:
        runs.configure(**saved)


__all__ = ["built_app", "runs_restored"]
