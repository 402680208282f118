"""API keys and page sessions (issue 17, part 4): Bearer only on the API, server-side page sessions, keys that
expire, are revoked within a stated bound, rotate, and say when they were last used. Real database, the app over
ASGI, the real `invledger apikey` command."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
from litestar.testing import TestClient

from api import auth
from api.app import create_app
from api.auth import KEY_CACHE_TTL_S, KeyStore, create_key
from api.pages import COOKIE
from tests.api.conftest import auth as bearer
from tests.api.test_accounts import open_account


def test_the_api_takes_no_cookie(client, keys) -> None:
    """Issue 17: a cookie-only `text/plain` POST — what a form on another page of the site can send — paused an
    account. A browser sends cookies on its own; the API now reads only `Authorization: Bearer`."""
    account_id = open_account(client, keys)
    client.post("/login", data={"api_key": keys["operator"], "next": "/"}, follow_redirects=False)
    assert client.cookies.get(COOKIE)
    for cookie in (client.cookies.get(COOKIE), keys["operator"]):
        client.cookies.set("invledger_key", cookie)
        forged = client.post(f"/api/v1/accounts/{account_id}/pause", content=b"x",
                             headers={"content-type": "text/plain"})
        assert forged.status_code == 401, forged.text
    assert client.get(f"/api/v1/accounts/{account_id}", headers=bearer(keys["finance"])).json()["status"] == "active"


def test_a_page_session_is_a_random_id_and_ends_at_sign_out(client, keys, engine: sa.Engine) -> None:
    client.post("/login", data={"api_key": keys["finance"], "next": "/"}, follow_redirects=False)
    session_id = client.cookies.get(COOKIE)
    assert session_id and session_id != keys["finance"] and "ilk_" not in session_id
    with engine.connect() as c:
        stored = c.execute(sa.text("SELECT id_sha256 FROM page_session ORDER BY created_at DESC LIMIT 1")).scalar()
    assert bytes(stored) != session_id.encode()  # only its hash is kept
    page = client.get("/")
    assert page.status_code == 200
    token = re.search(r'name="csrf_token" value="([0-9a-f]+)"', page.text).group(1)
    assert client.post("/logout", data={"csrf_token": token}, follow_redirects=False).status_code == 303
    client.cookies.set(COOKIE, session_id)  # the same cookie again, as a thief who copied it would
    again = client.get("/", follow_redirects=False)
    assert again.status_code == 303 and again.headers["location"].startswith("/login")


def test_revoked_keys_are_refused_within_the_cache_bound_and_their_sessions_at_once(ledger, engine: sa.Engine,
                                                                                    settings) -> None:
    now = [1000.0]
    store = KeyStore(engine, clock=lambda: now[0])
    key = create_key(engine, "operator", "to revoke")
    app = create_app(ledger, settings)
    app.state.key_store = store
    with TestClient(app=app, raise_server_exceptions=False) as client:
        assert client.get("/api/v1/accounts", headers=bearer(key)).status_code == 200
        client.post("/login", data={"api_key": key, "next": "/"}, follow_redirects=False)
        assert client.get("/", follow_redirects=False).status_code == 200
        assert auth.revoke_key(engine, key.split("_")[1])
        assert client.get("/", follow_redirects=False).status_code == 303  # the page session: at once
        now[0] += KEY_CACHE_TTL_S - 0.1
        assert client.get("/api/v1/accounts", headers=bearer(key)).status_code == 200  # within the stated bound
        now[0] += 0.2
        assert client.get("/api/v1/accounts", headers=bearer(key)).status_code == 401
        refused = client.post("/login", data={"api_key": key, "next": "/"}, follow_redirects=False)
        assert refused.status_code == 401


def test_expired_keys_and_sessions_are_refused(engine: sa.Engine) -> None:
    store = KeyStore(engine)
    expired = create_key(engine, "finance", "expired", expires_at=datetime.now(UTC) - timedelta(seconds=1))
    assert store.role_of(expired) is None and store.open_session(expired, 60) is None
    live = create_key(engine, "finance", "live", expires_at=datetime.now(UTC) + timedelta(days=1))
    assert store.role_of(live) == ("finance", live.split("_")[1])
    session_id = store.open_session(live, 60)
    assert store.session(session_id) == ("finance", live.split("_")[1])
    with engine.begin() as c:
        c.execute(sa.text("UPDATE page_session SET expires_at = now() - interval '1 second'"))
    assert store.session(session_id) is None
    assert store.session("") is None and store.session("not-a-session") is None


def test_last_used_and_rotation(engine: sa.Engine) -> None:
    store = KeyStore(engine, ttl_s=0)
    key = create_key(engine, "operator", "rotating")
    prefix = key.split("_")[1]
    assert next(k for k in auth.list_keys(engine) if k.prefix == prefix).last_used_at is None
    assert store.role_of(key) == ("operator", prefix)
    assert next(k for k in auth.list_keys(engine) if k.prefix == prefix).last_used_at is not None
    graced = auth.rotate_key(engine, prefix, grace=timedelta(hours=1))
    assert store.role_of(key) is not None and store.role_of(graced)[0] == "operator"  # both during the grace
    newest = auth.rotate_key(engine, graced.split("_")[1])
    assert store.role_of(graced) is None and store.role_of(newest)[0] == "operator"
    info = {k.prefix: k for k in auth.list_keys(engine)}
    assert info[prefix].expires_at is not None and info[graced.split("_")[1]].revoked_at is not None
    assert info[newest.split("_")[1]].name == "rotating"


def test_the_apikey_command(database_url: str, fresh_database) -> None:
    url, drop = fresh_database()
    env = {**{k: v for k, v in os.environ.items() if k != "BROKER_URL"}, "DATABASE_URL": url, "LOG_LEVEL": "WARNING"}

    def invledger(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "invledger.cli", "apikey", *args], env=env, capture_output=True,
                              text=True, timeout=60)

    try:
        created = invledger("create", "--role", "finance", "--name", "ops laptop", "--expires-in-days", "30")
        assert created.returncode == 0, created.stderr
        key = created.stdout.strip().splitlines()[-1]
        prefix = key.split("_")[1]
        listed = invledger("list", "--format", "csv")
        assert prefix in listed.stdout and "ops laptop" in listed.stdout and key not in listed.stdout
        rotated = invledger("rotate", prefix)
        assert rotated.returncode == 0 and rotated.stdout.strip().splitlines()[-1].startswith("ilk_")
        assert invledger("revoke", prefix).returncode == 1  # rotated without grace: already revoked
        missing = invledger("revoke")
        assert missing.returncode != 0 and "prefix" in missing.stderr
        engine = sa.create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))
        try:
            assert KeyStore(engine).role_of(key) is None
        finally:
            engine.dispose()
    finally:
        drop()
