"""What a handler takes, declared explicitly (Litestar 3 stops inferring it): the app's dependencies by name,
and the optional query-string parameters."""

from __future__ import annotations

from typing import TypeAlias

from litestar.di import NamedDependency
from litestar.params import FromQuery

from invledger.config import Settings
from ledger import Ledger

LedgerDep: TypeAlias = NamedDependency[Ledger]
SettingsDep: TypeAlias = NamedDependency[Settings]
QueryText: TypeAlias = FromQuery[str | None]
QueryInt: TypeAlias = FromQuery[int | None]
