"""`invledger report … | head`: a reader that stops early is no failure of the command — no traceback in the log,
no "report failed" line, and the exit status of a process ended by SIGPIPE (141), as cat's or grep's."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from ledger import Ledger
from tests.api.test_statements_api import cli_env


def test_a_reader_that_goes_away_is_not_a_failure(ledger: Ledger, tmp_path: Path) -> None:
    # `true` exits before the command has read the books, so its first write meets a closed pipe.
    done = subprocess.run([
        "bash", "-c", f"'{sys.executable}' -m invledger.cli report trial-balance | true; echo ${{PIPESTATUS[0]}}"],
        env=cli_env(ledger, tmp_path), capture_output=True, text=True, timeout=120)
    assert (done.stdout.strip(), done.stderr) == ("141", "")
