"""Users and their accounts in PostgreSQL: who someone is, never what they may do.

A user is created together with their one account, in one transaction. Money
columns (cash, buying power) arrive with the orders and ledger issue.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Literal
from uuid import UUID

import psycopg
from psycopg import errors
from psycopg_pool import ConnectionPool

from infra.db import fetchone

ACCOUNT_NUMBER_DIGITS = 10
_ACCOUNT_COLUMNS = "id, user_id, account_number, status, currency, created_at"
_USER_COLUMNS = "id, email, name, is_operator, created_at"
# The accounts_status CHECK constraint of the schema keeps the column to these.
AccountStatus = Literal["active", "restricted", "closed"]


@dataclass(frozen=True, slots=True)
class User:
    id: UUID
    email: str
    name: str
    is_operator: bool
    created_at: datetime


@dataclass(frozen=True, slots=True)
class Account:
    id: UUID
    user_id: UUID
    account_number: str
    status: AccountStatus
    currency: str
    created_at: datetime


class UserExists(Exception):
    pass


class InvalidUser(ValueError):
    pass


def normalize_email(raw: str) -> str:
    email = raw.strip().lower()
    local, at, domain = email.partition("@")
    if not at or not local or not domain or any(c.isspace() for c in email):
        raise InvalidUser(f"not an email address: {raw!r}")
    return email


def _account_number() -> str:
    # Random rather than sequential: a number reveals nothing about how many accounts exist.
    first = str(1 + secrets.randbelow(9))
    return first + "".join(str(secrets.randbelow(10)) for _ in range(ACCOUNT_NUMBER_DIGITS - 1))


def create_user(
    pool: ConnectionPool, email: str, name: str, *, is_operator: bool = False
) -> tuple[User, Account]:
    """A new user and their account; UserExists when the email is taken."""
    email = normalize_email(email)
    name = name.strip()
    if not name:
        raise InvalidUser("a user needs a name")
    with pool.connection() as conn, conn.transaction():
        try:
            row = conn.execute(
                f"INSERT INTO users (email, name, is_operator) VALUES (%s, %s, %s) "
                f"RETURNING {_USER_COLUMNS}",
                (email, name, is_operator),
            ).fetchone()
        except errors.UniqueViolation:
            raise UserExists(f"a user with email {email} exists") from None
        assert row is not None
        user = User(*row)
        return user, _insert_account(conn, user.id)


def _insert_account(conn: psycopg.Connection, user_id: UUID) -> Account:
    for _ in range(5):  # 9e9 numbers: a collision is rare, five in a row is a bug
        try:
            with conn.transaction():  # a savepoint: a collision must not abort the user
                row = conn.execute(
                    f"INSERT INTO accounts (user_id, account_number) VALUES (%s, %s) "
                    f"RETURNING {_ACCOUNT_COLUMNS}",
                    (user_id, _account_number()),
                ).fetchone()
                assert row is not None
                return Account(*row)
        except errors.UniqueViolation as exc:
            if exc.diag.constraint_name != "accounts_account_number_key":
                raise
    raise RuntimeError("could not draw a free account number")


def find_user(pool: ConnectionPool, email: str) -> User | None:
    row = fetchone(
        pool, f"SELECT {_USER_COLUMNS} FROM users WHERE email = %s", (normalize_email(email),)
    )
    return User(*row) if row else None


def account_of_user(pool: ConnectionPool, user_id: UUID) -> Account | None:
    row = fetchone(pool, f"SELECT {_ACCOUNT_COLUMNS} FROM accounts WHERE user_id = %s", (user_id,))
    return Account(*row) if row else None


def get_account(pool: ConnectionPool, account_id: UUID) -> Account | None:
    row = fetchone(pool, f"SELECT {_ACCOUNT_COLUMNS} FROM accounts WHERE id = %s", (account_id,))
    return Account(*row) if row else None


def make_operator(pool: ConnectionPool, user_id: UUID) -> None:
    with pool.connection() as conn:
        conn.execute("UPDATE users SET is_operator = true WHERE id = %s", (user_id,))
