"""The ledger's errors: one base, a shallow tree; `api/` maps each to an HTTP answer in one place."""


class LedgerError(Exception):
    """Base of every business error the core raises. `code` is the contract's error code."""

    code = "ledger_error"

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class InvalidAmount(LedgerError):
    code = "invalid_amount"


class UnknownCurrency(LedgerError):
    code = "unknown_currency"


class InvalidEntry(LedgerError):
    """An entry that breaks a rule of the core (unbalanced, too few legs, bad time, …)."""

    code = "invalid_entry"


class UnknownAccount(LedgerError):
    code = "unknown_account"


class UnknownEntry(LedgerError):
    code = "unknown_entry"


class DuplicateConflict(LedgerError):
    """The same idempotency key was used before with other content."""

    code = "idempotency_conflict"


class InsufficientFunds(LedgerError):
    code = "insufficient_funds"


class AccountStateConflict(LedgerError):
    """The account's status forbids the operation (closed, already paused, …)."""

    code = "account_state_conflict"


class AlreadyReversed(LedgerError):
    code = "already_reversed"


class IntegrityViolation(LedgerError):
    """The database refused a write that would break an invariant. A bug, not a user error."""

    code = "integrity_violation"


class UnknownHold(UnknownEntry):
    code = "unknown_hold"


class HoldStateConflict(AccountStateConflict):
    """The hold is already resolved otherwise (posting a voided hold, voiding a posted one)."""

    code = "hold_state_conflict"
