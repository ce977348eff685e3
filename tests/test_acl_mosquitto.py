"""The generated ACL and the shipped broker config on a real Mosquitto.

`venue-agent acl` writes the ACL for two gateways; passwords are made with
``mosquitto_passwd -b``; paho clients then try what each user may and may not do. On MQTT 5 a
refused publish comes back as PUBACK reason 0x87 (not authorized); on MQTT 3.1.1 Mosquitto
acknowledges it as if it had been accepted and simply never delivers it.

The shipped ``config/mosquitto.conf`` is started as an operator would install it (paths and
ports rewritten to the test's): TLS on 8883 with and without required client certificates,
WebSockets over TLS on 8884 for the board, plain MQTT on loopback only. The test CA and
certificates are made with the ``openssl`` command line.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from agent import cli
from agent.broker import LocalBroker, _accepts, find_mosquitto, free_port
from agent.topics import ANY, Topics
from tests.tls_helpers import have_openssl, make_pki, tls_context

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

ROOT = Path(__file__).resolve().parents[1]
VENUE = "park-east"
GW_A, GW_B = "venue-agent-park-east-gw-a", "venue-agent-park-east-gw-b"
PASSWORDS = {GW_A: "pw-a", GW_B: "pw-b", "staff": "pw-staff", "board": "pw-board",
             "intruder": "pw-intruder"}
NOT_AUTHORIZED = 0x87
FAILURE = 0x80  # reason codes below are successes (0x10: accepted, no matching subscribers)

if find_mosquitto() is None or shutil.which("mosquitto_passwd") is None:
    pytest.fail("mosquitto and mosquitto_passwd are not installed (make test installs them)",
                pytrace=False)


def gateway_config(gateway: str, zone: str, team: str) -> str:
    return f"""
[venue]
id = "{VENUE}"
[gateway]
id = "{gateway}"
[storage]
path = "agent.db"
[[zones]]
id = "{zone}"
kind = "queue"
team = "{team}"
[[readers]]
id = "{zone}-entry"
protocol = "em4100"
port = "socket://127.0.0.1:4001"
zone = "{zone}"
role = "entry"
"""


# ------------------------------------------------------------------------- a broker
class Mosquitto(LocalBroker):
    """A Mosquitto child process with exactly the given config lines (listeners included);
    ``ports[0]`` is the one ``LocalBroker`` waits for, the others are waited for here."""

    def __init__(self, workdir: Path, lines: list[str], ports: list[int]) -> None:
        super().__init__("mosquitto", ports[0], workdir, persistence=False, own_dir=False)
        self.lines = [*lines, "persistence false", "log_dest stderr", "log_type all",
                      f"user {pwd.getpwuid(os.getuid()).pw_name}"]
        self.start()
        try:
            for port in ports[1:]:
                wait(lambda port=port: _accepts(port), f"mosquitto listening on {port}", 10)
        except AssertionError:
            self.stop()
            raise

    def _command(self) -> list[str]:
        conf = self.workdir / "mosquitto-test.conf"
        conf.write_text("\n".join(self.lines) + "\n")
        binary = find_mosquitto()
        assert binary is not None
        return [binary, "-c", str(conf)]


# ------------------------------------------------------------------------- a client
class Client:
    """A paho client that records CONNACK, PUBACK reason codes and received messages."""

    def __init__(self, port: int, user: str | None, password: str | None = None, *,
                 protocol: int = mqtt.MQTTv5, tls: ssl.SSLContext | None = None,
                 websockets: bool = False, will: tuple[str, bytes] | None = None,
                 name: str | None = None) -> None:
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=name or f"{user}-{protocol}",
                             protocol=protocol, transport="websockets" if websockets else "tcp",
                             reconnect_on_failure=False)
        if user is not None:
            self.c.username_pw_set(user, password if password is not None
                                   else PASSWORDS.get(user))
        if tls is not None:
            self.c.tls_set_context(tls)
        if will is not None:
            self.c.will_set(will[0], will[1], qos=1)
        self.connack: Any = None
        self.acks: dict[int, Any] = {}
        self.subacks: dict[int, Any] = {}
        self.messages: list[tuple[str, bytes, bool]] = []
        self.lock = threading.Lock()
        self.c.on_connect = self._on_connect
        self.c.on_publish = self._on_publish
        self.c.on_subscribe = self._on_subscribe
        self.c.on_message = self._on_message
        self.c.on_disconnect = self._on_disconnect
        self.closed = False
        self.error: Exception | None = None
        try:
            self.c.connect("127.0.0.1", port, keepalive=30)
        except (OSError, ssl.SSLError) as e:
            self.error = e
            return
        self.c.loop_start()
        wait(lambda: self.connack is not None or self.closed, "CONNACK", fail=False)

    def _on_disconnect(self, *_a: Any) -> None:
        self.closed = True

    def _on_connect(self, _c: Any, _u: Any, _f: Any, rc: Any, _p: Any = None) -> None:
        self.connack = rc

    def _on_publish(self, _c: Any, _u: Any, mid: int, rc: Any, _p: Any = None) -> None:
        self.acks[mid] = rc

    def _on_subscribe(self, _c: Any, _u: Any, mid: int, rcs: Any, _p: Any = None) -> None:
        self.subacks[mid] = rcs

    def _on_message(self, _c: Any, _u: Any, m: mqtt.MQTTMessage) -> None:
        with self.lock:
            self.messages.append((m.topic, m.payload, bool(m.retain)))

    @property
    def connected(self) -> bool:
        return self.connack is not None and not self.connack.is_failure

    def subscribe(self, *filters: str) -> None:
        _rc, mid = self.c.subscribe([(f, 1) for f in filters])
        wait(lambda: mid in self.subacks, f"SUBACK for {filters}")

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> int:
        """The PUBACK reason code (below 0x80 on success; always 0 on MQTT 3.1.1)."""
        mid = self.c.publish(topic, payload, qos=1, retain=retain).mid
        wait(lambda: mid in self.acks, f"PUBACK for {topic}")
        return int(self.acks[mid].value)

    def got(self, topic: str) -> list[bytes]:
        with self.lock:
            return [p for t, p, _r in self.messages if t == topic]

    def topics(self) -> set[str]:
        with self.lock:
            return {t for t, _p, _r in self.messages}

    def drop(self) -> None:
        """Lose the connection without a DISCONNECT (the broker sends the Will)."""
        self.c.loop_stop()
        sock = self.c.socket()
        if sock is not None:
            sock.close()

    def close(self) -> None:
        if self.error is None:
            self.c.disconnect()
            self.c.loop_stop()


def wait(predicate: Any, what: str, timeout: float = 5.0, *, fail: bool = True) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    if fail:
        raise AssertionError(f"timed out waiting for {what}")
    return False


def quiet(seconds: float = 0.5) -> None:
    """Give the broker time to deliver what it would deliver (for "never arrives" checks)."""
    time.sleep(seconds)


def make_password_file(path: Path, users: dict[str, str]) -> None:
    first = True
    for user, password in users.items():
        subprocess.run(["mosquitto_passwd", *(["-c"] if first else []), "-b", str(path), user,
                        password], check=True, capture_output=True)
        first = False


# ------------------------------------------------------------------------- the venue
@pytest.fixture(scope="module")
def venue(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """Two gateways' ACL from `venue-agent acl`, passwords, and a Mosquitto using them."""
    d = tmp_path_factory.mktemp("acl-venue")
    (d / "gw-a.toml").write_text(gateway_config("gw-a", "zone-a", "team-a"))
    (d / "gw-b.toml").write_text(gateway_config("gw-b", "zone-b", "team-b"))
    assert cli.main(["acl", str(d / "gw-a.toml"), str(d / "gw-b.toml"),
                     "--out", str(d / "acl")]) == 0
    passwd = d / "passwd"
    make_password_file(passwd, PASSWORDS)  # "intruder" has a password but no ACL entry
    port = free_port()
    broker = Mosquitto(d, [f"listener {port} 127.0.0.1", "allow_anonymous false",
                           f"password_file {passwd}", f"acl_file {d / 'acl' / 'venue-agent.acl'}"],
                       [port])
    try:
        yield {"port": port, "dir": d, "broker": broker}
    finally:
        broker.stop()


T = Topics(VENUE, "gw-a")
TB = Topics(VENUE, "gw-b")


def test_generated_acl_on_mqtt5(venue: dict[str, Any]) -> None:
    port = venue["port"]
    staff = Client(port, "staff")
    board = Client(port, "board")
    a, b = Client(port, GW_A), Client(port, GW_B)
    clients = [staff, board, a, b]
    try:
        assert all(c.connected for c in clients), [c.connack for c in clients]
        # What `venue-agent watch` subscribes to, and the acknowledgements.
        staff.subscribe(*Topics(VENUE).console_filters(), Topics(VENUE).ack_filter)
        # The board asks for everything; the broker delivers only what it may read.
        board.subscribe(Topics(VENUE).venue_filter)
        a.subscribe(T.ack_filter)

        assert b.publish(TB.zone_state("zone-b"), b"B's state", retain=True) < FAILURE
        # Gateway A writes its own topics.
        own = [T.zone_state("zone-a"), T.moment("zone-a", "queue_long"), T.nudge("zone-a"),
               T.dispatch("team-a"), T.dispatch("technical"), T.status]
        for topic in own:
            assert a.publish(topic, b"from A") < FAILURE, topic
        assert a.publish(T.health, b"from A") < FAILURE
        # ...and nothing of gateway B's, nor acknowledgements.
        foreign = [TB.zone_state("zone-b"), TB.moment("zone-b", "queue_long"), TB.nudge("zone-b"),
                   TB.dispatch("team-b"), TB.status, TB.health, f"{T.prefix}/ack/m1",
                   f"{T.prefix}/zone/zone-c/state", "venue/other-venue/zone/zone-a/state"]
        for topic in foreign:
            assert a.publish(topic, b"forged by A", retain=True) == NOT_AUTHORIZED, topic

        for topic in own:
            wait(lambda topic=topic: staff.got(topic) == [b"from A"], f"staff reads {topic}")
        assert staff.got(TB.zone_state("zone-b")) == [b"B's state"]
        # B's retained state is untouched: a newcomer gets B's, not A's forgery.
        late = Client(port, "staff", name="late-staff")
        clients.append(late)
        late.subscribe(TB.zone_state("zone-b"))
        wait(lambda: late.got(TB.zone_state("zone-b")) == [b"B's state"], "B's retained state")

        # Staff acknowledge; gateways read acknowledgements; staff write nothing else.
        ack = f"{T.prefix}/ack/moment-1"
        assert staff.publish(ack, b"ack") < FAILURE
        wait(lambda: a.got(ack) == [b"ack"], "the gateway reads the ack")
        assert staff.publish(T.zone_state("zone-a"), b"forged by staff") == NOT_AUTHORIZED
        assert staff.publish(T.dispatch("team-a"), b"forged by staff") == NOT_AUTHORIZED

        # The board reads zone state, nudges, moments, acks and status; never dispatches or
        # health; and writes nothing.
        wait(lambda: board.got(T.nudge("zone-a")) == [b"from A"], "board reads the nudge")
        assert board.got(T.zone_state("zone-a")) == [b"from A"]
        assert board.publish(T.zone_state("zone-a"), b"forged by board") == NOT_AUTHORIZED
        assert board.publish(f"{T.prefix}/ack/moment-1", b"board ack") == NOT_AUTHORIZED
        quiet()
        assert board.topics() == {T.zone_state("zone-a"), TB.zone_state("zone-b"),
                                  T.nudge("zone-a"), T.moment("zone-a", "queue_long"),
                                  T.status, ack}
        forged = [t for c in clients for t, p, _r in c.messages if p.startswith(b"forged")]
        assert forged == []
        assert a.got(T.zone_state("zone-a")) == []  # gateways read only acknowledgements
    finally:
        for c in clients:
            c.close()


def test_users_without_rights_get_nothing(venue: dict[str, Any]) -> None:
    port = venue["port"]
    anonymous = Client(port, None)
    wrong = Client(port, GW_A, "not-the-password", name="wrong-pw")
    intruder = Client(port, "intruder")  # a valid password, no line in the ACL
    staff = Client(port, "staff", name="staff-watching")
    try:
        assert anonymous.connack is not None and anonymous.connack.value == NOT_AUTHORIZED
        assert wrong.connack is not None and wrong.connack.is_failure
        assert intruder.connected and staff.connected
        staff.subscribe(Topics(VENUE).venue_filter)
        intruder.subscribe(Topics(VENUE).venue_filter)
        assert intruder.publish(T.zone_state("zone-a"), b"forged by intruder") == NOT_AUTHORIZED
        assert staff.publish(f"{T.prefix}/ack/x", b"ack") < FAILURE
        wait(lambda: staff.got(f"{T.prefix}/ack/x") == [b"ack"], "staff's own ack")
        quiet()
        assert intruder.messages == []
        assert staff.got(T.zone_state("zone-a")) in ([], [b"from A"])  # retained, if any
        assert all(not p.startswith(b"forged") for _t, p, _r in staff.messages)
    finally:
        for c in (anonymous, wrong, intruder, staff):
            c.close()


def test_will_only_on_the_gateways_own_status(venue: dict[str, Any]) -> None:
    port = venue["port"]
    staff = Client(port, "staff", name="staff-wills")
    own = Client(port, GW_A, will=(T.status, b"A lost"), name="gw-a-will")
    forger = Client(port, GW_A, will=(TB.status, b"forged will"), name="gw-a-forged-will")
    try:
        staff.subscribe(f"{T.prefix}/gateway/+/status")
        own.drop()
        forger.drop()
        wait(lambda: b"A lost" in staff.got(T.status), "A's Will")
        quiet()
        assert b"forged will" not in staff.got(TB.status)
    finally:
        staff.close()


def test_mqtt311_refusal_is_acknowledged_but_never_delivered(venue: dict[str, Any]) -> None:
    """Measured on Mosquitto 2.0: the 3.1.1 PUBACK of a refused publish looks like success."""
    port = venue["port"]
    staff = Client(port, "staff", protocol=mqtt.MQTTv311, name="staff-311")
    a = Client(port, GW_A, protocol=mqtt.MQTTv311, name="gw-a-311")
    try:
        staff.subscribe(TB.zone_state("zone-b"), T.zone_state("zone-a"))
        wait(lambda: staff.got(TB.zone_state("zone-b")) == [b"B's state"], "B's state")
        assert a.publish(TB.zone_state("zone-b"), b"forged by A (3.1.1)", retain=True) == 0
        assert a.publish(T.zone_state("zone-a"), b"A (3.1.1)") < FAILURE
        wait(lambda: b"A (3.1.1)" in staff.got(T.zone_state("zone-a")), "A's own state")
        quiet()
        assert staff.got(TB.zone_state("zone-b")) == [b"B's state"]
    finally:
        staff.close()
        a.close()


# ------------------------------------------------------------------------- files
def test_password_template_opens_nothing_until_filled(tmp_path: Path) -> None:
    (tmp_path / "gw-a.toml").write_text(gateway_config("gw-a", "zone-a", "team-a"))
    assert cli.main(["acl", str(tmp_path / "gw-a.toml"), "--out", str(tmp_path)]) == 0
    template = tmp_path / "passwd.template"
    users = re.findall(r"^([^#\s][^:]*):$", template.read_text(), re.M)
    assert users == [GW_A, "staff", "board"]
    acl = tmp_path / "venue-agent.acl"
    port = free_port()
    broker = Mosquitto(tmp_path, [f"listener {port} 127.0.0.1", "allow_anonymous false",
                                  f"password_file {template}", f"acl_file {acl}"], [port])
    try:
        for user in users:
            for password in ("", "x"):
                c = Client(port, user, password, name=f"{user}-{password or 'empty'}")
                assert c.connack is not None and c.connack.is_failure, (user, password)
                c.close()
    finally:
        broker.stop()
    # Filled as the template says, one `mosquitto_passwd -b` per user.
    filled = tmp_path / "passwd"
    make_password_file(filled, {u: PASSWORDS[u] for u in users})
    assert "pw-a" not in filled.read_text()
    port = free_port()
    broker = Mosquitto(tmp_path, [f"listener {port} 127.0.0.1", "allow_anonymous false",
                                  f"password_file {filled}", f"acl_file {acl}"], [port])
    try:
        c = Client(port, GW_A)
        assert c.connected
        assert c.publish(T.zone_state("zone-a"), b"ok") < FAILURE
        c.close()
    finally:
        broker.stop()


# ------------------------------------------------------------------------- TLS listeners
def shipped_conf(d: Path, *, require_certificate: bool) -> tuple[list[str], dict[int, int]]:
    """config/mosquitto.conf with its paths and ports rewritten to the test's."""
    text = (ROOT / "config" / "mosquitto.conf").read_text()
    ports = {1883: free_port(), 8883: free_port(), 8884: free_port()}
    for shipped, path in (("/etc/mosquitto/passwd", d / "passwd"),
                          ("/etc/mosquitto/venue-agent.acl", d / "acl" / "venue-agent.acl"),
                          ("/etc/mosquitto/certs/broker.crt", d / "broker.crt"),
                          ("/etc/mosquitto/certs/broker.key", d / "broker.key"),
                          ("/etc/mosquitto/ca_certificates/venue-ca.crt", d / "ca.crt")):
        assert re.search(rf"^\w+ {re.escape(shipped)}$", text, re.M), shipped
        text = re.sub(rf"(?m)^(\w+) {re.escape(shipped)}$", rf"\1 {path}", text)
    for shipped_port, port in ports.items():
        text, n = re.subn(rf"(?m)^listener {shipped_port}\b", f"listener {port}", text)
        assert n == 1, shipped_port
    if require_certificate:
        for key in ("require_certificate", "use_identity_as_username"):
            text, n = re.subn(rf"(?m)^{key} false$", f"{key} true", text)
            assert n == 1, key
    return text.splitlines(), ports


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    have_openssl()
    d = tmp_path_factory.mktemp("pki")
    make_pki(d, client_cn=GW_A)
    (d / "gw-a.toml").write_text(gateway_config("gw-a", "zone-a", "team-a"))
    (d / "gw-b.toml").write_text(gateway_config("gw-b", "zone-b", "team-b"))
    assert cli.main(["acl", str(d / "gw-a.toml"), str(d / "gw-b.toml"),
                     "--out", str(d / "acl")]) == 0
    make_password_file(d / "passwd", PASSWORDS)
    return d


def test_shipped_config_tls_and_websockets_with_passwords(pki: Path) -> None:
    lines, ports = shipped_conf(pki, require_certificate=False)
    assert f"listener {ports[1883]} 127.0.0.1" in lines  # plain MQTT: loopback only
    broker = Mosquitto(pki, lines, list(ports.values()))
    clients: list[Client] = []
    try:
        tls = tls_context(pki)
        a = Client(ports[8883], GW_A, tls=tls)
        staff = Client(ports[8883], "staff", tls=tls)
        board = Client(ports[8884], "board", tls=tls, websockets=True)
        local = Client(ports[1883], "staff", name="staff-on-loopback")
        clients += [a, staff, board, local]
        assert all(c.connected for c in clients), [(c.connack, c.error) for c in clients]
        staff.subscribe(Topics(VENUE).venue_filter)
        board.subscribe(T.zone_state(ANY), T.nudge(ANY))
        assert a.publish(T.zone_state("zone-a"), b"A over TLS", retain=True) < FAILURE
        assert a.publish(TB.zone_state("zone-b"), b"forged over TLS") == NOT_AUTHORIZED
        assert board.publish(T.zone_state("zone-a"), b"forged by board") == NOT_AUTHORIZED
        wait(lambda: board.got(T.zone_state("zone-a")) == [b"A over TLS"], "board over wss")
        wait(lambda: staff.got(T.zone_state("zone-a")) == [b"A over TLS"], "staff over TLS")
        # The TLS listeners speak nothing but TLS; the server certificate is checked.
        plain = Client(ports[8883], "staff", name="plain-on-8883")
        clients.append(plain)
        assert not plain.connected
        wrong_ca = Client(ports[8883], "staff", tls=tls_context(pki, "rogue-ca.crt"),
                          name="wrong-ca")
        assert isinstance(wrong_ca.error, ssl.SSLCertVerificationError), wrong_ca.error
        anonymous = Client(ports[8883], None, tls=tls, name="anonymous-tls")
        clients.append(anonymous)
        assert anonymous.connack is not None and anonymous.connack.value == NOT_AUTHORIZED
    finally:
        for c in clients:
            c.close()
        broker.stop()


def test_shipped_config_with_client_certificates_required(pki: Path) -> None:
    lines, ports = shipped_conf(pki, require_certificate=True)
    broker = Mosquitto(pki, lines, list(ports.values()))
    clients: list[Client] = []
    try:
        # The certificate's CN is the username: no password.
        a = Client(ports[8883], None, tls=tls_context(pki, cert="gw-a"), name="gw-a-cert")
        staff = Client(ports[1883], "staff", name="staff-local")
        clients += [a, staff]
        assert a.connected and staff.connected, (a.connack, a.error, staff.connack)
        staff.subscribe(Topics(VENUE).venue_filter)
        assert a.publish(T.zone_state("zone-a"), b"A by certificate") < FAILURE
        assert a.publish(TB.zone_state("zone-b"), b"forged by certificate") == NOT_AUTHORIZED
        wait(lambda: staff.got(T.zone_state("zone-a")) == [b"A by certificate"], "A's state")
        # No certificate, or one of another CA: the handshake fails, a password won't help.
        for name, ctx in (("no-cert", tls_context(pki)),
                          ("rogue-cert", tls_context(pki, cert="rogue"))):
            c = Client(ports[8883], GW_A, tls=ctx, name=name)
            clients.append(c)
            assert not c.connected, name
            assert c.error is not None or c.connack is None, (name, c.connack)
        quiet()
        assert all(not p.startswith(b"forged") for _t, p, _r in staff.messages)
    finally:
        for c in clients:
            c.close()
        broker.stop()
