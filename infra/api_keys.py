"""API keys: create, list, revoke, and authenticate a Bearer token to a Principal.

See infra/tokens.py for the token format and why the secret is stored as an HMAC.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from uuid import UUID

from psycopg_pool import ConnectionPool

from infra.db import fetchone
from infra.tokens import Token, matches, new_token, parse_token, secret_hash

DEFAULT_RATE_LIMIT = 200  # requests per minute per key
MAX_ACTIVE_KEYS = 20  # per user; revoked keys do not count
# last_used_at is touched at most this often per key, so authentication stays a read.
LAST_USED_RESOLUTION = "1 minute"
_AUTHENTICATE = f"""
SELECT k.secret_hash, k.user_id, a.id, u.is_operator, k.rate_limit_per_minute,
    k.last_used_at IS NULL OR k.last_used_at < now() - interval '{LAST_USED_RESOLUTION}'
FROM api_keys k
JOIN users u ON u.id = k.user_id
JOIN accounts a ON a.user_id = k.user_id
WHERE k.key_id = %s AND k.revoked_at IS NULL AND a.status <> 'closed'
"""
_KEY_COLUMNS = "key_id, name, created_at, last_used_at, revoked_at, rate_limit_per_minute"


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: the identity every request is scoped by."""

    user_id: UUID
    account_id: UUID
    key_id: str
    is_operator: bool
    rate_limit_per_minute: int


@dataclass(frozen=True, slots=True)
class ApiKey:
    """A key as listed: never its secret or hash."""

    key_id: str
    name: str
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None
    rate_limit_per_minute: int


class TooManyKeys(Exception):
    pass


def create_key(
    pool: ConnectionPool,
    user_id: UUID,
    name: str,
    *,
    rate_limit_per_minute: int = DEFAULT_RATE_LIMIT,
) -> tuple[ApiKey, Token]:
    """A new key and its token; the token's secret exists only in the return value."""
    token = new_token()
    with pool.connection() as conn, conn.transaction():
        # Locking the user row serializes concurrent creations, so the count holds.
        if not conn.execute("SELECT 1 FROM users WHERE id = %s FOR UPDATE", (user_id,)).fetchone():
            raise LookupError(f"no user {user_id}")
        active = conn.execute(
            "SELECT count(*) FROM api_keys WHERE user_id = %s AND revoked_at IS NULL", (user_id,)
        ).fetchone()
        if active and active[0] >= MAX_ACTIVE_KEYS:
            raise TooManyKeys(f"at most {MAX_ACTIVE_KEYS} active keys per user; revoke one")
        row = conn.execute(
            "INSERT INTO api_keys (key_id, user_id, name, secret_hash, rate_limit_per_minute) "
            f"VALUES (%s, %s, %s, %s, %s) RETURNING {_KEY_COLUMNS}",
            (
                token.key_id,
                user_id,
                name,
                secret_hash(token.key_id, token.secret),
                rate_limit_per_minute,
            ),
        ).fetchone()
    assert row is not None
    return ApiKey(*row), token


def list_keys(pool: ConnectionPool, user_id: UUID) -> list[ApiKey]:
    with pool.connection() as conn:
        rows = conn.execute(
            f"SELECT {_KEY_COLUMNS} FROM api_keys WHERE user_id = %s ORDER BY created_at, key_id",
            (user_id,),
        ).fetchall()
    return [ApiKey(*r) for r in rows]


def get_key(pool: ConnectionPool, user_id: UUID, key_id: str) -> ApiKey | None:
    row = fetchone(
        pool,
        f"SELECT {_KEY_COLUMNS} FROM api_keys WHERE user_id = %s AND key_id = %s",
        (user_id, key_id),
    )
    return ApiKey(*row) if row else None


def revoke_key(pool: ConnectionPool, key_id: str, user_id: UUID | None = None) -> bool:
    """Revoke a key (of `user_id` when given; any user's for operators). False if not found.

    Idempotent: revoking a revoked key keeps its first revocation time and answers True.
    """
    row = fetchone(
        pool,
        "UPDATE api_keys SET revoked_at = coalesce(revoked_at, now()) "
        "WHERE key_id = %s AND (%s::uuid IS NULL OR user_id = %s::uuid) RETURNING key_id",
        (key_id, user_id, user_id),
    )
    return row is not None


def authenticate(pool: ConnectionPool, raw_token: str) -> Principal | None:
    """The Principal of a live key's token; None for malformed, unknown or revoked ones.

    Keys of closed accounts do not authenticate. One indexed read; a write only when
    last_used_at is older than LAST_USED_RESOLUTION.
    """
    token = parse_token(raw_token)
    if token is None:
        return None
    with pool.connection() as conn:
        row = conn.execute(_AUTHENTICATE, (token.key_id,)).fetchone()
        if row is None or not matches(token, bytes(row[0])):
            return None
        _, user_id, account_id, is_operator, limit, touch = row
        if touch:
            conn.execute(
                "UPDATE api_keys SET last_used_at = now() WHERE key_id = %s", (token.key_id,)
            )
    return Principal(user_id, account_id, token.key_id, is_operator, limit)


class UserKeys:
    """One user's keys: every statement is filtered by the user, so another user's key is
    indistinguishable from one that does not exist."""

    def __init__(self, pool: ConnectionPool, user_id: UUID) -> None:
        self.pool = pool
        self.user_id = user_id

    def all(self) -> list[ApiKey]:
        return list_keys(self.pool, self.user_id)

    def get(self, key_id: str) -> ApiKey | None:
        return get_key(self.pool, self.user_id, key_id)

    def create(self, name: str) -> tuple[ApiKey, Token]:
        return create_key(self.pool, self.user_id, name)

    def revoke(self, key_id: str) -> bool:
        return revoke_key(self.pool, key_id, self.user_id)
