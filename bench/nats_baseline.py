"""NATS alone at a venue's rate: what the cluster gives before any agent code runs.

``make scale`` measures the gateways' whole delivery path; this measures the broker's share
of it. The same 3-node cluster as ``make scale`` (:class:`bench.nats_cluster.NatsCluster`,
the same MQTT options), N bare paho clients (MQTT 3.1.1, clean session, each with the
gateways' QoS 1 subscription to ``venue/{venue}/ack/#``), each publishing its zones' state
every second, QoS 1 and retained, like a gateway with nothing else to do: no outbox, no
core, no SQLite. Prints the PUBACK latency (publish call to PUBACK) and writes
``bench/out/nats_baseline.json``.

    python bench/nats_baseline.py --clients 200 --zones 3 --seconds 30
    python bench/nats_baseline.py --no-retain      # plain QoS 1, for comparison
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: the repository root is the import root
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.topics import SCHEMA_ZONE_STATE, Topics
from bench.nats_cluster import NatsCluster

PAYLOAD = json.dumps({"schema": SCHEMA_ZONE_STATE, "pad": "x" * 400}).encode()
TOPICS = Topics("baseline")  # the agent's own topic names (venue "baseline")


def _clients(urls: list[str], ids: list[int], zones: int, seconds: float, retain: bool,
             start_at: Any, out: str) -> None:
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    latencies: list[float] = []
    lock = threading.Lock()
    clients = []
    for i in ids:
        sent: dict[int, float] = {}
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"baseline-{i}",
                        protocol=mqtt.MQTTv311, clean_session=True)

        def on_publish(_c: Any, _u: Any, mid: int, _rc: Any, _p: Any,
                       sent: dict[int, float] = sent) -> None:
            t = sent.pop(mid, None)
            if t is not None:
                with lock:
                    latencies.append(time.time() - t)

        c.on_publish = on_publish
        host, port = urls[i % len(urls)].rsplit("//", 1)[1].rsplit(":", 1)
        c.connect(host, int(port), 30)
        c.loop_start()
        c.subscribe(TOPICS.ack_filter, 1)  # the gateways' QoS 1 subscription
        clients.append((i, c, sent))
    while start_at.value == 0.0:
        time.sleep(0.01)
    t0 = float(start_at.value)
    k = 0
    while time.time() < t0 + seconds:
        for i, c, sent in clients:
            for z in range(zones):
                info = c.publish(TOPICS.zone_state(f"g{i}-z{z}"), PAYLOAD, qos=1,
                                 retain=retain)
                sent[info.mid] = time.time()
        k += 1
        time.sleep(max(0.0, t0 + k - time.time()))
    time.sleep(3.0)  # the last PUBACKs
    Path(out).write_text(json.dumps(latencies))
    for _i, c, _s in clients:
        c.disconnect()
        c.loop_stop()


def _pct(values: list[float], q: float) -> float:
    return round(1000.0 * values[min(len(values) - 1, int(q * len(values)))], 1)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--clients", type=int, default=200)
    ap.add_argument("--zones", type=int, default=3, help="retained publishes per client per s")
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--procs", type=int, default=4, help="client processes")
    ap.add_argument("--no-retain", action="store_true")
    ap.add_argument("--out", type=Path, default=Path("bench/out/nats_baseline.json"))
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="nats-baseline-") as tmp, NatsCluster(
            Path(tmp) / "nats", consumer_replicas=1, consumer_memory_storage=True,
            stream_replicas=3) as cluster:
        ctx = mp.get_context("spawn")
        start_at = ctx.Value("d", 0.0)
        procs = []
        for p in range(args.procs):
            ids = list(range(p, args.clients, args.procs))
            proc = ctx.Process(target=_clients, args=(
                cluster.mqtt_urls, ids, args.zones, args.seconds, not args.no_retain,
                start_at, str(Path(tmp) / f"lat{p}.json")), daemon=True)
            proc.start()
            procs.append(proc)
        time.sleep(max(5.0, args.clients / 20))  # every client connected and subscribed
        start_at.value = time.time() + 1.0
        for proc in procs:
            proc.join(args.seconds + 120)
        lat = sorted(x for p in range(args.procs)
                     for x in json.loads((Path(tmp) / f"lat{p}.json").read_text()))
    result = {"clients": args.clients, "msgs_per_s": args.clients * args.zones,
              "retain": not args.no_retain, "pubacks": len(lat),
              "puback_ms_p50": _pct(lat, 0.5), "puback_ms_p90": _pct(lat, 0.9),
              "puback_ms_p99": _pct(lat, 0.99), "puback_ms_max": _pct(lat, 1.0)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
