"""Where the CPU goes during a run: this process, its worker processes, and the local PostgreSQL server."""

from __future__ import annotations

import time

import psutil
import sqlalchemy as sa


def _cpu_s(process: psutil.Process, *, with_children: bool = False) -> float:
    """User + system CPU seconds; `with_children` adds children already waited for (pgbench runs, exited
    backends)."""
    try:
        times = process.cpu_times()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return 0.0
    own = times.user + times.system
    return own + (times.children_user + times.children_system if with_children else 0.0)


class CpuMeter:
    """Cumulative CPU seconds of the benchmark's own processes (Python, or pgbench once it has exited) and
    of the PostgreSQL server.

    The server is found through a backend's parent, so it is measured only when it runs on this machine
    (the embedded server); with a remote DATABASE_URL its share is None.
    """

    def __init__(self, engine: sa.Engine, worker_pids: list[int] | None = None) -> None:
        self.me = psutil.Process()
        self.workers = [psutil.Process(pid) for pid in worker_pids or []]
        self.postmaster: psutil.Process | None = None
        try:
            with engine.connect() as connection:
                backend_pid = connection.execute(sa.text("SELECT pg_backend_pid()")).scalar_one()
            self.postmaster = psutil.Process(psutil.Process(backend_pid).ppid())
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            self.postmaster = None

    def snapshot(self) -> dict[str, float | None]:
        server_s = None
        if self.postmaster is not None:
            # Live backends, plus the ones that have exited (the postmaster has waited for them): pgbench's
            # connections end with the run, and their CPU was counted as a neighbour's.
            server_s = (_cpu_s(self.postmaster, with_children=True)
                        + sum(_cpu_s(child) for child in self.postmaster.children(True)))
        machine = psutil.cpu_times()
        return {"client_s": _cpu_s(self.me, with_children=True) + sum(_cpu_s(worker) for worker in self.workers),
                "postgres_s": server_s,
                "machine_busy_s": sum(machine) - machine.idle - getattr(machine, "iowait", 0.0),
                "machine_iowait_s": getattr(machine, "iowait", 0.0)}


DISTURBED_OTHER_CORES_MIN = 0.3


def cores_used(before: dict[str, float | None], after: dict[str, float | None],
               elapsed_s: float) -> dict[str, float | bool | None]:
    """Average cores busy over the run, per side (1.0 = one core fully busy).

    `other_cores` is what the rest of the machine used meanwhile (a neighbour disturbs the figures).
    """
    out: dict[str, float | bool | None] = {}
    for key in ("client_s", "postgres_s", "machine_busy_s", "machine_iowait_s"):
        start, end = before[key], after[key]
        out[key.removesuffix("_s") + "_cores"] = None if start is None or end is None else round(
            (end - start) / elapsed_s, 2)
    if out["postgres_cores"] is not None and out["machine_busy_cores"] is not None:
        out["other_cores"] = round(out["machine_busy_cores"] - out["client_cores"] - out["postgres_cores"], 2)
        out["disturbed"] = out["other_cores"] > DISTURBED_OTHER_CORES_MIN
    return out


QUIET_BUSY_CORES_MAX = 0.3
SETTLE_WAIT_MAX_S = 15.0
_budget = {"remaining_s": 120.0}


def set_settle_budget(total_s: float) -> None:
    """How long the whole run may spend waiting for a quiet machine, all `settle` calls together."""
    _budget["remaining_s"] = total_s


def settle(wait_max_s: float = SETTLE_WAIT_MAX_S) -> dict[str, float]:
    """Wait (at most `wait_max_s`, within the run's budget) until the machine is quiet: this box is shared,
    and a neighbour's test run halves our figures. Returns the wait and how busy the machine still was."""
    began = time.perf_counter()
    limit_s = min(wait_max_s, _budget["remaining_s"])
    while True:
        before = psutil.cpu_times()
        time.sleep(0.5)
        after = psutil.cpu_times()
        idle = (after.idle - before.idle) + (getattr(after, "iowait", 0.0) - getattr(before, "iowait", 0.0))
        busy_cores = (sum(after) - sum(before) - idle) / 0.5
        waited_s = time.perf_counter() - began
        if busy_cores <= QUIET_BUSY_CORES_MAX or waited_s >= limit_s:
            _budget["remaining_s"] = max(0.0, _budget["remaining_s"] - waited_s)
            return {"settle_wait_s": round(waited_s, 1), "busy_cores_before": round(busy_cores, 2)}
