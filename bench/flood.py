"""A flood of made-up API keys against one legitimate client (issue 17): the legitimate client's p99 alone, under
the flood with the rate limits on, and under the same flood with them off — on `invledger serve` over real HTTP.
Target: with the limits on, the flood at most doubles the legitimate client's p99.

The legitimate client reads `GET /api/v1/accounts?limit=10` one request after another with a real key. The flood
is a process of its own (so it takes no interpreter time from the client): `FLOOD_THREADS` threads sending the
same route with a new made-up key each time, from the same address (the worst case for a per-address limit: the
legitimate client shares it), paced to `FLOOD_RATE_PER_S` requests per second in all. On two cores the server,
the flood and the client share the machine: an unpaced flood measures the machine, not the limiter.
"""

from __future__ import annotations

import multiprocessing
import time

import httpx
import sqlalchemy as sa

from api.auth import create_key
from bench.report import Result, progress
from bench.webhooks import Served

FLOOD_THREADS = 4
FLOOD_RATE_PER_S = 400
TARGET_RATIO = 2.0


def _p99(latencies: list[float]) -> float:
    ordered = sorted(latencies)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


def _legitimate(base: str, key: str, duration_s: float) -> list[float]:
    latencies = []
    with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=10) as client:
        deadline = time.perf_counter() + duration_s
        while time.perf_counter() < deadline:
            began = time.perf_counter()
            client.get("/api/v1/accounts", params={"limit": 10}).raise_for_status()
            latencies.append(time.perf_counter() - began)
    return latencies


def _flood(base: str, duration_s: float, answers: multiprocessing.Queue) -> None:
    import threading

    counts = {"sent": 0, "429": 0}
    lock = threading.Lock()
    interval_s = FLOOD_THREADS / FLOOD_RATE_PER_S

    def send(n: int) -> None:
        with httpx.Client(base_url=base, timeout=10) as client:
            deadline, i = time.perf_counter() + duration_s, 0
            next_at = time.perf_counter()
            while time.perf_counter() < deadline:
                answer = client.get("/api/v1/accounts", headers={"Authorization": f"Bearer ilk_{n:02d}{i:06x}_x"})
                with lock:
                    counts["sent"] += 1
                    counts["429"] += answer.status_code == 429
                i += 1
                next_at += interval_s
                time.sleep(max(0.0, next_at - time.perf_counter()))

    threads = [threading.Thread(target=send, args=(n,)) for n in range(FLOOD_THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    answers.put(counts)


def _flooded(base: str, key: str, duration_s: float) -> tuple[list[float], dict[str, int]]:
    spawn = multiprocessing.get_context("spawn")
    answers = spawn.Queue()
    flood = spawn.Process(target=_flood, args=(base, duration_s + 2, answers))
    flood.start()
    time.sleep(1.0)  # the flood under way (and past the failed-credentials limit) before measuring
    latencies = _legitimate(base, key, duration_s)
    flood.join(duration_s + 30)
    return latencies, answers.get(timeout=10)


def measure(url: str, engine: sa.Engine, *, duration_s: float) -> list[Result]:
    key = create_key(engine, "finance", "bench legitimate client")
    figures: dict[str, object] = {}
    for limits in ("on", "off"):
        served = Served(url, extra_env={} if limits == "on" else {"RATE_LIMIT_AUTH_FAILURES": "1000000/second",
                                                                   "RATE_LIMIT_PER_ADDRESS": "1000000/second"})
        try:
            _legitimate(served.base_url, key, 1.0)  # warm-up: the key seen valid
            if limits == "on":
                figures["alone"] = _legitimate(served.base_url, key, duration_s)
            figures[limits], figures[f"counts_{limits}"] = _flooded(served.base_url, key, duration_s)
        finally:
            served.stop(keep_log=False)
    alone, on, off = (_p99(figures[k]) for k in ("alone", "on", "off"))  # type: ignore[arg-type]
    progress(f"flood: legitimate p99 {alone * 1000:.1f} ms alone, {on * 1000:.1f} ms under the flood with the limits "
             f"on ({figures['counts_on']}), {off * 1000:.1f} ms with them off ({figures['counts_off']})")
    return [Result(name="flood.unknown_keys.p99_ratio", value=round(on / alone, 2), unit="x", target=TARGET_RATIO,
                   met=on / alone <= TARGET_RATIO,
                   params={"p99_alone_ms": round(alone * 1000, 2), "p99_flooded_ms": round(on * 1000, 2),
                           "p99_flooded_limits_off_ms": round(off * 1000, 2),
                           "flood": figures["counts_on"], "flood_limits_off": figures["counts_off"],
                           "flood_rate_per_s": FLOOD_RATE_PER_S, "flood_threads": FLOOD_THREADS,
                           "duration_s": duration_s,
                           "what": "GET /api/v1/accounts with a real key, one at a time, while another process sends "
                                   "made-up keys from the same address"})]
