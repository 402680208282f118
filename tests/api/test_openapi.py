"""schemathesis, the real CLI with every check, against `invledger serve` over real HTTP (issue 16, item 9): the
OpenAPI document says what the API enforces, both ways — no schema-valid request refused, no schema-violating
request accepted, no 5xx, every answer as documented, 405 and OPTIONS with a true `Allow`. The few rules no schema
can state are named in schemathesis.toml (and in each operation's description)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import msgspec

from service import database
from tests.processes import ctrl_c, free_port
from tests.waiting import wait_until

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES_PER_OPERATION = 25


def test_schemathesis_with_every_check_finds_nothing(tmp_path: Path) -> None:
    """On a fresh embedded database, as `make run` serves it: as the application role (least privilege), so an
    operation that needs a privilege the role lacks shows up here as a 5xx."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("BROKER_URL", "DATABASE_URL")}
    env |= {"LEDGER_DATA_DIR": str(tmp_path), "LEDGER_PORT": str(port)}
    key = subprocess.run([sys.executable, "-m", "invledger.cli", "apikey", "create", "--role", "operator"], env=env,
                         capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
    server = subprocess.Popen([sys.executable, "-m", "invledger.cli", "serve"], env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        base = f"http://127.0.0.1:{port}"

        def up() -> bool:
            assert server.poll() is None, "serve exited"
            return httpx.get(f"{base}/api/v1/health", timeout=1).status_code == 200
        wait_until(up, timeout_s=60, what="serve to answer /health", interval_s=0.2, ignoring=(httpx.TransportError,))
        run = subprocess.run(
            [str(Path(sys.executable).parent / "st"), "--config-file", str(ROOT / "schemathesis.toml"), "run",
             f"{base}/schema/openapi.json", "--checks", "all", "--header", f"Authorization: Bearer {key}",
             "--max-examples", str(EXAMPLES_PER_OPERATION), "--seed", str(int(time.time()))],
            cwd=ROOT, capture_output=True, text=True, timeout=600)
        assert run.returncode == 0, run.stdout[-12000:] + run.stderr[-2000:]
        assert "Tested: " in run.stdout and "ST2" not in run.stdout, run.stdout[-3000:]
    finally:
        ctrl_c(server, 30)
        database.stop_embedded(tmp_path)


def test_the_openapi_document_is_the_one_in_docs(app) -> None:
    """The API's contract changes only on purpose: the generated document equals docs/openapi.json (a change of a
    handler's return type once turned a response's schema into `{}` unnoticed). `make openapi` rewrites the file;
    its diff is the change to review."""
    generated = msgspec.json.format(msgspec.json.encode(app.openapi_schema.to_schema(), order="sorted"), indent=1)
    if os.environ.get("INVLEDGER_WRITE_OPENAPI"):
        (ROOT / "docs" / "openapi.json").write_bytes(generated + b"\n")
    assert (ROOT / "docs" / "openapi.json").read_bytes() == generated + b"\n", (
        "the OpenAPI document changed: if on purpose, `make openapi` and commit docs/openapi.json")
