"""WS /v1/stream (the implementation is the api.stream package)."""

from api.stream.route import router

__all__ = ["router"]
