"""A real, throwaway ``redis-server`` on a free loopback port, that a test can kill and start again."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class RedisServer:
    """One redis-server process without persistence; ``url`` stays the same across ``kill`` and ``start``.

    ``cluster``: a Redis Cluster of this one node, holding every slot.
    """

    def __init__(self, directory: Path, *, cluster: bool = False) -> None:
        binary = shutil.which("redis-server")
        assert binary, "redis-server is not installed: `make sysdeps` installs it (Debian package redis-server)"
        self.binary = binary
        self.directory = directory
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.cluster = cluster

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}" + ("" if self.cluster else "/0")

    def start(self) -> None:
        command = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                   "--dir", str(self.directory)]  # fmt: skip
        if self.cluster:
            # The bus port defaults to port + 10000, past 65535 for a quarter of the ephemeral range: name one.
            command += ["--cluster-enabled", "yes", "--cluster-config-file", f"nodes-{self.port}.conf",
                        "--cluster-port", str(free_port())]  # fmt: skip
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self._until(b"PING\r\n", b"+PONG")
        if self.cluster:
            self._until(b"CLUSTER ADDSLOTSRANGE 0 16383\r\n", b"+OK")
            self._until(b"CLUSTER INFO\r\n", b"cluster_state:ok")

    def _until(self, command: bytes, answer: bytes) -> None:
        """Send ``command`` until the reply holds ``answer``; up to 5 s."""
        for _ in range(500):
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.1) as connection:
                    connection.sendall(command)
                    reply = connection.recv(4096)
                    if answer in reply:
                        return
            except OSError:
                pass
            time.sleep(0.01)
        raise AssertionError(f"redis-server did not answer {command!r} with {answer!r}")

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None


class RedisSentinel:
    """A real Sentinel (``redis-server --sentinel``) watching one master as ``mymaster``."""

    def __init__(self, directory: Path, master: RedisServer) -> None:
        self.binary = master.binary
        self.port = free_port()
        self.config = directory / "sentinel.conf"  # Sentinel rewrites its config: a file of its own
        self.config.write_text(f"port {self.port}\nbind 127.0.0.1\ndir {directory}\n"
                               f"sentinel monitor mymaster 127.0.0.1 {master.port} 1\n")  # fmt: skip
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis+sentinel://127.0.0.1:{self.port}/mymaster/0"

    def start(self) -> None:
        command = [self.binary, str(self.config), "--sentinel"]
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(500):  # up to 5 s for it to name the master
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.1) as connection:
                    connection.sendall(b"SENTINEL get-master-addr-by-name mymaster\r\n")
                    if connection.recv(64).startswith(b"*2"):
                        return
            except OSError:
                pass
            time.sleep(0.01)
        raise AssertionError("redis-server --sentinel did not start")

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None
