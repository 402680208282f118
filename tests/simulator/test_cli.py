"""The simulator's command line: `--help`, a short run, refused options, and `python -m simulator`."""

from __future__ import annotations

import subprocess
import sys

import pytest

from simulator import main


def test_cli_help_and_a_short_run(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--help"])
    assert exited.value.code == 0
    assert "--trades-per-day" in capsys.readouterr().out
    code = main(["--port", "0", "--no-webhooks", "--days", "2", "--accounts-wait-s", "0", "--exit-when-done",
                 "--start-date", "2025-03-01", "--drift", "acc-1=2.50", "--error-route", "status"])
    assert code == 0
    assert "day 2/2 (2025-03-02)" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--drift", "no-amount"])
    with pytest.raises(SystemExit):
        main(["--port", "0", "--ledger-url", "http://127.0.0.1:9/hook", "--webhook-secret", ""])


def test_python_dash_m_simulator_has_help() -> None:
    done = subprocess.run([sys.executable, "-m", "simulator", "--help"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "--trades-per-day" in done.stdout and "faults" in done.stdout
