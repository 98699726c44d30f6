"""A private, throwaway PostgreSQL 15 cluster for one test, which may be SIGKILLed and started again.

The machine's cluster ("main", ``scripts/postgres-up``) is shared by every test and by other people's
runs, so a test that kills the postmaster needs a server of its own. This one is made with the Debian
binaries (``initdb``, then ``postgres`` in the foreground), listens on 127.0.0.1 only, on a free port,
with password authentication (scram) and no Unix socket. ``fsync`` stays on and ``shared_buffers`` is
small, so that a SIGKILL loses the dirty pages in shared memory and the next start replays the WAL:
real crash recovery.

initdb refuses to run as root: as root, the server runs as the ``postgres`` OS user (``runuser``),
and its folder is made in the system's temporary folder (pytest's are private to their owner)
and linked from the one asked for.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.pool import NullPool

from tercul_sync.devtools.weaviate_server import free_port

PG_BIN = Path("/usr/lib/postgresql/15/bin")  # Debian's postgresql-15
OS_USER = "postgres"  # who runs the server when we are root


class PostgresUnavailable(RuntimeError):
    """The private cluster could not be made or started; the message says why and where the log is."""


def _alive(pid: int) -> bool:
    """Whether ``pid`` is a running process (a zombie, dead but not yet reaped, is not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def _children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (a postmaster's backends and auxiliary processes)."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


@dataclass
class PrivatePostgres:
    """A PostgreSQL cluster of our own: ``folder`` holds its data (``data/``) and its log."""

    folder: Path
    port: int
    password: str
    user: str = "tercul"  # the cluster's superuser
    database: str = "tercul"
    as_os_user: str | None = None  # None: the server runs as we do
    bin_dir: Path = PG_BIN
    process: subprocess.Popen[bytes] | None = None  # the postmaster (as root: runuser, its parent)

    @property
    def data_dir(self) -> Path:
        return self.folder / "data"

    @property
    def log_file(self) -> Path:
        return self.folder / "postgres.log"

    def url(self, database: str | None = None) -> str:
        """A SQLAlchemy URL of one of the cluster's databases (by default ``database``)."""
        return (
            f"postgresql+psycopg2://{self.user}:{self.password}@127.0.0.1:{self.port}/"
            f"{database or self.database}"
        )

    def _command(self, binary: str, *args: str) -> list[str]:
        prefix = ["runuser", "-u", self.as_os_user, "--"] if self.as_os_user else []
        return [*prefix, str(self.bin_dir / binary), *args]

    def postmaster_pid(self) -> int | None:
        """The postmaster's pid, from the first line of ``postmaster.pid`` (None: no such file)."""
        try:
            return int((self.data_dir / "postmaster.pid").read_text().split("\n", 1)[0])
        except (FileNotFoundError, ValueError):
            return None

    def start(self, ready_within_s: float = 60) -> None:
        """Start the postmaster and wait until it accepts connections (after any crash recovery)."""
        settings = {
            "listen_addresses": "127.0.0.1",
            "port": str(self.port),
            "unix_socket_directories": "",
            "shared_buffers": "16MB",
            "fsync": "on",
            "max_connections": "40",
            "logging_collector": "off",
        }
        options = [arg for name, value in settings.items() for arg in ("-c", f"{name}={value}")]
        with open(self.log_file, "ab") as log:  # the child keeps its own copy of the descriptor
            self.process = subprocess.Popen(
                self._command("postgres", "-D", str(self.data_dir), *options),
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.folder,
                start_new_session=True,
            )
        engine = sa.create_engine(
            self.url("postgres"), poolclass=NullPool, connect_args={"connect_timeout": 2}
        )
        deadline = time.monotonic() + ready_within_s
        try:
            while True:
                if self.process.poll() is not None:
                    raise PostgresUnavailable(
                        f"postgres exited with {self.process.returncode}; see {self.log_file}"
                    )
                try:
                    with engine.connect() as conn:
                        conn.execute(sa.text("SELECT 1"))
                    return
                except sa.exc.OperationalError:  # not listening yet, starting up or recovering
                    if time.monotonic() > deadline:
                        self.stop()
                        raise PostgresUnavailable(
                            f"postgres refused connections for {ready_within_s}s; see {self.log_file}"
                        ) from None
                    time.sleep(0.2)
        finally:
            engine.dispose()

    def kill(self, gone_within_s: float = 30) -> int:
        """SIGKILL the postmaster (pid from ``postmaster.pid``) and wait until it is gone; returns the pid.

        Its children are left to leave by themselves, as they do when their postmaster dies, and are
        waited for too: a new postmaster refuses to start while one still holds the old shared memory.
        """
        pid = self.postmaster_pid()
        if pid is None or not _alive(pid):
            raise PostgresUnavailable(f"no running postmaster in {self.data_dir}")
        children = _children(pid)
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + gone_within_s
        while _alive(pid) or any(_alive(c) for c in children):
            if time.monotonic() > deadline:
                raise PostgresUnavailable(f"postmaster {pid} or its children still running after SIGKILL")
            time.sleep(0.02)
        if self.process is not None:
            self.process.wait(gone_within_s)  # as root, runuser ends with its child
        return pid

    def restart(self, ready_within_s: float = 60) -> None:
        """Start again on the same data folder and port; after a kill, PostgreSQL recovers from its WAL."""
        self.start(ready_within_s)

    def stop(self, within_s: float = 30) -> None:
        """Fast shutdown (SIGINT to the postmaster); SIGKILL if it has not ended within ``within_s``."""
        pid = self.postmaster_pid()
        if pid is not None and _alive(pid):
            os.kill(pid, signal.SIGINT)
            deadline = time.monotonic() + within_s
            while _alive(pid) and time.monotonic() < deadline:
                time.sleep(0.05)
            if _alive(pid):
                self.kill()
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
        if self.process is not None:
            self.process.wait(within_s)

    def remove(self) -> None:
        """Stop the server and delete the cluster's folder (as root, ``start``'s link to it dangles)."""
        self.stop()
        shutil.rmtree(self.folder, ignore_errors=True)


def start(folder: Path, ready_within_s: float = 60, bin_dir: Path = PG_BIN) -> PrivatePostgres:
    """Make a new cluster for ``folder`` (which must not exist), start it and create its database.

    As root, the cluster's folder is a new one in the system's temporary folder, owned by the
    ``postgres`` OS user, and ``folder`` is a symbolic link to it (``remove`` deletes the cluster).
    """
    for binary in ("initdb", "postgres"):
        if not os.access(bin_dir / binary, os.X_OK):
            raise PostgresUnavailable(f"{bin_dir / binary} is missing: apt-get install postgresql-15")
    as_root = os.geteuid() == 0
    if as_root:
        place = Path(tempfile.mkdtemp(prefix="tercul-pg-"))
        shutil.chown(place, OS_USER, OS_USER)
        folder.parent.mkdir(parents=True, exist_ok=True)
        folder.symlink_to(place, target_is_directory=True)
    else:
        folder.mkdir(parents=True)
        place = folder
    server = PrivatePostgres(
        place, free_port(), secrets.token_hex(12), as_os_user=OS_USER if as_root else None, bin_dir=bin_dir
    )
    try:
        _initdb(server)
        server.start(ready_within_s)
        admin = sa.create_engine(server.url("postgres"), poolclass=NullPool, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{server.database}"'))
        admin.dispose()
    except Exception:
        server.remove()
        raise
    return server


def _initdb(server: PrivatePostgres) -> None:
    """Make the cluster: ``server.user`` its superuser, with ``server.password``; scram on every line."""
    password_file = server.folder / "password"
    password_file.write_text(server.password + "\n")
    password_file.chmod(0o600)
    if server.as_os_user:
        shutil.chown(password_file, server.as_os_user, server.as_os_user)
    command = server._command(
        "initdb",
        "-D",
        str(server.data_dir),
        "-U",
        server.user,
        f"--pwfile={password_file}",
        "--auth=scram-sha-256",
        "--encoding=UTF8",
        "--locale=C.UTF-8",
    )
    try:
        made = subprocess.run(command, capture_output=True, text=True, cwd=server.folder)
    finally:
        password_file.unlink()
    if made.returncode != 0:
        raise PostgresUnavailable(f"initdb failed ({made.returncode}): {made.stderr.strip()[-800:]}")
