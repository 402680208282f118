"""JSON or CSV for a report, chosen by the Accept header (contract §5): the one place that decides."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from litestar import Request, Response

from api import tabular

CSV = "text/csv"
JSON = "application/json"


def wants_csv(request: Request) -> bool:
    return request.accept.best_match([JSON, CSV], default=JSON) == CSV


def respond(request: Request, body: dict[str, Any], rows: Callable[[Mapping[str, Any]], list[tabular.Row]], *,
            headers: list[str], filename: str) -> Response:
    """`body` as JSON, or `rows(body)` as CSV when the client asks for text/csv.

    In CSV a further page is announced by the `X-Next-Cursor` header (the JSON body has `next_cursor`).
    """
    if not wants_csv(request):
        return Response(body)
    extra = {"X-Next-Cursor": str(body["next_cursor"])} if body.get("next_cursor") is not None else {}
    return Response(tabular.to_csv(rows(body), headers),
                    media_type="text/csv; charset=utf-8",
                    headers={"Content-Disposition": f'attachment; filename="{filename}.csv"', **extra})
