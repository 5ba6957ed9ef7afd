"""A real Milvus server for the index suite: the standalone binary that `milvus==2.3.5` ships on PyPI (embedded etcd,
local storage, rocksmq), started in a folder of its own.

The package probes free ports for Milvus's own services but leaves the embedded etcd on its fixed 2379 / 2380, so a
second server on the machine would fail to start. Each server here gets an etcd config file with ports of its own:
several servers (one per xdist worker, and the ones a test kills) run side by side.
"""

from __future__ import annotations

import fcntl
import socket
import subprocess
import tempfile
from pathlib import Path

# Milvus's timers, shortened for a suite that makes hundreds of small collections. A Strong read waits for the next
# time tick (200 ms by default); a load waits for the query coordinator's next check and distribution pull.
SETTINGS = {"proxy.timeTickInterval": 20, "queryCoord.checkInterval": 100, "queryCoord.distPullInterval": 50}


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _probe(port: int) -> socket.socket | None:
    """The package's port probe, with SO_REUSEADDR as the server's own Go listeners have: a port whose last server was
    killed a moment ago (its connections in TIME_WAIT) is free for the next one."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(("127.0.0.1", port))
        sock.listen()
        return sock
    except OSError:
        sock.close()
        return None


def _etcd_config(base: Path) -> Path:
    """An embedded etcd config with free ports."""
    peer, client = _free_ports(2)
    etcd = base / "etcd.yaml"
    etcd.write_text(
        f"name: default\nlisten-peer-urls: http://127.0.0.1:{peer}\ninitial-advertise-peer-urls: http://127.0.0.1:{peer}\n"
        f"initial-cluster: default=http://127.0.0.1:{peer}\nlisten-client-urls: http://127.0.0.1:{client}\n"
        f"advertise-client-urls: http://127.0.0.1:{client}\n"
    )
    return etcd


class Server:
    """One Milvus server in `base`. `kill()` is kill -9; `start()` again serves the same data on the same port."""

    def __init__(self, base: Path):
        from milvus import MilvusServer

        base.mkdir(parents=True, exist_ok=True)
        self.base = base
        self.server = MilvusServer()
        config = self.server.config  # the package's milvus.yaml template, its etcd pointed at a config file
        assert "\netcd:\n" in config.template_text, "the milvus package's config template changed"
        etcd = f"\netcd:\n  config:\n    path: {_etcd_config(base)}\n"
        config.template_text = config.template_text.replace("\netcd:\n", etcd, 1)
        config.try_bind_port = _probe
        self.server.set_base_dir(str(base))
        for key, value in SETTINGS.items():
            config.set(key, value)
        self.port: int | None = None

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> str:
        if self.port is not None:  # a restart: the same port, so clients reconnect to where they were
            self.server.config.update(proxy_port=self.port)
        # The package picks each port by binding it and lets go before the server binds it for good: two starts at
        # once could pick the same ones. One start at a time, machine-wide.
        with open(Path(tempfile.gettempdir()) / "blat-milvus-server-start.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            self.server.start()
        self.port = self.server.listen_port
        return self.uri

    @property
    def pid(self) -> int:
        return self.server.server_proc.pid

    def kill(self) -> None:
        """kill -9: no shutdown, no flush."""
        proc: subprocess.Popen = self.server.server_proc
        proc.kill()
        proc.wait(timeout=30)
        self.server.stop()  # closes its log files; the process is gone already

    def stop(self) -> None:
        self.server.stop()
