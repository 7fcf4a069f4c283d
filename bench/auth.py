"""A Bearer key for the benchmark's API reads, where the API requires one.

The candles check reads GET /v1/candles. When the project has API keys
(infra.api_keys), the benchmark uses one user of its own (bench@tapeflow.local),
gives it a fresh key with a rate limit high enough never to throttle the polling,
and revokes the key afterwards. Without API keys the API is open and no header
is sent.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from importlib import import_module
from typing import Any

from infra.settings import Settings

BENCH_EMAIL = "bench@tapeflow.local"
RATE_LIMIT_PER_MINUTE = 1_000_000
AUTH_MODULES = ("accounts", "api_keys", "db")


def _auth_modules() -> tuple[Any, Any, Any] | None:
    try:
        accounts, api_keys, db = (import_module(f"infra.{m}") for m in AUTH_MODULES)
    except ImportError:  # an API without keys: everything is open
        return None
    return accounts, api_keys, db


@contextmanager
def api_headers(base: Settings) -> Iterator[dict[str, str]]:
    """Headers for API requests, valid inside the `with` block."""
    modules = _auth_modules()
    if modules is None:
        yield {}
        return
    accounts, api_keys, db = modules
    db.migrate(base)
    pool = db.pool(base.postgres)
    user = accounts.find_user(pool, BENCH_EMAIL)
    if user is None:
        user, _ = accounts.create_user(pool, BENCH_EMAIL, "Pipeline benchmark")
    for old in api_keys.list_keys(pool, user.id):  # left over by an interrupted run
        if old.revoked_at is None:
            api_keys.revoke_key(pool, old.key_id)
    key, token = api_keys.create_key(
        pool, user.id, "bench.pipeline", rate_limit_per_minute=RATE_LIMIT_PER_MINUTE
    )
    try:
        yield {"Authorization": f"Bearer {token}"}
    finally:
        api_keys.revoke_key(pool, key.key_id)
