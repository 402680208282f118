"""The tests' one way to wait for something: poll it, with a bound, and fail saying what never happened.

A test never sleeps to wait for a thing that can be checked (a server up, a run done, a page loaded). A sleep
that is itself the point — letting a breaker's reset time or a lease expire, pacing a load — stays where it
is, with a comment saying why.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_until(check: Callable[[], T], *, timeout_s: float = 30.0, what: str = "the condition",
               interval_s: float = 0.05, ignoring: tuple[type[BaseException], ...] = ()) -> T:
    """Call `check` until it returns something true, and return that; past `timeout_s`, fail naming `what`.

    Exceptions of the `ignoring` types count as "not yet" (a server not listening yet); any other propagates
    at once, so a check may assert that what it waits for is still alive.
    """
    deadline = time.monotonic() + timeout_s
    last: BaseException | None = None
    while True:
        try:
            value = check()
        except ignoring as error:
            value, last = None, error  # type: ignore[assignment]
        if value:
            return value
        if time.monotonic() > deadline:
            because = f" (last: {type(last).__name__}: {last})" if last is not None else ""
            raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what}{because}")
        time.sleep(interval_s)
