"""The embedded PostgreSQL a command starts outlives it (serve, worker and the CLI share one): the command says so
and how to stop it, once — not when it only reused a running one (found trying it as a newcomer: a report after
`make run` had stopped left a server running with no word)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

BIN = Path(sys.executable).parent


def invledger(*args: str, data_dir: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "BROKER_URL", "REPORTS_DATABASE_URL")}
    return subprocess.run([str(BIN / "invledger"), *args], env={**env, "LEDGER_DATA_DIR": str(data_dir)},
                          capture_output=True, text=True, timeout=180)


def test_a_command_that_starts_the_embedded_database_says_it_keeps_running(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    try:
        first = invledger("db", "url", data_dir=data_dir)
        assert first.returncode == 0, first.stderr[-2000:]
        assert "keeps running for the next commands" in first.stderr and "invledger db stop" in first.stderr
        again = invledger("db", "url", data_dir=data_dir)
        assert again.returncode == 0 and again.stdout == first.stdout
        assert "keeps running" not in again.stderr and "embedded postgresql ready" in again.stderr
    finally:
        stopped = invledger("db", "stop", data_dir=data_dir)
    assert stopped.stdout.strip() == "embedded database stopped", stopped.stderr[-2000:]
