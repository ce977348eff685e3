"""TLS done properly, on a real Mosquitto with a TLS listener and a test CA made with openssl.

The gateway verifies the broker (the venue CA or the system store, host name included),
presents a client certificate when configured, refuses a private key others can read,
refuses plain MQTT with credentials (``require_tls``) and TLS below 1.2.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import socket
import ssl
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent import cli
from agent.broker import LocalBroker, _accepts, free_port
from agent.config import parse_config
from agent.outbox import Outbox
from agent.publisher import BrokerSettings, Publisher
from tests.mqtt_helpers import (
    Collector,
    async_wait_for,
    need_mosquitto,
    run_bounded,
    start_mosquitto,
    wait_for,
)
from tests.tls_helpers import have_openssl, make_cert, make_pki, tls_listener_conf

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(90)]

need_mosquitto()

STATUS = "venue/park/gateway/gw-01/status"
MOMENT = "venue/park/moment/dino-queue/queue_long"
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    have_openssl()
    d = tmp_path_factory.mktemp("pki")
    make_pki(d)
    return d


class TlsBroker:
    """Mosquitto with a TLS listener (``tls_port``, client certificates required or not)
    and a plain loopback listener (``plain_port``) for the test's subscriber."""

    def __init__(self, workdir: Path, pki: Path, *, require_certificate: bool,
                 extra: list[str] | None = None, cert: str = "broker") -> None:
        self.plain_port = free_port()
        self.broker: LocalBroker = start_mosquitto(
            workdir, extra_conf=[*(extra or []),
                                 *tls_listener_conf(pki, require_certificate=require_certificate,
                                                   cert=cert),
                                 f"listener {self.plain_port} 127.0.0.1"])
        self.tls_port = self.broker.port
        wait_for(lambda: _accepts(self.plain_port), 10, "the plain listener")

    @property
    def url(self) -> str:
        return f"mqtts://127.0.0.1:{self.tls_port}"

    def close(self) -> None:
        self.broker.close()


@pytest.fixture
def mtls(tmp_path: Path, pki: Path) -> Iterator[TlsBroker]:
    b = TlsBroker(tmp_path / "broker", pki, require_certificate=True)
    yield b
    b.close()


def publisher(settings: BrokerSettings, outbox: Outbox, **kw: Any) -> Publisher:
    return Publisher(settings, outbox, will=(STATUS, b'{"online":false}'),
                     birth=lambda: (STATUS, b'{"online":true}'), backoff_min_s=0.05,
                     backoff_max_s=0.3, connect_timeout_s=2.0, **kw)


def refused(settings: BrokerSettings, tmp_path: Path, caplog: pytest.LogCaptureFixture,
            cause: str) -> None:
    """The publisher never connects, keeps the rows and logs ``cause`` (some attempt of
    it: a TLS 1.3 alert is on some attempts seen only as an EOF, depending on when it is
    read)."""
    outbox = Outbox(tmp_path / "refused.db")
    outbox.enqueue(MOMENT, {"i": 0}, seq_stream="guaranteed")
    pub = publisher(settings, outbox)

    async def scenario() -> None:
        task = asyncio.create_task(pub.run())
        await async_wait_for(lambda: "unreachable" in caplog.text, 15, "the refusal logged")
        await async_wait_for(lambda: cause in caplog.text, 15, f"{cause!r} in the log")
        assert not pub.connected
        await pub.stop()
        await task

    with caplog.at_level(logging.DEBUG, logger="agent.publisher"):
        run_bounded(scenario(), 40)
    assert outbox.depth() == 1 and pub.stats().acked == 0 and pub.stats().reconnects == 0
    assert "connected to MQTT broker" not in caplog.text
    outbox.close()


def test_connects_with_the_venue_ca_and_a_client_certificate(
        mtls: TlsBroker, pki: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    settings = BrokerSettings(mtls.url, client_id="gw-01", ca_file=str(pki / "ca.crt"),
                              cert_file=str(pki / "gw-a.crt"), key_file=str(pki / "gw-a.key"))
    outbox = Outbox(tmp_path / "o.db")
    for i in range(20):
        outbox.enqueue(MOMENT, {"i": i}, seq_stream="guaranteed")
    pub = publisher(settings, outbox)

    async def scenario() -> None:
        task = asyncio.create_task(pub.run())
        await async_wait_for(lambda: outbox.depth() == 0, 15, "the outbox drained over TLS")
        await pub.stop()
        await task

    with Collector(mtls.plain_port, "venue/#") as sub:
        with caplog.at_level(logging.INFO, logger="agent.publisher"):
            run_bounded(scenario(), 40)
        sub.wait_for(lambda ms: len([m for m in ms if m.topic == MOMENT]) == 20)
        assert [m.json()["seq"] for m in sub.on(MOMENT)] == list(range(1, 21))
    assert f"connected to MQTT broker {mtls.url}" in caplog.text
    outbox.close()


def test_a_broker_certificate_of_another_ca_is_refused(
        mtls: TlsBroker, pki: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    settings = BrokerSettings(mtls.url, client_id="gw-01", ca_file=str(pki / "rogue-ca.crt"),
                              cert_file=str(pki / "gw-a.crt"), key_file=str(pki / "gw-a.key"))
    refused(settings, tmp_path, caplog, "certificate verify failed")


def test_an_expired_broker_certificate_is_refused(
        pki: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # Signed by the venue CA, for 127.0.0.1, expired yesterday: only its dates are wrong.
    make_cert(pki, "expired-broker", not_before_days=-10, not_after_days=-1)
    b = TlsBroker(tmp_path / "broker", pki, require_certificate=False, cert="expired-broker")
    try:
        settings = BrokerSettings(b.url, client_id="gw-01", ca_file=str(pki / "ca.crt"))
        refused(settings, tmp_path, caplog, "the broker's certificate is refused: certificate "
                                            "has expired")
        assert "renew the broker's certificate" in caplog.text
    finally:
        b.close()


def test_verification_is_on_without_a_ca_file(
        mtls: TlsBroker, pki: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # No ca_file: the system trust store, which does not hold the test CA.
    settings = BrokerSettings(mtls.url, client_id="gw-01", cert_file=str(pki / "gw-a.crt"),
                              key_file=str(pki / "gw-a.key"))
    refused(settings, tmp_path, caplog, "certificate verify failed")


def test_no_client_certificate_where_one_is_required_is_refused(
        mtls: TlsBroker, pki: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    settings = BrokerSettings(mtls.url, client_id="gw-01", ca_file=str(pki / "ca.crt"))
    # The broker's TLS alert names the cause.
    refused(settings, tmp_path, caplog, "certificate required")


def test_a_client_certificate_of_another_ca_is_refused(
        mtls: TlsBroker, pki: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    settings = BrokerSettings(mtls.url, client_id="gw-01", ca_file=str(pki / "ca.crt"),
                              cert_file=str(pki / "rogue.crt"), key_file=str(pki / "rogue.key"))
    refused(settings, tmp_path, caplog, "_ssl.c")  # Mosquitto closes the TLS session


# -- settings: what is refused before any connection ----------------------------------------


def test_a_private_key_others_can_read_is_refused(pki: Path, tmp_path: Path) -> None:
    key = tmp_path / "gw.key"
    key.write_bytes((pki / "gw-a.key").read_bytes())
    key.chmod(0o644)
    with pytest.raises(ValueError, match=r"key_file .*gw\.key.*0644.*chmod 600") as e:
        BrokerSettings("mqtts://127.0.0.1", client_id="gw", ca_file=str(pki / "ca.crt"),
                       cert_file=str(pki / "gw-a.crt"), key_file=str(key))
    assert str(key) in str(e.value)
    key.chmod(0o600)
    BrokerSettings("mqtts://127.0.0.1", client_id="gw", ca_file=str(pki / "ca.crt"),
                   cert_file=str(pki / "gw-a.crt"), key_file=str(key))


def test_certificate_settings_that_cannot_work_are_refused(pki: Path) -> None:
    ca, crt, key = (str(pki / n) for n in ("ca.crt", "gw-a.crt", "gw-a.key"))
    with pytest.raises(ValueError, match="cert_file and key_file go together"):
        BrokerSettings("mqtts://h", client_id="gw", cert_file=crt)
    with pytest.raises(ValueError, match="cert_file is set but url 'mqtt://h' is not mqtts"):
        BrokerSettings("mqtt://h", client_id="gw", cert_file=crt, key_file=key)
    with pytest.raises(ValueError, match="matching"):  # the rogue's key is not gw-a's
        BrokerSettings("mqtts://h", client_id="gw", ca_file=ca, cert_file=crt,
                       key_file=str(pki / "rogue.key"))


def test_require_tls_refuses_plain_mqtt_with_credentials() -> None:
    # Default: on with a username, for a broker off this machine.
    with pytest.raises(ValueError, match=r"'mqtt://broker\.example' is plain MQTT but "
                                         r"require_tls is on .*password of user 'gw'.*mqtts://"):
        BrokerSettings("mqtt://broker.example", client_id="gw", username="gw", password="pw")
    # Every broker of a failover list.
    with pytest.raises(ValueError, match="'mqtt://b2' is plain MQTT"):
        BrokerSettings(urls=("mqtts://b1", "mqtt://b2"), client_id="gw", username="gw")
    # Explicit: refused even without credentials; allowed knowingly.
    with pytest.raises(ValueError, match="require_tls"):
        BrokerSettings("mqtt://127.0.0.1", client_id="gw", require_tls=True)
    assert not BrokerSettings("mqtt://broker.example", client_id="gw", username="gw",
                              require_tls=False).tls_required
    # A broker on this machine: the password never crosses a network.
    assert not BrokerSettings("mqtt://127.0.0.1:1883", client_id="gw",
                              username="gw").tls_required
    assert BrokerSettings("mqtts://broker.example", client_id="gw", username="gw").tls_required
    # Per broker: a local plain broker may follow a remote TLS one in a failover list.
    mixed = BrokerSettings(urls=("mqtts://broker.example", "mqtt://127.0.0.1"),
                           client_id="gw", username="gw")
    assert mixed.tls_required and [a.loopback for a in mixed.addresses] == [False, True]


def _config(tmp_path: Path, broker: str) -> Path:
    text = (ROOT / "config" / "minimal.toml").read_text()
    pw = tmp_path / "pw"
    pw.write_text("secret\n")
    pw.chmod(0o600)
    text = text.replace('url = "mqtt://127.0.0.1:1883"',
                        broker.replace("PW", str(pw)), 1)
    path = tmp_path / "gw.toml"
    path.write_text(text)
    return path


def test_check_config_refuses_plain_mqtt_with_credentials(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _config(tmp_path, 'url = "mqtt://broker.example"\nusername = "gw"\n'
                             'password_file = "PW"')
    with pytest.raises(SystemExit) as e:
        cli.main(["check-config", str(path)])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert "broker.require_tls" in err and "mqtt://broker.example" in err, err
    # Knowingly allowed, or over TLS: accepted, and the effective value is printed.
    for url, require, printed in (("mqtt://broker.example", "\nrequire_tls = false", False),
                                  ("mqtts://broker.example", "", True)):
        path = _config(tmp_path, f'url = "{url}"\nusername = "gw"\npassword_file = "PW"'
                                 f'{require}')
        assert cli.main(["check-config", str(path)]) == 0
        assert f"require_tls = {str(printed).lower()}" in capsys.readouterr().out
    # Printed so that it accepts the same URLs: false beside a plain (loopback) broker.
    path = _config(tmp_path, 'url = ["mqtts://broker.example", "mqtt://127.0.0.1"]\n'
                             'username = "gw"\npassword_file = "PW"')
    assert cli.main(["check-config", str(path)]) == 0
    printed_config = capsys.readouterr().out
    assert "require_tls = false" in printed_config
    reloaded = tmp_path / "printed.toml"
    reloaded.write_text(printed_config)
    assert cli.main(["check-config", str(reloaded)]) == 0


def test_config_client_certificate_keys(pki: Path, tmp_path: Path) -> None:
    key = tmp_path / "k.key"
    key.write_bytes((pki / "gw-a.key").read_bytes())
    key.chmod(0o640)
    text = _config(tmp_path, f'url = "mqtts://broker.example"\nca_file = "{pki / "ca.crt"}"\n'
                             f'cert_file = "{pki / "gw-a.crt"}"\nkey_file = "{key}"').read_text()
    from agent.config import ConfigError

    with pytest.raises(ConfigError) as e:
        parse_config(text, "gw.toml")
    assert e.value.key == "broker.key_file" and "chmod 600" in str(e.value)
    key.chmod(0o600)
    cfg = parse_config(text, "gw.toml")
    assert (cfg.broker.cert_file, cfg.broker.key_file) == (str(pki / "gw-a.crt"), str(key))
    assert cfg.broker.require_tls is None
    with pytest.raises(ConfigError) as e:
        parse_config(text.replace('url = "mqtts://broker.example"',
                                  'url = "mqtts://broker.example"\nrequire_tls = "yes"'))
    assert e.value.key == "broker.require_tls"


# -- TLS below 1.2 -----------------------------------------------------------------------------


class _OldTlsServer:
    """A TCP server on 127.0.0.1 that speaks TLS 1.1 at most (with the broker certificate)."""

    def __init__(self, pki: Path) -> None:
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.minimum_version = ssl.TLSVersion.TLSv1  # deprecated: on purpose
        self.ctx.maximum_version = ssl.TLSVersion.TLSv1_1
        self.ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
        self.ctx.load_cert_chain(str(pki / "broker.crt"), str(pki / "broker.key"))
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.handshakes: list[str] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            try:
                with self.ctx.wrap_socket(conn, server_side=True) as tls:
                    self.handshakes.append(str(tls.version()))
            except (OSError, ssl.SSLError):
                conn.close()

    def close(self) -> None:
        self.sock.close()


def test_tls_below_1_2_is_refused(pki: Path, tmp_path: Path,
                                  caplog: pytest.LogCaptureFixture) -> None:
    import warnings

    # The gateway's policy holds whatever this OpenSSL can still speak (checked before the
    # skip below, which covers only the old server this test stands up to prove it).
    settings = BrokerSettings("mqtts://127.0.0.1:1", client_id="gw-01",
                              ca_file=str(pki / "ca.crt"))
    assert settings.ssl_context().minimum_version == ssl.TLSVersion.TLSv1_2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        server = _OldTlsServer(pki)
        # The server really speaks TLS 1.1: a client that allows it completes the handshake.
        old = ssl.create_default_context(cafile=str(pki / "ca.crt"))
        old.minimum_version = ssl.TLSVersion.TLSv1_1
        old.set_ciphers("DEFAULT:@SECLEVEL=0")
    try:
        try:
            with socket.create_connection(("127.0.0.1", server.port), timeout=5) as raw, \
                    old.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
                version = tls.version()
        except ssl.SSLError as exc:
            pytest.skip(f"this OpenSSL cannot do TLS 1.1 even at security level 0 ({exc})")
        assert version == "TLSv1.1"
        settings = BrokerSettings(f"mqtts://127.0.0.1:{server.port}", client_id="gw-01",
                                  ca_file=str(pki / "ca.crt"))
        refused(settings, tmp_path, caplog, "TLSV1_ALERT_PROTOCOL_VERSION")
        assert server.handshakes == ["TLSv1.1"]  # only the test's own old client got through
    finally:
        server.close()


def test_username_and_password_over_tls(pki: Path, tmp_path: Path,
                                        caplog: pytest.LogCaptureFixture) -> None:
    """A password login over TLS (no client certificate); a wrong password is refused."""
    if shutil.which("mosquitto_passwd") is None:
        pytest.fail("mosquitto_passwd is not installed (make test installs it)", pytrace=False)
    passwd = tmp_path / "passwd"
    passwd.write_text("")
    subprocess.run(["mosquitto_passwd", "-b", str(passwd), "gw-01", "right"], check=True,
                   capture_output=True)
    b = TlsBroker(tmp_path / "broker", pki, require_certificate=False,
                  extra=["allow_anonymous false", f"password_file {passwd}"])
    try:
        good = BrokerSettings(b.url, client_id="gw-01", ca_file=str(pki / "ca.crt"),
                              username="gw-01", password="right")
        outbox = Outbox(tmp_path / "o.db")
        outbox.enqueue(MOMENT, {"i": 0}, seq_stream="guaranteed")
        pub = publisher(good, outbox)

        async def scenario() -> None:
            task = asyncio.create_task(pub.run())
            await async_wait_for(lambda: outbox.depth() == 0, 10, "sent with a password")
            await pub.stop()
            await task

        run_bounded(scenario(), 40)
        outbox.close()
        bad = BrokerSettings(b.url, client_id="gw-01", ca_file=str(pki / "ca.crt"),
                             username="gw-01", password="wrong")
        refused(bad, tmp_path, caplog, "refused: Not authorized")  # MQTT 5 CONNACK 0x87
    finally:
        b.close()
