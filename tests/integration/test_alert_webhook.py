"""ALERT_WEBHOOK_URL is a secret (a chat hook's URL carries its token) and a stranger's endpoint (issue 17, part 5):
a failure is logged without the URL, and an endless answer is not read to its end. A real HTTP server."""

from __future__ import annotations

import io
import json
import logging
import time
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
import sqlalchemy as sa
from litestar import Litestar, Response, post
from litestar.params import FromPath
from litestar.response import Stream

from integration import alerts
from ledger.db import create_engine
from service import logs
from simulator import BackgroundServer

TOKEN = "T0KEN-never-in-logs"


@post("/hooks/{token:str}/fail")
async def fail(token: FromPath[str]) -> Response[bytes]:
    return Response(b'{"error": "nope"}', status_code=403, media_type="application/json")


@post("/hooks/{token:str}/endless")
async def endless(token: FromPath[str]) -> Stream:
    async def chunks() -> AsyncIterator[bytes]:  # "endless": 4 GiB, as slowly as the network takes it
        for _ in range(65536):
            yield b"x" * 65536

    return Stream(chunks(), media_type="text/plain")


@pytest.fixture(scope="module")
def hooks() -> Iterator[str]:
    server = BackgroundServer(Litestar(route_handlers=[fail, endless], openapi_config=None,
                                       logging_config=None)).start()
    yield server.url
    server.stop()


def test_a_failure_is_logged_without_the_url(hooks: str, fresh_database) -> None:
    """The alerts job's own path (notify_pending) against a hook that refuses: the alert stays unsent, the log line
    says why, and the URL's token appears nowhere in the logs."""
    url, drop = fresh_database()
    engine = create_engine(url, pool_size=2)
    try:
        with engine.begin() as c:
            alerts.raise_alert(c, kind="integrity", dedup_key="hook-test", message="a test alert")
        # The logs as `serve` writes them (service.logs at DEBUG: the chattiest a deployment can ask for).
        root = logging.getLogger()
        saved = (root.handlers[:], root.level)
        written = io.StringIO()
        try:
            logs.configure("DEBUG", stream=written)
            assert alerts.notify_pending(engine, f"{hooks}/hooks/{TOKEN}/fail") == 0
        finally:
            root.handlers[:], level = saved
            root.setLevel(level)
        lines = [json.loads(line) for line in written.getvalue().splitlines()]
        assert [line.get("error") for line in lines if line["event"] == "alert notification failed"] == ["HTTP 403"]
        assert TOKEN not in written.getvalue()
        with engine.connect() as c:
            assert c.execute(sa.text("SELECT count(*) FROM alert WHERE notified_at IS NULL")).scalar() == 1
    finally:
        engine.dispose()
        drop()
    with httpx.Client(timeout=5) as client, pytest.raises(httpx.HTTPStatusError) as raised:
        alerts.post(client, f"{hooks}/hooks/{TOKEN}/fail", {"text": "hello"})
    assert alerts.describe(raised.value) == "HTTP 403" and TOKEN not in str(raised.value)


def test_an_endless_answer_is_not_read_to_its_end(hooks: str) -> None:
    began = time.perf_counter()
    with httpx.Client(timeout=5) as client:
        alerts.post(client, f"{hooks}/hooks/{TOKEN}/endless", {"text": "hello"})
    assert time.perf_counter() - began < 5
