"""Reconciliation through the API and a real worker: breaks, outages, alerts raised once, resolved, acknowledged."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import httpx
import msgspec
import pytest
from litestar.testing import TestClient

from api.app import create_app
from api.auth import create_key
from integration import reconcile, runs
from jobs import actors, context
from ledger import holds
from service.runtime import Runtime
from simulator import Faults, Simulator, Target
from tests.integration.support import Receiver
from tests.jobs.conftest import (
    SINCE,
    Db,
    Jobs,
    alerts_of,
    cli,
    engine_client,
    open_account,
    open_known_account,
)
from tests.waiting import wait_until


def set_faults(sim: Simulator, faults: Faults) -> None:
    """Through the simulator's admin endpoint, over HTTP, as an operator would."""
    httpx.post(sim.url + "/admin/faults", content=msgspec.json.encode(faults), timeout=5).raise_for_status()


@pytest.fixture
def api(db: Db, runtime: Runtime) -> Iterator[tuple[TestClient, dict[str, str]]]:
    app = create_app(db.ledger, runtime.settings, jobs=actors.enqueue)
    keys = {role: create_key(db.engine, role, f"jobs {role}") for role in ("finance", "operator")}
    with TestClient(app=app, raise_server_exceptions=False) as client:
        yield client, keys


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def run_now(client: TestClient, keys: dict[str, str], jobs: Jobs) -> dict:
    """POST /reconciliations, wait for the worker, and read the run back with its results."""
    started = client.post("/api/v1/reconciliations", headers=bearer(keys["operator"]))
    assert started.status_code == 202, started.text
    assert started.json()["status"] == "queued"
    jobs.drain()
    run = client.get(f"/api/v1/reconciliations/{started.json()['run_id']}", headers=bearer(keys["finance"]))
    assert run.status_code == 200, run.text
    return run.json()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver() as receiver:
        yield receiver


def test_break_and_outage_alerted_once_resolved_when_matched(db: Db, sim: Simulator, runtime: Runtime, jobs: Jobs,
                                                             api, receiver: Receiver) -> None:
    client, keys = api
    runtime.settings = msgspec.structs.replace(runtime.settings, alert_webhook_url=receiver.url)
    setup = engine_client(sim)
    drifting, silent, fine = (open_known_account(db, setup, since=SINCE) for _ in range(3))
    set_faults(sim, Faults(drift={drifting: Decimal("0.01")}, error=Target(accounts=(silent,))))

    first = run_now(client, keys, jobs)
    assert first["status"] == "done"
    assert first["counts"] == {"matched": 1, "break": 1, "engine_unavailable": 1, "unknown_account": 0,
                               "status_mismatch": 0}
    by_account = {line["account_id"]: line for line in first["results"]}
    assert by_account[drifting]["result"] == "break"
    assert by_account[drifting]["difference"] == "0.01"
    assert (by_account[drifting]["ledger_balance"], by_account[drifting]["engine_balance"]) == ("1000.00", "1000.01")
    assert by_account[silent]["result"] == "engine_unavailable"
    assert by_account[silent]["difference"] is None
    assert by_account[fine]["result"] == "matched" and by_account[fine]["difference"] == "0.00"
    assert first["alerts_raised"] == 2

    opened = client.get("/api/v1/alerts?status=open", headers=bearer(keys["finance"])).json()["items"]
    assert sorted((a["kind"], a["account_id"]) for a in opened) == sorted(
        [("reconciliation_break", drifting), ("engine_unavailable", silent)])

    # ALERT_WEBHOOK_URL: the alerts actor sends each alert once, Slack-compatible.
    actors.notify_alerts.send()
    jobs.drain()
    actors.notify_alerts.send()
    jobs.drain()
    sent = [msgspec.json.decode(body) for body in receiver.bodies()]
    assert sorted(s["account_id"] for s in sent) == sorted([drifting, silent])
    assert all(s["text"].startswith("[invledger] ") for s in sent)

    second = run_now(client, keys, jobs)
    assert second["counts"]["break"] == 1 and second["counts"]["engine_unavailable"] == 1
    assert second["alerts_raised"] == 0
    assert len(alerts_of(db)) == 2

    # An operator acknowledges the outage; it stays acknowledged (not raised again) while it lasts.
    outage = next(a for a in opened if a["kind"] == "engine_unavailable")
    acked = client.post(f"/api/v1/alerts/{outage['id']}/ack", headers=bearer(keys["operator"]))
    assert acked.status_code == 200, acked.text
    assert acked.json()["status"] == "acknowledged" and acked.json()["acknowledged_by"]
    assert client.post(f"/api/v1/alerts/{outage['id']}/ack", headers=bearer(keys["finance"])).status_code == 403
    assert client.post("/api/v1/alerts/999999/ack", headers=bearer(keys["operator"])).status_code == 404

    set_faults(sim, Faults(error=Target(accounts=(silent,))))  # the drift is gone
    third = run_now(client, keys, jobs)
    assert third["counts"]["break"] == 0 and third["counts"]["matched"] == 2
    assert (third["alerts_raised"], third["alerts_resolved"]) == (0, 1)
    statuses = {(a.kind, a.account_id): a.status for a in alerts_of(db)}
    assert statuses == {("reconciliation_break", drifting): "resolved", ("engine_unavailable", silent): "acknowledged"}
    assert [a["account_id"] for a in client.get("/api/v1/alerts?status=resolved",
                                                headers=bearer(keys["finance"])).json()["items"]] == [drifting]

    listed = client.get("/api/v1/reconciliations", headers=bearer(keys["finance"])).json()["items"]
    assert [r["run_id"] for r in listed] == [third["run_id"], second["run_id"], first["run_id"]]
    breaks = client.get(f"/api/v1/reconciliations/{first['run_id']}?result=break",
                        headers=bearer(keys["finance"])).json()["results"]
    assert [line["account_id"] for line in breaks] == [drifting]


def test_reconciliation_routes_refuse_what_they_should(db: Db, runtime: Runtime, jobs: Jobs, api) -> None:
    client, keys = api
    assert client.post("/api/v1/reconciliations", headers=bearer(keys["finance"])).status_code == 403
    assert client.post("/api/v1/reconciliations").status_code == 401
    missing = client.get("/api/v1/reconciliations/424242", headers=bearer(keys["finance"]))
    assert missing.status_code == 404 and set(missing.json()) == {"error", "detail"}
    run = run_now(client, keys, jobs)
    bad = client.get(f"/api/v1/reconciliations/{run['run_id']}?result=nonsense", headers=bearer(keys["finance"]))
    assert bad.status_code == 422 and bad.json()["error"]
    assert client.get("/api/v1/alerts?status=nonsense", headers=bearer(keys["finance"])).status_code == 422
    assert run["counts"]["matched"] == 0 and run["accounts"] == 0  # no accounts: an empty, finished run
    assert run["status"] == "done"
    assert datetime.fromisoformat(run["finished_at"]) >= datetime.now(UTC) - timedelta(minutes=5)


def test_cli_reconcile_with_progress_once_per_date(db: Db, sim: Simulator) -> None:
    setup = engine_client(sim)
    drifting, fine = (open_known_account(db, setup, since=SINCE) for _ in range(2))
    set_faults(sim, Faults(drift={drifting: Decimal("-0.01")}))
    first = cli(db, sim, "reconcile", "--date", "2026-01-15")
    assert first.returncode == 0, first.stderr
    assert "reconciled 2/2 accounts" in first.stderr
    assert ": done" in first.stdout and "breaks 1" in first.stdout and "matched 1" in first.stdout
    assert drifting in first.stdout and "-0.01" in first.stdout and fine not in first.stdout
    again = cli(db, sim, "reconcile", "--date", "2026-01-15", "--format", "json")
    assert again.returncode == 0, again.stderr
    document = msgspec.json.decode(again.stdout)
    assert document["skipped"] == "done" and document["run"]["run_key"] == "reconcile:2026-01-15"
    assert [p["account_id"] for p in document["problems"]] == [drifting]
    assert db.scalar("SELECT count(*) FROM job_run") == 1


def test_what_is_in_flight_is_not_a_break_and_other_results(db: Db, sim: Simulator, runtime: Runtime,
                                                            jobs: Jobs) -> None:
    setup = engine_client(sim)
    depositing, pausing, told_nothing = (open_known_account(db, setup, since=SINCE, account_id=f"rec-{n}")
                                         for n in ("depositing", "pausing", "told-nothing"))
    unknown = open_known_account(db, setup, since=SINCE, account_id="rec-unknown", engine=False)
    being_created = open_account(db.ledger, "rec-being-created")  # its account.created is still in the outbox
    db.ledger.deposit(depositing, "250.00", idempotency_key="rec-deposit")
    db.ledger.change_status(pausing, "pause")
    db.ledger.change_status(told_nothing, "pause", notify=False)  # the engine was never told: a real mismatch
    holding = open_known_account(db, setup, since=SINCE, account_id="rec-holding")
    holds.place_hold(db.ledger, holding, "100.00", idempotency_key="rec-hold")  # reserved, not withdrawn

    actors.reconcile.send(period="2026-01-01")
    jobs.drain()
    run = runs.get(db.engine, "reconcile:2026-01-01")
    assert run.status == "done"
    lines = {line.account_id: line.out() for line in reconcile.results(db.engine, run.id)}
    assert {a: line["result"] for a, line in lines.items()} == {
        depositing: "matched", pausing: "matched", told_nothing: "status_mismatch", unknown: "unknown_account",
        being_created: "unknown_account", holding: "matched"}
    assert lines[holding]["difference"] == "0.00"
    assert "100.00 held by 1 open withdrawal hold" in lines[holding]["detail"]
    assert (lines[depositing]["difference"], lines[depositing]["in_flight"]) == ("-250.00", "250.00")
    assert "not yet delivered" in lines[pausing]["detail"]
    assert (lines[told_nothing]["ledger_status"], lines[told_nothing]["engine_status"]) == ("paused", "active")
    assert "outbox" in lines[being_created]["detail"]
    assert sorted((a.kind, a.account_id) for a in alerts_of(db)) == [
        ("reconciliation_status_mismatch", told_nothing), ("reconciliation_unknown_account", unknown)]

    actors.deliver_outbox.send()  # the engine hears of the deposit, the pause and the creation
    jobs.drain()
    wait_until(lambda: db.scalar("SELECT count(*) FROM outbox_event WHERE status <> 'delivered'") == 0,
               what="the outbox to be delivered")
    actors.reconcile.send(period="2026-01-02")
    jobs.drain()
    again = {line.account_id: line.result for line in reconcile.results(db.engine,
                                                                        runs.get(db.engine, "reconcile:2026-01-02").id)}
    assert again == {depositing: "matched", pausing: "matched", told_nothing: "status_mismatch",
                     unknown: "unknown_account", being_created: "matched", holding: "matched"}


def test_an_engine_outage_is_one_problem_not_one_alert_per_account(db: Db, sim: Simulator, runtime: Runtime,
                                                                   jobs: Jobs) -> None:
    # The breaker opens during the outage; cut its reset time so the run after the outage calls the engine.
    client = engine_client(sim, breaker_reset_timeout_ms=20)
    context.install(runtime, client)
    setup = engine_client(sim)
    accounts = [open_known_account(db, setup, since=SINCE) for _ in range(reconcile.UNAVAILABLE_ALERTS_MAX + 3)]
    sim.set_faults(Faults(error=Target(routes=("status",))))
    for night in ("2026-02-01", "2026-02-02"):
        actors.reconcile.send(period=night)
        jobs.drain()
        counts = runs.get(db.engine, f"reconcile:{night}").counts
        assert counts["engine_unavailable"] == len(accounts) and counts["breaks"] == 0
        assert counts["alerts_raised"] == (reconcile.UNAVAILABLE_ALERTS_MAX + 1 if night == "2026-02-01" else 0)
    run_wide = [a for a in alerts_of(db) if a.account_id is None]
    assert [(a.kind, a.status) for a in run_wide] == [("engine_unavailable", "open")]

    sim.set_faults(Faults())
    time.sleep(0.05)  # the point: the breaker's reset time (20 ms) runs out, so the next run calls the engine
    actors.reconcile.send(period="2026-02-03")
    jobs.drain()
    counts = runs.get(db.engine, "reconcile:2026-02-03").counts
    assert (counts["matched"], counts["alerts_resolved"]) == (len(accounts), reconcile.UNAVAILABLE_ALERTS_MAX + 1)
    assert {a.status for a in alerts_of(db)} == {"resolved"}
    client.shutdown()


def test_an_on_demand_run_whose_message_was_lost_is_taken_up_by_the_hourly_run(db: Db, runtime: Runtime,
                                                                               jobs: Jobs) -> None:
    """POST /reconciliations records the run, then sends its message; if the broker loses that message the
    run would stay `queued` for ever. The scheduled reconcile (hourly with its catch-ups) sends again the
    on-demand runs queued for more than 15 minutes; a younger one is left to its own message."""
    def record(age: timedelta) -> runs.Run:  # what the API does, without the message (lost)
        run_key, period = reconcile.on_demand_key()
        run = runs.enqueue_record(db.engine, job="reconcile", run_key=run_key, period=period, trigger="api")
        with db.engine.begin() as c:
            c.exec_driver_sql("UPDATE job_run SET created_at = now() - %(age)s WHERE id = %(id)s",
                              {"age": age, "id": run.id})
        return run

    lost, young = record(timedelta(minutes=20)), record(timedelta(minutes=1))
    actors.reconcile.send(datetime.now(UTC).date().isoformat())
    jobs.drain()
    jobs.drain()  # the message sent again by the first
    assert runs.get(db.engine, lost.run_key).status == "done"
    assert runs.get(db.engine, young.run_key).status == "queued"


def test_run_now_from_the_page(api: tuple[TestClient, dict[str, str]], db: Db, sim: Simulator, jobs: Jobs) -> None:
    """The reconciliation page's "Run now" (operators only, CSRF-checked) starts the same run as the API."""
    import re

    client, keys = api
    open_known_account(db, engine_client(sim), since=SINCE, account_id="rec-page")
    finance_key = create_key(db.engine, "finance", "page finance")
    client.post("/login", data={"api_key": finance_key, "next": "/"}, follow_redirects=False)
    assert 'data-testid="run-now"' not in client.get("/reconciliations").text  # finance sees no button
    client.post("/login", data={"api_key": keys["operator"], "next": "/"}, follow_redirects=False)
    page = client.get("/reconciliations")
    assert 'data-testid="run-now"' in page.text
    token = re.search(r'name="csrf_token" value="([0-9a-f]+)"', page.text).group(1)
    assert client.post("/reconciliations", data={}, follow_redirects=False).status_code == 403
    started = client.post("/reconciliations", data={"csrf_token": token}, follow_redirects=False)
    assert started.status_code == 303, started.text
    run_id = int(started.headers["location"].rsplit("=", 1)[1])
    assert f"Run {run_id} started" in client.get(started.headers["location"]).text
    jobs.drain()
    run = runs.by_id(db.engine, run_id)
    assert (run.status, run.trigger) == ("done", "api")
    assert {line.account_id: line.result for line in reconcile.results(db.engine, run_id)}["rec-page"] == "matched"
    assert f'data-run="{run_id}"' in client.get("/reconciliations").text
