from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path

from api.auth import CurrentPrincipal, forget_key
from api.deps import DbDep
from api.errors import ERROR_RESPONSES, invalid, not_found
from api.models import KeyCreatedOut, KeyIn, KeyOut
from infra.api_keys import ApiKey, TooManyKeys, UserKeys

router = APIRouter(prefix="/v1/keys", tags=["keys"], responses=ERROR_RESPONSES)


def _user_keys(principal: CurrentPrincipal, db: DbDep) -> UserKeys:
    """The caller's keys: the one place key queries are scoped to a user."""
    return UserKeys(db, principal.user_id)


UserKeysDep = Annotated[UserKeys, Depends(_user_keys)]


def _owned_key(
    key_id: Annotated[str, Path(description="e.g. TFABCDEFGHIJKLMNOP")], keys: UserKeysDep
) -> ApiKey:
    key = keys.get(key_id)
    if key is None:
        raise not_found("key_not_found", f"no API key {key_id!r}")
    return key


OwnedKey = Annotated[ApiKey, Depends(_owned_key)]


def _out(key: ApiKey) -> KeyOut:
    return KeyOut(
        key_id=key.key_id,
        name=key.name,
        created_at=key.created_at,
        last_used_at=key.last_used_at,
        revoked_at=key.revoked_at,
        rate_limit_per_minute=key.rate_limit_per_minute,
    )


@router.post("", response_model=KeyCreatedOut, status_code=201, summary="Create an API key")
def create_key(body: KeyIn, keys: UserKeysDep) -> KeyCreatedOut:
    """A new key for the caller's user. The secret is in this response only: keep it."""
    try:
        key, token = keys.create(body.name)
    except TooManyKeys as exc:
        raise invalid("too_many_keys", str(exc)) from None
    return KeyCreatedOut(**_out(key).model_dump(), secret=token.secret, token=str(token))


@router.get("", response_model=list[KeyOut], summary="The caller's API keys")
def list_keys(keys: UserKeysDep) -> list[KeyOut]:
    """Every key of the caller's user, revoked ones included, oldest first."""
    return [_out(k) for k in keys.all()]


@router.delete("/{key_id}", status_code=204, summary="Revoke an API key")
def revoke_key(key: OwnedKey, keys: UserKeysDep) -> None:
    """Revoke at once on this API process, within TAPEFLOW_AUTH_CACHE_S (5 s) on others.
    Revoking a revoked key is a no-op; the key stays listed with its revoked_at."""
    keys.revoke(key.key_id)
    forget_key(key.key_id)
