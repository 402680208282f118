"""Settings from the environment (contract §2), validated once at start-up.

Every bad value is reported as one line naming the variable; secrets are never echoed back.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import msgspec


class ConfigError(Exception):
    """One or more settings are invalid; `problems` has one line per variable."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


class Settings(msgspec.Struct, frozen=True, kw_only=True):
    database_url: str | None
    migration_database_url: str | None
    reports_database_url: str | None
    data_dir: Path
    backup_dir_setting: Path | None
    broker_url: str | None
    ml_engine_url: str
    ml_engine_api_key: str
    ml_engine_webhook_secrets: tuple[str, ...]
    ml_engine_webhook_schemes: tuple[str, ...]
    audit_key: str | None
    ml_engine_timeout_ms: int
    ml_engine_retry_attempts: int
    ml_engine_retry_delay_ms: int
    alert_webhook_url: str | None
    host: str
    port: int
    adjustment_alert_threshold: Decimal
    reconciliation_tolerance: Decimal
    default_fee_rate: Decimal
    currency_scales: str
    db_pool_size: int
    db_statement_timeout_ms: int
    db_pool_mode: str
    log_level: str
    rate_limit_per_key: str
    rate_limit_per_address: str
    rate_limit_auth_failures: str
    rate_limit_sign_in: str
    hold_expiry_seconds: int = 86_400  # a withdrawal hold is voided this long after it is placed (ledger.holds)

    def __repr__(self) -> str:  # never print secrets
        return (f"Settings(database_url={'set' if self.database_url else 'embedded'}, "
                f"data_dir={str(self.data_dir)!r}, broker_url={'set' if self.broker_url else 'in-process'}, "
                f"ml_engine_url={self.ml_engine_url!r}, host={self.host!r}, port={self.port})")

    __str__ = __repr__

    @property
    def backup_dir(self) -> Path:
        """Where base backups and the WAL archive live (LEDGER_BACKUP_DIR; LEDGER_DATA_DIR/backups unset)."""
        return self.backup_dir_setting or self.data_dir / "backups"


def _url(schemes: tuple[str, ...]) -> Callable[[str], str]:
    def parse(value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in schemes or not (parts.netloc or parts.path or parts.query):
            raise ValueError(f"must be a URL starting with {' or '.join(s + '://' for s in schemes)}")
        return value
    return parse


def _int(low: int, high: int) -> Callable[[str], int]:
    def parse(value: str) -> int:
        if not value.strip().isdigit():
            raise ValueError(f"must be a whole number from {low} to {high}")
        number = int(value)
        if not low <= number <= high:
            raise ValueError(f"must be a whole number from {low} to {high}")
        return number
    return parse


def _decimal(low: Decimal, high: Decimal | None = None) -> Callable[[str], Decimal]:
    def parse(value: str) -> Decimal:
        try:
            number = Decimal(value.strip())
        except InvalidOperation:
            raise ValueError("must be a decimal number such as 1000.00") from None
        if not number.is_finite() or number < low or (high is not None and number > high):
            bounds = f"from {low} to {high}" if high is not None else f"at least {low}"
            raise ValueError(f"must be a finite decimal {bounds}")
        return number
    return parse


def _secrets(value: str) -> tuple[str, ...]:
    secrets = tuple(s.strip() for s in value.split(",") if s.strip())
    if not secrets:
        raise ValueError("must hold at least one non-empty secret (comma-separated for rotation)")
    if any(len(s) < 16 for s in secrets):
        raise ValueError("each secret must be at least 16 characters")
    return secrets


def _schemes(value: str) -> tuple[str, ...]:
    from integration.signature import SCHEMES

    schemes = tuple(dict.fromkeys(s.strip().lower() for s in value.split(",") if s.strip()))
    if not schemes or any(s not in SCHEMES for s in schemes):
        raise ValueError("must list one or both of: ml (X-ML-Signature), standard (Standard Webhooks)")
    return schemes


def _audit_key(value: str) -> str:
    from integration.anchors import AuditKeyError, parse_key

    try:
        parse_key(value)
    except AuditKeyError as error:
        raise ValueError(str(error)) from None
    return value.strip()


def _rate(value: str) -> str:
    from limits import parse

    try:
        parse(value)
    except ValueError:
        raise ValueError("must be a rate such as 100/second or 30/minute") from None
    return value.strip()


def _scales(value: str) -> str:
    from ledger.money import configure_scales

    configure_scales(value)
    return value


def _level(value: str) -> str:
    level = value.strip().upper()
    if level not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
        raise ValueError("must be one of DEBUG, INFO, WARNING, ERROR")
    return level


def _pool_mode(value: str) -> str:
    mode = value.strip().lower()
    if mode not in {"session", "transaction"}:
        raise ValueError("must be session (direct, or a pooler in session mode) or transaction (PgBouncer "
                         "pool_mode = transaction)")
    return mode


def _text(value: str) -> str:
    return value


# variable -> (field, parser, default); a default of None means "unset".
_SPEC: dict[str, tuple[str, Callable[[str], Any], str | None]] = {
    "DATABASE_URL": ("database_url", _url(("postgresql", "postgres", "postgresql+psycopg")), None),
    "MIGRATION_DATABASE_URL": ("migration_database_url", _url(("postgresql", "postgres", "postgresql+psycopg")),
                               None),
    "REPORTS_DATABASE_URL": ("reports_database_url", _url(("postgresql", "postgres", "postgresql+psycopg")), None),
    "LEDGER_DATA_DIR": ("data_dir", Path, "./.ledger"),
    "LEDGER_BACKUP_DIR": ("backup_dir_setting", Path, None),
    "BROKER_URL": ("broker_url", _url(("amqp", "amqps", "redis", "rediss")), None),
    "ML_ENGINE_URL": ("ml_engine_url", _url(("http", "https")), "http://localhost:8000/api/v1"),
    "ML_ENGINE_API_KEY": ("ml_engine_api_key", _text, ""),
    "ML_ENGINE_WEBHOOK_SECRET": ("ml_engine_webhook_secrets", _secrets, None),
    "ML_ENGINE_WEBHOOK_SCHEMES": ("ml_engine_webhook_schemes", _schemes, "ml,standard"),
    "LEDGER_AUDIT_KEY": ("audit_key", _audit_key, None),
    "ML_ENGINE_TIMEOUT_MS": ("ml_engine_timeout_ms", _int(1, 600_000), "30000"),
    "ML_ENGINE_RETRY_ATTEMPTS": ("ml_engine_retry_attempts", _int(1, 20), "3"),
    "ML_ENGINE_RETRY_DELAY_MS": ("ml_engine_retry_delay_ms", _int(0, 600_000), "1000"),
    "ALERT_WEBHOOK_URL": ("alert_webhook_url", _url(("http", "https")), None),
    "LEDGER_HOST": ("host", _text, "127.0.0.1"),
    "LEDGER_PORT": ("port", _int(1, 65535), "8080"),
    "ADJUSTMENT_ALERT_THRESHOLD": ("adjustment_alert_threshold", _decimal(Decimal(0)), "1000.00"),
    "RECONCILIATION_TOLERANCE": ("reconciliation_tolerance", _decimal(Decimal(0)), "0"),
    "DEFAULT_FEE_RATE": ("default_fee_rate", _decimal(Decimal(0), Decimal(1)), "0.20"),
    "CURRENCY_SCALES": ("currency_scales", _scales, ""),
    "DB_POOL_SIZE": ("db_pool_size", _int(1, 200), "10"),
    "DB_STATEMENT_TIMEOUT_MS": ("db_statement_timeout_ms", _int(0, 3_600_000), "30000"),
    "DB_POOL_MODE": ("db_pool_mode", _pool_mode, "session"),
    "LOG_LEVEL": ("log_level", _level, "INFO"),
    "RATE_LIMIT_PER_KEY": ("rate_limit_per_key", _rate, "1000/second"),
    "RATE_LIMIT_PER_ADDRESS": ("rate_limit_per_address", _rate, "2000/second"),
    "RATE_LIMIT_AUTH_FAILURES": ("rate_limit_auth_failures", _rate, "30/minute"),
    "RATE_LIMIT_SIGN_IN": ("rate_limit_sign_in", _rate, "10/minute"),
    "HOLD_EXPIRY_SECONDS": ("hold_expiry_seconds", _int(1, 90 * 86_400), "86400"),
}
_EMPTY_MEANS_UNSET = {"DATABASE_URL", "MIGRATION_DATABASE_URL", "REPORTS_DATABASE_URL", "LEDGER_BACKUP_DIR",
                      "BROKER_URL",
                      "ML_ENGINE_WEBHOOK_SECRET", "ALERT_WEBHOOK_URL", "LEDGER_AUDIT_KEY"}
# ALERT_WEBHOOK_URL is a secret too: a chat webhook's URL carries its token.
SECRET_VARIABLES = frozenset({"ML_ENGINE_API_KEY", "ML_ENGINE_WEBHOOK_SECRET", "DATABASE_URL", "MIGRATION_DATABASE_URL",
                              "REPORTS_DATABASE_URL",
                              "BROKER_URL",
                              "ALERT_WEBHOOK_URL", "LEDGER_AUDIT_KEY"})


def load(environ: Mapping[str, str] | None = None) -> Settings:
    """Read and validate every setting; raise ConfigError listing each bad variable on its own line."""
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    problems: list[str] = []
    for variable, (field, parse, default) in _SPEC.items():
        raw = env.get(variable)
        if raw is None or (raw.strip() == "" and variable in _EMPTY_MEANS_UNSET):
            raw = default
        if raw is None:
            values[field] = () if field == "ml_engine_webhook_secrets" else None
            continue
        try:
            values[field] = parse(raw)
        except ValueError as error:
            shown = "" if variable in SECRET_VARIABLES else f" (got {raw!r})"
            problems.append(f"{variable}: {error}{shown}")
    if problems:
        raise ConfigError(problems)
    return Settings(**values)
