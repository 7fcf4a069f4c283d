"""API key tokens: their format, generation and the stored hash. Pure functions, no I/O.

A token is `<key_id>.<secret>`, sent as `Authorization: Bearer <key_id>.<secret>`:

- key_id: "TF" + 16 base32 characters (A-Z, 2-7) from 10 random bytes. Public: it names
  the key in listings, logs and `DELETE /v1/keys/{key_id}`, and finds its row.
- secret: 32 random bytes, base64url without padding (43 characters). Shown once, at
  creation; only its hash is stored.

Why HMAC-SHA256 and not argon2/bcrypt: slow hashes exist to make guessing a
low-entropy password expensive. The secret has 256 bits of entropy, so inverting even
a fast hash is infeasible, while a slow hash would cost tens of milliseconds of CPU on
every authentication. Keying the HMAC with the key_id gives every key its own salt
(the same secret under two keys hashes differently) and binds a hash to its row.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

KEY_ID_PREFIX = "TF"
KEY_ID_RE = re.compile(r"^TF[A-Z2-7]{16}$")
SECRET_RE = re.compile(r"^[A-Za-z0-9_-]{43}$")


@dataclass(frozen=True, slots=True)
class Token:
    key_id: str
    secret: str

    def __str__(self) -> str:
        return f"{self.key_id}.{self.secret}"


def new_token() -> Token:
    key_id = KEY_ID_PREFIX + base64.b32encode(secrets.token_bytes(10)).decode()
    return Token(key_id, secrets.token_urlsafe(32))


def parse_token(raw: str) -> Token | None:
    """The token's parts, or None when it is not shaped like one (no database needed)."""
    key_id, dot, secret = raw.strip().partition(".")
    if not dot or not KEY_ID_RE.match(key_id) or not SECRET_RE.match(secret):
        return None
    return Token(key_id, secret)


def secret_hash(key_id: str, secret: str) -> bytes:
    return hmac.new(key_id.encode(), secret.encode(), hashlib.sha256).digest()


def matches(token: Token, stored_hash: bytes) -> bool:
    return hmac.compare_digest(secret_hash(token.key_id, token.secret), stored_hash)
