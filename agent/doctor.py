"""`venue-agent doctor --config F`: finds what breaks an install, one line per check.

Each line is ``[ok]``, ``[WARN]`` or ``[FAIL]``, what was checked, what was found and, when
it is not ok, what to fix; the exit status is 1 when any check FAILs.

Doctor changes nothing: it creates no directory or file, never opens the outbox, and on the
broker publishes only a non-retained QoS 1 probe to the gateway's own ``health`` topic (never
the retained ``status``; a valid health@1 payload marked ``probe: true``), under its own client id (``<client id>-doctor``) so a running
agent's session is not taken over. Serial readers are probed only when no other process
holds the port (a probe would steal the running agent's bytes): UHF with a single
inventory, PN532 with GetFirmwareVersion after the HSU wake-up, EM4100 by listening.
"""

from __future__ import annotations

import os
import shutil
import ssl
import subprocess
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TextIO

from agent.brokerurl import BrokerAddress
from agent.config import Config, ReaderConfig, broker_settings, tcp_reader_address
from agent.topics import SCHEMA_HEALTH, Topics

OK, WARN, FAIL = "ok", "WARN", "FAIL"

#: What a cold numba cache costs the first start (measured on the project's machines).
COLD_START_COST = "first start compiles the kernels: ~15 s on a desktop, minutes on a Pi"

_NOT_AUTHORIZED = 0x87


@dataclass(frozen=True)
class Check:
    level: str  # OK, WARN or FAIL
    what: str
    detail: str = ""

    def line(self) -> str:
        return f"[{self.level}] {self.what}{': ' + self.detail if self.detail else ''}"


def run_doctor(cfg: Config, out: TextIO, *, listen_s: float = 3.0, answer_s: float = 2.0,
               broker_timeout_s: float = 5.0, sys_root: Path = Path("/sys")) -> int:
    """Run every check, print one line each and a summary; 0 when nothing FAILs, else 1.

    ``listen_s``: how long an EM4100 port is listened to; ``answer_s``: how long a UHF or
    PN532 reader may take to answer its probe; ``sys_root``: where sysfs is (tests)."""
    counts = {OK: 0, WARN: 0, FAIL: 0}

    def report(c: Check) -> None:
        counts[c.level] += 1
        print(c.line(), file=out, flush=True)

    report(Check(OK, f"config {cfg.source}",
                 f"{len(cfg.readers)} readers, {len(cfg.zones)} zones"))
    for r in cfg.readers:
        if r.protocol == "ble":
            report(check_ble_adapter(r, sys_root))
        else:
            report(check_serial_reader(r, listen_s=listen_s, answer_s=answer_s))
    for c in check_broker(cfg, timeout_s=broker_timeout_s):
        report(c)
    report(check_clock())
    report(check_disk(cfg))
    report(check_numba_cache(cfg))
    report(check_kernels(cfg))
    report(check_key_file(cfg))
    print(f"{counts[FAIL]} problem(s), {counts[WARN]} warning(s)", file=out)
    return 0 if counts[FAIL] == 0 else 1


# -- serial readers ----------------------------------------------------------------------


def _holders(path: Path) -> list[int]:
    """Other processes (that this user may see) holding ``path`` open."""
    try:
        target = os.path.realpath(path)
        pids = [int(p) for p in os.listdir("/proc") if p.isdigit()]
    except OSError:
        return []
    found = []
    for pid in pids:
        if pid == os.getpid():
            continue
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}") == target:
                    found.append(pid)
                    break
            except OSError:
                continue
    return found


def _permission_fix(p: Path) -> str:
    try:
        import grp

        group = grp.getgrgid(p.stat().st_gid).gr_name
    except (OSError, KeyError):
        group = "dialout"
    return (f"this user cannot read and write {p}: add the agent's user to the '{group}' group "
            f"(sudo usermod -aG {group} venue-agent), then restart the agent")


def check_serial_reader(r: ReaderConfig, *, listen_s: float = 3.0,
                        answer_s: float = 2.0) -> Check:
    from firmware_bridge.protocols import DEFAULT_BAUDRATE

    what = f"reader {r.id} ({r.protocol})"
    if r.port.startswith("/"):
        p = Path(r.port)
        if not p.exists():
            return Check(FAIL, what, f"serial port {p} not found (reader plugged in? the udev "
                         "rule that names it installed? `ls -l /dev/serial/by-id/`)")
        if not os.access(p, os.R_OK | os.W_OK):
            return Check(FAIL, what, _permission_fix(p))
        holders = _holders(p)
        if holders:
            return Check(WARN, what, f"{p} is open in process {holders[0]} (the agent "
                         "running?): not probed, a probe would take its bytes; stop the "
                         "agent to probe the reader")
    elif r.port.startswith(("socket://", "rfc2217://")):
        try:
            tcp_reader_address(r.port)
        except ValueError as e:
            return Check(FAIL, what, f"{r.port}: {e}")
    baud = r.baudrate or DEFAULT_BAUDRATE.get(r.protocol, 9600)
    try:
        import serial

        port = serial.serial_for_url(r.port, baudrate=baud, timeout=0.05)
    except (OSError, ValueError, ImportError) as e:
        return Check(FAIL, what, f"cannot open {r.port}: {e}")
    try:
        if r.protocol == "em4100":
            return _listen_em4100(port, what, r.port, listen_s)
        return _probe_command_reader(port, r.protocol, what, r.port, baud, answer_s)
    except (OSError, ValueError) as e:
        return Check(FAIL, what, f"{r.port}: {e}")
    finally:
        port.close()


def _read_for(port: Any, seconds: float, done: Any) -> tuple[int, bool]:
    """Feed ``done(chunk)`` what arrives for up to ``seconds`` or until it returns True;
    (bytes read, whether done)."""
    deadline = time.monotonic() + seconds
    total = 0
    while time.monotonic() < deadline:
        chunk = port.read(256)
        if chunk:
            total += len(chunk)
            if done(chunk):
                return total, True
    return total, False


def _listen_em4100(port: Any, what: str, url: str, listen_s: float) -> Check:
    from firmware_bridge.em4100 import Em4100Decoder

    dec = Em4100Decoder()
    reads: list[object] = []

    def done(chunk: bytes) -> bool:
        reads.extend(dec.feed(chunk))
        return bool(reads)

    total, _ = _read_for(port, listen_s, done)
    reads.extend(dec.drain())
    if reads:
        return Check(OK, what, f"{url} sent a valid card frame")
    if total:
        return Check(FAIL, what, f"{url} sent {total} bytes but no valid EM4100 frame "
                     f"({dec.stats.bad_frames} bad): wrong baud rate (readers[].baudrate)?")
    return Check(WARN, what, f"{url} opened, no frame in {listen_s:g} s (no card near it?): "
                 "hold a card to the reader while doctor runs")


def _probe_command_reader(port: Any, protocol: str, what: str, url: str, baud: int,
                          answer_s: float) -> Check:
    found: list[str] = []
    if protocol == "uhf-m100":
        from firmware_bridge import uhf_m100

        dec_u = uhf_m100.UhfM100Decoder()

        def done_u(chunk: bytes) -> bool:
            for m in dec_u.feed_messages(chunk):
                if isinstance(m, uhf_m100.UhfInventory):
                    found.append("answered a single inventory (a tag in the field)")
                elif isinstance(m, uhf_m100.UhfError) and m.code == uhf_m100.ERROR_NO_TAG:
                    found.append("answered a single inventory (no tag in the field)")
                elif isinstance(m, uhf_m100.UhfError):
                    found.append(f"answered with error 0x{m.code:02X} (alive)")
                elif m.frame_type != uhf_m100.TYPE_COMMAND:
                    found.append(f"answered (frame 0x{m.command:02X})")
            return bool(found)

        port.write(uhf_m100.single_inventory())
        total, _ = _read_for(port, answer_s, done_u)
        bad = dec_u.stats.bad_frames
        asked = "a single inventory"
    else:
        from firmware_bridge import pn532

        dec_p = pn532.Pn532Decoder()

        def done_p(chunk: bytes) -> bool:
            for m in dec_p.feed_messages(chunk):
                if (isinstance(m, pn532.Pn532Frame) and m.tfi == pn532.TFI_PN532
                        and m.command == 0x03 and len(m.data) >= 3):
                    found.append(f"answered GetFirmwareVersion: IC 0x{m.data[0]:02X} "
                                 f"(PN5{m.data[0]:02X}), firmware {m.data[1]}.{m.data[2]}")
                elif isinstance(m, pn532.Pn532ErrorFrame):
                    found.append("answered with an error frame (alive)")
            return bool(found)

        port.write(pn532.WAKEUP + pn532.encode_frame(bytes([0x02])))  # GetFirmwareVersion
        total, _ = _read_for(port, answer_s, done_p)
        bad = dec_p.stats.bad_frames
        asked = "GetFirmwareVersion"
    if found:
        return Check(OK, what, f"{url} {found[0]}")
    if total:
        return Check(FAIL, what, f"{url} answered {asked} with {total} bytes but no valid "
                     f"frame ({bad} bad): wrong baud rate (readers[].baudrate, now {baud})?")
    return Check(FAIL, what, f"{url} did not answer {asked} within {answer_s:g} s: the wrong "
                 f"port, the reader unpowered, or a baud rate other than {baud} "
                 "(readers[].baudrate)")


# -- Bluetooth ---------------------------------------------------------------------------


def check_ble_adapter(r: ReaderConfig, sys_root: Path = Path("/sys")) -> Check:
    what = f"reader {r.id} (ble)"
    bt = sys_root / "class" / "bluetooth"
    if not bt.is_dir():
        return Check(WARN, what, f"{bt} not found: no Bluetooth adapter known to the kernel, "
                     "or no sysfs here (containers); adapter state unknown")
    adapters = sorted(p.name for p in bt.iterdir() if ":" not in p.name)
    adapter = r.adapter or (adapters[0] if adapters else "hci0")
    if adapter not in adapters:
        return Check(FAIL, what, f"adapter {adapter} not found (have: "
                     f"{', '.join(adapters) or 'none'}): plugged in? readers[].adapter?")
    rfkill = sys_root / "class" / "rfkill"
    state = "rfkill state unknown"
    blocked = []
    dev_rfkill = [p.name for p in (bt / adapter).glob("rfkill*")]
    for name in dev_rfkill:
        d = rfkill / name
        for kind in ("soft", "hard"):
            try:
                if (d / kind).read_text().strip() == "1":
                    blocked.append(kind)
            except OSError:
                continue
        state = "not rfkill-blocked"
    if blocked:
        fix = ("rfkill unblock bluetooth" if "hard" not in blocked
               else "a hardware switch or the firmware blocks it")
        return Check(FAIL, what, f"adapter {adapter} is rfkill-blocked "
                     f"({'/'.join(blocked)}): {fix}")
    powered = _bluetoothctl_powered()
    if powered is False:
        return Check(FAIL, what, f"adapter {adapter} is not powered: "
                     "bluetoothctl power on (and AutoEnable=true in /etc/bluetooth/main.conf)")
    if not dev_rfkill:
        return Check(WARN, what, f"adapter {adapter} present, {state}")
    return Check(OK, what, f"adapter {adapter} present, {state}, "
                 f"{'powered' if powered else 'power state unknown'}")


def _bluetoothctl_powered() -> bool | None:
    if shutil.which("bluetoothctl") is None:
        return None
    try:
        done = subprocess.run(["bluetoothctl", "show"], capture_output=True, text=True,
                              timeout=3, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    for line in done.stdout.splitlines():
        if line.strip().startswith("Powered:"):
            return line.split(":", 1)[1].strip() == "yes"
    return None


# -- broker ------------------------------------------------------------------------------


def check_broker(cfg: Config, timeout_s: float = 5.0) -> list[Check]:
    b = cfg.broker
    checks: list[Check] = []
    password = None
    if b.password_file:
        try:
            with open(b.password_file, encoding="utf-8") as f:
                password = f.read().strip()
            checks.append(Check(OK, f"broker password file {b.password_file}", "readable"))
        except OSError as e:
            checks.append(Check(FAIL, f"broker password file {b.password_file}",
                                f"missing or not readable by this user ({e.strerror}): "
                                "the agent's user must read it (chown/chmod 0640)"))
            return checks
    if b.ca_file:
        present = Path(b.ca_file).is_file()
        checks.append(Check(OK if present else FAIL, f"broker CA file {b.ca_file}",
                            "present" if present else "not found: fix broker.ca_file"))
        if present:
            checks.append(check_certificate_file(
                f"broker CA file {b.ca_file}", Path(b.ca_file),
                "renew the venue CA and give every gateway and the broker the new one"))
    if b.cert_file and Path(b.cert_file).is_file():
        checks.append(check_certificate_file(
            f"client certificate {b.cert_file}", Path(b.cert_file),
            "issue this gateway a new one from the venue CA (broker.cert_file)"))
    topics = Topics(cfg.venue.id, cfg.gateway.id)
    for url in b.urls:
        try:
            one = replace(b, url=url, urls=(url,))
            settings = broker_settings(one, f"{cfg.client_id}-doctor", password)
        except ValueError as e:
            checks.append(Check(FAIL, f"broker {url}", str(e)))
            continue
        checks.extend(probe_broker(settings, settings.addresses[0], topics, timeout_s))
    return checks


#: A certificate that expires within this many days is a warning.
EXPIRY_WARN_DAYS = 30


def expiry_check(what: str, not_after: float, now: float, fix: str,
                 not_before: float | None = None) -> Check:
    """FAIL for a certificate that has expired (or is not valid yet), WARN within
    EXPIRY_WARN_DAYS of its end, else OK; times in seconds since the epoch."""
    until = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(not_after))
    days = (not_after - now) / 86400.0
    if days < 0:
        return Check(FAIL, what, f"certificate has expired ({until}, {-days:.0f} days ago): "
                     f"{fix}")
    if not_before is not None and not_before > now:
        since = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(not_before))
        return Check(FAIL, what, f"certificate is not valid before {since}: is this "
                     "gateway's clock right (NTP)?")
    if days < EXPIRY_WARN_DAYS:
        return Check(WARN, what, f"certificate expires {until}, in {days:.0f} days: {fix}")
    return Check(OK, what, f"certificate valid until {until} ({days:.0f} days)")


def check_certificate_file(what: str, path: Path, fix: str, now: float | None = None) -> Check:
    """The expiry of the PEM certificate(s) in ``path``: of a bundle, the first to expire."""
    from cryptography import x509

    try:
        certs = x509.load_pem_x509_certificates(path.read_bytes())
    except (OSError, ValueError) as e:
        return Check(FAIL, what, f"cannot read a PEM certificate from it ({e})")
    first = min(certs, key=lambda c: c.not_valid_after_utc)
    return expiry_check(what, first.not_valid_after_utc.timestamp(),
                        time.time() if now is None else now, fix,
                        max(c.not_valid_before_utc.timestamp() for c in certs))


_CONNECT_FIX = {
    0x04: "bad username or password (3.1.1): check broker.username and password_file",
    0x05: "not authorized (3.1.1): the broker refuses this user (password file? certificate?)",
    0x86: "bad username or password: check broker.username and password_file",
    0x87: "not authorized: a wrong username or password (broker.username, password_file), "
          "a client certificate the broker does not accept, or no anonymous access",
    0x85: "client identifier not valid",
    0x8A: "banned",
}


def probe_broker(settings: Any, addr: BrokerAddress, topics: Topics,
                 timeout_s: float = 5.0) -> list[Check]:
    """A real MQTT CONNECT with the gateway's TLS and credentials, then a QoS 1 probe to
    its own health topic (PUBACK reason checked) and to a topic it must not own."""
    what = f"broker {addr.url}"
    protocol = "5" if settings.protocol in ("5", "auto") else "3.1.1"
    result = _connect(settings, addr, protocol, timeout_s)
    if (isinstance(result, _Refused) and settings.protocol == "auto"
            and result.code == 0x84):  # unsupported protocol version: try 3.1.1 as the agent
        protocol = "3.1.1"
        result = _connect(settings, addr, protocol, timeout_s)
    if isinstance(result, str):
        return [Check(FAIL, what, result)]
    if isinstance(result, _Refused):
        return [Check(FAIL, what, f"CONNECT refused ({result.reason}, 0x{result.code:02X}): "
                      f"{_CONNECT_FIX.get(result.code, 'see the broker log')}")]
    client, session = result.client, result.session
    try:
        tls = " over TLS (certificate verified)" if addr.tls else ""
        checks = [Check(OK, what, f"MQTT {protocol} CONNECT accepted{tls}")]
        if addr.tls:
            checks.append(_peer_expiry(client, addr.url))
        own = topics.health
        other = Topics(topics.venue, f"{topics.gateway}-doctor-other").health
        if protocol != "5":
            checks.append(Check(WARN, f"broker ACL {addr.url}", "MQTT 3.1.1 has no PUBACK "
                                "reason: whether the ACL lets this gateway publish is unknown"))
            return checks
        code = _publish(client, session, topics, own, timeout_s)
        if code is None:
            checks.append(Check(FAIL, f"broker publish {own}", "no PUBACK within "
                                f"{timeout_s:g} s"))
        elif code == _NOT_AUTHORIZED:
            checks.append(Check(FAIL, f"broker publish {own}", "PUBACK 0x87 not authorized: "
                                "the broker's ACL denies this gateway its own topic; grant "
                                "it in the ACL (`venue-agent acl CONFIG...` writes one)"))
        elif code >= 0x80:
            checks.append(Check(FAIL, f"broker publish {own}", f"PUBACK 0x{code:02X}"))
        else:
            checks.append(Check(OK, f"broker publish {own}",
                                f"accepted, PUBACK 0x{code:02X} (a non-retained probe)"))
            code = _publish(client, session, topics, other, timeout_s)
            if code == _NOT_AUTHORIZED:
                checks.append(Check(OK, f"broker ACL {addr.url}",
                                    f"denies {other} (another gateway's topic)"))
            elif code is not None and code < 0x80:
                checks.append(Check(WARN, f"broker ACL {addr.url}", "the broker's ACL lets "
                                    f"this gateway write other gateways' topics ({other}): "
                                    "use the ACL `venue-agent acl` writes"))
        return checks
    finally:
        client.disconnect()
        client.loop_stop()


def _peer_expiry(client: Any, url: str) -> Check:
    """When the broker's (verified) certificate expires."""
    what = f"broker certificate {url}"
    sock = client.socket()
    cert = sock.getpeercert() if isinstance(sock, ssl.SSLSocket) else None
    if not cert or "notAfter" not in cert:
        return Check(WARN, what, "its expiry date could not be read")
    return expiry_check(what, ssl.cert_time_to_seconds(str(cert["notAfter"])), time.time(),
                        "renew it on the broker")


class _Session:
    def __init__(self) -> None:
        self.connected = threading.Event()
        self.rc: Any = None
        self.acks: dict[int, int] = {}
        self.acked = threading.Condition()


@dataclass(frozen=True)
class _Refused:
    reason: str
    code: int


@dataclass(frozen=True)
class _Connected:
    client: Any
    session: _Session


def _connect(settings: Any, addr: BrokerAddress, protocol: str,
             timeout_s: float) -> str | _Refused | _Connected:
    """Accepted, refused by CONNACK, or a message when the connection itself fails."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=settings.client_id,
                         protocol=mqtt.MQTTv5 if protocol == "5" else mqtt.MQTTv311,
                         clean_session=None if protocol == "5" else True,
                         reconnect_on_failure=False)
    client.connect_timeout = timeout_s
    if settings.username is not None:
        client.username_pw_set(settings.username, settings.password)
    where = f"{addr.host}:{addr.port}"
    if addr.tls:
        try:
            client.tls_set_context(settings.ssl_context())
        except ValueError as e:
            return str(e)
    session = _Session()

    def on_connect(_c: Any, _u: Any, _f: Any, rc: Any, _p: Any) -> None:
        session.rc = rc
        session.connected.set()

    def on_disconnect(_c: Any, _u: Any, _f: Any, rc: Any, _p: Any) -> None:
        if session.rc is None:
            session.rc = rc
        session.connected.set()

    def on_publish(_c: Any, _u: Any, mid: int, rc: Any, _p: Any) -> None:
        with session.acked:
            session.acks[mid] = int(rc.value)
            session.acked.notify_all()

    client.on_connect, client.on_disconnect = on_connect, on_disconnect
    client.on_publish = on_publish
    try:
        client.connect(addr.host, addr.port, keepalive=settings.keepalive_s)
    except ssl.SSLCertVerificationError as e:
        if e.verify_code in (9, 10):  # not yet valid, expired: the cause, not the CA
            from agent.publisher import describe_verify_error

            return describe_verify_error(e, settings.ca_file)
        ca = settings.ca_file or "the system trust store"
        return (f"TLS: the broker's certificate does not verify against {ca} "
                f"({e.verify_message}): wrong broker.ca_file, or a host name the "
                "certificate does not name")
    except ssl.SSLError as e:
        return (f"TLS handshake with {where} failed ({e.reason or e}): is it a TLS "
                "listener? (an mqtts:// URL needs one; a client certificate the broker wants?)")
    except ConnectionRefusedError:
        return f"{where} refused the connection: is the broker running and listening there?"
    except (OSError, ValueError) as e:
        if addr.tls and isinstance(e, (ConnectionResetError, BrokenPipeError)):
            return (f"TLS handshake with {where} failed ({e}): is it a TLS listener? (an "
                    "mqtts:// URL needs one)")
        return f"cannot connect to {where}: {e}"
    client.loop_start()
    if not session.connected.wait(timeout_s) or session.rc is None:
        client.loop_stop()
        plain = " (a plain MQTT listener behind an mqtts:// URL?)" if addr.tls else ""
        return f"no CONNACK from {where} within {timeout_s:g} s{plain}"
    rc = session.rc
    value = int(getattr(rc, "value", rc))
    if value != 0:
        client.loop_stop()
        return _Refused(str(rc), value)
    if not client.is_connected():
        client.loop_stop()
        return f"{where} closed the connection ({rc})"
    return _Connected(client, session)


def probe_payload(topics: Topics, at: float) -> dict[str, Any]:
    """The probe published to the gateway's own health topic: a valid health@1 message (the
    contract's ``probe: true``, every figure zero, no readers), so consumers that validate
    the health channel accept it and those that read ``probe`` ignore it. ``at``: epoch s."""
    return topics.envelope(SCHEMA_HEALTH, at, probe=True, uptime_s=0.0, readers={},
                           outbox_depth=0, publisher={}, cpu_pct=0.0, rss_mb=0.0, tick_ms=0.0,
                           tick_ms_max=0.0, live_tags=0)


def _publish(client: Any, session: _Session, topics: Topics, topic: str,
             timeout_s: float) -> int | None:
    import json

    payload = json.dumps(probe_payload(topics, time.time()))
    info = client.publish(topic, payload, qos=1, retain=False)
    with session.acked:
        session.acked.wait_for(lambda: info.mid in session.acks, timeout_s)
        return session.acks.get(info.mid)


# -- clock, disk, numba cache, key -------------------------------------------------------


def check_clock() -> Check:
    what = "clock"
    broker = "(the broker's clock is not visible over MQTT: not compared)"
    if shutil.which("timedatectl") is None:
        return Check(WARN, what, f"NTP state unknown (no timedatectl) {broker}")
    try:
        done = subprocess.run(["timedatectl", "show", "-p", "NTPSynchronized", "--value"],
                              capture_output=True, text=True, timeout=5, check=False)
    except (OSError, subprocess.SubprocessError) as e:
        return Check(WARN, what, f"NTP state unknown ({e}) {broker}")
    value = done.stdout.strip()
    if done.returncode != 0 or value not in ("yes", "no"):
        err = (done.stderr.strip().splitlines() or ["no answer"])[0]
        return Check(WARN, what, f"NTP state unknown (timedatectl: {err}) {broker}")
    if value == "no":
        return Check(WARN, what, "not synchronised (NTPSynchronized=no): moments carry wrong "
                     "times; enable NTP (timedatectl set-ntp true; systemd-timesyncd) and "
                     f"check the network reaches a time server {broker}")
    return Check(OK, what, f"synchronised (NTP) {broker}")


def _existing_ancestor(p: Path) -> Path:
    p = p.absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def check_disk(cfg: Config) -> Check:
    d = cfg.db_path.parent
    what = f"storage {d}"
    base = _existing_ancestor(d)
    if base != d.absolute():
        if not os.access(base, os.W_OK | os.X_OK):
            return Check(FAIL, what, f"does not exist and this user cannot create it in "
                         f"{base}: create it owned by the agent's user (install -d -o "
                         "venue-agent)")
        created = "does not exist yet (created on first start); "
    elif not os.access(d, os.W_OK | os.X_OK):
        return Check(FAIL, what, "not writable by this user: chown it to the agent's user")
    else:
        created = ""
    try:
        free = shutil.disk_usage(base).free
    except OSError as e:
        return Check(WARN, what, f"free space unknown ({e})")
    used = sum(p.stat().st_size for p in (cfg.db_path, Path(f"{cfg.db_path}-wal"))
               if p.is_file())
    need = max(cfg.storage.max_mb * 2**20 - used, 0)
    free_mb, max_mb = free // 2**20, cfg.storage.max_mb
    if free < need:
        return Check(FAIL, what, f"{created}{free_mb} MB free, but the outbox may grow to "
                     f"storage.max_mb = {max_mb} MB: free space or lower storage.max_mb")
    return Check(OK, what, f"{created}{free_mb} MB free for storage.max_mb = {max_mb} MB")


def _numba_cache_dir(cfg: Config) -> Path:
    """The numba cache `run` will use: NUMBA_CACHE_DIR wins (runtime.prepare_numba_cache)."""
    env = os.environ.get("NUMBA_CACHE_DIR")
    return Path(env) if env else cfg.numba_cache_dir


def check_numba_cache(cfg: Config) -> Check:
    d = _numba_cache_dir(cfg)
    what = f"numba cache {d}" + (" (NUMBA_CACHE_DIR)" if "NUMBA_CACHE_DIR" in os.environ else "")
    if not d.is_dir():
        return Check(WARN, what, f"cold (not created yet): {COLD_START_COST}")
    index = [p for sub in d.glob("kernels*") if sub.is_dir() for p in sub.glob("*.nbi")]
    writable = os.access(d, os.W_OK | os.X_OK)
    if not index:
        tail = "" if writable else "; not writable by this user, so every start compiles"
        return Check(WARN, what, f"cold (no compiled kernels): {COLD_START_COST}{tail}")
    if not writable:
        return Check(WARN, what, f"warm ({len(index)} kernels) but not writable by this "
                     "user: a new version will compile on every start")
    return Check(OK, what, f"warm ({len(index)} compiled kernels; a new version compiles "
                 "once)")


def check_kernels(cfg: Config) -> Check:
    """Whether ``run`` will load ahead-of-time kernels (kernels/backends.py) or use numba."""
    from kernels import backends

    what = "kernels"
    try:
        found = backends.load_aot(backends.aot_dir(_numba_cache_dir(cfg)))
    except backends.KernelsUnavailable as e:
        return Check(WARN, what, f"numba JIT: {e}; starts take about 1 s and 100 MB more "
                     f"than with them: venue-agent build-kernels --config <this config>")
    return Check(OK, what, f"ahead of time: {found.origin}")


def check_key_file(cfg: Config) -> Check:
    key = cfg.key_path
    what = f"pseudonym key {key}"
    if not key.exists():
        return Check(WARN, what, "missing: created on first start (keep a backup of it; "
                     "a new key changes every pseudonym)")
    mode = key.stat().st_mode & 0o777
    if mode & 0o077:
        return Check(FAIL, what, f"mode {mode:04o} lets the group or others read it: "
                     f"chmod 600 {key}")
    if not os.access(key, os.R_OK):
        return Check(FAIL, what, "not readable by this user: chown it to the agent's user")
    return Check(OK, what, f"mode {mode:04o}")
