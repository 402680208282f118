"""Abuse over ASGI on the real database: signature vectors, role checks from the route table, oversize and
pathological bodies, and no secret in the logs."""

from __future__ import annotations

import gc
import io
import json
import logging
import re
import time
import uuid

import psutil
from litestar.routes import HTTPRoute
from litestar.testing import TestClient

from api.app import create_app
from integration.signature import sign, sign_standard
from service import config
from service.logs import JsonFormatter
from tests.api.conftest import ROTATED_SECRET, WEBHOOK_SECRET, auth
from tests.api.test_webhooks import URL, balance, open_account, stored, trade
from tests.reliability.conftest import report_figures

WRITE_METHODS = {"POST", "PUT", "PATCH", "DELETE"}
PUBLIC = {"/api/v1/health", "/api/v1/ready", "/metrics", "/api/v1/metrics", "/api/v1/webhooks/ml-engine"}
MIB = 1024 * 1024


def signed(body: bytes, secret: str = WEBHOOK_SECRET) -> dict[str, str]:
    return {"X-ML-Signature": sign(secret, body), "content-type": "application/json"}


def standard(body: bytes, *, secret: str = WEBHOOK_SECRET, offset_s: int = 0, webhook_id: str | None = None,
             signed_id: str | None = None) -> dict[str, str]:
    webhook_id = webhook_id or f"msg_{uuid.uuid4().hex}"
    at = int(time.time()) + offset_s
    return {"webhook-id": webhook_id, "webhook-timestamp": str(at),
            "webhook-signature": sign_standard(secret, signed_id or webhook_id, at, body)}


# ------------------------------------------------------------------------------------------ signatures

def test_signature_vectors_refuse_and_store_nothing(client, keys, engine) -> None:
    account_id = open_account(client, keys)
    body = json.dumps({"event_type": "trade.executed", "data": trade(account_id)}).encode()
    good = sign(WEBHOOK_SECRET, body)
    refused: dict[str, tuple[bytes, dict[str, str]]] = {
        "missing header": (body, {"content-type": "application/json"}),
        "empty signature": (body, {"X-ML-Signature": ""}),
        "truncated signature": (body, {"X-ML-Signature": good[:-2]}),
        "signature of another body": (body, {"X-ML-Signature": sign(WEBHOOK_SECRET, body + b" ")}),
        "wrong secret": (body, signed(body, "not-our-secret-000000000")),
        "re-serialised JSON": (json.dumps(json.loads(body), separators=(",", ":")).encode(), {"X-ML-Signature": good}),
        "standard: stale timestamp": (body, standard(body, offset_s=-360)),
        "standard: future timestamp": (body, standard(body, offset_s=+360)),
        "standard: wrong secret": (body, standard(body, secret="not-our-secret-000000000")),
        "standard: signed for another id": (body, standard(body, signed_id="msg_other")),
        "standard: timestamp not a number": (body, {**standard(body), "webhook-timestamp": "soon"}),
        "standard: no timestamp": (body, {k: v for k, v in standard(body).items() if k != "webhook-timestamp"}),
        "standard: unknown version": (body, {**standard(body), "webhook-signature": "v2," + "A" * 44}),
    }
    for position in (0, len(body) // 2, len(body) - 1):  # one byte changed, signature of the original
        flipped = bytearray(body)
        flipped[position] ^= 0x01
        refused[f"byte {position} changed"] = (bytes(flipped), {"X-ML-Signature": good})
    answers = {name: client.post(URL, content=content, headers=headers) for name, (content, headers) in refused.items()}
    wrong = {name: (r.status_code, r.text) for name, r in answers.items()
             if r.status_code != 401 or r.json()["error"] != "unauthorized"}
    assert not wrong
    assert stored(engine, account_id) == []
    assert balance(client, keys, account_id) == "1000.00"


def test_signature_vectors_that_pass(client, keys, engine) -> None:
    account_id = open_account(client, keys)
    pnl = iter(["1.00", "2.00", "3.00", "4.00", "5.00"])

    def body() -> bytes:
        return json.dumps({"event_type": "trade.executed", "data": trade(account_id, pnl=next(pnl))}).encode()

    accepted = {}
    b = body()
    accepted["rotated (older) secret"] = client.post(URL, content=b, headers=signed(b, ROTATED_SECRET))
    b = body()
    accepted["standard, 4 minutes old"] = client.post(URL, content=b, headers=standard(b, offset_s=-240))
    b = body()
    accepted["standard, 4 minutes ahead"] = client.post(URL, content=b, headers=standard(b, offset_s=+240))
    b = body()
    accepted["standard, rotated secret"] = client.post(URL, content=b, headers=standard(b, secret=ROTATED_SECRET))
    b = body()
    headers = standard(b)
    headers["webhook-signature"] = "v1," + "A" * 44 + " " + headers["webhook-signature"]  # several, one valid
    accepted["standard, one of several signatures"] = client.post(URL, content=b, headers=headers)
    assert {name: r.status_code for name, r in accepted.items()} == {name: 200 for name in accepted}
    assert len(stored(engine, account_id)) == 5
    assert balance(client, keys, account_id) == "1015.00"


def test_without_a_configured_secret_every_webhook_is_refused(ledger, keys, engine) -> None:
    app = create_app(ledger, config.load({}))
    with TestClient(app=app, raise_server_exceptions=False) as client:
        account_id = open_account(client, keys)
        body = json.dumps({"event_type": "trade.executed", "data": trade(account_id)}).encode()
        assert client.post(URL, content=body, headers=signed(body, "")).status_code == 401
        assert client.post(URL, content=body, headers=standard(body, secret="")).status_code == 401
    assert stored(engine, account_id) == []


# ------------------------------------------------------------------------------------------ roles

def _routes(app) -> list[tuple[str, str, str]]:
    """(method, concrete path, least role) for every route the app serves, from its own route table."""
    found = []
    for route in app.routes:
        if not isinstance(route, HTTPRoute):
            continue
        path = route.path_format
        for name, parameter in route.path_parameters.items():
            sample = "1" if parameter.type is int else "no-such-thing"
            path = path.replace("{" + name + "}", sample)
        for method, (handler, _) in route.route_handler_map.items():
            if method in ("HEAD", "OPTIONS"):
                continue
            found.append((method, path, handler.opt.get("role", "finance")))
    return found


def test_every_route_needs_a_key_and_finance_cannot_write(app, client, keys) -> None:
    routes = _routes(app)
    api = [(m, p, r) for m, p, r in routes if p.startswith("/api/v1/") and p not in PUBLIC]
    pages = [(m, p, r) for m, p, r in routes if not p.startswith(("/api/v1/", "/schema", "/static", "/login"))
             and p not in PUBLIC]
    assert len(api) >= 20 and len(pages) >= 5, "the route table looks too small to be the whole app"
    problems = []
    for method, path, role in api:
        for headers, label in (({}, "no key"), (auth("ilk_00000000_forged"), "unknown key"),
                               ({"Authorization": "Basic YWRtaW46YWRtaW4="}, "basic auth")):
            answer = client.request(method, path, headers=headers, json={})
            if answer.status_code != 401 or answer.json().get("error") != "unauthorized":
                problems.append(f"{method} {path} with {label}: {answer.status_code}")
        if method in WRITE_METHODS and role == "finance":
            problems.append(f"{method} {path} writes but lets the finance role in")
        answer = client.request(method, path, headers=auth(keys["finance"]), json={})
        if (method in WRITE_METHODS or role != "finance") != (answer.status_code == 403):
            problems.append(f"{method} {path} as finance (route role {role}): {answer.status_code}")
    for method, path, role in pages:
        answer = client.request(method, path, follow_redirects=False)
        if answer.status_code not in (303, 302, 401) or (answer.is_redirect and
                                                         "/login" not in answer.headers["location"]):
            problems.append(f"page {method} {path} without a key: {answer.status_code}")
        if method in WRITE_METHODS and role == "finance" and path != "/logout":  # logging out changes no data
            problems.append(f"page {method} {path} writes but lets the finance role in")
    assert not problems, "\n".join(problems)
    for method in ("PUT", "PATCH", "DELETE"):  # entries are never edited or deleted: no such routes
        assert client.request(method, "/api/v1/journal/1", headers=auth(keys["admin"])).status_code == 405


# ------------------------------------------------------------------------------------------ bodies

def _rss_mb() -> float:
    gc.collect()
    return psutil.Process().memory_info().rss / MIB


def test_oversize_and_pathological_bodies(client, keys, engine, tmp_path) -> None:
    account_id = open_account(client, keys)
    operator = {**auth(keys["operator"]), "content-type": "application/json", "Idempotency-Key": "k-oversize"}
    big = b'{"amount": "1.00", "reference": "' + b"x" * (2 * MIB) + b'"}'
    assert client.post(f"/api/v1/accounts/{account_id}/deposits", content=big, headers=operator).status_code == 413
    assert client.post("/api/v1/accounts", content=big, headers=operator).status_code == 413

    def chunks():  # no Content-Length: the limit must hold on the stream too
        for _ in range(3):
            yield b"x" * MIB

    assert client.post(f"/api/v1/accounts/{account_id}/deposits", content=chunks(), headers=operator
                       ).status_code == 413
    over = json.dumps({"event_type": "trade.executed", "data": trade(account_id),
                       "padding": "x" * MIB}).encode()
    answer = client.post(URL, content=over, headers=signed(over))
    assert answer.status_code == 413 and answer.json()["error"] == "too_large"

    started_mb = _rss_mb()
    peak_mb = started_mb
    pathological = {
        "deep arrays": b"[" * (MIB // 2 - 10) + b"]" * (MIB // 2 - 10),
        "deep objects": b'{"a":' * (MIB // 6) + b"1" + b"}" * (MIB // 6),
        "many keys": json.dumps({"event_type": "trade.executed", "data": {f"k{i}": i for i in range(60_000)}}
                                ).encode(),
        "long number": b'{"event_type": "account.balance_updated", "data": {"account_id": "'
                       + account_id.encode() + b'", "new_balance": 1' + b"0" * 900_000 + b', "reason": "x"}}',
        "huge exponent": b'{"event_type": "account.balance_updated", "data": {"account_id": "'
                         + account_id.encode() + b'", "new_balance": 1e999999999, "reason": "x"}}',
    }
    answers = {}
    for name, body in pathological.items():
        assert len(body) <= MIB, name
        answers[f"webhook {name}"] = client.post(URL, content=body, headers=signed(body)).status_code
        answers[f"deposit {name}"] = client.post(
            f"/api/v1/accounts/{account_id}/deposits", content=body,
            headers={**operator, "Idempotency-Key": f"k-{uuid.uuid4().hex}"}).status_code
        peak_mb = max(peak_mb, _rss_mb())
    bad = {name: status for name, status in answers.items() if status not in (400, 413, 422)}
    assert not bad
    assert balance(client, keys, account_id) == "1000.00"
    # A bound, not a timing goal: a 1 MiB body must not cost hundreds of MiB (the process holds the app,
    # the database pool and pytest, so the absolute figure is only reported).
    assert peak_mb - started_mb < 200
    report_figures(tmp_path, "abuse: bodies", {"requests": len(answers) + 6, "rss_start_mb": round(started_mb, 1),
                                               "rss_peak_mb": round(peak_mb, 1)})


# ------------------------------------------------------------------------------------------ logs

def test_no_secret_or_key_reaches_the_logs(ledger, keys, engine) -> None:
    """Drive every path that logs (refusals, rejections, reviews, 5xx-mapped errors) at DEBUG and scan."""
    engine_key = "engine-api-key-" + uuid.uuid4().hex
    settings = config.load({"ML_ENGINE_WEBHOOK_SECRET": f"{WEBHOOK_SECRET},{ROTATED_SECRET}",
                            "ML_ENGINE_API_KEY": engine_key})
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        with TestClient(app=create_app(ledger, settings), raise_server_exceptions=False) as client:
            account_id = open_account(client, keys)
            for key in keys.values():
                client.get("/api/v1/accounts", headers=auth(key))
                client.get("/api/v1/accounts", headers=auth(key + "x"))  # a near miss of a real key
                client.get("/api/v1/outbox", headers=auth(key))
            body = json.dumps({"event_type": "trade.executed", "data": trade(account_id)}).encode()
            client.post(URL, content=body, headers=signed(body, "wrong-secret-0000000000"))
            client.post(URL, content=body, headers=signed(body))
            for event in ({"event_type": "nope", "data": {}},
                          {"event_type": "trade.executed", "data": trade("acc-unknown-" + uuid.uuid4().hex[:6])},
                          {"event_type": "trade.executed", "data": {**trade(account_id), "profit_loss": "NaN"}}):
                b = json.dumps(event).encode()
                client.post(URL, content=b, headers=signed(b))
            client.post(URL, content=b"{not json", headers=signed(b"{not json"))
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)
    text = stream.getvalue()
    lines = [json.loads(line) for line in text.splitlines() if line.strip()]
    assert any(line.get("logger") == "api.webhooks" for line in lines), "the capture saw no webhook log line"
    secrets = [WEBHOOK_SECRET, ROTATED_SECRET, engine_key, *keys.values(),
               *(key.split("_", 2)[2] for key in keys.values())]  # ilk_<prefix>_<secret>: the secret alone too
    leaked = [secret for secret in secrets if secret in text]
    assert not leaked, f"{len(leaked)} secret(s) in {len(lines)} log lines"
    assert not re.search(r"Bearer\s+ilk_", text)
