"""A 3-node NATS JetStream cluster with MQTT listeners, on loopback, for tests and benches.

    with NatsCluster(Path(tmp)) as cluster:      # configs written, nodes started, ready
        cluster.mqtt_urls                        # ["mqtt://127.0.0.1:PORT", ...] one per node
        cluster.nats_urls                        # ["nats://127.0.0.1:PORT", ...]
        cluster.kill(0)                          # SIGKILL node 0 (its store survives)
        cluster.restart(0)                       # start it again, wait until it is back

Every listener (client, cluster routes, MQTT, HTTP monitoring) is bound to 127.0.0.1 on a
free port. Each node has its own ``server_name``, JetStream store directory and log file
under the directory given. Its MQTT ``ack_wait`` is short (``ack_wait_s``, default 3 s):
with the server's default (30 s) a QoS 1 message in flight to a subscriber whose node died
is redelivered only half a minute later.

Ready means, per node: its MQTT port answers a CONNECT with a CONNACK (which on NATS also
means its MQTT JetStream streams exist), and its monitoring endpoint ``/jsz`` names a
JetStream meta leader. The binary is ``nats-server`` (Debian package ``nats-server``,
installed by ``.ci/system-deps.sh``); :func:`nats_server_binary` raises naming the package
when it is missing.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

__all__ = ["NatsCluster", "NatsClusterError", "nats_server_binary"]

CLUSTER_NAME = "venue-bench"


class NatsClusterError(RuntimeError):
    """The cluster could not be started or did not become ready; the message says why."""


def nats_server_binary() -> str:
    """The ``nats-server`` executable; NatsClusterError naming the package if missing."""
    found = shutil.which("nats-server") or (
        "/usr/sbin/nats-server" if os.access("/usr/sbin/nats-server", os.X_OK) else None)
    if found is None:
        raise NatsClusterError("nats-server is not installed (Debian package nats-server; "
                               "`make deps-test` installs it)")
    return found


def _free_ports(n: int) -> list[int]:
    """``n`` distinct free TCP ports on 127.0.0.1 (held together so none repeats)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


# An MQTT 3.1.1 CONNECT, clean session, keepalive 10 s, client id "ready-probe":
# fixed header 0x10, remaining length, protocol name "MQTT", level 4, flags 0x02.
_PROBE_ID = b"ready-probe"
_CONNECT = (bytes([0x10, 10 + 2 + len(_PROBE_ID)]) + b"\x00\x04MQTT\x04\x02"
            + struct.pack(">H", 10) + struct.pack(">H", len(_PROBE_ID)) + _PROBE_ID)


def mqtt_connack(port: int, timeout_s: float = 2.0) -> bool:
    """True if an MQTT 3.1.1 CONNECT to 127.0.0.1:``port`` gets a CONNACK that accepts it."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as s:
            s.settimeout(timeout_s)
            s.sendall(_CONNECT)
            data = b""
            while len(data) < 4:
                chunk = s.recv(4 - len(data))
                if not chunk:
                    return False
                data += chunk
            with contextlib.suppress(OSError):
                s.sendall(b"\xe0\x00")  # DISCONNECT
            return data[0] == 0x20 and data[3] == 0
    except OSError:
        return False


@dataclass
class _Node:
    index: int
    name: str
    client_port: int
    cluster_port: int
    mqtt_port: int
    http_port: int
    config: Path
    log: Path
    store: Path
    proc: subprocess.Popen[bytes] | None = None


class NatsCluster:
    """``nodes`` nats-server processes clustered over loopback routes, JetStream and MQTT on.

    ``root`` holds each node's config, log and JetStream store. The processes are started by
    :meth:`start` (or ``with``) and stopped by :meth:`stop`; :meth:`kill` and
    :meth:`restart` are for failure tests.
    """

    def __init__(self, root: Path, *, nodes: int = 3, ack_wait_s: float = 3.0,
                 ready_timeout_s: float = 30.0, consumer_replicas: int | None = None,
                 consumer_memory_storage: bool = False,
                 stream_replicas: int | None = None) -> None:
        if nodes < 1:
            raise ValueError("a cluster needs at least one node")
        self.root = Path(root)
        self.ack_wait_s = ack_wait_s
        self.consumer_replicas = consumer_replicas
        self.consumer_memory_storage = consumer_memory_storage
        self.stream_replicas = stream_replicas
        self.ready_timeout_s = ready_timeout_s
        self.binary = nats_server_binary()
        ports = _free_ports(4 * nodes)
        self.nodes = [
            _Node(i, f"n{i + 1}", ports[4 * i], ports[4 * i + 1], ports[4 * i + 2],
                  ports[4 * i + 3], config=self.root / f"n{i + 1}.conf", log=self.root / f"n{i + 1}.log",
                  store=self.root / f"n{i + 1}-js")
            for i in range(nodes)
        ]
        for node in self.nodes:
            node.config.parent.mkdir(parents=True, exist_ok=True)
            node.config.write_text(self._config(node))

    # -- configuration ---------------------------------------------------------------

    def _config(self, node: _Node) -> str:
        routes = ", ".join(f'"nats-route://127.0.0.1:{n.cluster_port}"' for n in self.nodes
                           if n is not node)
        cluster = "" if len(self.nodes) == 1 else f"""
cluster {{
  name: "{CLUSTER_NAME}"
  listen: "127.0.0.1:{node.cluster_port}"
  routes: [{routes}]
}}
"""
        return f"""# node {node.name} of a {len(self.nodes)}-node test cluster (loopback only)
server_name: "{node.name}"
listen: "127.0.0.1:{node.client_port}"
http: "127.0.0.1:{node.http_port}"
jetstream {{
  store_dir: "{node.store}"
}}
{cluster}
mqtt {{
  listen: "127.0.0.1:{node.mqtt_port}"
  ack_wait: "{self.ack_wait_s:g}s"{self._consumer_options()}
}}
"""

    def _consumer_options(self) -> str:
        lines = []
        if self.stream_replicas is not None:
            lines.append(f"stream_replicas: {self.stream_replicas}")
        if self.consumer_replicas is not None:
            lines.append(f"consumer_replicas: {self.consumer_replicas}")
        if self.consumer_memory_storage:
            lines.append("consumer_memory_storage: true")
        return "".join(f"\n  {line}" for line in lines)

    # -- addresses ---------------------------------------------------------------------

    @property
    def mqtt_urls(self) -> list[str]:
        return [f"mqtt://127.0.0.1:{n.mqtt_port}" for n in self.nodes]

    @property
    def nats_urls(self) -> list[str]:
        return [f"nats://127.0.0.1:{n.client_port}" for n in self.nodes]

    # -- life cycle --------------------------------------------------------------------

    def start(self) -> NatsCluster:
        """Start every node and wait until the cluster is ready (NatsClusterError if not)."""
        for node in self.nodes:
            self._spawn(node)
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _spawn(self, node: _Node) -> None:
        node.store.mkdir(parents=True, exist_ok=True)
        log = node.log.open("ab")
        try:
            node.proc = subprocess.Popen([self.binary, "-c", str(node.config)],
                                         stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL)
        finally:
            log.close()

    def alive(self, index: int) -> bool:
        proc = self.nodes[index].proc
        return proc is not None and proc.poll() is None

    def wait_ready(self, indexes: list[int] | None = None) -> None:
        """Wait until each node (of ``indexes``, default all running ones) accepts an MQTT
        CONNECT and sees a JetStream meta leader."""
        todo = [n for n in self.nodes if (indexes is None and n.proc is not None)
                or (indexes is not None and n.index in indexes)]
        deadline = time.monotonic() + self.ready_timeout_s
        while todo:
            for node in list(todo):
                if node.proc is None or node.proc.poll() is not None:
                    raise NatsClusterError(
                        f"nats-server {node.name} exited during start-up: "
                        f"{self._log_tail(node)}")
                if self.meta_leader(node.index) and mqtt_connack(node.mqtt_port):
                    todo.remove(node)
            if not todo:
                return
            if time.monotonic() > deadline:
                raise NatsClusterError(
                    f"NATS cluster not ready in {self.ready_timeout_s:g} s "
                    f"(waiting for {', '.join(n.name for n in todo)}): "
                    f"{self._log_tail(todo[0])}")
            time.sleep(0.1)

    def meta_leader(self, index: int) -> str | None:
        """The JetStream meta leader node ``index`` sees (from its ``/jsz``), or None."""
        info = self.monitor(index, "jsz")
        meta = (info or {}).get("meta_cluster")
        leader = meta.get("leader") if isinstance(meta, dict) else None
        if leader:
            return str(leader)
        if len(self.nodes) == 1 and info is not None and not info.get("disabled", False):
            return self.nodes[index].name
        return None

    def stream_leaders(self, index: int) -> dict[str, str]:
        """Each JetStream stream's leader as node ``index`` sees it (``/jsz``), by name."""
        info = self.monitor(index, "jsz?streams=true") or {}
        accounts: Any = info.get("account_details") or []
        leaders = {}
        for account in accounts:
            for stream in account.get("stream_detail") or []:
                leader = (stream.get("cluster") or {}).get("leader")
                if leader:
                    leaders[str(stream.get("name"))] = str(leader)
        return leaders

    def monitor(self, index: int, endpoint: str) -> dict[str, object] | None:
        """A monitoring endpoint's JSON from node ``index`` (None if it does not answer)."""
        url = f"http://127.0.0.1:{self.nodes[index].http_port}/{endpoint}"
        try:
            with urllib.request.urlopen(url, timeout=2.0) as resp:
                data = json.loads(resp.read())
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def kill(self, index: int) -> None:
        """SIGKILL node ``index`` (no shutdown: its clients see the TCP connection reset)."""
        proc = self.nodes[index].proc
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait()

    def restart(self, index: int, *, wait: bool = True) -> None:
        """Start node ``index`` again with its config and store; wait until it is ready."""
        if self.alive(index):
            raise NatsClusterError(f"node {self.nodes[index].name} is still running")
        self._spawn(self.nodes[index])
        if wait:
            self.wait_ready([index])

    def rss_mb(self, index: int) -> float | None:
        """Resident memory of node ``index`` in MiB (Linux /proc), None if it is not running."""
        proc = self.nodes[index].proc
        if proc is None or proc.poll() is not None:
            return None
        try:
            for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024.0
        except OSError:
            return None
        return None

    def stop(self) -> None:
        """Stop every node (SIGTERM, then SIGKILL after 5 s)."""
        for node in self.nodes:
            proc = node.proc
            if proc is not None and proc.poll() is None:
                proc.terminate()
        for node in self.nodes:
            proc = node.proc
            if proc is None:
                continue
            try:
                proc.wait(5.0)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def _log_tail(self, node: _Node, lines: int = 5) -> str:
        try:
            text = node.log.read_text(errors="replace").strip().splitlines()
        except OSError:
            return "(no log)"
        return " | ".join(text[-lines:]) or "(empty log)"

    def __enter__(self) -> NatsCluster:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
