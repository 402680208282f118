"""Who is acting: the principal recorded on every entry and account status change (migration 0013).

The doors set it — the API from the request's key, the webhook intake "engine", a job "job:<actor>", the command
line "cli:<user>" — and everything booked in that context carries it.
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

T = TypeVar("T")

PRINCIPAL: contextvars.ContextVar[str] = contextvars.ContextVar("invledger_principal", default="")
PRINCIPAL_LENGTH_MAX = 200  # characters; journal_entry.recorded_by's CHECK


def as_caller(function: Callable[[Any], T]) -> Callable[[Any], T]:
    """`function` to run in a pool's threads as the caller (a new thread starts with no principal)."""
    caller = contextvars.copy_context()
    return lambda argument: caller.copy().run(function, argument)


@contextmanager
def acting_as(principal: str) -> Iterator[None]:
    """Book what is booked inside as `principal`."""
    token = PRINCIPAL.set(principal[:PRINCIPAL_LENGTH_MAX])
    try:
        yield
    finally:
        PRINCIPAL.reset(token)
