from __future__ import annotations

from decimal import Decimal
from typing import Annotated

from fastapi import APIRouter, Depends
from psycopg_pool import ConnectionPool

from api import body as bodies
from api.auth import CurrentPrincipal, Principal
from api.deps import DbDep, LedgerDep, QuotesDep, SettingsDep
from api.errors import ERROR_RESPONSES, ApiError, ErrorBody, invalid, not_found
from api.models import AccountOut, DepositIn
from infra import accounts, portfolio
from infra.ledger import Ledger, LedgerError
from infra.market_view import mids
from infra.quote_store import QuoteStore

MAX_DEPOSIT = Decimal(1_000_000_000)
router = APIRouter(prefix="/v1/account", tags=["account"], responses=ERROR_RESPONSES)


def account_out(
    principal: Principal, db: ConnectionPool, ledger: Ledger, quotes: QuoteStore
) -> AccountOut:
    account = accounts.get_account(db, principal.account_id)
    if account is None:
        raise not_found("account_not_found", "the account no longer exists")
    balance = ledger.balance(account.id)
    held = portfolio.holdings(db, account.id)
    lmv = portfolio.long_market_value(held, mids(quotes.redis, [h.symbol for h in held]))
    return AccountOut(
        id=account.id,
        account_number=account.account_number,
        status=account.status,
        currency=account.currency,
        created_at=account.created_at,
        cash=balance.cash,
        reserved_cash=balance.reserved_cash,
        buying_power=balance.buying_power,
        long_market_value=lmv,
        equity=balance.cash + lmv,
    )


@router.get("", response_model=AccountOut, summary="The caller's account")
def get_account(
    principal: CurrentPrincipal, db: DbDep, ledger: LedgerDep, quotes: QuotesDep
) -> AccountOut:
    """The account of the API key's user with its money: `cash` (reserved cash included),
    `reserved_cash` (what open buy orders hold), `buying_power` (cash - reserved_cash),
    `long_market_value` (positions at the NBBO midpoint, or at cost without a quote) and
    `equity` (cash + long_market_value). Decimals are strings."""
    return account_out(principal, db, ledger, quotes)


@router.post(
    "/deposits",
    response_model=AccountOut,
    summary="Deposit cash (operators; everyone when deposits are enabled)",
    responses={403: {"model": ErrorBody, "description": "Deposits are not allowed"}},
    openapi_extra=bodies.body_doc(DepositIn),
)
def deposit(
    principal: CurrentPrincipal,
    db: DbDep,
    ledger: LedgerDep,
    quotes: QuotesDep,
    settings: SettingsDep,
    raw: Annotated[bytes, Depends(bodies.raw_body)],
) -> AccountOut:
    """Adds `amount` (dollars and cents) to the caller's cash; answers the account. Open to
    operators, and to every user when TAPEFLOW_ALLOW_DEPOSITS is true (as `tapeflow demo`
    sets it); otherwise 403 `deposits_not_allowed`. A real brokerage funds accounts by
    bank transfer; this is for demos and tests."""
    if not (principal.is_operator or settings.allow_deposits):
        raise ApiError(403, "deposits_not_allowed", "deposits are for operators on this server")
    body = bodies.parse(raw, DepositIn)
    if not 0 < body.amount <= MAX_DEPOSIT:
        raise invalid("invalid_amount", f"a deposit is more than 0 and at most {MAX_DEPOSIT}")
    try:
        ledger.deposit(principal.account_id, body.amount, body.note)
    except LedgerError as exc:
        raise ApiError(exc.status, exc.code, exc.message) from None
    return account_out(principal, db, ledger, quotes)
