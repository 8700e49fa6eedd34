"""Runs one measurement in a fresh process: ``python -m bench.worker TASK JSON_KWARGS``; prints
the result as JSON on its last line. Fresh processes keep arms from sharing state (global
OpenTelemetry patches, class-level listeners, the heap) and make RSS readings meaningful."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from typing import Any


def main(argv: list[str]) -> None:
    task, raw = argv[0], argv[1]
    kwargs: dict[str, Any] = json.loads(raw)
    core = kwargs.pop("core", None)
    if core is not None:
        os.sched_setaffinity(0, {core})
    if task == "asgi_overhead":
        from bench.asgi import overhead

        result = asyncio.run(overhead(**kwargs))
    elif task == "asgi_memory":
        from bench.asgi import memory

        result = asyncio.run(memory(**kwargs))
    elif task == "checkout_memory":
        from bench.scale import checkout_memory

        result = checkout_memory(**kwargs)
    else:
        raise SystemExit(f"unknown task {task!r}")
    print(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1:])
