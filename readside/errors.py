"""The read side's refusals: ledger errors (one base), so `api/errors.py` maps them with every other."""

from __future__ import annotations

from ledger.errors import LedgerError


class ReadError(LedgerError):
    """A read that cannot be answered as asked."""


class NotFound(ReadError):
    """No such thing to show (a reconciliation run, …); accounts and entries keep the core's own errors."""

    code = "not_found"


class InvalidQuery(ReadError):
    """A filter or cursor outside what the read accepts (a status that does not exist, …)."""

    code = "invalid"
