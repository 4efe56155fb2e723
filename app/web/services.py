"""Split by issue #15 into :mod:`app.web.runs` (models, warm-up, tile pixels) and
:mod:`app.web.images` (computed images): a forwarding stub for ``tests/unit/test_inference.py``.
Delete it once that test imports ``app.web.runs``."""

from app.web.runs import start_warm_up  # noqa: F401
