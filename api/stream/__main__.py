"""python -m api.stream: serve WS /v1/stream (and /health) in a process of its own."""

from __future__ import annotations

import argparse

import uvicorn

from api.stream.app import UVICORN_WS_OPTIONS
from infra.settings import get_settings


def main(argv: list[str] | None = None) -> None:
    settings = get_settings()
    p = argparse.ArgumentParser(prog="python -m api.stream", description=__doc__)
    p.add_argument("--host", default=settings.api_host)
    p.add_argument("--port", type=int, default=settings.api_port + 1)
    p.add_argument("--workers", type=int, default=1, help="processes (SO_REUSEPORT)")
    args = p.parse_args(argv)
    uvicorn.run(
        "api.stream.app:create_stream_app",
        factory=True,
        host=args.host,
        port=args.port,
        workers=args.workers,
        log_level="warning",
        **UVICORN_WS_OPTIONS,
    )


if __name__ == "__main__":
    main()
