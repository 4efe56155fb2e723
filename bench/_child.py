"""``python -m bench._child module:function '{"json": "kwargs"}'``: run one measurement in a
fresh process and print its result dict as one ``BENCH_RESULT {...}`` line (see
``bench.common.run_child``)."""

from __future__ import annotations

import importlib
import json
import sys

from bench.common import RESULT_PREFIX


def main(argv: list[str]) -> None:
    target, kwargs = argv[0], json.loads(argv[1]) if len(argv) > 1 else {}
    module, func = target.split(":")
    result = getattr(importlib.import_module(module), func)(**kwargs)
    print(RESULT_PREFIX + json.dumps(result, default=float), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
