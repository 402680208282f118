"""What a handler takes, declared explicitly (Litestar 3 stops inferring it): the app's dependencies by name,
and the optional query-string parameters."""

from __future__ import annotations

from typing import Annotated, TypeAlias

from litestar.di import NamedDependency
from litestar.params import FromQuery, Parameter

from ledger import Ledger
from ledger.chart import LEDGER_ACCOUNT_PATTERN
from ledger.model import ACCOUNT_ID_PATTERN
from service.config import Settings

BIGINT_MAX = 2**63 - 1  # PostgreSQL bigint: every id and id cursor

LedgerDep: TypeAlias = NamedDependency[Ledger]
# The ledger reports, statements and pages read from: over the replica when REPORTS_DATABASE_URL is set (create_app's
# `reports_engine`), else the same as `ledger`. Never written through.
ReportsLedgerDep: TypeAlias = NamedDependency[Ledger]
SettingsDep: TypeAlias = NamedDependency[Settings]
QueryText: TypeAlias = FromQuery[str | None]
QueryInt: TypeAlias = FromQuery[int | None]
# Cursors and filters checked as the OpenAPI document states them (api.openapi): a value no page ever gave out is
# a 422, not an empty page.
AccountIdQuery: TypeAlias = Annotated[str | None, Parameter(pattern=ACCOUNT_ID_PATTERN)]
LedgerAccountQuery: TypeAlias = Annotated[str | None, Parameter(pattern=LEDGER_ACCOUNT_PATTERN)]
# An id cursor; 0 (the default) is the first page. Not Optional: litestar reads "null" as None for an optional
# parameter, so `?cursor=null` would have been a first page where the document says "an integer".
IdCursorQuery: TypeAlias = Annotated[int, Parameter(ge=0, le=BIGINT_MAX)]
