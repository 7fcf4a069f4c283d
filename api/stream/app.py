"""A stream-only API process: /health and WS /v1/stream, no ClickHouse (so no chDB lock).

    python -m api.stream [--port 8001] [--workers 2]

Every such process holds its own single Redis subscription, so any number of them
(and of full API processes) can serve the stream behind a load balancer.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

from api import errors
from api.routes import health
from api.stream.route import router
from infra.settings import Settings, get_settings

# How uvicorn serves WebSockets for the stream: websockets' sans-I/O protocol (what
# api.stream.peer knows), no per-message deflate (compressing ~20 frames/s for every
# client costs more CPU than the stream itself), client messages over 1 MiB refused by
# the protocol (the app refuses over TAPEFLOW_STREAM_MAX_MESSAGE_BYTES with an error),
# and a WebSocket ping every 20 s that must be answered within 20 s.
UVICORN_WS_OPTIONS: dict[str, Any] = {
    "ws": "websockets-sansio",
    "ws_max_size": 1 << 20,
    "ws_per_message_deflate": False,
    "ws_ping_interval": 20.0,
    "ws_ping_timeout": 20.0,
}


def create_stream_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    app = FastAPI(title="Tapeflow stream", version="0.1.0")
    app.state.settings = settings
    errors.install(app)
    app.include_router(health.router)
    app.include_router(router)
    return app
