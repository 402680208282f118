"""ALERT_WEBHOOK_URL is a secret (a chat hook's URL carries its token) and a stranger's endpoint (issue 17, part 5):
a failure is logged without the URL, and an endless answer is not read to its end. A real HTTP server."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
from litestar import Litestar, Response, post
from litestar.params import FromPath
from litestar.response import Stream

from integration import alerts
from integration.simulator import BackgroundServer

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


def test_a_failure_is_logged_without_the_url(hooks: str, caplog: pytest.LogCaptureFixture) -> None:
    url = f"{hooks}/hooks/{TOKEN}/fail"
    with httpx.Client(timeout=5) as client, pytest.raises(httpx.HTTPStatusError) as raised:
        alerts.post(client, url, {"text": "hello"})
    assert alerts.describe(raised.value) == "HTTP 403"
    assert TOKEN not in str(raised.value)
    with caplog.at_level(logging.DEBUG):
        logging.getLogger("integration.alerts").warning("x", extra={"error": alerts.describe(raised.value)})
    assert TOKEN not in caplog.text


def test_an_endless_answer_is_not_read_to_its_end(hooks: str) -> None:
    began = time.perf_counter()
    with httpx.Client(timeout=5) as client:
        alerts.post(client, f"{hooks}/hooks/{TOKEN}/endless", {"text": "hello"})
    assert time.perf_counter() - began < 5
