"""The OpenAPI document states every rule the API enforces on a single value (issue 16, item 9).

litestar documents what the handlers' Python types say: `as_of` "a string", `amount` "a string", a body "required"
where None is its default. Clients generate SDKs and validators from this document, and schemathesis checks the
API against it both ways (a valid request must not be refused, an invalid one must not be accepted), so here each
parameter and field gets the format, pattern, enum, range and optionality the API really applies — taken from
the same constants the checks use.

What a schema cannot state is written in the operation's description instead: rules across fields (a period's
`from` after its `to`, at most `PERFORMANCE_DAYS_MAX` days) and rules that depend on recorded state (an amount
finer than the account's currency). `schemathesis.toml` names those operations.
"""

from __future__ import annotations

from typing import Any

from api.controllers.statements import MONTH_PATTERN
from api.idempotency import KEY_LENGTH_MAX
from api.params import BIGINT_MAX
from integration import outbox
from integration.reconcile import RESULTS
from ledger.chart import LEDGER_ACCOUNT_PATTERN
from ledger.holds import HOLD_STATUSES
from ledger.model import ACCOUNT_ID_PATTERN, ACCOUNT_STATUSES
from ledger.money import AMOUNT_MINOR_MAX, currencies
from readside import views

# A decimal number as JSON text or a string: digits, an optional fraction (the currency's scale decides how many
# places are accepted), never an exponent in a string.
DECIMAL_TEXT = r"^[0-9]{1,15}(\.[0-9]{1,18})?$"
# Statement and journal cursors: `<microseconds since 1970>.<sequence>` (ledger.reads.encode_cursor), opaque to
# clients; the digits bound keeps every value a representable time.
CURSOR_PATTERN = r"^(-?[0-9]{1,16}|[0-9]{17})\.[0-9]{1,18}$"
STATEMENT_PATH = "/api/v1/accounts/{account_id}/statements/{month}"
IDEMPOTENCY_KEY_PATTERN = r"^[!-~]([ -~]*[!-~])?$"  # printable ASCII, no space at either end (HTTP strips those)

_TIME = {"anyOf": [{"type": "string", "format": "date"}, {"type": "string", "format": "date-time"}],
         "description": "a UTC day (YYYY-MM-DD) or an RFC 3339 time"}
_ACCOUNT_ID = {"type": "string", "pattern": ACCOUNT_ID_PATTERN, "description": "letters, digits, _ . - (at most 64)"}
_ID = {"type": "integer", "minimum": 1, "maximum": BIGINT_MAX}
_AFTER_ID = {"type": "integer", "minimum": 0, "maximum": BIGINT_MAX, "default": 0, "description": "0: the first page"}
_STATUSES = {
    "/api/v1/accounts": list(ACCOUNT_STATUSES),
    "/api/v1/alerts": list(views.ALERT_STATUSES),
    "/api/v1/outbox": list(outbox.STATUSES),
    "/api/v1/accounts/{account_id}/holds": list(HOLD_STATUSES),
}
_CURSORS = {
    "/api/v1/accounts": _ACCOUNT_ID,
    "/api/v1/accounts/{account_id}/statement": {"type": "string", "pattern": CURSOR_PATTERN},
    "/api/v1/journal": {"type": "string", "pattern": CURSOR_PATTERN},
    "/api/v1/reports/trial-balance": {"type": "string", "pattern": LEDGER_ACCOUNT_PATTERN},
    "/api/v1/reconciliations/{run_id}": _ACCOUNT_ID,
    "/api/v1/alerts": _AFTER_ID,
    "/api/v1/outbox": _AFTER_ID,
    "/api/v1/reconciliations": _AFTER_ID,
}
_EMPTY_IS_ABSENT = {"as_of", "from", "to"}
_EMPTY_CURSOR_IS_ABSENT = {"/api/v1/accounts/{account_id}/statement", "/api/v1/journal"}
_OPTIONAL_BODIES = {"/api/v1/accounts/{account_id}/pause", "/api/v1/accounts/{account_id}/resume",
                    "/api/v1/accounts/{account_id}/close", "/api/v1/accounts/{account_id}/holds/{hold_id}/void"}
_KEY_REQUIRED = {"/api/v1/accounts/{account_id}/deposits", "/api/v1/accounts/{account_id}/withdrawals"}
_PERIOD_RULE = "`from` must not be after `to` (422)."
_CROSS_FIELD = {
    ("get", "/api/v1/accounts/{account_id}/statement"): _PERIOD_RULE,
    ("get", "/api/v1/journal"): _PERIOD_RULE,
    ("get", "/api/v1/reports/income-statement"): _PERIOD_RULE,
    ("get", "/api/v1/accounts/{account_id}/performance"):
        _PERIOD_RULE + " A period is at most a limited number of days (422 names it).",
    ("post", "/api/v1/accounts/{account_id}/deposits"):
        "`amount` must be positive and have at most the account currency's places (USD 2, JPY 0, BTC 8; 422).",
    ("post", "/api/v1/accounts/{account_id}/withdrawals"):
        "`amount` must be positive and have at most the account currency's places (USD 2, JPY 0, BTC 8; 422). "
        "`expires_in_s` is for `\"mode\": \"hold\"` only (422). With `\"mode\": \"hold\"` the answer is the hold "
        "(201: `hold_id`, `status` open, `expires_at`, `balance`, `available`), refused (409) when larger than the "
        "available balance; see docs/holds.md.",
    ("post", "/api/v1/accounts"):
        "`initial_capital` must have at most the currency's places; `fee_rate` at most 6 places (422).",
}


def _amount(*, positive: bool, nullable: bool = False) -> dict[str, Any]:
    bound = {"exclusiveMinimum": 0} if positive else {"minimum": 0}
    kinds: list[dict[str, Any]] = [
        {"type": "string", "pattern": DECIMAL_TEXT, "description": "a decimal string, e.g. \"1250.00\""},
        {"type": "number", **bound, "maximum": AMOUNT_MINOR_MAX,
         "description": "an exact JSON number (decoded straight to decimal, never through float)"}]
    if nullable:
        kinds.append({"type": "null"})
    return {"anyOf": kinds, "description": "money: at most the currency's places" + (", positive" if positive
                                                                                    else ", zero or more")}


def _strict(schema: dict[str, Any]) -> None:
    schema["additionalProperties"] = False  # the bodies are decoded with forbid_unknown_fields


def state_the_rules(openapi: dict[str, Any]) -> dict[str, Any]:
    """Tighten the generated document (a dict, as served) in place; return it."""
    for path, item in openapi.get("paths", {}).items():
        for method, operation in item.items():
            if not isinstance(operation, dict) or "responses" not in operation:
                continue
            for parameter in operation.get("parameters", []):
                _parameter(path, parameter)
            if path in _OPTIONAL_BODIES and "requestBody" in operation:
                body = operation["requestBody"]
                body["required"] = False  # no body, `null` and `{}` all mean "no reason given"
            rule = _CROSS_FIELD.get((method, path))
            if rule:
                operation["description"] = (operation.get("description", "") + "\n\n" + rule).strip()
            if path == STATEMENT_PATH and method == "get" and "200" in operation["responses"]:
                ok = operation["responses"]["200"]
                ok["description"] = "the statement as issued: JSON, or the PDF with Accept: application/pdf"
                ok.setdefault("content", {})["application/pdf"] = {"schema": {"type": "string", "format": "binary"}}
    schemas = openapi.get("components", {}).get("schemas", {})
    for name in ("CreateAccount", "MoneyMovement", "ReversalRequest", "StatusChange", "WithdrawalRequest",
                 "VoidRequest"):
        if name in schemas:
            _strict(schemas[name])
    for name in ("MoneyMovement", "WithdrawalRequest"):
        if name in schemas:
            schemas[name]["properties"]["amount"] = _amount(positive=True)
    if "CreateAccount" in schemas:
        fields = schemas["CreateAccount"]["properties"]
        fields["initial_capital"] = _amount(positive=False, nullable=True)
        fields["fee_rate"] = {"anyOf": [
            {"type": "string", "pattern": r"^(0(\.[0-9]{1,6})?|1(\.0{1,6})?)$"},
            {"type": "number", "minimum": 0, "maximum": 1}, {"type": "null"}],
            "description": "0 to 1, at most 6 places; the DEFAULT_FEE_RATE setting when null or absent"}
        fields["currency"] = {"type": "string", "enum": sorted(currencies()), "default": "USD",
                              "description": "a configured currency (CURRENCY_SCALES adds more)"}
    return openapi


def _parameter(path: str, parameter: dict[str, Any]) -> None:
    name, where = parameter["name"], parameter["in"]
    schema: dict[str, Any] | None = None
    if where == "query" and name in ("as_of", "from", "to"):
        schema = dict(_TIME)
    elif where == "query" and name == "status" and path in _STATUSES:
        schema = {"type": "string", "enum": _STATUSES[path]}
    elif where == "query" and name == "result":
        schema = {"type": "string", "enum": list(RESULTS)}
    elif where == "query" and name == "cursor" and path in _CURSORS:
        schema = dict(_CURSORS[path])
    elif where == "query" and name == "account":
        schema = dict(_ACCOUNT_ID)
    elif where == "path" and name == "account_id":
        schema = dict(_ACCOUNT_ID)
    elif where == "path" and name == "month":
        schema = {"type": "string", "pattern": MONTH_PATTERN, "description": "YYYY-MM (UTC month)"}
    elif where == "path" and parameter.get("schema", {}).get("type") == "integer":
        schema = dict(_ID)
    elif where == "header" and name == "Idempotency-Key":
        schema = {"type": "string", "minLength": 1, "maxLength": KEY_LENGTH_MAX, "pattern": IDEMPOTENCY_KEY_PATTERN}
        parameter["required"] = path in _KEY_REQUIRED
        parameter["description"] = ("the same key and body answer the first answer again; another body is 409"
                                    + ("" if path in _KEY_REQUIRED else " (optional here)"))
    if schema is not None and where == "query" and (name in _EMPTY_IS_ABSENT or
                                                    (name == "cursor" and path in _EMPTY_CURSOR_IS_ABSENT)):
        # `?as_of=` (an empty form field on the pages, which share these readers) means the parameter is absent.
        schema = {"anyOf": [schema, {"type": "string", "maxLength": 0}], "description": schema.get("description", "")
                  + ("; " if schema.get("description") else "") + "empty means not given"}
    if schema is not None:
        parameter["schema"] = schema
