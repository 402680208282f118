"""Withdrawal holds over the API (ASGI, real database): place with `"mode": "hold"`, read, post, void; the account's
`available`; the engine's signed `withdrawal.confirmed` posts a hold once; what it cannot post is kept for review."""

from __future__ import annotations

from tests.api.conftest import auth
from tests.api.test_accounts import open_account
from tests.api.test_webhooks import send


def place(client, keys, account_id: str, amount: str, key: str, **extra):
    return client.post(f"/api/v1/accounts/{account_id}/withdrawals", headers=auth(keys["operator"]) | {
        "Idempotency-Key": key}, json={"amount": amount, "mode": "hold", **extra})


def account(client, keys, account_id: str) -> dict:
    return client.get(f"/api/v1/accounts/{account_id}", headers=auth(keys["finance"])).json()


def test_hold_then_post_over_the_api(client, keys) -> None:
    a = open_account(client, keys, "100.00")
    answer = place(client, keys, a, "60.00", "h1", reference="wire", expires_in_s=600)
    assert answer.status_code == 201, answer.text
    hold = answer.json()
    assert hold["status"] == "open" and hold["amount"] == "60.00" and hold["available"] == "40.00"
    assert hold["balance"] == "100.00" and hold["placed_by"].startswith("apikey:")
    again = place(client, keys, a, "60.00", "h1", reference="wire", expires_in_s=600)
    assert again.status_code == 201 and again.json()["hold_id"] == hold["hold_id"]
    assert place(client, keys, a, "61.00", "h1", reference="wire").status_code == 409  # same key, other body
    assert account(client, keys, a)["available"] == "40.00" and account(client, keys, a)["balance"] == "100.00"

    # The plain withdrawal is unchanged for callers that ask for no hold, and sees the hold.
    refused = client.post(f"/api/v1/accounts/{a}/withdrawals", headers=auth(keys["operator"]) | {
        "Idempotency-Key": "w1"}, json={"amount": "40.01"})
    assert refused.status_code == 409 and refused.json()["error"] == "insufficient_funds"
    assert place(client, keys, a, "40.01", "h2").status_code == 409
    bad = client.post(f"/api/v1/accounts/{a}/withdrawals", headers=auth(keys["operator"]) | {
        "Idempotency-Key": "w2"}, json={"amount": "1.00", "expires_in_s": 60})
    assert bad.status_code == 422

    listed = client.get(f"/api/v1/accounts/{a}/holds?status=open", headers=auth(keys["finance"])).json()
    assert [x["hold_id"] for x in listed["items"]] == [hold["hold_id"]]
    url = f"/api/v1/accounts/{a}/holds/{hold['hold_id']}"
    assert client.post(url + "/post", headers=auth(keys["finance"])).status_code == 403
    posted = client.post(url + "/post", headers=auth(keys["operator"]))
    assert posted.status_code == 200, posted.text
    body = posted.json()
    assert body["status"] == "posted" and body["entry_id"]
    assert body["balance"] == "40.00" and body["available"] == "40.00"
    assert client.post(url + "/post", headers=auth(keys["operator"])).json()["entry_id"] == body["entry_id"]
    voided = client.post(url + "/void", headers=auth(keys["operator"]))
    assert voided.status_code == 409 and voided.json()["error"] == "hold_state_conflict"
    assert client.get(f"/api/v1/accounts/{a}/holds/999999999", headers=auth(keys["finance"])).status_code == 404
    entry = client.get(f"/api/v1/journal/{body['entry_id']}", headers=auth(keys["finance"])).json()
    assert entry["kind"] == "withdrawal"


def test_void_over_the_api(client, keys) -> None:
    a = open_account(client, keys, "100.00")
    hold = place(client, keys, a, "100.00", "h1").json()
    assert account(client, keys, a)["available"] == "0.00"
    url = f"/api/v1/accounts/{a}/holds/{hold['hold_id']}"
    voided = client.post(url + "/void", headers=auth(keys["operator"]), json={"reason": "investor cancelled"})
    assert voided.status_code == 200 and voided.json()["status"] == "voided"
    assert voided.json()["available"] == "100.00" and voided.json()["reason"] == "investor cancelled"
    assert client.post(url + "/void", headers=auth(keys["operator"])).status_code == 200  # again: no change
    assert client.post(url + "/post", headers=auth(keys["operator"])).status_code == 409
    other = open_account(client, keys, "1.00")
    assert client.post(f"/api/v1/accounts/{other}/holds/{hold['hold_id']}/void",
                       headers=auth(keys["operator"])).status_code == 404


def test_the_engine_confirms_a_hold_by_webhook(client, keys) -> None:
    a = open_account(client, keys, "100.00")
    hold = place(client, keys, a, "30.00", "h1").json()
    data = {"account_id": a, "hold_id": hold["hold_id"], "amount": "30.00"}
    first = send(client, "withdrawal.confirmed", data)
    assert first.status_code == 200, first.text
    assert first.json()["duplicate"] is False and len(first.json()["entry_ids"]) == 1
    again = send(client, "withdrawal.confirmed", data)
    assert again.status_code == 200 and again.json()["duplicate"]
    assert again.json()["entry_ids"] == first.json()["entry_ids"]
    assert account(client, keys, a)["balance"] == "70.00"
    # Another amount, an unknown hold, a voided hold: stored and kept for review (202), nothing booked.
    other = place(client, keys, a, "10.00", "h2").json()
    mismatch = {**data, "hold_id": other["hold_id"], "amount": "9.00"}
    assert send(client, "withdrawal.confirmed", mismatch).status_code == 202
    assert send(client, "withdrawal.confirmed", {**data, "hold_id": 999999999}).status_code == 202
    client.post(f"/api/v1/accounts/{a}/holds/{other['hold_id']}/void", headers=auth(keys["operator"]))
    late = send(client, "withdrawal.confirmed", {**data, "hold_id": other["hold_id"], "amount": "10.00"})
    assert late.status_code == 202
    assert account(client, keys, a)["balance"] == "70.00" and account(client, keys, a)["available"] == "70.00"
    assert send(client, "withdrawal.confirmed", {**data, "amount": "-1"}).status_code == 422


def test_the_balance_report_shows_what_is_available(client, keys) -> None:
    a = open_account(client, keys, "100.00")
    place(client, keys, a, "25.00", "h1")
    now = client.get(f"/api/v1/accounts/{a}/balance", headers=auth(keys["finance"])).json()
    assert (now["balance"], now["available"]) == ("100.00", "75.00")
    as_of = client.get(f"/api/v1/accounts/{a}/balance?as_of=2001-01-01", headers=auth(keys["finance"]))
    assert as_of.status_code == 200 and as_of.json()["balance"] == "0.00" and "available" not in as_of.json()
