"""A real Milvus server for the index suite: the standalone binary that `milvus==2.3.5` ships on PyPI (embedded etcd,
local storage, rocksmq), started in a folder of its own.

The package probes free ports for Milvus's own services but leaves the embedded etcd on its fixed 2379 / 2380, so a
second server on the machine would fail to start. Each server here gets an etcd config file with ports of its own:
several servers (one per xdist worker, and the ones a test kills) run side by side. Every port is chosen below the
ephemeral range and under one machine-wide lock, held until the server answers.
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


# Where each port search starts: below Linux's ephemeral range (32768-60999), where any outgoing connection may hold a
# port for a while. The package starts its root coordinator's search at 53100, inside it.
ROOT_COORD_PORT, ETCD_PORT = 23100, 24100


def _probe(port: int) -> socket.socket | None:
    """The package's port probe, on every interface (as the server's Go listeners bind) and with SO_REUSEADDR as they
    have: a port whose last server was killed a moment ago (connections in TIME_WAIT) is free for the next one."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(("", port))
        sock.listen()
        return sock
    except OSError:
        sock.close()
        return None


def _free_ports(start: int, n: int) -> list[int]:
    """n ports from `start` up that nothing listens on now."""
    found: list[int] = []
    port = start
    while len(found) < n:
        if (sock := _probe(port)) is not None:
            sock.close()
            found.append(port)
        port += 1
    return found


def _write_etcd_config(path: Path) -> None:
    peer, client = _free_ports(ETCD_PORT, 2)
    path.write_text(
        f"name: default\nlisten-peer-urls: http://127.0.0.1:{peer}\ninitial-advertise-peer-urls: http://127.0.0.1:{peer}\n"
        f"initial-cluster: default=http://127.0.0.1:{peer}\nlisten-client-urls: http://127.0.0.1:{client}\n"
        f"advertise-client-urls: http://127.0.0.1:{client}\n"
    )


class Server:
    """One Milvus server in `base`. `kill()` is kill -9; `start()` again serves the same data on the same port."""

    def __init__(self, base: Path, settings: dict | None = None):
        """settings: milvus.yaml keys (dotted) to values; default SETTINGS (None: the package's own, as deployed)."""
        from milvus import MilvusServer

        base.mkdir(parents=True, exist_ok=True)
        self.base = base
        self.server = MilvusServer()
        config = self.server.config  # the package's milvus.yaml template, its etcd pointed at a config file
        assert "\netcd:\n" in config.template_text, "the milvus package's config template changed"
        self.etcd_config = base / "etcd.yaml"  # written at the first start, kept for restarts (etcd's data names it)
        etcd = f"\netcd:\n  config:\n    path: {self.etcd_config}\n"
        config.template_text = config.template_text.replace("\netcd:\n", etcd, 1)
        config.try_bind_port = _probe
        config.set("root_coord_port", ROOT_COORD_PORT)
        self.server.set_base_dir(str(base))
        for key, value in (SETTINGS if settings is None else settings).items():
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
            if not self.etcd_config.exists():
                _write_etcd_config(self.etcd_config)
            self.server.start()
        self.port = self.server.listen_port
        return self.uri

    def kill(self) -> None:
        """kill -9: no shutdown, no flush."""
        proc: subprocess.Popen = self.server.server_proc
        proc.kill()
        proc.wait(timeout=30)
        self.server.stop()  # closes its log files; the process is gone already

    def stop(self) -> None:
        self.server.stop()
