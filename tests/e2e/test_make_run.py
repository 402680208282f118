"""`make run` as a newcomer runs it: the contract's §2 variables from the environment, and nothing left running
after Ctrl-C (issue 16, items 2 and 7). The real Makefile, the real `invledger serve`, a fresh embedded database."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx

from service import database
from tests.processes import free_port
from tests.waiting import wait_until

ROOT = Path(__file__).resolve().parents[2]


def _make_run(data_dir: Path, port: int) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "BROKER_URL", "LEDGER_HOST")}
    env |= {"LEDGER_DATA_DIR": str(data_dir), "LEDGER_PORT": str(port), "LOG_LEVEL": "INFO"}
    # A session of its own, as a terminal's foreground job: Ctrl-C reaches make and serve together.
    return subprocess.Popen(["make", "--no-print-directory", "run"], cwd=ROOT, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)


def _wait_healthy(process: subprocess.Popen[str], port: int, timeout_s: float = 90) -> None:
    def up() -> bool:
        assert process.poll() is None, process.stdout.read() if process.stdout else ""
        return httpx.get(f"http://127.0.0.1:{port}/api/v1/health", timeout=1).status_code == 200
    wait_until(up, timeout_s=timeout_s, what=f"make run to answer on port {port}", interval_s=0.2,
               ignoring=(httpx.TransportError,))


def _ctrl_c(process: subprocess.Popen[str]) -> str:
    os.killpg(process.pid, signal.SIGINT)
    output, _ = process.communicate(timeout=60)
    return output


def test_make_run_listens_on_ledger_port_and_leaves_no_database_behind(tmp_path: Path) -> None:
    port = free_port()
    assert port != 8080
    process = _make_run(tmp_path, port)
    try:
        _wait_healthy(process, port)
        assert database.embedded_running(tmp_path)
        output = _ctrl_c(process)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert "embedded database stopped" in output, output[-3000:]
    assert not database.embedded_running(tmp_path)

    # A database that was running before serve started (a CLI command started it) is left running, and serve
    # says so and how to stop it.
    database.embedded_url(tmp_path)
    try:
        process = _make_run(tmp_path, port)
        try:
            _wait_healthy(process, port)
            output = _ctrl_c(process)
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
        assert "invledger db stop" in output, output[-3000:]
        assert database.embedded_running(tmp_path)
    finally:
        assert database.stop_embedded(tmp_path)
    assert not database.embedded_running(tmp_path)


def test_sigterm_stops_serve_and_the_database_it_started(tmp_path: Path) -> None:
    """What systemd, Docker and Kubernetes send: serve shuts down as on Ctrl-C, the embedded database with it
    (uvicorn raises SIGTERM again after its graceful shutdown; by its default action that skipped serve's cleanup)."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "BROKER_URL", "LEDGER_HOST")}
    env |= {"LEDGER_DATA_DIR": str(tmp_path), "LEDGER_PORT": str(port), "LOG_LEVEL": "INFO"}
    invledger = Path(sys.executable).parent / "invledger"
    process = subprocess.Popen([str(invledger), "serve"], env=env, text=True, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait_healthy(process, port)
        assert database.embedded_running(tmp_path)
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert "embedded database stopped" in output, output[-3000:]
    assert not database.embedded_running(tmp_path)
    assert process.returncode == 128 + signal.SIGTERM
