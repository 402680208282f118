"""Each field limit is declared once (ledger.model) and the API's and the engine's schemas equal the database's
CHECKs: a value the schema lets through is one the database stores (issue 16: a 65-character agent_type passed
the API's 128 and ended in a 500 at the CHECK's 64)."""

from __future__ import annotations

import re

import msgspec
import sqlalchemy as sa

from api.schemas import CreateAccount, ReversalRequest
from integration.engine_api import CreateAccountRequest
from integration.events import BalanceUpdatedData
from ledger.chart import LEDGER_ACCOUNT_PATTERN
from ledger.model import ACCOUNT_ID_PATTERN, IDEMPOTENCY_KEY_LENGTH_MAX, MEMO_LENGTH_MAX


def _checks(engine: sa.Engine, table: str) -> list[str]:
    with engine.connect() as c:
        return list(c.execute(sa.text("""
            SELECT pg_get_constraintdef(oid) FROM pg_constraint
             WHERE conrelid = CAST(:t AS regclass) AND contype = 'c'"""), {"t": table}).scalars())


def _length_bounds(checks: list[str], column: str) -> tuple[int, int]:
    for check in checks:
        found = re.search(rf"length\({column}\) >= (\d+)\) AND \(length\({column}\) <= (\d+)", check)
        if found:
            return int(found[1]), int(found[2])
    raise AssertionError(f"no length CHECK on {column}: {checks}")


def _pattern(checks: list[str], column: str) -> str:
    for check in checks:
        found = re.search(rf"\({column} ~ '(.+)'::text\)", check)
        if found:
            return found[1]
    raise AssertionError(f"no pattern CHECK on {column}: {checks}")


def _field(struct: type, name: str) -> msgspec.inspect.StrType:
    info = msgspec.inspect.type_info(struct)
    (field,) = [f for f in info.fields if f.name == name]
    kind = field.type.type if isinstance(field.type, msgspec.inspect.Metadata) else field.type
    assert isinstance(kind, msgspec.inspect.StrType), field.type
    return kind


def test_schemas_take_the_database_checks(engine: sa.Engine) -> None:
    checks = _checks(engine, "investment_account")
    assert _pattern(checks, "account_id") == ACCOUNT_ID_PATTERN
    for column in ("product_id", "agent_type"):
        low, high = _length_bounds(checks, column)
        for struct in (CreateAccount, CreateAccountRequest):
            field = _field(struct, column)
            assert (field.min_length, field.max_length) == (low, high), (struct.__name__, column, low, high)
    for struct in (CreateAccount, CreateAccountRequest):
        assert _field(struct, "account_id").pattern == ACCOUNT_ID_PATTERN
    assert _pattern(_checks(engine, "ledger_account"), "name") == LEDGER_ACCOUNT_PATTERN


def test_one_past_each_limit_is_a_422_not_a_500(engine: sa.Engine, ledger) -> None:
    from litestar.testing import TestClient

    from api.app import create_app
    from api.auth import create_key
    from service import config

    key = create_key(engine, "operator", "limits")
    checks = _checks(engine, "investment_account")
    with TestClient(app=create_app(ledger, config.load({})), raise_server_exceptions=False) as client:
        for column in ("product_id", "agent_type"):
            _, high = _length_bounds(checks, column)
            for length, status in ((high, 201), (high + 1, 422)):
                body = {"account_id": f"lim-{column[:5]}-{length}", "product_id": "p", "agent_type": "a",
                        column: "x" * length}
                answer = client.post("/api/v1/accounts", json=body, headers={"Authorization": f"Bearer {key}"})
                assert answer.status_code == status, (column, length, answer.text)
                if status == 422:
                    assert answer.json()["error"] == "invalid" and column in answer.json()["detail"]


def test_entry_limits_are_the_database_checks(engine: sa.Engine) -> None:
    """The memo and the idempotency key: the core refuses what the CHECK would, and the texts that become a memo
    (a balance update's reason, a reversal's reason) are held to the same length where they enter."""
    checks = _checks(engine, "journal_entry")
    assert _length_bounds(checks, "idempotency_key") == (1, IDEMPOTENCY_KEY_LENGTH_MAX)
    assert any(f"length(memo) <= {MEMO_LENGTH_MAX}" in check for check in checks), checks
    assert _field(BalanceUpdatedData, "reason").max_length == MEMO_LENGTH_MAX
    assert _field(ReversalRequest, "reason").max_length == MEMO_LENGTH_MAX
