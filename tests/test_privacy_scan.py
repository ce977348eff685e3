"""Privacy proven on the gateway's own stores: no raw tag id, in any encoding, anywhere.

A quarter of an hour of a venue runs through the gateway core (agent/gateway.py) with readers of all
four protocols; every message it decides is stored in the outbox (agent/outbox.py, a real
SQLite file in WAL mode) as the runtime stores it, and its checkpoint is written with
agent/checkpoint.py. Then the published payloads, the database, its WAL and shared-memory
files, and the checkpoint (its bytes and every array inside it, decompressed) are scanned
for every raw id the readers sent, in every encoding a raw id could be written in, and for
the keys: nothing is found. Pseudonyms are the same within an epoch and differ across one.
"""

from __future__ import annotations

import base64
import json
import random
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from agent import checkpoint
from agent.config import parse_config
from agent.gateway import GatewayCore, Outgoing
from agent.outbox import Outbox
from agent.privacy import Rotation, epoch_key
from agent.topics import Topics
from firmware_bridge.records import RawRead
from tests.configs import RIDE_READERS

pytestmark = pytest.mark.timeout(240)

KEY = bytes(range(100, 132))
CONFIG = """
[venue]
id = "park"
[gateway]
id = "gw-1"
[moments]
hold_s = 0
cooldown_s = 30
""" + RIDE_READERS + """
[[readers]]
id = "touch-in"
protocol = "pn532"
port = "socket://127.0.0.1:7003"
zone = "touch"
role = "entry"
[[readers]]
id = "touch-out"
protocol = "uhf-m100"
port = "socket://127.0.0.1:7004"
zone = "touch"
role = "exit"
[[readers]]
id = "plaza-ble"
protocol = "ble"
zone = "plaza"
[[zones]]
id = "ride"
kind = "queue"
capacity = 10
wait_short_s = 900
[[zones]]
id = "touch"
kind = "queue"
capacity = 10
[[zones]]
id = "plaza"
kind = "area"
capacity = 5
absence_timeout_s = 60
"""


@dataclass
class Guest:
    em4100: bytes  # 5 bytes: version byte + 4-byte card number
    uid: bytes  # PN532: a 7-byte NTAG UID or a 4-byte MIFARE Classic UID
    epc: bytes  # UHF: a 12-byte EPC
    ble: bytes  # an iBeacon identity: UUID + major + minor (20 bytes)

    def ids(self) -> list[tuple[str, bytes]]:
        return [("em4100", self.em4100), ("pn532", self.uid), ("uhf-m100", self.epc),
                ("ble", self.ble)]


def guests(n: int, rng: random.Random) -> list[Guest]:
    out = []
    for i in range(n):
        # 4-byte UIDs of bytes >= 0x80: no chance match inside JSON or SQLite text.
        uid = (bytes([0x04, *rng.randbytes(6)]) if i % 2
               else bytes(rng.randrange(0x80, 0x100) for _ in range(4)))
        out.append(Guest(em4100=bytes([rng.choice([0x01, 0x10, 0x4A])]) + rng.randbytes(4),
                         uid=uid, epc=bytes.fromhex("E280") + rng.randbytes(10),
                         ble=rng.randbytes(16) + rng.randbytes(4)))
    return out


def encodings(protocol: str, raw: bytes) -> dict[str, bytes]:
    """Every form a raw id could be written in: bytes, hex, decimal, base64, integers."""
    n_be, n_le = int.from_bytes(raw, "big"), int.from_bytes(raw, "little")
    forms = {
        "raw bytes": raw, "raw bytes reversed": raw[::-1],
        "hex lower": raw.hex().encode(), "hex upper": raw.hex().upper().encode(),
        "hex lower with colons": raw.hex(":").encode(),
        "hex upper with colons": raw.hex(":").upper().encode(),
        "hex lower, reversed bytes": raw[::-1].hex().encode(),
        "hex upper, reversed bytes": raw[::-1].hex().upper().encode(),
        "decimal": str(n_be).encode(), "decimal, little-endian": str(n_le).encode(),
        "base64": base64.b64encode(raw).rstrip(b"="),
        "hex lower, UTF-16": raw.hex().encode("utf-16-le"),
    }
    if len(raw) <= 8:
        for order in ("little", "big"):
            forms[f"uint64 {order}-endian"] = n_be.to_bytes(8, order)
            forms[f"uint64 {order}-endian of the reversed id"] = n_le.to_bytes(8, order)
    if protocol == "em4100":
        card = raw[1:]
        forms |= {
            "EM4100 10-char ASCII (reader frame)": raw.hex().upper().encode(),
            "EM4100 5-byte": raw,
            "EM4100 card number, 10 digits": b"%010d" % int.from_bytes(card, "big"),
            "EM4100 card number, decimal": str(int.from_bytes(card, "big")).encode(),
            "EM4100 last 3 bytes, 8 digits": b"%08d" % int.from_bytes(raw[2:], "big"),
            "EM4100 facility,card (Wiegand 26)":
                b"%03d,%05d" % (raw[2], int.from_bytes(raw[3:], "big")),
        }
    if protocol == "ble":
        u = raw[:16].hex()
        forms["iBeacon UUID"] = f"{u[:8]}-{u[8:12]}-{u[12:16]}-{u[16:20]}-{u[20:]}".encode()
        forms["iBeacon UUID, upper"] = forms["iBeacon UUID"].upper()
    return forms


def scan(blobs: dict[str, bytes], ids: list[tuple[str, bytes]],
         secrets: dict[str, bytes]) -> list[str]:
    """'<what> in <where>' for every hit."""
    named: dict[bytes, str] = {}  # needle -> what it is (the first name of a duplicate form)
    for protocol, raw in ids:
        for form, value in encodings(protocol, raw).items():
            named.setdefault(value, f"{protocol} {raw.hex()} as {form}")
    for name, key in secrets.items():
        for form, value in (("raw", key), ("hex", key.hex().encode()),
                            ("HEX", key.hex().upper().encode())):
            named.setdefault(value, f"{name} {form}")
    needles = list(named)
    assert min(map(len, needles)) >= 4
    prefixes = np.array([int.from_bytes(n[:4], "big") for n in needles], np.uint32)
    hits = []
    for where, blob in blobs.items():
        # Only needles whose first 4 bytes occur somewhere are searched for in full.
        maybe = np.isin(prefixes, _windows(blob))
        hits += [f"{named[needles[i]]} in {where}" for i in np.flatnonzero(maybe)
                 if needles[i] in blob]
    return hits


def _windows(blob: bytes) -> np.ndarray:
    """Every 4-byte window of ``blob`` as a big-endian uint32."""
    a = np.frombuffer(blob, np.uint8).astype(np.uint32)
    if a.size < 4:
        return np.empty(0, np.uint32)
    return (a[:-3] << 24) | (a[1:-2] << 16) | (a[2:-1] << 8) | a[3:]


def checkpoint_blobs(path: Path) -> dict[str, bytes]:
    """The checkpoint file's bytes and each member decompressed."""
    blobs = {str(path.name): path.read_bytes()}
    with zipfile.ZipFile(path) as z:
        for member in z.namelist():
            blobs[f"{path.name}:{member}"] = z.read(member)
    return blobs


def sqlite_blobs(db: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in db.parent.glob(db.name + "*") if p.is_file()}


def test_no_raw_id_in_payloads_outbox_wal_or_checkpoint(tmp_path: Path) -> None:
    cfg = parse_config(CONFIG)
    rotation = Rotation.of(cfg.privacy)
    rng = random.Random(8)
    people = guests(24, rng)
    # 10:00 local on some day: the quarter of an hour stays in one epoch
    start = rotation.start(rotation.epoch(1_780_000_000.0)) + 6 * 3600
    core = GatewayCore(cfg, key=KEY, max_tags=1024, started_at=start)
    for rid in core.readers:
        core.reader_state(rid, True, None, start)
    db = tmp_path / "agent.db"
    outbox = Outbox(db)
    published: list[bytes] = []
    pending: list[Outgoing] = []
    topics = Topics("park", "gw-1")
    blobs: dict[str, bytes] = {}
    try:
        arrived: dict[int, float] = {}
        for second in range(900):
            now = start + second
            g = second // 20
            if second % 20 == 0 and g < len(people):  # a guest every 20 s, through both queues
                arrived[g] = now
                core.accept_reads("ride-in", now, [RawRead("em4100", people[g].em4100)])
                core.accept_reads("touch-in", now, [RawRead("pn532", people[g].uid)])
            for i, t in list(arrived.items()):
                if now - t == 240:
                    core.accept_reads("ride-out", now, [RawRead("em4100", people[i].em4100)])
                    core.accept_reads("touch-out", now,
                                      [RawRead("uhf-m100", people[i].epc, -55.0)])
                if now - t < 600 and second % 2 == 0:  # then a while on the plaza
                    core.accept_reads("plaza-ble", now, [RawRead("ble", people[i].ble, -60.0)])
            pending += core.step(now, wall=now).messages
            if second % 10 == 0:
                health = topics.envelope("venue-agent/health@1", now,
                                         readers=core.reader_health(10.0, 0.0, {}))
                pending.append(Outgoing(topics.health, health, qos=0))
            if second % 5 == 4:  # one commit per 5 ticks (the runtime: per tick) keeps it quick
                with outbox.batch():
                    for m in pending:
                        outbox.enqueue(m.topic, m.payload, qos=m.qos, retain=m.retain,
                                       seq_stream=m.seq_stream, coalesce_key=m.coalesce_key,
                                       expiry_s=m.expiry_s)
                        published.append(json.dumps(m.payload).encode())
                pending = []
            if second == 450:
                checkpoint.save(tmp_path / "mid.npz", core.checkpoint())
        kinds = {json.loads(p).get("schema") for p in published}
        assert {"venue-agent/zone-state@1", "venue-agent/moment@1", "venue-agent/dispatch@1",
                "venue-agent/nudge@1", "venue-agent/health@1"} <= kinds, kinds
        checkpoint.save(tmp_path / "checkpoint.npz", core.checkpoint())
        assert (tmp_path / "agent.db-wal").stat().st_size > 0
        blobs |= {f"{name} (open)": b for name, b in sqlite_blobs(db).items()}
    finally:
        outbox.close()
    blobs |= {f"{name} (closed)": b for name, b in sqlite_blobs(db).items()}
    blobs |= checkpoint_blobs(tmp_path / "mid.npz") | checkpoint_blobs(tmp_path / "checkpoint.npz")
    blobs["published payloads"] = b"\n".join(published)
    engine_tags = checkpoint.load(tmp_path / "checkpoint.npz", checkpoint.fingerprint(cfg))[0]
    assert engine_tags is not None  # a real checkpoint, restorable
    ids = [i for g in people for i in g.ids()]
    epoch = core.pseudonym.epoch
    assert epoch is not None
    secrets = {"master key": KEY, "epoch key": epoch_key(KEY, epoch)}
    assert sum(len(b) for b in blobs.values()) > 100_000  # there was something to scan
    assert scan(blobs, ids, secrets) == []
    # the scanner finds what it looks for
    planted = {"planted": b"...%s..." % people[3].em4100.hex().upper().encode()}
    assert scan(planted, ids, {}) != []


def test_pseudonyms_differ_across_an_epoch_boundary_but_not_within_one() -> None:
    """Through the core: a wristband's reads on two days have unrelated pseudonyms."""
    cfg = parse_config(CONFIG)
    rotation = Rotation.of(cfg.privacy)
    boundary = rotation.start(rotation.epoch(1_780_000_000.0) + 1)  # 04:00 local
    core = GatewayCore(cfg, key=KEY, max_tags=1024, started_at=boundary - 86400)
    band = RawRead("em4100", bytes.fromhex("0A1B2C3D4E"))

    def pseudonym(ts: float) -> int:
        core.accept_reads("ride-in", ts, [band])
        tags = core.buffer.take()[1]
        assert tags.size == 1
        return int(tags[0])

    day1 = {pseudonym(boundary - dt) for dt in (20 * 3600, 3600, 1)}
    day2 = {pseudonym(boundary + dt) for dt in (0, 1, 3600, 20 * 3600)}
    assert len(day1) == 1 and len(day2) == 1 and day1 != day2
    assert pseudonym(boundary - 5) in day2  # a late batch never brings the old key back
    day3 = {pseudonym(boundary + 86400 + 1)}
    assert day3 != day1 and day3 != day2
    # another gateway (another key) gives the same wristband other pseudonyms on the same day
    other = GatewayCore(cfg, key=bytes(32), max_tags=1024)
    other.accept_reads("ride-in", boundary + 10, [band])
    assert int(other.buffer.take()[1][0]) not in day2
