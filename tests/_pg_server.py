"""A throwaway PostgreSQL server for the tests and the benchmarks (not a test module).

:class:`PostgresServer` runs ``initdb`` and ``postgres`` from the installed PostgreSQL binaries
(Debian's ``postgresql`` package puts them in ``/usr/lib/postgresql/<version>/bin``) in a
temporary directory, listening on a free loopback port with its socket in that directory, so
it never touches a system cluster. ``initdb`` refuses to run as root: under root the server
runs as the ``postgres`` user the package creates (else ``nobody``). The server can be stopped
and started again on the same port, for tests of what clients do while it is away.

Only the standard library is used here: no database driver is needed to run a server.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Literal

__all__ = ("PostgresServer", "find_bindir", "running_server")

START_TIMEOUT = 60.0  # seconds: initdb and the first start on a busy machine
# Settings of a server whose contents matter only while it runs (tests): a crash of the
# machine would lose the last commits, which no test looks at, and every commit is cheaper.
FAST_SETTINGS: Mapping[str, str] = {"fsync": "off", "synchronous_commit": "off"}
_STOP_SIGNALS = {"smart": signal.SIGTERM, "fast": signal.SIGINT, "immediate": signal.SIGQUIT}


def find_bindir() -> Path | None:
    """The directory of ``initdb`` and ``postgres``, or ``None`` when PostgreSQL is missing.

    ``TASKBUFFER_PG_BINDIR`` wins; then the newest ``/usr/lib/postgresql/<version>/bin``;
    then ``initdb`` on ``PATH``.
    """
    chosen = os.environ.get("TASKBUFFER_PG_BINDIR")
    candidates = [Path(chosen)] if chosen else []
    versions = Path("/usr/lib/postgresql").glob("*/bin")
    candidates += sorted(versions, key=lambda p: _version_key(p.parent.name), reverse=True)
    on_path = shutil.which("initdb")
    if on_path is not None:
        candidates.append(Path(on_path).parent)
    for bindir in candidates:
        if (bindir / "initdb").is_file() and (bindir / "postgres").is_file():
            return bindir
    return None


def _version_key(name: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", name))


def _identifier(name: str) -> str:
    if not re.fullmatch(r"[a-z_][a-z0-9_]*", name):
        raise ValueError(f"expected a lower-case SQL identifier, not {name!r}")
    return name


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _server_user() -> pwd.struct_passwd | None:
    """The unprivileged account to run the server as, or ``None`` to run it as ourselves."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    raise RuntimeError("running as root and neither a 'postgres' nor a 'nobody' user exists")


class PostgresServer:
    """One PostgreSQL server in a temporary directory; :meth:`close` removes everything.

    :param durable: keep PostgreSQL's default durability (``fsync`` and synchronous commits),
        as the benchmarks need; by default commits skip the disk flush (see
        :data:`FAST_SETTINGS`).
    """

    def __init__(self, *, durable: bool = False, bindir: Path | None = None) -> None:
        found = bindir or find_bindir()
        if found is None:
            raise FileNotFoundError(
                "PostgreSQL is not installed (no initdb found); on Debian: apt-get install"
                " postgresql"
            )
        self.bindir = found
        self.settings = {} if durable else dict(FAST_SETTINGS)
        self.user = _server_user()
        self.root = Path(tempfile.mkdtemp(prefix="taskbuffer-pg-"))
        self.data = self.root / "data"
        self.log_path = self.root / "server.log"
        self.port = _free_port()
        self._process: subprocess.Popen[bytes] | None = None
        if self.user is not None:
            os.chown(self.root, self.user.pw_uid, self.user.pw_gid)
        self._initdb()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<PostgresServer port={self.port} {state} root={str(self.root)!r}>"

    @property
    def dsn(self) -> str:
        """The URL of the ``postgres`` database, as superuser ``postgres`` (trust auth)."""
        return self.database_dsn("postgres")

    def database_dsn(self, name: str) -> str:
        """The URL of database ``name`` on this server."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/{name}"

    @property
    def running(self) -> bool:
        """Whether the server process is alive."""
        return self._process is not None and self._process.poll() is None

    def _run_as_server_user(self, args: list[str]) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            args,
            cwd=self.root,
            capture_output=True,
            timeout=START_TIMEOUT,
            check=False,
            **self._user_kwargs(),
        )

    def _user_kwargs(self) -> dict[str, object]:
        if self.user is None:
            return {}
        return {"user": self.user.pw_uid, "group": self.user.pw_gid, "extra_groups": []}

    def _initdb(self) -> None:
        done = self._run_as_server_user(
            [
                str(self.bindir / "initdb"),
                "--pgdata",
                str(self.data),
                "--username",
                "postgres",
                "--auth",
                "trust",
                "--encoding",
                "UTF8",
                "--locale",
                "C",
                "--no-sync",
            ]
        )
        if done.returncode != 0:
            shutil.rmtree(self.root, ignore_errors=True)
            output = (done.stdout + done.stderr).decode(errors="replace")
            raise RuntimeError(f"initdb failed (exit code {done.returncode}):\n{output}")

    def start(self) -> None:
        """Start the server (on the same port as before) and wait until it accepts connections."""
        if self.running:
            return
        command = [
            str(self.bindir / "postgres"),
            "-D",
            str(self.data),
            "-h",
            "127.0.0.1",
            "-p",
            str(self.port),
            "-k",
            str(self.root),
            "-c",
            "max_connections=200",
        ]
        for name, value in self.settings.items():
            command += ["-c", f"{name}={value}"]
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child writes to it; closed below
        try:
            self._process = subprocess.Popen(
                command, cwd=self.root, stdout=log, stderr=subprocess.STDOUT, **self._user_kwargs()
            )
        finally:
            log.close()
        self._wait_ready()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while True:  # waiting for a server process to listen, not for a result
            if self._process is None or self._process.poll() is not None:
                raise RuntimeError(f"postgres exited at start; its log:\n{self.log()}")
            done = subprocess.run(
                [str(self.bindir / "pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(self.port)],
                capture_output=True,
                timeout=START_TIMEOUT,
                check=False,
            )
            if done.returncode == 0:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"postgres did not accept connections; its log:\n{self.log()}")
            time.sleep(0.05)

    def stop(self, mode: Literal["smart", "fast", "immediate"] = "fast") -> None:
        """Stop the server: ``fast`` disconnects clients and shuts down cleanly;
        ``immediate`` quits without a checkpoint (recovery runs at the next start), as near to a
        crash as a server that must come back allows."""
        process = self._process
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(_STOP_SIGNALS[mode])
            try:
                process.wait(timeout=START_TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=START_TIMEOUT)
        self._process = None

    def restart(self, mode: Literal["smart", "fast", "immediate"] = "fast") -> None:
        """Stop the server and start it again on the same port."""
        self.stop(mode)
        self.start()

    def psql(self, command: str, *, database: str = "postgres") -> str:
        """Run one SQL ``command`` with ``psql`` (no driver needed) and return its output.

        :raises RuntimeError: the command failed.
        """
        done = subprocess.run(
            [
                str(self.bindir / "psql"),
                "-X",
                "-q",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-d",
                self.database_dsn(database),
                "-c",
                command,
            ],
            capture_output=True,
            timeout=START_TIMEOUT,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"psql {command!r} failed: {done.stderr.decode().strip()}")
        return done.stdout.decode()

    def create_database(self, name: str) -> str:
        """Create database ``name`` (a plain identifier) and return its URL."""
        self.psql(f"CREATE DATABASE {_identifier(name)}")
        return self.database_dsn(name)

    def create_schema(self, name: str) -> str:
        """Create schema ``name`` in the ``postgres`` database and return a URL whose
        connections use it (``search_path``): a fresh, empty namespace in ~20 ms."""
        self.psql(f"CREATE SCHEMA {_identifier(name)}")
        return f"{self.dsn}?search_path={name}"

    def log(self) -> str:
        """The server's log so far."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def close(self) -> None:
        """Stop the server and delete its directory."""
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)


@contextlib.contextmanager
def running_server(*, durable: bool = False) -> Iterator[PostgresServer]:
    """A started :class:`PostgresServer`, closed on exit."""
    server = PostgresServer(durable=durable)
    try:
        server.start()
        yield server
    finally:
        server.close()
