"""A throwaway PostgreSQL cluster owned by a test: initdb, start, stop, restart, remove.

Runs the server binaries as the ``postgres`` OS user (``runuser``) when the tests run as root,
on its own port and in its own temporary directory, with any server settings the test needs::

    with PgCluster(settings={"idle_session_timeout": "3s", "max_connections": "20"}) as pg:
        url = pg.url()             # postgresql+asyncpg://postgres@127.0.0.1:PORT/postgres
        pg.stop()                  # the database goes away (pg_up 0, connection refused)
        pg.start()
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Mapping
from types import TracebackType

from tests.helpers.processes import free_port


def find_bindir() -> str | None:
    """The directory holding initdb and pg_ctl (Debian keeps them out of PATH)."""
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)
    found = shutil.which("pg_ctl")
    if found:
        candidates.insert(0, os.path.dirname(os.path.realpath(found)))
    for path in candidates:
        if os.access(os.path.join(path, "initdb"), os.X_OK):
            return path
    return None


def available() -> bool:
    """Whether a cluster can be made here (binaries, and a postgres user when root)."""
    if find_bindir() is None:
        return False
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return False
        return shutil.which("runuser") is not None
    return True


class PgCluster:
    """One PostgreSQL cluster in a temporary directory; stop() and remove() are idempotent."""

    def __init__(self, *, settings: Mapping[str, str] | None = None, port: int | None = None):
        bindir = find_bindir()
        if bindir is None:
            raise RuntimeError("PostgreSQL server binaries not found (apt-get install postgresql)")
        self.bindir = bindir
        self.port = port or free_port()
        self.settings = dict(settings or {})
        self.root = tempfile.mkdtemp(prefix="observer-pg-")
        self.datadir = os.path.join(self.root, "data")
        self.logfile = os.path.join(self.root, "server.log")
        self._as_postgres = os.geteuid() == 0
        if self._as_postgres:
            user = pwd.getpwnam("postgres")
            os.chown(self.root, user.pw_uid, user.pw_gid)
        self.running = False
        self._initialised = False

    def _run(self, *argv: str, timeout: float = 60) -> None:
        cmd = [os.path.join(self.bindir, argv[0]), *argv[1:]]
        if self._as_postgres:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
        if result.returncode != 0:
            raise RuntimeError(
                f"{argv[0]} failed ({result.returncode}): {result.stdout}{result.stderr}"
                f"{self.log()}"
            )

    def log(self) -> str:
        """The server log so far (for failure messages)."""
        try:
            with open(self.logfile) as f:
                return f.read()
        except OSError:
            return ""

    def start(self) -> None:
        """initdb on first use, then start the server and wait until it accepts connections."""
        if not self._initialised:
            self._run("initdb", "-D", self.datadir, "-U", "postgres", "-A", "trust", "-N")
            self._initialised = True
        options = {
            "listen_addresses": "127.0.0.1",
            "port": str(self.port),
            "unix_socket_directories": self.root,
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
            **self.settings,
        }
        opts = " ".join(f"-c {key}={value}" for key, value in options.items())
        self._run("pg_ctl", "-D", self.datadir, "-l", self.logfile, "-o", opts, "-w", "start")
        self.running = True

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (``fast`` ends sessions; ``immediate`` is crash-like)."""
        if self.running:
            self._run("pg_ctl", "-D", self.datadir, "-m", mode, "-w", "stop")
            self.running = False

    def restart(self) -> None:
        """Stop, then start with the same settings and port."""
        self.stop()
        self.start()

    def remove(self) -> None:
        """Stop the server and delete its directory."""
        try:
            self.stop("immediate")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def wait_until_refusing(self, timeout: float = 10) -> None:
        """Block until nothing accepts connections on the port any more."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", self.port)) != 0:
                    return
            time.sleep(0.05)
        raise TimeoutError(f"port {self.port} still accepts connections")

    def url(
        self, database: str = "postgres", *, driver: str = "asyncpg", password: str = ""
    ) -> str:
        """A SQLAlchemy URL for this cluster (trust auth: any password is accepted)."""
        auth = f"postgres:{password}" if password else "postgres"
        return f"postgresql+{driver}://{auth}@127.0.0.1:{self.port}/{database}"

    def __enter__(self) -> PgCluster:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.remove()
