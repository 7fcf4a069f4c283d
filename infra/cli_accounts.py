"""`tapeflow users …`, `tapeflow keys …` and `tapeflow accounts …`: operators manage users,
API keys and demo funding directly in PostgreSQL (no API needed), and the demo's own user
and key."""

from __future__ import annotations

import os
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Annotated

import typer

from infra import accounts, api_keys, db
from infra.ledger import Ledger
from infra.settings import Settings, get_settings
from infra.topics import topics_of

users_app = typer.Typer(help="Users and their accounts.", no_args_is_help=True)
keys_app = typer.Typer(help="API keys (Bearer tokens).", no_args_is_help=True)
accounts_app = typer.Typer(help="Accounts' cash.", no_args_is_help=True)

DEMO_EMAIL = "demo@tapeflow.local"
DEMO_TOKEN_FILE = "demo.token"  # under TAPEFLOW_HOME, mode 0600
DEMO_CASH = Decimal(100_000)
DEMO_KEYS_KEPT = 10


def _pool():
    return db.pool(get_settings().postgres)


def _user(email: str) -> accounts.User:
    try:
        user = accounts.find_user(_pool(), email)
    except accounts.InvalidUser as exc:
        raise typer.BadParameter(str(exc), param_hint="--email") from None
    if user is None:
        typer.echo(f"no user with email {email}", err=True)
        raise typer.Exit(1)
    return user


@users_app.command("create")
def users_create(
    email: Annotated[str, typer.Option(help="Unique, case-insensitive")],
    name: Annotated[str, typer.Option(help="Display name")],
    operator: Annotated[bool, typer.Option("--operator", help="An operator of this stack")] = False,
) -> None:
    """Create a user and their account; prints the user id and the account number."""
    try:
        user, account = accounts.create_user(_pool(), email, name, is_operator=operator)
    except accounts.InvalidUser as exc:
        raise typer.BadParameter(str(exc)) from None
    except accounts.UserExists as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(1) from None
    typer.echo(f"user_id: {user.id}")
    typer.echo(f"account_number: {account.account_number}")


@keys_app.command("create")
def keys_create(
    email: Annotated[str, typer.Option(help="The key's user")],
    name: Annotated[str, typer.Option(help="A label for the key")] = "cli",
    rate_limit: Annotated[
        int, typer.Option(min=1, help="Requests per minute")
    ] = api_keys.DEFAULT_RATE_LIMIT,
) -> None:
    """Create an API key; prints its token, the only time it is shown."""
    user = _user(email)
    try:
        key, token = api_keys.create_key(_pool(), user.id, name, rate_limit_per_minute=rate_limit)
    except api_keys.TooManyKeys as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(1) from None
    typer.echo(f"key_id: {key.key_id}")
    typer.echo(f"token: {token}")
    typer.echo("Send it as 'Authorization: Bearer <token>'; it is not shown again.", err=True)


@keys_app.command("list")
def keys_list(email: Annotated[str, typer.Option(help="The keys' user")]) -> None:
    """A user's keys, revoked ones included (never a secret)."""
    user = _user(email)
    typer.echo(f"{'key_id':<20} {'limit/min':>9}  {'created':<20} {'last used':<20} state  name")
    for k in api_keys.list_keys(_pool(), user.id):
        state = "revoked" if k.revoked_at else "active"
        typer.echo(
            f"{k.key_id:<20} {k.rate_limit_per_minute:>9}  {_when(k.created_at):<20} "
            f"{_when(k.last_used_at):<20} {state:<6} {k.name}"
        )


@keys_app.command("revoke")
def keys_revoke(key_id: Annotated[str, typer.Argument(help="e.g. TFABCDEFGHIJKLMNOP")]) -> None:
    """Revoke any user's key. Running API processes stop accepting it within
    TAPEFLOW_AUTH_CACHE_S seconds (5 by default)."""
    if not api_keys.revoke_key(_pool(), key_id):
        typer.echo(f"no API key {key_id}", err=True)
        raise typer.Exit(1)
    typer.echo(f"revoked {key_id}")


@accounts_app.command("fund")
def accounts_fund(
    email: Annotated[str, typer.Option(help="The account's user")],
    amount: Annotated[str, typer.Option(help="Dollars and cents, e.g. 10000 or 250.50")],
    note: Annotated[str, typer.Option(help="Kept with the deposit")] = "tapeflow accounts fund",
) -> None:
    """Deposit cash into a user's account (demo funding); prints the new balance."""
    from infra.ledger import Ledger, LedgerError
    from infra.topics import topics_of

    try:
        value = Decimal(amount)
    except InvalidOperation:
        raise typer.BadParameter(f"not an amount: {amount!r}", param_hint="--amount") from None
    user = _user(email)
    account = accounts.account_of_user(_pool(), user.id)
    if account is None:
        typer.echo(f"{email} has no account", err=True)
        raise typer.Exit(1)
    try:
        balance = Ledger(_pool(), topics_of(get_settings())).deposit(account.id, value, note)
    except LedgerError as exc:
        raise typer.BadParameter(exc.message, param_hint="--amount") from None
    typer.echo(f"account_id: {balance.account_id}")
    typer.echo(f"cash: {balance.cash}")
    typer.echo(f"buying_power: {balance.buying_power}")


def _when(t) -> str:
    return t.strftime("%Y-%m-%d %H:%M:%SZ") if t else "-"


def _fund_once(settings: Settings, user: accounts.User) -> None:
    """Something to trade with from the first minute of the tour: DEMO_CASH, once."""
    pool = db.pool(settings.postgres)
    account = accounts.account_of_user(pool, user.id)
    assert account is not None
    funded = db.fetchone(
        pool, "SELECT 1 FROM cash_transfers WHERE account_id = %s LIMIT 1", (account.id,)
    )
    if funded is None:
        Ledger(pool, topics_of(settings)).deposit(account.id, DEMO_CASH, "demo funding")


def demo_token(settings: Settings) -> str:
    """The demo user's token, the same on every run: kept in TAPEFLOW_HOME/demo.token while
    it still authenticates; otherwise the user (if missing) and a key are created anew."""
    pool = db.pool(settings.postgres)
    user = accounts.find_user(pool, DEMO_EMAIL)
    if user is None:
        # An operator: the demo's one user can also close the day and reconcile it.
        user, _ = accounts.create_user(pool, DEMO_EMAIL, "Demo User", is_operator=True)
    elif not user.is_operator:  # a demo user made before operators' routes existed
        accounts.make_operator(pool, user.id)
    _fund_once(settings, user)
    path: Path = settings.home.resolve() / DEMO_TOKEN_FILE
    if path.exists():
        saved = path.read_text().strip()
        if api_keys.authenticate(pool, saved) is not None:
            return saved
    # Every demo home without its token file makes a key; keep the newest few active so
    # the user never reaches the per-user key limit (a lost token file is a lost key).
    active = [k for k in api_keys.list_keys(pool, user.id) if k.revoked_at is None]
    for old in active[: max(0, len(active) - DEMO_KEYS_KEPT + 1)]:
        api_keys.revoke_key(pool, old.key_id)
    _, token = api_keys.create_key(pool, user.id, "demo")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(f"{token}\n")
    return str(token)
