"""JSON or CSV for a report, chosen by the Accept header (contract §5): the one place that decides."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from litestar import Request, Response

from readside import tabular

CSV = "text/csv"
JSON = "application/json"
REPLICA_LAG_HEADER = "X-Replica-Lag-Ms"


def wants_csv(request: Request) -> bool:
    return request.accept.best_match([JSON, CSV], default=JSON) == CSV


def lag_header(request: Request) -> dict[str, str]:
    """`X-Replica-Lag-Ms` when the reply was read on a replica (REPORTS_DATABASE_URL), else nothing."""
    lag_ms = request.state.get("replica_lag_ms")
    return {} if lag_ms is None else {REPLICA_LAG_HEADER: str(lag_ms)}


def as_json(request: Request, body: dict[str, Any]) -> Response[dict[str, Any]]:
    """`body` as JSON; read on a replica, with `replica_lag_ms` in it and the `X-Replica-Lag-Ms` header."""
    lag_ms = request.state.get("replica_lag_ms")
    return Response(body if lag_ms is None else {**body, "replica_lag_ms": lag_ms}, headers=lag_header(request))


def respond(request: Request, body: dict[str, Any], rows: Callable[[Mapping[str, Any]], list[tabular.Row]], *,
            headers: list[str], filename: str) -> Response:
    """`body` as JSON, or `rows(body)` as CSV when the client asks for text/csv.

    In CSV a further page is announced by the `X-Next-Cursor` header (the JSON body has `next_cursor`). Read on a
    replica (REPORTS_DATABASE_URL), the JSON body says how far behind the primary it was (`replica_lag_ms`), and so
    does the `X-Replica-Lag-Ms` header, in both formats.
    """
    if not wants_csv(request):
        return as_json(request, body)
    lag = lag_header(request)
    extra = {"X-Next-Cursor": str(body["next_cursor"]), **lag} if body.get("next_cursor") is not None else lag
    return Response(tabular.to_csv(rows(body), headers),
                    media_type="text/csv; charset=utf-8",
                    headers={"Content-Disposition": f'attachment; filename="{filename}.csv"', **extra})
