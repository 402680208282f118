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


def respond(request: Request, body: dict[str, Any], rows: Callable[[Mapping[str, Any]], list[tabular.Row]], *,
            headers: list[str], filename: str) -> Response:
    """`body` as JSON, or `rows(body)` as CSV when the client asks for text/csv.

    In CSV a further page is announced by the `X-Next-Cursor` header (the JSON body has `next_cursor`). Read on a
    replica (REPORTS_DATABASE_URL), the JSON body says how far behind the primary it was (`replica_lag_ms`), and so
    does the `X-Replica-Lag-Ms` header, in both formats.
    """
    lag_ms = request.state.get("replica_lag_ms")
    lag = {} if lag_ms is None else {REPLICA_LAG_HEADER: str(lag_ms)}
    if not wants_csv(request):
        return Response(body if lag_ms is None else {**body, "replica_lag_ms": lag_ms}, headers=lag)
    extra = {"X-Next-Cursor": str(body["next_cursor"]), **lag} if body.get("next_cursor") is not None else lag
    return Response(tabular.to_csv(rows(body), headers),
                    media_type="text/csv; charset=utf-8",
                    headers={"Content-Disposition": f'attachment; filename="{filename}.csv"', **extra})
