"""A private PostgreSQL cluster: initdb in a temporary folder, a free loopback port.

The test setup starts one for the whole session where no server answers on
PG_TEST_HOST:PG_TEST_PORT (tests/fixtures_pg.py); fault tests start their own to stop,
restart and reconfigure it. The binaries come from ``PG_BIN`` (default Debian's
PostgreSQL 15). initdb and postgres refuse to run as root, so as root they run as the
``postgres`` user.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

BIN = Path(os.environ.get("PG_BIN", "/usr/lib/postgresql/15/bin"))


def _as_postgres(args: list[str]) -> list[str]:
    if os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--", *args]
    return args


class Cluster:
    """One cluster: ``init()``, ``ctl("start" | "stop" | "restart")``, ``remove()``.

    Trust auth for the ``postgres`` user on 127.0.0.1:``port`` and on the Unix socket in
    ``dir``; ``fsync=off`` (test data is thrown away).
    """

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="si-pg-"))
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.data = self.dir / "data"
        self.log = self.dir / "log"

    def run(self, *args: str) -> None:
        subprocess.run(
            _as_postgres([str(BIN / args[0]), *args[1:]]),
            check=True,
            capture_output=True,
            timeout=60,
        )

    def init(self) -> None:
        if os.geteuid() == 0:
            shutil.chown(self.dir, "postgres", "postgres")
        self.run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres")

    def ctl(self, action: str) -> None:
        opts = (
            f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off"
            " -c max_connections=300"
        )
        self.run(
            "pg_ctl",
            action,
            "-D",
            str(self.data),
            "-l",
            str(self.log),
            "-w",
            "-m",
            "fast",
            "-o",
            opts,
        )

    def remove(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError, OSError):
            self.ctl("stop")
        shutil.rmtree(self.dir, ignore_errors=True)


def start_cluster() -> Cluster:
    """A started cluster; raises OSError / CalledProcessError (with the cluster removed)."""
    if not (BIN / "initdb").exists():
        raise OSError(f"no PostgreSQL binaries in {BIN} (set PG_BIN)")
    c = Cluster()
    try:
        c.init()
        c.ctl("start")
    except BaseException:
        c.remove()
        raise
    return c
