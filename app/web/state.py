"""Moved to :mod:`app.web.runs` (issue #15): a forwarding stub for the callers outside app/web
(``app/cli.py``, ``bench/server.py``, ``tests/unit/test_inference.py``). Delete it once they
import ``app.web.runs``."""

from app.web.runs import *  # noqa: F403
