"""`serve --demo` as a newcomer sees it (issue 16, item 8): accounts and a week of trades, then a reconciliation
with one deliberate drift from the simulator — a break for that account, its alert, every other account matched.
The real `invledger serve --demo` in a process of its own, a fresh embedded database, real HTTP."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import httpx

from invledger.demo import DEMO_ACCOUNTS, DEMO_DRIFT
from tests.processes import ctrl_c, free_port
from tests.waiting import wait_until


def test_the_demo_ends_with_a_reconciliation_that_shows_a_break(tmp_path: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "BROKER_URL")}
    env |= {"LEDGER_DATA_DIR": str(tmp_path), "LEDGER_PORT": str(port)}
    process = subprocess.Popen([sys.executable, "-m", "invledger.cli", "serve", "--demo"], env=env, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, start_new_session=True)
    base = f"http://127.0.0.1:{port}/api/v1"
    try:
        assert process.stdout is not None
        lines: list[str] = []
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not (lines and lines[-1].startswith("ilk_")):
            line = process.stdout.readline()
            assert line or process.poll() is None, "".join(lines)
            lines.append(line.strip())
        ready = next(line for line in lines if line.startswith("demo ready"))
        key = lines[-1]
        run_id = int(re.search(r"reconciliation run (\d+) started", ready).group(1))
        drifting = re.search(r"misreports (\S+) by", ready).group(1)
        headers = {"Authorization": f"Bearer {key}"}

        def run_done() -> dict | None:
            run = httpx.get(f"{base}/reconciliations/{run_id}", headers=headers, timeout=10).json()
            return run if run["status"] == "done" else None
        run = wait_until(run_done, timeout_s=max(deadline - time.monotonic(), 1), what=f"reconciliation run {run_id}",
                         interval_s=0.2)
        results = {line["account_id"]: line for line in run["results"]}
        assert len(results) == len(DEMO_ACCOUNTS)
        assert results[drifting]["result"] == "break" and results[drifting]["difference"] == str(DEMO_DRIFT)
        assert {line["result"] for a, line in results.items() if a != drifting} == {"matched"}
        alerts = httpx.get(f"{base}/alerts?status=open", headers=headers, timeout=10).json()["items"]
        assert [(a["kind"], a["account_id"]) for a in alerts] == [("reconciliation_break", drifting)]
        trades = httpx.get(f"{base}/journal?account={drifting}", headers=headers,
                           timeout=10).json()["items"]
        assert len(trades) > 1  # the capital and a week of trading
    finally:
        ctrl_c(process)
