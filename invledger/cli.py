"""The `invledger` command (contract §3). Every subcommand has --help; failures exit non-zero with one line."""

from __future__ import annotations

import argparse
import gc
import logging
import os
import signal
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import msgspec

from ledger import LedgerError, acting_as, times
from ledger.times import rfc3339
from service import __version__, config, logs

log = logging.getLogger("invledger.cli")


class CliError(Exception):
    """A failure to report as one line on stderr, exit code 1 (2 for usage)."""


# ----------------------------------------------------------------------------------------- helpers

def parse_time(text: str, *, end_of_day: bool = False) -> datetime:
    """RFC 3339 time, or a date (its start, or the end of that UTC day with end_of_day)."""
    try:
        return times.parse_time(text, end_of_day=end_of_day)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


BIGINT_MAX = 2**63 - 1  # PostgreSQL bigint: every id


def row_id(text: str) -> int:
    """An id option (--id): a whole number the database can hold; else a usage error, not a database error's
    traceback in the log."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if not 1 <= value <= BIGINT_MAX:
        raise argparse.ArgumentTypeError(f"{text} is not an id (1 to {BIGINT_MAX})")
    return value


def emit_table(rows: list[dict[str, object]], fmt: str, out=None) -> None:
    out = out or sys.stdout
    if fmt == "json":
        out.write(msgspec.json.encode(rows).decode() + "\n")
        return
    if not rows:
        out.write("(no rows)\n" if fmt == "table" else "")
        return
    headers = list(rows[0])
    if fmt == "csv":  # the reports' writer: text a spreadsheet would run as a formula is quoted with '
        from readside import tabular

        out.write(tabular.to_csv(rows, headers))
        return
    cells = [["" if row[h] is None else str(row[h]) for h in headers] for row in rows]  # no "None" on a terminal
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(headers)]
    numeric = [all(_looks_numeric(c[i]) or c[i] == "" for c in cells) for i in range(len(headers))]
    def line(values: Sequence[str]) -> str:
        return "  ".join(v.rjust(w) if n else v.ljust(w) for v, w, n in zip(values, widths, numeric, strict=True))
    out.write(line(headers).rstrip() + "\n")
    out.write("  ".join("-" * w for w in widths) + "\n")
    for c in cells:
        out.write(line(c).rstrip() + "\n")


def _looks_numeric(text: str) -> bool:
    return text.replace("-", "", 1).replace(".", "", 1).isdigit()


def _runtime(args: argparse.Namespace, *, migrate: bool = True):
    from service import runtime

    return runtime.start(args.settings, migrate=migrate, application_name=f"invledger-{args.command}")


# ---------------------------------------------------------------------------------------- commands

def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn
    from dramatiq import Worker

    from api.app import create_app
    from jobs import broker as job_broker
    from jobs import context, scheduler
    from service import database

    settings = args.settings
    if args.host or args.port:
        settings = msgspec.structs.replace(settings, host=args.host or settings.host, port=args.port or settings.port)
    sim = None
    if args.demo:
        from invledger import demo

        settings, sim = demo.prepare(settings)
    args.settings = settings
    # The embedded PostgreSQL outlives the commands that start it (the CLI and `worker` share it), but a newcomer
    # who stops `make run` expects no database left behind: serve stops it on its way out if serve started it.
    owns_database = not settings.database_url and not database.embedded_running(settings.data_dir)
    rt = _runtime(args)
    broker = job_broker.install(settings.broker_url)
    context.install(rt)
    host, port = settings.host, settings.port
    in_process: dict[str, object] = {}

    def start_jobs() -> None:
        if job_broker.is_in_process(broker):  # no BROKER_URL: the actors run inside this process
            worker = Worker(broker, worker_threads=4)  # a long reconciliation must not hold up the outbox
            worker.start()
            jobs = scheduler.background()
            jobs.start()
            in_process.update(worker=worker, scheduler=jobs)
        if sim is not None:
            from api.auth import create_key
            from integration import reconcile
            from invledger import demo

            owner = rt.owner_engine()
            demo_key = create_key(owner, "admin", "demo")  # the owner's: the application may not make keys
            owner.dispose()
            demo.start_feeder(rt.ledger, rt.engine, sim, context.engine_client(), demo_key,
                              reconcile_now=lambda: reconcile.request_run(
                                  rt.engine, actors.enqueue, tolerance=settings.reconciliation_tolerance,
                                  trigger="api"))

    def freeze_heap() -> None:
        # What start-up made (modules, the app, its routes and schemas, pools) lives as long as the process.
        # Frozen, a full collection no longer walks it: under webhook load one took ~42 ms every 1-2 s (a
        # stop for every thread: the webhook p99), for nothing (0 objects collected).
        gc.collect()
        gc.freeze()

    def stop_jobs() -> None:
        if sim is not None:
            sim.stop()  # type: ignore[attr-defined]
        if "scheduler" in in_process:
            in_process["scheduler"].shutdown(wait=False)  # type: ignore[attr-defined]
            in_process["worker"].stop()  # type: ignore[attr-defined]

    from jobs import actors

    app = create_app(rt.ledger, settings, readiness=job_broker.readiness(broker), on_startup=[start_jobs, freeze_heap],
                     on_shutdown=[stop_jobs], jobs=actors.enqueue, reports_engine=rt.reports_engine)
    log.info("serving", extra={"url": f"http://{host}:{port}", "docs": f"http://{host}:{port}/schema",
                               "jobs": "in-process" if job_broker.is_in_process(broker) else "broker"})
    # uvicorn shuts down gracefully on SIGTERM (what systemd, Docker and Kubernetes send), then raises the signal
    # again once it has finished; with SIGTERM's default action that ends the process before this `finally` runs,
    # and the embedded database serve started would be left running. As SystemExit it unwinds through it.
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        uvicorn.run(app, host=host, port=port, log_config=None, access_log=False, server_header=False)
    finally:
        rt.close()
        if owns_database:
            database.stop_embedded(settings.data_dir)
            log.info("embedded database stopped", extra={"data_dir": str(settings.data_dir)})
        elif not settings.database_url:
            log.info("the embedded database keeps running: it was running before serve started; "
                     "`invledger db stop` stops it", extra={"data_dir": str(settings.data_dir)})
    return 0


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def cmd_worker(args: argparse.Namespace) -> int:
    import signal
    import threading

    from dramatiq import Worker

    from jobs import broker as job_broker
    from jobs import context

    if not args.settings.broker_url:
        raise CliError("BROKER_URL is not set: without a broker the jobs run inside `invledger serve`")
    rt = _runtime(args)
    context.install(rt)
    broker = job_broker.install(args.settings.broker_url)
    worker = Worker(broker, worker_threads=args.threads)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    worker.start()
    log.info("worker started", extra={"threads": args.threads})
    stop.wait()
    worker.stop()
    rt.close()
    return 0


def cmd_scheduler(args: argparse.Namespace) -> int:
    from jobs import broker as job_broker
    from jobs import scheduler

    if not args.settings.broker_url:
        raise CliError("BROKER_URL is not set: without a broker the scheduler runs inside `invledger serve`")
    job_broker.install(args.settings.broker_url)
    log.info("scheduler started")
    scheduler.blocking().start()
    return 0


def cmd_outbox(args: argparse.Namespace) -> int:
    from integration import outbox
    from readside import views

    rt = _runtime(args)
    if args.action == "retry":
        print(f"{outbox.retry_dead(rt.engine, args.id)} dead notifications queued again")
    else:
        rows = views.outbox_events(rt.engine, status=None if args.status == "all" else args.status,
                                   limit=args.limit)["items"]
        emit_table([{"id": r["id"], "account": r["account_id"], "topic": r["topic"], "status": r["status"],
                     "attempts": r["attempts"], "created_at": r["created_at"],
                     "last_error": (r["last_error"] or "")[:60]} for r in rows], args.format)
    rt.close()
    return 0


def cmd_holds(args: argparse.Namespace) -> int:
    from ledger import holds

    rt = _runtime(args)
    try:
        if args.action == "list":
            rows = holds.read(rt.ledger, lambda tx: holds.listing(
                tx, account_id=args.account, status=None if args.status == "all" else args.status, limit=args.limit))
            emit_table([{"hold_id": h.hold_id, "account": h.account_id, "amount": str(h.amount), "status": h.status,
                         "placed_at": rfc3339(h.placed_at), "expires_at": rfc3339(h.expires_at),
                         "placed_by": h.placed_by, "resolved_by": h.resolved_by or "", "entry_id": h.entry_id or "",
                         "reference": h.reference} for h in rows], args.format)
        elif args.action == "expire":
            print(f"{len(holds.expire_due(rt.ledger))} holds expired")
        else:
            if args.id is None:
                raise SystemExit(f"invledger holds {args.action}: give the hold with --id")
            if args.action == "post":
                hold, posted = holds.post_hold(rt.ledger, args.id)
                print(f"hold {hold.hold_id} posted: entry {posted.entry_id}" + (" (already)" if hold.replayed else ""))
            else:
                hold = holds.void_hold(rt.ledger, args.id, reason=args.reason)
                print(f"hold {hold.hold_id} {hold.status}" + (" (already)" if hold.replayed else ""))
    finally:
        rt.close()
    return 0


class _Progress:
    """Progress on stderr ("reconciled 1200/10000 accounts"), at most once a second and at the end."""

    def __init__(self, verb: str) -> None:
        import time

        self.verb, self._clock, self._last = verb, time.monotonic, 0.0

    def __call__(self, done: int, total: int) -> None:
        now = self._clock()
        if done >= total or now - self._last >= 1.0:
            self._last = now
            print(f"{self.verb} {done}/{total} accounts", file=sys.stderr, flush=True)


def _run_line(outcome) -> str:
    run = outcome.run
    if outcome.skipped == "running":
        return f"run {run.run_key if run else '?'} is in progress elsewhere; nothing done"
    if outcome.skipped == "done":
        return f"run {run.id} ({run.run_key}) was done before; nothing done again"
    return f"run {run.id} ({run.run_key}): {run.status}"


def _counts_line(counts: dict[str, object]) -> str:
    return ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in counts.items() if k != "fee_total") or "nothing"


def cmd_reconcile(args: argparse.Namespace) -> int:
    from integration import reconcile
    from jobs import context

    rt = _runtime(args)
    context.install(rt)
    if args.date:
        run_key, period = f"reconcile:{args.date.isoformat()}", args.date.isoformat()
    else:
        run_key, period = reconcile.on_demand_key()
    outcome = reconcile.run(rt.ledger, context.engine_client(), run_key=run_key, period=period, trigger="cli",
                            tolerance=args.settings.reconciliation_tolerance, progress=_Progress("reconciled"))
    run = outcome.run
    problems = reconcile.problems(rt.engine, run.id, limit=args.limit) if run else []
    rt.close()
    if args.format == "json":
        print(msgspec.json.encode({"run": run, "skipped": outcome.skipped,
                                   "problems": [line.out() for line in problems]}).decode())
        return 0
    print(_run_line(outcome))
    if run is not None:
        print(_counts_line(run.counts))
        emit_table([{k: v for k, v in line.out().items() if k not in ("currency", "in_flight")} for line in problems],
                   "table")
    return 0


def cmd_sync_performance(args: argparse.Namespace) -> int:
    from integration import sync
    from integration.booking import Bookkeeper
    from jobs import context

    day = args.date or datetime.now(UTC).date() - timedelta(days=1)
    if day >= datetime.now(UTC).date():
        raise CliError(f"{day} is not over yet: sync-performance is for days that have ended")
    rt = _runtime(args)
    context.install(rt)
    bookkeeper = Bookkeeper(rt.ledger, adjustment_alert_threshold=args.settings.adjustment_alert_threshold)
    outcome = sync.run(rt.ledger, context.engine_client(), bookkeeper, day, trigger="cli", force=True,
                       progress=_Progress("synced"))
    rt.close()
    print(_run_line(outcome))
    run = outcome.run
    if run is not None:
        print(_counts_line(run.counts))
        if run.status == "partial":
            raise CliError(f"the engine did not answer for {run.counts.get('unavailable')} accounts; run again later")
    return 0


def cmd_distribute(args: argparse.Namespace) -> int:
    from integration import distribute
    from ledger.distribution import month_bounds, month_of

    month = month_of(args.month)
    if month_bounds(month)[1] > datetime.now(UTC):
        raise CliError(f"{args.month} is not over yet: a month is distributed after it ends")
    rt = _runtime(args)
    outcome = distribute.run(rt.ledger, month, trigger="cli", force=True,
                             require_snapshot=not args.allow_missing_snapshot, progress=_Progress("distributed"))
    rt.close()
    print(_run_line(outcome))
    run = outcome.run
    if run is not None:
        print(_counts_line(run.counts) + "; fees: " + (", ".join(
            f"{amount} {currency}" for currency, amount in run.counts.get("fee_total", {}).items()) or "none"))
        if run.status == "partial":
            raise CliError(f"{run.counts.get('deferred', 0)} accounts deferred and {run.counts.get('failed', 0)} "
                           "failed (see the alerts); run again when resolved")
    return 0


def cmd_statements(args: argparse.Namespace) -> int:
    from documents import statements
    from ledger.statements import month_bounds, month_key, parse_month
    from readside import statements as issued

    try:
        month = parse_month(args.month)
    except LedgerError as error:
        raise CliError(error.detail) from None
    if month_bounds(month)[1] > datetime.now(UTC):
        raise CliError(f"{args.month} is not over yet: a month's statements are issued after its distribution")
    out = Path(args.out) if args.out else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    rt = _runtime(args)
    try:
        counts = statements.issue_month(rt.ledger, month, progress=_Progress("statements"),
                                        account_ids=args.account or None)
        written = 0
        if out is not None:  # one read, not two round trips per account
            for stored in issued.latest_of_month(rt.ledger, month, args.account or None):
                stem = f"statement-{stored.account_id}-{month_key(month)}-v{stored.version}"
                (out / f"{stem}.pdf").write_bytes(stored.pdf)
                (out / f"{stem}.json").write_bytes(msgspec.json.encode(
                    {"id": stored.id, **stored.body, "digest": stored.digest.hex()}))
                written += 1
    finally:
        rt.close()
    print(f"statements {month_key(month)}: {counts.accounts} accounts distributed, {counts.issued} issued, "
          f"{counts.corrected} corrected, {counts.unchanged} unchanged, {counts.not_issued} not distributed, "
          f"{counts.failed} failed" + (f"; {written} written to {out}" if out is not None else ""))
    if counts.failed:
        raise CliError(f"{counts.failed} statements failed (see the log); run again")
    return 0


def cmd_checkpoint(args: argparse.Namespace) -> int:
    from ledger import checkpoints

    rt = _runtime(args)
    try:
        due = checkpoints.due(rt.ledger)
        print(f"{len(due)} month-end checkpoint(s) due", file=sys.stderr)
        made = checkpoints.make_due(rt.ledger, due, progress=lambda at, rows: print(
            f"checkpoint {at.isoformat()}: {rows} ledger accounts with a balance", file=sys.stderr))
        latest = made[-1][0] if made else checkpoints.latest(rt.ledger)
    finally:
        rt.close()
    print(f"{len(made)} checkpoint(s) made; latest: {latest.isoformat() if latest else 'none'}")
    return 0


def cmd_simulate_engine(args: argparse.Namespace) -> int:
    import simulator

    return simulator.main(args.simulator_args)


def cmd_migrate(args: argparse.Namespace) -> int:
    rt = _runtime(args)
    rt.close()
    print("migrations applied")
    return 0


def _verify_inputs(args: argparse.Namespace) -> tuple[bytes | None, list[dict[str, object]] | None]:
    """The public key anchors are checked with (--public-key, else the audit key's) and the outside anchors."""
    from pathlib import Path

    from integration import anchors
    from ledger.chain import public_key_bytes

    if args.public_key:
        try:
            public_key: bytes | None = bytes.fromhex(args.public_key)
        except ValueError:
            raise CliError("--public-key must be the 64 hex digits `invledger anchor public-key` prints") from None
        if len(public_key) != 32:
            raise CliError("--public-key must be the 64 hex digits `invledger anchor public-key` prints")
    else:
        try:
            key = anchors.audit_key(args.settings.audit_key, args.settings.data_dir, create=False)
        except anchors.AuditKeyError as error:
            raise CliError(f"{args.settings.data_dir / anchors.KEY_FILE}: {error}") from None
        public_key = public_key_bytes(key) if key else None
    outside = None
    if args.anchors:
        try:
            outside = anchors.read_anchors_file(Path(args.anchors))
        except (OSError, ValueError) as error:
            raise CliError(f"cannot read the anchors file {args.anchors}: {error}") from None
    return public_key, outside


def _print_verify(report) -> None:
    counts = ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in report.counts.items())
    print(f"verified {counts}")
    for name, n in report.checks.items():
        print(f"  {'ok  ' if n == 0 else 'FAIL'}  {name}" + (f" ({n} findings)" if n else ""))
    for finding in report.findings:
        print(f"  - {finding.check}: {finding.detail}")
    for note in report.notes:
        print(f"  note: {note}")
    print("books are sound" if report.ok else "verification FAILED")


def cmd_verify(args: argparse.Namespace) -> int:
    from ledger.verify import verify

    public_key, outside = _verify_inputs(args)
    rt = _runtime(args)
    report = verify(rt.engine, progress=lambda name: print(f"checking {name} …", file=sys.stderr),
                    public_key=public_key, outside_anchors=outside)
    rt.close()
    if args.format == "json":
        print(msgspec.json.encode(report).decode())
    else:
        _print_verify(report)
    return 0 if report.ok else 1


def _backup_source(settings) -> str:
    """The owner's URL (a superuser or a REPLICATION role): pg_basebackup and pg_receivewal connect with it."""
    from service import backup, database

    where = database.urls(settings.database_url, settings.migration_database_url, settings.data_dir,
                          archive_dir=backup.archive_dir(settings.backup_dir))
    return where.owner


def cmd_backup(args: argparse.Namespace) -> int:
    from service import backup

    settings = args.settings
    try:
        if args.action == "take":
            info = backup.take(_backup_source(settings), settings.backup_dir,
                               progress=lambda line: print(line, file=sys.stderr, flush=True))
            if args.format == "json":
                print(msgspec.json.encode(info).decode())
            else:
                print(f"backup {info.label}: {info.bytes / 2**20:.1f} MiB in {info.seconds:.1f}s, verified in "
                      f"{info.verify_seconds:.1f}s; restorable to any time after {rfc3339(info.finished_at)} "
                      f"that the WAL archive reaches")
        elif args.action == "list":
            found = backup.backups(settings.backup_dir)
            archive = backup.archive_summary(settings.backup_dir)
            if args.format == "json":
                print(msgspec.json.encode({"backups": found, "archive": archive}).decode())
            else:
                emit_table([{"label": b.label, "started_at": rfc3339(b.started_at),
                             "finished_at": rfc3339(b.finished_at), "mib": round(b.bytes / 2**20, 1),
                             "seconds": b.seconds, "start_wal": b.start_wal, "timeline": b.timeline}
                            for b in found], "table")
                print(f"WAL archive {backup.archive_dir(settings.backup_dir)}: {archive['wal_files']} files "
                      f"({archive['bytes'] / 2**20:.1f} MiB), {archive['oldest'] or '-'} … {archive['newest'] or '-'}")
        elif args.action == "prune":
            removed, wal = backup.prune(settings.backup_dir, args.keep)
            print(f"removed {len(removed)} base backup(s) and {wal} WAL file(s) older than the oldest kept")
        else:  # receive-wal
            print(f"streaming WAL into {backup.archive_dir(settings.backup_dir)} (slot {backup.SLOT}); Ctrl-C stops",
                  file=sys.stderr, flush=True)
            return backup.receive_wal(_backup_source(settings), settings.backup_dir)
    except backup.BackupError as error:
        raise CliError(str(error)) from None
    return 0


def cmd_restore(args: argparse.Namespace) -> int:
    import time
    from pathlib import Path

    from ledger.verify import verify
    from service import backup, database, runtime

    settings = args.settings
    public_key, outside = _verify_inputs(args) if args.verify else (None, None)
    into = Path(args.into)
    try:
        restored = backup.restore(settings.backup_dir, args.to, into,
                                  progress=lambda line: print(line, file=sys.stderr, flush=True))
    except backup.BackupError as error:
        raise CliError(str(error)) from None
    result: dict[str, object] = {"restored": restored}
    ok = True
    if args.verify and restored.server_version // 10000 != database.embedded_major():
        raise CliError(f"restored into {restored.into}/pg, a PostgreSQL {restored.server_version // 10000} data "
                       f"directory: start it with that version's server and run `invledger verify` with DATABASE_URL "
                       f"pointing at it (the embedded server is PostgreSQL {database.embedded_major()})")
    if args.verify:
        began = time.perf_counter()
        # The restored books as invledger would run them: their own embedded server and, from now on, their own
        # WAL archive (into/backups), never the original's.
        restored_settings = msgspec.structs.replace(settings, data_dir=into, database_url=None,
                                                    migration_database_url=None, backup_dir_setting=None)
        rt = runtime.start(restored_settings, migrate=False, application_name="invledger-restore")
        try:
            report = verify(rt.engine, progress=lambda name: print(f"checking {name} …", file=sys.stderr),
                            public_key=public_key, outside_anchors=outside)
        finally:
            rt.close()
            database.stop_embedded(into)
        result.update(verify=report, verify_s=round(time.perf_counter() - began, 3))
        ok = report.ok
    if args.format == "json":
        print(msgspec.json.encode(result).decode())
    else:
        print(f"restored {restored.into}/pg from backup {restored.backup} to {rfc3339(restored.target)}: last "
              f"commit replayed {rfc3339(restored.last_replayed_commit_at) or 'none after the backup'}, timeline "
              f"{restored.timeline}, {restored.wal_files_restored} WAL files from the archive; check "
              f"{restored.check_s:.1f}s, copy {restored.copy_s:.1f}s, replay {restored.replay_s:.1f}s"
              + (f", verify {result['verify_s']:.1f}s" if args.verify else ""))
        if args.verify:
            _print_verify(result["verify"])
        print(f"serve it: LEDGER_DATA_DIR={restored.into} invledger serve")
    return 0 if ok else 1


def cmd_anchor(args: argparse.Namespace) -> int:
    from integration import anchors
    from ledger.chain import public_key_bytes

    settings = args.settings
    if args.action == "keygen":
        print("a new audit key: set it as LEDGER_AUDIT_KEY where the ledger runs, keep it out of the database;",
              file=sys.stderr)
        print(anchors.new_key_text())
        return 0
    try:
        key = anchors.audit_key(settings.audit_key, settings.data_dir, create=args.action == "make")
    except anchors.AuditKeyError as error:
        raise CliError(str(error)) from None
    if key is None:
        raise CliError("no audit key: set LEDGER_AUDIT_KEY (invledger anchor keygen makes one)")
    if args.action == "public-key":
        print(public_key_bytes(key).hex())
        return 0
    rt = _runtime(args)
    try:
        made = anchors.anchor(rt.engine, key, data_dir=settings.data_dir, alert_url=settings.alert_webhook_url,
                              made_by="cli")
    finally:
        rt.close()
    print(msgspec.json.encode(made.line()).decode())
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from invledger import reporting

    rt = _runtime(args)
    try:
        reporting.write_report(rt.reports, args, emit_table)  # the replica's, when there is one
    except reporting.ReportError as error:
        raise CliError(str(error)) from None
    finally:
        rt.close()
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from invledger import reporting

    rt = _runtime(args)
    try:
        counts = reporting.export_beancount(rt.reports, args)
    finally:
        rt.close()
    print(f"exported {counts['accounts']} accounts, {counts['entries']} entries, {counts['postings']} postings"
          + (f" to {args.output}" if args.output and args.output != "-" else ""), file=sys.stderr)
    return 0


def cmd_apikey(args: argparse.Namespace) -> int:
    from api import auth

    rt = _runtime(args)
    # Keys are the owner's to make, revoke and rotate: the application's role may not write them (migration 0012).
    owner = rt.owner_engine()
    try:
        if args.action == "create":
            if not args.role:
                raise CliError("apikey create needs --role finance|operator|admin")
            expires_at = datetime.now(UTC) + timedelta(days=args.expires_in_days) if args.expires_in_days else None
            key = auth.create_key(owner, args.role, args.name or "", expires_at=expires_at)
            print(f"created a {args.role} API key{f' expiring {rfc3339(expires_at)}' if expires_at else ''}; "
                  "it is shown only now and stored only hashed:", file=sys.stderr)
            print(key)
        elif args.action == "list":
            emit_table([{"prefix": k.prefix, "role": k.role, "name": k.name, "created_at": rfc3339(k.created_at),
                         "expires_at": rfc3339(k.expires_at) or "", "last_used_at": rfc3339(k.last_used_at) or "",
                         "revoked_at": rfc3339(k.revoked_at) or ""} for k in auth.list_keys(rt.engine)], args.format)
        elif args.action == "revoke":
            if not auth.revoke_key(owner, _prefix(args)):
                raise CliError(f"no unrevoked key with prefix {args.prefix!r}")
            print(f"revoked {args.prefix}; the API refuses it within {auth.KEY_CACHE_TTL_S:g} s, its page sessions "
                  "at once", file=sys.stderr)
        else:  # rotate
            try:
                key = auth.rotate_key(owner, _prefix(args), grace=timedelta(seconds=args.grace_s))
            except LookupError as error:
                raise CliError(str(error)) from None
            print(f"the old key {args.prefix} stops working "
                  f"{f'in {args.grace_s} s' if args.grace_s else 'now'}; the new one, shown only now:",
                  file=sys.stderr)
            print(key)
    finally:
        owner.dispose()
        rt.close()
    return 0


def _prefix(args: argparse.Namespace) -> str:
    if not args.prefix:
        raise CliError(f"apikey {args.action} needs the key's prefix (the part after ilk_, see apikey list)")
    return args.prefix.removeprefix("ilk_").split("_")[0]


def cmd_db(args: argparse.Namespace) -> int:
    from service import database

    if args.settings.database_url:
        raise CliError("DATABASE_URL is set: the embedded database is not in use")
    if args.action == "url":
        from service import backup

        print(database.embedded_url(args.settings.data_dir,
                                    archive_dir=backup.archive_dir(args.settings.backup_dir)))
    elif args.action == "stop":
        print("embedded database stopped" if database.stop_embedded(args.settings.data_dir)
              else "embedded database is not running")
    return 0


# ------------------------------------------------------------------------------------------ parser

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="invledger", description="Double-entry ledger for investment accounts traded by an ML Engine.",
        epilog="Configuration comes from the environment (DATABASE_URL, BROKER_URL, ML_ENGINE_URL, …); "
               "see README.md.")
    parser.add_argument("--version", action="version", version=f"invledger {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def add(name: str, handler: Callable[[argparse.Namespace], int], help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(handler=handler)
        return p

    p = add("serve", cmd_serve, "Migrate, then serve the HTTP API (with jobs in-process when BROKER_URL is unset).")
    p.add_argument("--host", help="listen address (default LEDGER_HOST or 127.0.0.1)")
    p.add_argument("--port", type=int, help="listen port (default LEDGER_PORT or 8080)")
    p.add_argument("--demo", action="store_true", help="also start the ML Engine simulator and feed it")

    add("migrate", cmd_migrate, "Apply pending database migrations.")

    p = add("worker", cmd_worker, "Run dramatiq workers against BROKER_URL (outbox delivery and the jobs).")
    p.add_argument("--threads", type=int, default=4, help="worker threads (default 4)")

    add("scheduler", cmd_scheduler, "Enqueue the periodic jobs on BROKER_URL on their timetable.")

    p = add("outbox", cmd_outbox, "List notifications owed to the engine, or retry dead ones.")
    p.add_argument("action", choices=("list", "retry"))
    p.add_argument("--status", choices=("pending", "delivered", "dead", "all"), default="dead",
                   help="for list (default dead)")
    p.add_argument("--id", type=row_id, help="for retry: one notification (default: every dead one)")
    p.add_argument("--limit", type=int, default=100)
    p.add_argument("--format", choices=("table", "csv", "json"), default="table")

    p = add("holds", cmd_holds, "Withdrawal holds: list them, post or void one, expire those past due.")
    p.add_argument("action", choices=("list", "post", "void", "expire"))
    p.add_argument("--account", help="for list: one investment account")
    p.add_argument("--status", choices=("open", "posted", "voided", "expired", "all"), default="all",
                   help="for list (default all)")
    p.add_argument("--id", type=row_id, help="for post and void: the hold")
    p.add_argument("--reason", default="", help="for void")
    p.add_argument("--limit", type=int, default=100)
    p.add_argument("--format", choices=("table", "csv", "json"), default="table")

    p = add("simulate-engine", cmd_simulate_engine, "Run the ML Engine simulator (see its --help).")
    p.add_argument("simulator_args", nargs=argparse.REMAINDER, help="arguments for the simulator")

    p = add("verify", cmd_verify, "Recompute every balance from the postings and check every invariant; "
                                  "exit 1 on any failure.")
    p.add_argument("--format", choices=("table", "json"), default="table")
    p.add_argument("--anchors", metavar="FILE",
                   help="an outside copy of the anchors file: each of its anchors must be in the database unchanged")
    p.add_argument("--public-key", metavar="HEX",
                   help="check anchor signatures with this Ed25519 public key (default: LEDGER_AUDIT_KEY's)")

    p = add("backup", cmd_backup, "Backups for point-in-time restore (docs/operations.md): take a base backup "
                                  "(pg_basebackup, checked with pg_verifybackup) into LEDGER_BACKUP_DIR, list them "
                                  "and the WAL archive, prune old ones, or receive-wal: stream an external server's "
                                  "WAL into the archive (pg_receivewal).")
    p.add_argument("action", choices=("take", "list", "prune", "receive-wal"))
    p.add_argument("--keep", type=int, default=2, help="prune: base backups to keep, newest first (default 2)")
    p.add_argument("--format", choices=("table", "json"), default="table")

    p = add("restore", cmd_restore, "Restore the books as they were at a time into a new directory (a base backup "
                                    "and the WAL archive of LEDGER_BACKUP_DIR), then verify them there.")
    p.add_argument("--to", required=True, type=parse_time, metavar="TIME",
                   help="RFC 3339 time: every entry committed at or before it, none after")
    p.add_argument("--into", required=True, metavar="DIR",
                   help="a new directory: it becomes a LEDGER_DATA_DIR (the data in DIR/pg)")
    p.add_argument("--no-verify", dest="verify", action="store_false", help="do not run verify on the result")
    p.add_argument("--anchors", metavar="FILE", help="verify: an outside copy of the anchors file (as of TIME)")
    p.add_argument("--public-key", metavar="HEX", help="verify: the Ed25519 public key of the anchors")
    p.add_argument("--format", choices=("table", "json"), default="table")

    p = add("anchor", cmd_anchor, "Sign every ledger account's hash-chain head with the audit key and store it, in "
                                  "LEDGER_DATA_DIR/anchors.jsonl and at ALERT_WEBHOOK_URL too (make, the default); "
                                  "keygen prints a new audit key; public-key prints the key auditors check with.")
    p.add_argument("action", nargs="?", choices=("make", "keygen", "public-key"), default="make")

    p = add("report", cmd_report, "Print a report: trial-balance, balance-sheet, income-statement, "
                                  "balance ACCOUNT, statement ACCOUNT, performance ACCOUNT, positions ACCOUNT, "
                                  "reconciliations [RUN_ID] or alerts.")
    p.add_argument("report", choices=("trial-balance", "balance-sheet", "income-statement", "balance", "statement",
                                      "performance", "positions", "reconciliations", "alerts"))
    p.add_argument("account", nargs="?", help="for balance, statement, performance and positions: an investment "
                                              "account id "
                                              "(statement also takes a ledger account name); for "
                                              "reconciliations: a run id, to list that run's per-account results")
    p.add_argument("--status", choices=("open", "acknowledged", "resolved"), help="for alerts (default: all)")
    p.add_argument("--result", choices=("matched", "break", "engine_unavailable", "unknown_account",
                                        "status_mismatch"), help="for reconciliations RUN_ID (default: all)")
    p.add_argument("--as-of", type=lambda t: parse_time(t, end_of_day=True),
                   help="RFC 3339 time, or a date meaning the end of that UTC day")
    p.add_argument("--from", dest="start", type=parse_time, help="first day (inclusive) or time")
    p.add_argument("--to", dest="end", type=lambda t: parse_time(t, end_of_day=True),
                   help="last day (inclusive) or time")
    p.add_argument("--format", choices=("table", "csv", "json"), default="table")

    p = add("export", cmd_export, "Write the whole ledger (or as of a time) as a Beancount file that bean-check "
                                  "accepts, with balance assertions equal to the ledger's balances.")
    p.add_argument("target", choices=("beancount",))
    p.add_argument("--as-of", type=lambda t: parse_time(t, end_of_day=True),
                   help="RFC 3339 time, or a date meaning the end of that UTC day (default: everything)")
    p.add_argument("--output", "-o", help="file to write (default: standard output)")

    p = add("apikey", cmd_apikey, "API keys: create (printed alone on the last line, shown once), list, revoke, "
                                  "rotate (a new key with the same role; printed alone on the last line).")
    p.add_argument("action", choices=("create", "list", "revoke", "rotate"))
    p.add_argument("prefix", nargs="?", help="revoke, rotate: the key's prefix (as apikey list shows it)")
    p.add_argument("--role", choices=("finance", "operator", "admin"), help="create: the key's role")
    p.add_argument("--name", help="create: a label for the key (who or what uses it)")
    p.add_argument("--expires-in-days", type=int, metavar="DAYS", help="create: the key expires after DAYS days")
    p.add_argument("--grace-s", type=int, default=0, metavar="SECONDS",
                   help="rotate: the old key keeps working this long (default 0: it stops at once)")
    p.add_argument("--format", choices=("table", "csv", "json"), default="table", help="list: output format")

    p = add("reconcile", cmd_reconcile, "Reconcile every open account against the engine now (or the nightly "
                                         "run of --date, once), with progress; list the problems.")
    p.add_argument("--date", type=date.fromisoformat, help="the period YYYY-MM-DD (default: a new on-demand run)")
    p.add_argument("--limit", type=int, default=100, help="problems to list (default 100)")
    p.add_argument("--format", choices=("table", "json"), default="table")

    p = add("sync-performance", cmd_sync_performance, "Fetch a day's closed trades and performance from the engine "
                                                       "and book what the webhooks missed (exactly once).")
    p.add_argument("--date", type=date.fromisoformat, help="the day YYYY-MM-DD (default: yesterday, UTC)")

    p = add("distribute", cmd_distribute, "Book the monthly performance fee (high-water mark) of every account, "
                                          "once per account and month.")
    p.add_argument("--month", required=True, help="the month YYYY-MM (it must be over)")
    p.add_argument("--allow-missing-snapshot", action="store_true",
                   help="distribute accounts whose engine snapshot for the month's last day is missing")

    p = add("statements", cmd_statements, "Issue the monthly investor statements of a distributed month (PDF and "
                                          "figures, stored once with their digest; a corrected version where the "
                                          "books changed since), and write them to --out.")
    p.add_argument("--month", required=True, help="the month YYYY-MM (it must be over and distributed)")
    p.add_argument("--out", metavar="DIR", help="write each account's latest statement there as PDF and JSON")
    p.add_argument("--account", action="append", metavar="A", help="only this account (repeatable)")

    add("checkpoint", cmd_checkpoint, "Make the month-end balance checkpoints that are due (the daily job does "
                                      "this; reports as of a past time start from them).")

    p = add("db", cmd_db, "The embedded PostgreSQL: print its URL (starting it if needed) or stop it.")
    p.add_argument("action", choices=("url", "stop"))
    return parser


def _os_user() -> str:
    import getpass

    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no name for this uid (a container)
        import os

        return str(os.getuid())


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["simulate-engine"]:  # the simulator has its own options and --help
        import simulator

        logs.configure("INFO")
        return simulator.main(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        args.settings = config.load()
    except config.ConfigError as error:
        for problem in error.problems:
            print(f"invledger: configuration: {problem}", file=sys.stderr)
        return 2
    logs.configure(args.settings.log_level)
    try:
        with acting_as(f"cli:{_os_user()}"):  # `serve` and `worker` set their own per request and per job
            return args.handler(args)
    except CliError as error:
        print(f"invledger: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (`invledger report … | head`): nothing failed to report, so no "failed" line and no
        # traceback in the log. Python would raise again flushing stdout at exit: the rest goes nowhere. The exit
        # status is a process ended by SIGPIPE's, as cat's or grep's.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + signal.SIGPIPE
    except Exception as error:  # one clear line, the traceback goes to the JSON log
        from ledger.errors import LedgerError

        if isinstance(error, LedgerError):
            print(f"invledger: {error.detail}", file=sys.stderr)
            return 1
        log.exception("command failed")
        first_line = str(error).splitlines()[0] if str(error) else ""
        print(f"invledger: {args.command} failed: {type(error).__name__}: {first_line}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

