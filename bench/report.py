"""Benchmark results as data: one `Result` per figure, percentiles, the machine, the JSON document."""

from __future__ import annotations

import os
import platform
import sys
import time
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


def machine(postgres_version: str, postgres_settings: dict[str, str]) -> dict[str, Any]:
    return {
        "cores": os.cpu_count(),
        "memory_gb": memory_gb(),
        "python": platform.python_version(),
        "postgres_version": postgres_version,
        "postgres_settings": postgres_settings,
        "platform": platform.platform(),
    }


def document(machine_info: dict[str, Any], results: list[Result], run: dict[str, Any]) -> bytes:
    return msgspec.json.format(msgspec.json.encode(
        {"machine": machine_info, "run": run, "results": results}), indent=2)


def write(doc: bytes) -> None:
    RESULTS_PATH.write_bytes(doc + b"\n")
    sys.stdout.buffer.write(doc + b"\n")
    sys.stdout.flush()
