from __future__ import annotations

from fastapi import APIRouter

from api.auth import CurrentPrincipal
from api.deps import DbDep
from api.errors import ERROR_RESPONSES, not_found
from api.models import AccountOut
from infra import accounts

router = APIRouter(prefix="/v1/account", tags=["account"], responses=ERROR_RESPONSES)


@router.get("", response_model=AccountOut, summary="The caller's account")
def get_account(principal: CurrentPrincipal, db: DbDep) -> AccountOut:
    """The account of the API key's user. Cash, buying power and positions arrive with the
    orders and ledger issue."""
    account = accounts.get_account(db, principal.account_id)
    if account is None:
        raise not_found("account_not_found", "the account no longer exists")
    return AccountOut(
        id=account.id,
        account_number=account.account_number,
        status=account.status,
        currency=account.currency,
        created_at=account.created_at,
    )
