"""Pages for people: sign-in, CSRF and headers over ASGI, then every page in a real headless Chromium.

The browser part drives Debian's `chromium` over the DevTools protocol (a small client on `websockets`,
which uvicorn[standard] already brings): it signs in through the form, reads the figures off each page,
compares them with the API's, clicks Acknowledge, and keeps screenshots under the test's tmp_path.
It is skipped, saying why, only when no chromium binary is installed (`apt-get install chromium`).
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from integration import alerts
from tests.api.conftest import auth
from tests.api.test_webhooks import open_account, performance, send, trade
from tests.waiting import wait_until

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
BROWSER_TIMEOUT_S = 20.0


def raise_alert(engine: sa.Engine, account_id: str | None = None) -> int:
    key = f"test-page:{uuid.uuid4().hex}"
    with engine.begin() as c:
        alert_id = alerts.raise_alert(c, kind="reconciliation_break", dedup_key=key, account_id=account_id,
                                      message=f"<script>alert(1)</script> break for {account_id}", event_key=key)
    assert alert_id is not None
    return alert_id


def login(client, key: str) -> None:
    response = client.post("/login", data={"api_key": key, "next": "/"}, follow_redirects=False)
    assert response.status_code == 303, response.text


# ------------------------------------------------------------------------------------------ over ASGI

def test_pages_redirect_to_login_and_login_sets_a_safe_cookie(client, keys) -> None:
    response = client.get("/trial-balance?as_of=2026-01-01", follow_redirects=False)
    assert response.status_code == 303
    assert response.headers["location"] == "/login?next=%2Ftrial-balance%3Fas_of%3D2026-01-01"
    form = client.get("/login")
    assert form.status_code == 200 and 'name="api_key"' in form.text
    assert "frame-ancestors 'none'" in form.headers["content-security-policy"]
    bad = client.post("/login", data={"api_key": "ilk_nothere_bogus", "next": "/"}, follow_redirects=False)
    assert bad.status_code == 401 and "unknown, expired or revoked" in bad.text and "set-cookie" not in bad.headers
    good = client.post("/login", data={"api_key": keys["finance"], "next": "//evil.example/"}, follow_redirects=False)
    assert good.status_code == 303 and good.headers["location"] == "/"  # no open redirect
    cookie = good.headers["set-cookie"].lower()
    assert "invledger_session=" in cookie and "httponly" in cookie and "samesite=strict" in cookie
    assert "path=/" in cookie
    assert keys["finance"] not in good.headers["set-cookie"]  # a session id, never the key
    page = client.get("/")
    assert page.status_code == 200 and "Accounts" in page.text
    assert page.headers["cache-control"] == "no-store" and page.headers["x-frame-options"] == "DENY"


def test_acknowledge_needs_csrf_token_same_origin_and_operator(client, keys, engine: sa.Engine) -> None:
    alert_id = raise_alert(engine)
    login(client, keys["finance"])
    page = client.get("/alerts")
    assert "<script>alert(1)</script>" not in page.text and "&lt;script&gt;" in page.text  # escaped
    assert f'data-ack="{alert_id}"' not in page.text  # finance sees no button
    token = re.search(r'name="csrf_token" value="([0-9a-f]+)"', page.text).group(1)
    refused = client.post(f"/alerts/{alert_id}/ack", data={"csrf_token": token}, follow_redirects=False)
    assert refused.status_code == 403  # finance may not acknowledge

    login(client, keys["operator"])
    page = client.get("/alerts")
    assert f'data-ack="{alert_id}"' in page.text
    token = re.search(r'name="csrf_token" value="([0-9a-f]+)"', page.text).group(1)
    no_token = client.post(f"/alerts/{alert_id}/ack", data={}, follow_redirects=False)
    assert no_token.status_code == 403 and "this site" in no_token.text
    cross_site = client.post(f"/alerts/{alert_id}/ack", data={"csrf_token": token}, follow_redirects=False,
                             headers={"Origin": "https://evil.example", "Sec-Fetch-Site": "cross-site"})
    assert cross_site.status_code == 403
    status = client.get("/api/v1/alerts?status=open&limit=1000", headers=auth(keys["finance"])).json()
    assert alert_id in [a["id"] for a in status["items"]]  # nothing happened so far
    done = client.post(f"/alerts/{alert_id}/ack", data={"csrf_token": token}, follow_redirects=False)
    assert done.status_code == 303 and done.headers["location"] == f"/alerts?acknowledged={alert_id}"
    assert client.get(f"/alerts?acknowledged={alert_id}").text.count(f"Alert {alert_id} acknowledged") == 1


def test_unknown_account_page_is_a_404_page(client, keys) -> None:
    login(client, keys["finance"])
    response = client.get("/accounts/nope-missing")
    assert response.status_code == 404 and "does not exist" in response.text
    assert client.get("/trial-balance?as_of=someday").status_code == 422
    logout = client.post("/logout", data={"csrf_token": "0" * 64}, follow_redirects=False)
    assert logout.status_code == 403
    # A non-ASCII token is a wrong token (403), not a 500 (compare_digest refuses non-ASCII text).
    non_ascii = client.post("/logout", data={"csrf_token": "é" * 64}, follow_redirects=False)
    assert non_ascii.status_code == 403, non_ascii.text


# ------------------------------------------------------------------------------------- real browser

class Browser:
    """Headless Chromium over the DevTools protocol: navigate, evaluate, click, screenshot."""

    def __init__(self, profile: Path) -> None:
        from websockets.sync.client import connect

        port = _free_port()
        self.process = subprocess.Popen(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--disable-dev-shm-usage", f"--user-data-dir={profile}", f"--remote-debugging-port={port}",
             "--window-size=1280,1400", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)

        def devtools_pages() -> list[dict[str, Any]]:
            assert self.process.poll() is None, f"chromium exited with {self.process.returncode}"
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=2) as answer:
                return [t for t in json.load(answer) if t["type"] == "page"]
        try:
            pages = wait_until(devtools_pages, timeout_s=BROWSER_TIMEOUT_S, what="chromium's DevTools endpoint",
                               interval_s=0.1, ignoring=(OSError,))
        except BaseException:
            self.close()
            raise
        self._stack = ExitStack()
        self.socket = self._stack.enter_context(
            connect(pages[0]["webSocketDebuggerUrl"], max_size=None, open_timeout=BROWSER_TIMEOUT_S))
        self._id = 0
        self.call("Page.enable")
        self.call("Runtime.enable")

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        self._id += 1
        self.socket.send(json.dumps({"id": self._id, "method": method, "params": params}))
        deadline = time.monotonic() + BROWSER_TIMEOUT_S
        while True:
            message = json.loads(self.socket.recv(timeout=max(deadline - time.monotonic(), 0.1)))
            if message.get("id") == self._id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})

    def js(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_loaded(self, path_prefix: str) -> None:
        def loaded() -> bool:
            # A RuntimeError: the old page's context went away mid-navigation; ask again.
            state = self.js("[document.readyState, location.pathname + location.search]")
            return state[0] == "complete" and state[1].startswith(path_prefix)
        wait_until(loaded, timeout_s=BROWSER_TIMEOUT_S, what=f"page {path_prefix} to load", ignoring=(RuntimeError,))

    def open(self, url: str, expect_path: str) -> None:
        self.call("Page.navigate", url=url)
        self.wait_loaded(expect_path)

    def click(self, selector: str) -> None:
        """A real mouse click at the centre of the element (as a person would)."""
        box = self.js(f"""(() => {{ const e = document.querySelector({json.dumps(selector)});
            e.scrollIntoView({{block: 'center'}}); const r = e.getBoundingClientRect();
            return [r.x + r.width / 2, r.y + r.height / 2]; }})()""")
        for kind in ("mousePressed", "mouseReleased"):
            self.call("Input.dispatchMouseEvent", type=kind, x=box[0], y=box[1], button="left", clickCount=1)

    def text(self, selector: str) -> str | None:
        return self.js(f"document.querySelector({json.dumps(selector)})?.textContent.trim() ?? null")

    def screenshot(self, path: Path) -> None:
        data = self.call("Page.captureScreenshot", format="png", captureBeyondViewport=True)["data"]
        path.write_bytes(base64.b64decode(data))

    def close(self) -> None:
        if hasattr(self, "_stack"):
            try:
                self._stack.close()
            except Exception:  # noqa: BLE001 — the browser may already be gone
                pass
        # Chromium forks helpers (zygote, renderers) into the session we started for it: end that group.
        for sig, wait_s in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
            try:
                os.killpg(self.process.pid, sig)
            except ProcessLookupError:
                break
            try:
                self.process.wait(timeout=wait_s)
                break
            except subprocess.TimeoutExpired:
                continue


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def server(app) -> Iterator[str]:
    """The real app served by uvicorn on a free loopback port, in a thread."""
    import uvicorn

    port = _free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, access_log=False, lifespan="on")
    uv = uvicorn.Server(config)
    thread = threading.Thread(target=uv.run, daemon=True)
    thread.start()

    def started() -> bool:
        assert thread.is_alive(), "uvicorn stopped"
        return uv.started
    wait_until(started, timeout_s=15, what="uvicorn to start")
    yield f"http://127.0.0.1:{port}"
    uv.should_exit = True
    thread.join(timeout=15)


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Browser]:
    if CHROMIUM is None:
        message = "no chromium binary: install Debian's chromium (apt-get install chromium) to run browser tests"
        if os.environ.get("INVLEDGER_REQUIRE_BROWSER"):  # CI sets it: there a missing browser is a failure
            pytest.fail(message)
        pytest.skip(message)
    b = Browser(tmp_path / "profile")
    yield b
    b.close()


def api(base: str, key: str, path: str) -> Any:
    request = urllib.request.Request(base + path, headers={"Authorization": f"Bearer {key}"})
    with urllib.request.urlopen(request, timeout=10) as answer:  # loopback only
        return json.load(answer)


def test_pages_in_a_real_browser(client, keys, ledger, engine: sa.Engine, server: str, browser: Browser,
                                 tmp_path: Path) -> None:
    # History: a deposit ten days ago, a winning trade and the engine's snapshot five days ago, an alert.
    account_id = open_account(client, keys, "1000.00", ledger=ledger)
    day = (datetime.now(UTC) - timedelta(days=5)).date()
    noon = datetime(day.year, day.month, day.day, 12, tzinfo=UTC)
    assert send(client, "trade.executed", trade(account_id, pnl="12.50", at=noon)).status_code == 200
    assert send(client, "daily.performance", performance(account_id, day, "1012.50")).status_code == 200
    assert send(client, "trade.executed", trade(account_id, pnl="-2.25")).status_code == 200
    alert_id = raise_alert(engine, account_id)
    shots = tmp_path / "screenshots"
    shots.mkdir()

    # Signed out: any page sends the browser to the login form, which brings it back after sign-in.
    browser.open(f"{server}/accounts/{account_id}", "/login")
    browser.screenshot(shots / "login.png")
    browser.js(f"document.querySelector('#api_key').value = {json.dumps(keys['operator'])}")
    browser.click("#sign-in")
    browser.wait_loaded(f"/accounts/{account_id}")
    assert browser.js("document.cookie") == ""  # HttpOnly: no script can read the key

    # The account page: figures equal the API's.
    finance = keys["finance"]
    account = api(server, finance, f"/api/v1/accounts/{account_id}")
    assert browser.text("[data-testid=balance]") == account["balance"] == "1010.25"
    assert browser.text("[data-testid=status]") == account["status"]
    assert browser.text("[data-testid=available]") == account["available"]
    assert browser.js("document.querySelector('[data-testid=balance-chart] polyline').getAttribute('points')")
    perf = api(server, finance, f"/api/v1/accounts/{account_id}/performance")
    for field in ("opening_balance", "net_flows", "profit", "closing_balance", "time_weighted_return",
                  "max_drawdown"):
        assert browser.text(f"[data-testid=performance] [data-field={field}]") == perf[field], field
    snapshot_day = next(d for d in perf["days"] if d["date"] == day.isoformat())
    row = f"[data-testid=performance-days] tr[data-date='{day.isoformat()}']"
    assert browser.text(f"{row} [data-field=closing_balance]") == snapshot_day["closing_balance"] == "1012.50"
    assert (browser.text(f"{row} [data-field=winning_trades]"), browser.text(f"{row} [data-field=losing_trades]")) \
        == ("2", "1")
    statement = api(server, finance, f"/api/v1/accounts/{account_id}/statement?from={perf['from']}&to={perf['to']}")
    assert browser.text("[data-testid=statement] [data-field=closing_balance]") == statement["closing_balance"]
    browser.screenshot(shots / "account.png")

    # What was A owed at the end of the snapshot day? The as-of form answers it.
    browser.js(f"document.querySelector('input[name=as_of]').value = '{day.isoformat()}'")
    browser.click("form.filter button")
    browser.wait_loaded(f"/accounts/{account_id}?as_of=")
    owed = api(server, finance, f"/api/v1/accounts/{account_id}/balance?as_of={day.isoformat()}")
    assert browser.text("[data-testid=balance-as-of]") == owed["balance"] == "1012.50"

    # The accounts list (from just before A: the session's database holds more than a page of accounts) and the
    # trial balance.
    browser.open(f"{server}/?cursor={account_id[:-1]}", "/")
    assert browser.text(f"tr[data-account='{account_id}'] [data-field=balance]") == account["balance"]
    assert browser.text("[data-testid=books-balanced]") == "yes"
    browser.screenshot(shots / "accounts.png")
    tb = api(server, finance, "/api/v1/reports/trial-balance")
    browser.open(f"{server}/trial-balance", "/trial-balance")
    assert browser.text("[data-testid=balanced]") == ("yes" if tb["balanced"] else "NO") == "yes"
    for currency, totals in tb["totals"].items():
        assert browser.text(f"tr[data-total='{currency}'] [data-field=debit]") == totals["debit"]
        assert browser.text(f"tr[data-total='{currency}'] [data-field=credit]") == totals["credit"]
    custody = f"assets:custody:{account_id}"
    shown = browser.text(f"tr[data-account='{custody}'] [data-field=debit]")
    if shown is not None:  # on the first page of rows
        assert shown == next(r["debit"] for r in tb["rows"] if r["account"] == custody)
    browser.screenshot(shots / "trial-balance.png")

    # Balance sheet, income statement, reconciliation: they render.
    for path, marker in (("/balance-sheet", "Balance sheet"), ("/income-statement", "Income statement"),
                         ("/reconciliations", "Reconciliation runs")):
        browser.open(f"{server}{path}", path)
        assert marker in browser.text("h1"), path
        browser.screenshot(shots / f"{path.strip('/')}.png")

    # Alerts: acknowledge with a click; the API sees it.
    browser.open(f"{server}/alerts", "/alerts")
    assert browser.js(f"document.querySelector('tr[data-alert=\"{alert_id}\"] td:nth-child(5)').textContent"
                      ).startswith("<script>")  # shown as text, never run
    browser.screenshot(shots / "alerts-before.png")
    browser.click(f"button[data-ack='{alert_id}']")
    browser.wait_loaded(f"/alerts?acknowledged={alert_id}")
    assert browser.text("[data-testid=flash]") == f"Alert {alert_id} acknowledged."
    browser.screenshot(shots / "alerts-after.png")
    acknowledged = api(server, finance, "/api/v1/alerts?status=acknowledged&limit=1000")["items"]
    mine = next(a for a in acknowledged if a["id"] == alert_id)
    assert mine["acknowledged_by"].startswith("apikey:") and mine["acknowledged_by"].endswith(":operator (page)")

    # Sign out: the cookie is gone and pages ask for a key again.
    browser.click("header form button")
    browser.wait_loaded("/login")
    browser.open(f"{server}/", "/login")
    for name in ("login", "account", "accounts", "trial-balance", "alerts-before", "alerts-after"):
        assert (shots / f"{name}.png").stat().st_size > 1000
    if os.environ.get("INVLEDGER_KEEP_SCREENSHOTS"):  # to look at them after the run
        shutil.copytree(shots, os.environ["INVLEDGER_KEEP_SCREENSHOTS"], dirs_exist_ok=True)
