"""Accounts API over ASGI on the real database: auth, validation, idempotency, overdraft, status."""

from __future__ import annotations

import uuid

from tests.api.conftest import auth


def new_id() -> str:
    return f"api-{uuid.uuid4().hex[:10]}"


def open_account(client, keys, initial="1000.00", **extra) -> str:
    account_id = new_id()
    response = client.post("/api/v1/accounts", headers=auth(keys["operator"]), json={
        "account_id": account_id, "product_id": "p-1", "agent_type": "swing", "currency": "USD",
        "initial_capital": initial, **extra})
    assert response.status_code == 201, response.text
    return account_id


def test_health_needs_no_key(client) -> None:
    assert client.get("/api/v1/health").json() == {"status": "ok"}
    ready = client.get("/api/v1/ready")
    assert ready.status_code == 200 and ready.json()["checks"]["database"] == "ok"


def test_no_key_is_401_and_finance_cannot_write(client, keys) -> None:
    response = client.get("/api/v1/accounts")
    assert response.status_code == 401 and response.json()["error"] == "unauthorized"
    assert client.get("/api/v1/accounts", headers=auth("ilk_nothere_bogus")).status_code == 401
    response = client.post("/api/v1/accounts", headers=auth(keys["finance"]),
                           json={"account_id": new_id(), "product_id": "p", "agent_type": "a"})
    assert response.status_code == 403 and set(response.json()) == {"error", "detail"}
    assert client.get("/api/v1/accounts", headers=auth(keys["finance"])).status_code == 200


def test_open_read_and_list(client, keys) -> None:
    account_id = open_account(client, keys, "1250.5")
    body = client.get(f"/api/v1/accounts/{account_id}", headers=auth(keys["finance"])).json()
    assert body["balance"] == "1250.50" and body["status"] == "active" and body["currency"] == "USD"
    assert body["fee_rate"] == "0.200000"
    again = client.post("/api/v1/accounts", headers=auth(keys["operator"]), json={
        "account_id": account_id, "product_id": "p-1", "agent_type": "swing", "currency": "USD",
        "initial_capital": "1250.50"})
    assert again.status_code == 200  # the same account again is not a second one
    other = client.post("/api/v1/accounts", headers=auth(keys["operator"]), json={
        "account_id": account_id, "product_id": "p-2", "agent_type": "swing"})
    assert other.status_code == 409
    assert client.get("/api/v1/accounts/nope-missing", headers=auth(keys["finance"])).status_code == 404
    page = client.get("/api/v1/accounts?limit=1", headers=auth(keys["finance"])).json()
    assert len(page["items"]) == 1 and page["next_cursor"]


def test_deposit_idempotency(client, keys) -> None:
    account_id = open_account(client, keys)
    url = f"/api/v1/accounts/{account_id}/deposits"
    headers = {**auth(keys["operator"]), "Idempotency-Key": "dep-1"}
    first = client.post(url, headers=headers, json={"amount": "10.25", "reference": "wire 1"})
    assert first.status_code == 201 and first.json()["balance"] == "1010.25"
    again = client.post(url, headers=headers, json={"amount": "10.25", "reference": "wire 1"})
    assert again.status_code == 201 and again.json() == first.json()
    conflict = client.post(url, headers=headers, json={"amount": "10.26", "reference": "wire 1"})
    assert conflict.status_code == 409 and conflict.json()["error"] == "idempotency_conflict"
    missing = client.post(url, headers=auth(keys["operator"]), json={"amount": "1"})
    assert missing.status_code == 400
    spaced = client.post(url, headers={**auth(keys["operator"]), "Idempotency-Key": "wire 2 of 3"},
                         json={"amount": "1"})
    assert spaced.status_code == 201
    for bad in ("é".encode("latin-1"), b"a\x01b", b"k" * 256):
        refused = client.post(url, headers={**auth(keys["operator"]), "Idempotency-Key": bad}, json={"amount": "1"})
        assert (refused.status_code, refused.json()["error"]) == (400, "invalid_idempotency_key"), bad
    assert client.get(f"/api/v1/accounts/{account_id}", headers=auth(keys["finance"])).json()["balance"] == "1011.25"


def test_bad_amounts_are_422_and_change_nothing(client, keys) -> None:
    account_id = open_account(client, keys)
    url = f"/api/v1/accounts/{account_id}/deposits"
    for i, amount in enumerate(["0", "-5", "1.001", "NaN", "Infinity", "1e400", "abc", 1e-7]):
        response = client.post(url, headers={**auth(keys["operator"]), "Idempotency-Key": f"bad-{i}"},
                               json={"amount": amount})
        assert response.status_code in (400, 422), (amount, response.text)
        assert set(response.json()) == {"error", "detail"}
    malformed = client.post(url, headers={**auth(keys["operator"]), "Idempotency-Key": "m",
                                          "content-type": "application/json"}, content=b"{not json")
    assert malformed.status_code == 400
    assert client.get(f"/api/v1/accounts/{account_id}", headers=auth(keys["finance"])).json()["balance"] == "1000.00"


def test_json_numbers_are_exact_and_out_of_range_is_invalid_amount(client, keys) -> None:
    """Issue 16: `{"amount": 1e400}` was a 400 with the code "error" (litestar decoded the body through float)."""
    account_id = open_account(client, keys, "0.00")
    url = f"/api/v1/accounts/{account_id}/deposits"

    def deposit(raw: bytes, key: str):
        return client.post(url, content=raw, headers={**auth(keys["operator"]), "Idempotency-Key": key,
                                                      "content-type": "application/json"})

    for i, number in enumerate([b"1e400", b"-1e400", b"1E+400", b"1e-400", b"0.001", b"-5", b"0", b"0.0",
                                b"1" + b"0" * 40, b"12345678901234567890123456789012345.5",
                                # Not a cent amount: through float it was 10.0, and 10.00 was booked.
                                b"10.000000000000000001"]):
        answer = deposit(b'{"amount": ' + number + b"}", f"range-{i}")
        assert (answer.status_code, answer.json()["error"]) == (422, "invalid_amount"), (number, answer.text)
    exact = deposit(b'{"amount": 9999999999999.99}', "exact")
    headers = {**auth(keys["operator"]), "content-type": "application/json"}
    assert exact.status_code == 201 and exact.json()["balance"] == "9999999999999.99"
    withdrawn = client.post(f"/api/v1/accounts/{account_id}/withdrawals", content=b'{"amount": 9999999999989.9}',
                            headers={**headers, "Idempotency-Key": "w"})
    assert withdrawn.json()["balance"] == "10.09", withdrawn.text
    assert deposit(b'{"amount": 10}', "integer").json()["balance"] == "20.09"
    initial = client.post("/api/v1/accounts", headers={**auth(keys["operator"]), "content-type": "application/json"},
                          content=b'{"account_id": "' + new_id().encode() + b'", "product_id": "p", '
                                  b'"agent_type": "a", "initial_capital": 1e400}')
    assert (initial.status_code, initial.json()["error"]) == (422, "invalid_amount"), initial.text


def test_every_refusal_has_a_meaningful_code_and_405_says_allow(client, keys) -> None:
    account_id = open_account(client, keys)
    url = f"/api/v1/accounts/{account_id}/deposits"
    headers = {**auth(keys["operator"]), "Idempotency-Key": "codes", "content-type": "application/json"}
    for body in (b"{not json", b'{"amount": 1', b"\xff\xfe", b'{"amount": "1"} trailing'):
        answer = client.post(url, content=body, headers=headers)
        assert (answer.status_code, answer.json()["error"]) == (400, "malformed"), (body, answer.text)
    wrong_type = client.post(url, content=b'{"amount": true}', headers=headers)
    assert (wrong_type.status_code, wrong_type.json()["error"]) == (422, "invalid"), wrong_type.text
    not_allowed = client.delete(f"/api/v1/accounts/{account_id}", headers=auth(keys["admin"]))
    assert (not_allowed.status_code, not_allowed.json()["error"]) == (405, "method_not_allowed")
    assert "GET" in not_allowed.headers["allow"] and "DELETE" not in not_allowed.headers["allow"]


def test_overdraft_is_409_and_balance_unchanged(client, keys) -> None:
    account_id = open_account(client, keys, "100.00")
    response = client.post(f"/api/v1/accounts/{account_id}/withdrawals",
                           headers={**auth(keys["operator"]), "Idempotency-Key": "w1"}, json={"amount": "100.01"})
    assert response.status_code == 409 and response.json()["error"] == "insufficient_funds"
    ok = client.post(f"/api/v1/accounts/{account_id}/withdrawals",
                     headers={**auth(keys["operator"]), "Idempotency-Key": "w2"}, json={"amount": "100.00"})
    assert ok.status_code == 201 and ok.json()["balance"] == "0.00"


def test_pause_resume_close_and_journal(client, keys) -> None:
    account_id = open_account(client, keys)
    op = auth(keys["operator"])
    assert client.post(f"/api/v1/accounts/{account_id}/pause", headers=op).json()["status"] == "paused"
    assert client.post(f"/api/v1/accounts/{account_id}/resume", headers=op).json()["status"] == "active"
    assert client.post(f"/api/v1/accounts/{account_id}/close", headers=op).json()["status"] == "closed"
    assert client.post(f"/api/v1/accounts/{account_id}/resume", headers=op).status_code == 409
    deposit = client.post(f"/api/v1/accounts/{account_id}/deposits", headers={**op, "Idempotency-Key": "x"},
                          json={"amount": "1.00"})
    assert deposit.status_code == 409
    journal = client.get(f"/api/v1/journal?account={account_id}", headers=auth(keys["finance"])).json()
    assert [e["kind"] for e in journal["items"]] == ["deposit"]
    entry_id = journal["items"][0]["entry_id"]
    entry = client.get(f"/api/v1/journal/{entry_id}", headers=auth(keys["finance"])).json()
    assert {p["side"] for p in entry["postings"]} == {"debit", "credit"}
    assert client.put(f"/api/v1/journal/{entry_id}", headers=op, json={}).status_code in (404, 405)
    assert client.delete(f"/api/v1/journal/{entry_id}", headers=op).status_code in (404, 405)


def test_reversal_once(client, keys) -> None:
    account_id = open_account(client, keys)
    op = auth(keys["operator"])
    dep = client.post(f"/api/v1/accounts/{account_id}/deposits", headers={**op, "Idempotency-Key": "r"},
                      json={"amount": "5.00"}).json()
    first = client.post(f"/api/v1/journal/{dep['entry_id']}/reversal", headers=op, json={"reason": "typo"})
    assert first.status_code == 201
    second = client.post(f"/api/v1/journal/{dep['entry_id']}/reversal", headers=op, json={"reason": "typo"})
    assert second.status_code == 409 and second.json()["error"] == "already_reversed"
    assert client.get(f"/api/v1/accounts/{account_id}/balance", headers=op).json()["balance"] == "1000.00"


def test_statement_and_openapi(client, keys) -> None:
    account_id = open_account(client, keys)
    statement = client.get(f"/api/v1/accounts/{account_id}/statement", headers=auth(keys["finance"])).json()
    assert statement["opening_balance"] == "0.00" and statement["closing_balance"] == "1000.00"
    assert client.get("/schema/openapi.json").status_code == 200
    assert "invledger_webhooks_total" in client.get("/metrics").text


def test_who_did_what_is_recorded_and_shown(client, keys, engine) -> None:
    """Issue 17, part 3: every entry and status change records the key that made it; the journal, the statement
    (JSON, CSV) and the Beancount export show it."""
    import sqlalchemy as sa

    account_id = open_account(client, keys)
    operator = f"apikey:{keys['operator'].split('_')[1]}:operator"
    admin = f"apikey:{keys['admin'].split('_')[1]}:admin"
    deposit = client.post(f"/api/v1/accounts/{account_id}/deposits", json={"amount": "5.00"},
                          headers={**auth(keys["operator"]), "Idempotency-Key": "who-1"}).json()
    reversal = client.post(f"/api/v1/journal/{deposit['entry_id']}/reversal", json={"reason": "typo"},
                           headers=auth(keys["admin"])).json()
    client.post(f"/api/v1/accounts/{account_id}/pause", headers=auth(keys["operator"]))
    journal = {e["entry_id"]: e["recorded_by"] for e in client.get(
        f"/api/v1/journal?account={account_id}", headers=auth(keys["finance"])).json()["items"]}
    assert journal[deposit["entry_id"]] == operator and journal[reversal["entry_id"]] == admin
    assert set(journal.values()) == {operator, admin}  # the initial capital too, booked by the operator's key
    lines = client.get(f"/api/v1/accounts/{account_id}/statement", headers=auth(keys["finance"])).json()["lines"]
    assert {line["recorded_by"] for line in lines} == {operator, admin}
    csv_text = client.get(f"/api/v1/accounts/{account_id}/statement",
                          headers={**auth(keys["finance"]), "Accept": "text/csv"}).text
    assert csv_text.splitlines()[0].endswith(",recorded_by") and operator in csv_text
    with engine.connect() as c:
        assert c.execute(sa.text("SELECT recorded_by FROM account_event WHERE account_id = :a AND kind = 'paused'"),
                         {"a": account_id}).scalar() == operator
