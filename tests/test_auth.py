"""Bearer API keys and per-key rate limits on the real app, PostgreSQL and Redis (database 11).

Every protected route is listed from api.app.include_routers (tests/api_support.py), so a
route added later without protection fails here. A test that must see a revocation made
behind the API's back (by another process, say) builds its own app with its own
auth_cache_s; the process-wide cache of verified keys is the one api.auth keeps.
"""

from __future__ import annotations

import time
import uuid

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from api.auth import authenticate_token
from infra import api_keys, db
from infra.clickhouse import release_shared_clickhouse
from infra.settings import Settings
from infra.tokens import new_token, parse_token, secret_hash
from tests.api_support import ALL_ROUTES, OPEN_PATHS, PROTECTED_ROUTES, fill, http_routes, route_id
from tests.conftest import new_user

pytestmark = pytest.mark.services

REDIS_DB = 11


@pytest.fixture(scope="module")
def settings(services: Settings, tmp_path_factory) -> Settings:
    release_shared_clickhouse()
    settings = Settings(
        home=tmp_path_factory.mktemp("auth-home"), redis_port=services.redis_port, redis_db=REDIS_DB
    )
    yield settings
    release_shared_clickhouse()


@pytest.fixture(scope="module")
def app(settings: Settings):
    app = create_app(settings)
    app.state.limiter.redis.flushdb()
    return app


@pytest.fixture(scope="module")
def client(app) -> TestClient:
    with TestClient(app) as client:
        yield client


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def assert_error(resp, status: int, code: str) -> dict:
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert body["code"] == code and body["message"], body
    return body


@pytest.fixture(scope="module")
def revoked_token(services: Settings) -> str:
    user, _, token = new_user(services)
    assert api_keys.revoke_key(db.pool(services.postgres), parse_token(token).key_id, user.id)
    return token


# ------------------------------------------------------------------ every route needs a key


def test_every_route_of_the_app_is_listed(app):
    """The parametrized lists below are exactly the app's HTTP routes."""
    assert http_routes(app) == ALL_ROUTES
    assert {p for _, p in ALL_ROUTES} - {p for _, p in PROTECTED_ROUTES} == OPEN_PATHS
    assert len(PROTECTED_ROUTES) >= 14


def _unknown_token() -> str:
    return str(new_token())  # well-formed, never stored


BAD_HEADERS = {
    "missing": {},
    "empty": {"Authorization": ""},
    "basic scheme": {"Authorization": "Basic dXNlcjpwYXNz"},
    "bearer without token": {"Authorization": "Bearer "},
    "malformed token": {"Authorization": "Bearer not-a-token"},
    "unknown key": None,  # filled per test: a well-formed token that was never created
    "wrong secret": None,  # the session user's key id with another secret
    "revoked key": None,
}


@pytest.mark.parametrize("case", list(BAD_HEADERS))
@pytest.mark.parametrize("route", PROTECTED_ROUTES, ids=route_id)
def test_protected_routes_answer_401(client, route, case, api_token, revoked_token):
    headers = BAD_HEADERS[case]
    if case == "unknown key":
        headers = bearer(_unknown_token())
    elif case == "wrong secret":
        headers = bearer(f"{parse_token(api_token).key_id}.{new_token().secret}")
    elif case == "revoked key":
        headers = bearer(revoked_token)
    method, path = route
    resp = client.request(method, fill(path), headers=headers, json={})
    assert_error(resp, 401, "unauthorized")
    assert resp.headers["WWW-Authenticate"].startswith("Bearer")
    assert "Retry-After" not in resp.headers


@pytest.mark.parametrize("path", sorted(OPEN_PATHS - {"/docs/oauth2-redirect"}))
def test_open_routes_need_no_key(client, path):
    assert client.get(path).status_code == 200


def test_openapi_has_the_bearer_scheme_on_every_protected_route(client):
    doc = client.get("/openapi.json").json()
    scheme = doc["components"]["securitySchemes"]["Bearer"]
    assert (scheme["type"], scheme["scheme"]) == ("http", "bearer")
    assert "<key_id>.<secret>" in scheme["description"]
    for method, path in PROTECTED_ROUTES:
        op = doc["paths"][path][method.lower()]
        assert op["security"] == [{"Bearer": []}], (method, path)
        for status in ("401", "429"):
            schema = op["responses"][status]["content"]["application/json"]["schema"]
            assert schema == {"$ref": "#/components/schemas/ErrorBody"}, (method, path, status)
    assert "security" not in doc["paths"]["/health"]["get"]


# ------------------------------------------------------------------------- a good key


def test_a_valid_key_reads_its_account(client, services):
    _user, account, token = new_user(services)
    resp = client.get("/v1/account", headers=bearer(token))
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body == {
        "id": str(account.id),
        "account_number": account.account_number,
        "status": "active",
        "currency": "USD",
        "created_at": body["created_at"],
        # A new account holds no money (tests/test_orders_api.py covers these figures).
        **dict.fromkeys(
            ("cash", "reserved_cash", "buying_power", "long_market_value", "equity"), "0.0000"
        ),
    }
    assert len(account.account_number) == 10 and account.account_number.isdigit()
    assert resp.headers["X-RateLimit-Limit"] == "200"
    assert int(resp.headers["X-RateLimit-Remaining"]) == 199


def test_authenticate_token_gives_the_principal(services):
    user, account, token = new_user(services, rate_limit=77)
    p = authenticate_token(token, services)
    assert p is not None
    assert (p.user_id, p.account_id, p.key_id, p.is_operator, p.rate_limit_per_minute) == (
        user.id,
        account.id,
        parse_token(token).key_id,
        False,
        77,
    )
    assert authenticate_token(token) == p, "the process settings by default"
    assert authenticate_token(token + "x", services) is None
    assert authenticate_token("", services) is None
    assert authenticate_token(_unknown_token(), services) is None


def test_the_secret_is_stored_only_as_its_hash(services):
    _user, _, token = new_user(services)
    parsed = parse_token(token)
    with db.pool(services.postgres).connection() as conn:
        stored = conn.execute(
            "SELECT secret_hash FROM api_keys WHERE key_id = %s", (parsed.key_id,)
        ).fetchone()[0]
        dump = conn.execute(
            "SELECT row_to_json(k)::text FROM api_keys k WHERE key_id = %s", (parsed.key_id,)
        ).fetchone()[0]
    assert bytes(stored) == secret_hash(parsed.key_id, parsed.secret)
    assert parsed.secret not in dump
    # The key id salts the hash: the same secret under another key id hashes differently.
    assert secret_hash("TFAAAAAAAAAAAAAAAA", parsed.secret) != bytes(stored)


def test_last_used_at_is_recorded(client, services):
    _, _, token = new_user(services)
    key_id = parse_token(token).key_id
    client.get("/v1/account", headers=bearer(token))
    [key] = client.get("/v1/keys", headers=bearer(token)).json()
    assert key["key_id"] == key_id and key["last_used_at"] is not None


# --------------------------------------------------------------------------- rate limits


def test_over_the_limit_answers_429_with_retry_after(client, services):
    _, _, token = new_user(services, rate_limit=3)
    _, _, other = new_user(services, rate_limit=3)
    routes = ["/v1/account", "/v1/keys", "/v1/watchlists"]  # one budget across routes
    for path in routes:
        assert client.get(path, headers=bearer(token)).status_code == 200, path
    resp = client.get("/v1/account", headers=bearer(token))
    assert_error(resp, 429, "rate_limited")
    retry = int(resp.headers["Retry-After"])
    assert 1 <= retry <= 20, "3 a minute: one more every 20 s"
    assert resp.headers["X-RateLimit-Remaining"] == "0"
    assert_error(client.get("/v1/quotes/AAPL", headers=bearer(token)), 429, "rate_limited")
    # Another key has its own budget; /health is never limited.
    assert client.get("/v1/account", headers=bearer(other)).status_code == 200
    assert client.get("/health", headers=bearer(token)).status_code == 200


def test_the_budget_refills_with_time(client, services):
    _, _, token = new_user(services, rate_limit=60)  # one more request each second
    statuses = [client.get("/v1/account", headers=bearer(token)).status_code for _ in range(60)]
    assert statuses == [200] * 60, "a full minute's budget may be spent at once"
    assert client.get("/v1/account", headers=bearer(token)).status_code == 429
    time.sleep(1.1)
    assert client.get("/v1/account", headers=bearer(token)).status_code == 200
    assert client.get("/v1/account", headers=bearer(token)).status_code == 429


def test_unauthenticated_requests_do_not_spend_a_budget(client, services):
    _, _, token = new_user(services, rate_limit=2)
    key_id = parse_token(token).key_id
    for _ in range(5):
        client.get("/v1/account", headers=bearer(f"{key_id}.{new_token().secret}"))
    assert client.get("/v1/account", headers=bearer(token)).status_code == 200
    assert client.get("/v1/account", headers=bearer(token)).status_code == 200


# -------------------------------------------------------------------------------- keys


def test_create_list_and_revoke_keys(client, services):
    _, _, token = new_user(services)
    resp = client.post("/v1/keys", headers=bearer(token), json={"name": "  trading bot  "})
    assert resp.status_code == 201, resp.text
    created = resp.json()
    assert created["name"] == "trading bot"
    assert created["token"] == f"{created['key_id']}.{created['secret']}"
    assert parse_token(created["token"]) is not None
    assert created["revoked_at"] is None and created["rate_limit_per_minute"] == 200
    # The new key works, and the listing never shows a secret or a hash.
    listed = client.get("/v1/keys", headers=bearer(created["token"])).json()
    assert [k["key_id"] for k in listed] == [parse_token(token).key_id, created["key_id"]]
    for k in listed:
        assert set(k) == {
            "key_id",
            "name",
            "created_at",
            "last_used_at",
            "revoked_at",
            "rate_limit_per_minute",
        }
    assert created["secret"] not in client.get("/v1/keys", headers=bearer(token)).text
    # Revoked at once on this process; listed with its revocation time; DELETE is idempotent.
    resp = client.delete(f"/v1/keys/{created['key_id']}", headers=bearer(token))
    assert resp.status_code == 204 and resp.content == b""
    assert_error(client.get("/v1/account", headers=bearer(created["token"])), 401, "unauthorized")
    [_, revoked] = client.get("/v1/keys", headers=bearer(token)).json()
    assert revoked["revoked_at"] is not None
    assert client.delete(f"/v1/keys/{created['key_id']}", headers=bearer(token)).status_code == 204
    [_, again] = client.get("/v1/keys", headers=bearer(token)).json()
    assert again["revoked_at"] == revoked["revoked_at"]


def test_a_key_can_revoke_itself(client, services):
    _, _, token = new_user(services)
    resp = client.delete(f"/v1/keys/{parse_token(token).key_id}", headers=bearer(token))
    assert resp.status_code == 204
    assert_error(client.get("/v1/account", headers=bearer(token)), 401, "unauthorized")


@pytest.mark.parametrize("body", [{}, {"name": ""}, {"name": "   "}, {"name": "x" * 65}])
def test_a_key_needs_a_name(client, api_token, body):
    assert_error(
        client.post("/v1/keys", headers=bearer(api_token), json=body), 422, "invalid_parameter"
    )


def test_at_most_twenty_active_keys(client, services):
    _, _, token = new_user(services)
    for i in range(api_keys.MAX_ACTIVE_KEYS - 1):
        assert (
            client.post("/v1/keys", headers=bearer(token), json={"name": f"k{i}"}).status_code
            == 201
        )
    body = assert_error(
        client.post("/v1/keys", headers=bearer(token), json={"name": "one too many"}),
        422,
        "too_many_keys",
    )
    assert "20" in body["message"]
    # A revoked key no longer counts.
    victim = client.get("/v1/keys", headers=bearer(token)).json()[-1]["key_id"]
    assert client.delete(f"/v1/keys/{victim}", headers=bearer(token)).status_code == 204
    assert client.post("/v1/keys", headers=bearer(token), json={"name": "again"}).status_code == 201


def test_unknown_key_is_404(client, api_token):
    for key_id in ("TFAAAAAAAAAAAAAAAA", "nonsense"):
        assert_error(
            client.delete(f"/v1/keys/{key_id}", headers=bearer(api_token)), 404, "key_not_found"
        )


# ------------------------------------------------------------------- isolation of keys


KEY_ROUTES = [r for r in PROTECTED_ROUTES if "{key_id}" in r[1]]


@pytest.mark.parametrize("route", KEY_ROUTES, ids=route_id)
def test_another_users_key_is_not_found(client, services, route):
    _, _, token_a = new_user(services)
    _, _, token_b = new_user(services)
    key_a = parse_token(token_a).key_id
    method, path = route
    resp = client.request(method, fill(path, key_id=key_a), headers=bearer(token_b), json={})
    assert_error(resp, 404, "key_not_found")
    # A's key is untouched and B never sees it.
    assert client.get("/v1/account", headers=bearer(token_a)).status_code == 200
    [a_key] = client.get("/v1/keys", headers=bearer(token_a)).json()
    assert a_key["revoked_at"] is None
    assert key_a not in client.get("/v1/keys", headers=bearer(token_b)).text


def test_each_user_sees_only_their_own_account(client, services):
    _, account_a, token_a = new_user(services)
    _, account_b, token_b = new_user(services)
    assert client.get("/v1/account", headers=bearer(token_a)).json()["id"] == str(account_a.id)
    assert client.get("/v1/account", headers=bearer(token_b)).json()["id"] == str(account_b.id)


# -------------------------------------------------------------- the revocation delay


def test_revocation_elsewhere_takes_effect_within_the_cache_time(services, settings):
    """A key revoked behind this process's back (another API process, the CLI) works here
    until its cache entry expires, and never after."""
    quick = settings.model_copy(update={"auth_cache_s": 1.0})
    _user, _, token = new_user(services)
    with TestClient(create_app(quick)) as client:
        assert client.get("/v1/account", headers=bearer(token)).status_code == 200
        assert api_keys.revoke_key(db.pool(services.postgres), parse_token(token).key_id)
        assert client.get("/v1/account", headers=bearer(token)).status_code == 200, "cached"
        time.sleep(1.1)
        assert_error(client.get("/v1/account", headers=bearer(token)), 401, "unauthorized")


def test_without_a_cache_revocation_is_immediate(services, settings):
    uncached = settings.model_copy(update={"auth_cache_s": 0})
    _, _, token = new_user(services)
    assert authenticate_token(token, settings) is not None  # in the cache, unused below
    with TestClient(create_app(uncached)) as client:
        assert client.get("/v1/account", headers=bearer(token)).status_code == 200
        assert api_keys.revoke_key(db.pool(services.postgres), parse_token(token).key_id)
        assert_error(client.get("/v1/account", headers=bearer(token)), 401, "unauthorized")


def test_a_cached_key_still_needs_its_secret(services, settings):
    _, _, token = new_user(services)
    assert authenticate_token(token, settings) is not None  # now cached
    forged = f"{parse_token(token).key_id}.{new_token().secret}"
    assert authenticate_token(forged, settings) is None


def test_keys_of_a_closed_account_do_not_authenticate(services):
    _user, account, token = new_user(services)
    uncached = Settings(postgres_url=services.postgres, auth_cache_s=0)
    assert authenticate_token(token, uncached) is not None
    with db.pool(services.postgres).connection() as conn:
        conn.execute("UPDATE accounts SET status = 'closed' WHERE id = %s", (account.id,))
    assert authenticate_token(token, uncached) is None


def test_principal_ids_are_uuids(services):
    _user, _account, token = new_user(services)
    p = authenticate_token(token, services)
    assert isinstance(p.user_id, uuid.UUID) and isinstance(p.account_id, uuid.UUID)
