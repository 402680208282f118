"""What actors work with (database, ledger, engine client), built once per process."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from service import config
from service.runtime import Runtime

_lock = threading.Lock()
_runtime: Runtime | None = None
_client: Any = None
_client_factory: Callable[[config.Settings], Any] | None = None


def install(runtime: Runtime, client: Any = None) -> None:
    """Use this runtime (and engine client) for the actors of this process (serve, tests)."""
    global _runtime, _client
    with _lock:
        _runtime, _client = runtime, client


def runtime() -> Runtime:
    global _runtime
    with _lock:
        if _runtime is None:
            from service import runtime as runtime_module

            _runtime = runtime_module.start(config.load(), migrate=False, application_name="invledger-worker")
        return _runtime


def engine_client() -> Any:
    """The ML Engine client (one per process: it holds the circuit breaker's state)."""
    global _client
    rt = runtime()
    with _lock:
        if _client is None:
            from integration.client import EngineClient

            s = rt.settings
            _client = EngineClient(base_url=s.ml_engine_url, api_key=s.ml_engine_api_key,
                                   timeout_ms=s.ml_engine_timeout_ms, retry_attempts=s.ml_engine_retry_attempts,
                                   retry_delay_ms=s.ml_engine_retry_delay_ms)
        return _client


def reset() -> None:
    global _runtime, _client
    with _lock:
        _runtime, _client = None, None

