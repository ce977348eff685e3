"""`venue-agent doctor`: one line per check, failures named, exit 1 when anything fails.

Real parts: virtual UHF and PN532 readers on PTYs answer the probes, a real Mosquitto (with
and without an ACL, stopped, TLS), and a check that doctor creates nothing."""

from __future__ import annotations

import io
import json
import os
import socket
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from agent.broker import LocalBroker
from agent.config import BrokerConfig, Config, parse_config
from agent.doctor import run_doctor
from simulators.pn532_reader import VirtualPn532Reader
from simulators.uhf_reader import VirtualUhfReader
from tests.mqtt_helpers import need_mosquitto, start_mosquitto

need_mosquitto()

OWN = "venue/v/gateway/g/#"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _cfg_text(site: Path, broker_url: str, readers: list[tuple[str, str, str]],
              broker_extra: str = "") -> str:
    text = f"""
[venue]
id = "v"
[gateway]
id = "g"
[broker]
url = "{broker_url}"
{broker_extra}
[storage]
path = "{site / 'state' / 'agent.db'}"
[[zones]]
id = "q"
kind = "queue"
"""
    for rid, protocol, port in readers:
        text += f"""
[[readers]]
id = "{rid}"
protocol = "{protocol}"
port = "{port}"
zone = "q"
role = "entry"
"""
    return text


def _cfg(site: Path, broker_url: str, readers: list[tuple[str, str, str]],
         broker_extra: str = "") -> Config:
    return parse_config(_cfg_text(site, broker_url, readers, broker_extra), "gw.toml")


def _doctor(cfg: Config, **kw: float) -> tuple[int, str]:
    out = io.StringIO()
    kw.setdefault("listen_s", 0.3)
    kw.setdefault("broker_timeout_s", 3.0)
    rc = run_doctor(cfg, out, **kw)  # type: ignore[arg-type]
    return rc, out.getvalue()


def _listing(root: Path) -> list[tuple[str, int]]:
    return sorted((str(p.relative_to(root)), p.stat().st_mode) for p in root.rglob("*"))


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[LocalBroker]:
    with start_mosquitto(tmp_path / "broker", acl=f"topic readwrite {OWN}") as b:
        yield b


def _line(text: str, start: str) -> str:
    found = [line for line in text.splitlines() if line.startswith(start)]
    assert found, f"no line starting {start!r} in:\n{text}"
    return found[0]


def test_a_healthy_gateway_passes_and_doctor_creates_nothing(
        tmp_path: Path, broker: LocalBroker, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NUMBA_CACHE_DIR", raising=False)  # cfg.numba_cache_dir: not there
    site = tmp_path / "site"
    dev = tmp_path / "dev"
    with VirtualUhfReader(dev / "uhf", lambda: [(b"\x30\x00\x11\x22", -50)]), \
            VirtualPn532Reader(dev / "nfc", lambda: []):
        cfg = _cfg(site, broker.url, [("u1", "uhf-m100", str(dev / "uhf")),
                                      ("n1", "pn532", str(dev / "nfc"))])
        site.mkdir()
        before = _listing(tmp_path / "site")
        rc, text = _doctor(cfg)
        assert _listing(tmp_path / "site") == before  # no state dir, no cache, no key
    assert rc == 0, text
    assert "answered a single inventory (a tag in the field)" in _line(
        text, "[ok] reader u1 (uhf-m100)")
    assert "answered GetFirmwareVersion: IC 0x32 (PN532), firmware 1.6" in _line(
        text, "[ok] reader n1 (pn532)")
    assert "MQTT 5 CONNECT accepted" in _line(text, f"[ok] broker {broker.url}")
    assert "accepted, PUBACK 0x" in _line(
        text, "[ok] broker publish venue/v/gateway/g/health")
    assert "denies venue/v/gateway/g-doctor-other/health" in _line(text, "[ok] broker ACL")
    assert "does not exist yet" in _line(text, "[ok] storage")
    assert "cold" in _line(text, "[WARN] numba cache") and "minutes on a Pi" in text
    assert "venue-agent build-kernels" in _line(text, "[WARN] kernels")
    assert "created on first start" in _line(text, "[WARN] pseudonym key")
    assert text.rstrip().splitlines()[-1].startswith("0 problem(s), ")


def test_a_uhf_reader_with_no_tag_still_answers(tmp_path: Path, broker: LocalBroker) -> None:
    with VirtualUhfReader(tmp_path / "uhf", lambda: []):
        rc, text = _doctor(_cfg(tmp_path, broker.url, [("u1", "uhf-m100",
                                                        str(tmp_path / "uhf"))]))
    assert "no tag in the field" in _line(text, "[ok] reader u1")


def test_a_missing_port_and_a_stopped_broker_fail(tmp_path: Path) -> None:
    free = _free_port()
    cfg = _cfg(tmp_path, f"mqtt://127.0.0.1:{free}",
               [("r1", "em4100", str(tmp_path / "ttyUSB9"))])
    rc, text = _doctor(cfg)
    assert rc == 1
    assert f"serial port {tmp_path / 'ttyUSB9'} not found" in _line(
        text, "[FAIL] reader r1 (em4100)")
    assert "refused the connection" in _line(text, f"[FAIL] broker mqtt://127.0.0.1:{free}")
    assert "2 problem(s)" in text


def test_a_broker_stopped_after_it_ran_fails(tmp_path: Path) -> None:
    with start_mosquitto(tmp_path / "broker") as b:
        cfg = _cfg(tmp_path, b.url, [])
        assert _doctor(cfg)[0] == 0
    rc, text = _doctor(cfg)
    assert rc == 1 and f"[FAIL] broker {b.url}" in text


def test_a_reader_that_does_not_answer_fails(tmp_path: Path, broker: LocalBroker) -> None:
    from simulators.pty_reader import VirtualSerialReader

    with VirtualSerialReader(tmp_path / "mute", encode=bytes):  # a PTY nobody answers on
        rc, text = _doctor(_cfg(tmp_path, broker.url, [("n1", "pn532", str(tmp_path / "mute"))]),
                           answer_s=0.5)
    assert rc == 1
    assert "did not answer GetFirmwareVersion within 0.5 s" in _line(text, "[FAIL] reader n1")


def test_a_silent_em4100_port_is_a_warning(tmp_path: Path, broker: LocalBroker) -> None:
    from simulators.pty_reader import VirtualSerialReader

    with VirtualSerialReader(tmp_path / "em", encode=bytes):
        rc, text = _doctor(_cfg(tmp_path, broker.url, [("e1", "em4100", str(tmp_path / "em"))]))
    assert rc == 0, text
    assert "no frame in 0.3 s (no card near it?)" in _line(text, "[WARN] reader e1 (em4100)")


def test_a_port_without_permission_names_the_group(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    tty = tmp_path / "tty"
    tty.write_bytes(b"")
    tty.chmod(0)
    if os.geteuid() == 0:  # root may read and write anything: answer as another user would
        real = os.access
        monkeypatch.setattr("agent.doctor.os.access",
                            lambda p, mode: False if Path(p) == tty else real(p, mode))
    rc, text = _doctor(_cfg(tmp_path, f"mqtt://127.0.0.1:{_free_port()}",
                            [("r1", "em4100", str(tty))]))
    assert "group" in _line(text, "[FAIL] reader r1") and "usermod -aG" in text


def test_an_acl_denying_the_gateway_its_own_topic_fails_with_0x87(tmp_path: Path) -> None:
    with start_mosquitto(tmp_path / "broker", acl="topic read venue/#") as b:
        rc, text = _doctor(_cfg(tmp_path, b.url, []))
    assert rc == 1
    line = _line(text, "[FAIL] broker publish venue/v/gateway/g/health")
    assert "PUBACK 0x87" in line and "ACL denies this gateway its own topic" in line


def test_an_acl_that_lets_a_gateway_write_others_topics_is_a_warning(tmp_path: Path) -> None:
    with start_mosquitto(tmp_path / "broker") as b:  # no ACL: everything allowed
        rc, text = _doctor(_cfg(tmp_path, b.url, []))
    assert rc == 0, text
    assert "lets this gateway write other gateways' topics" in _line(text, "[WARN] broker ACL")


def test_doctor_does_not_overwrite_the_retained_status(tmp_path: Path,
                                                       broker: LocalBroker) -> None:
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    from tests.mqtt_helpers import wait_for

    got: list[tuple[str, bool]] = []
    payloads: list[bytes] = []
    c = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)

    def on_message(_c: object, _u: object, m: mqtt.MQTTMessage) -> None:
        got.append((m.topic, m.retain))
        payloads.append(bytes(m.payload))

    c.on_message = on_message
    c.connect("127.0.0.1", broker.port)
    c.loop_start()
    try:
        c.subscribe("venue/#", qos=1)
        wait_for(lambda: c.is_connected(), 5)
        import time
        time.sleep(0.3)
        assert _doctor(_cfg(tmp_path, broker.url, []))[0] == 0
        wait_for(lambda: bool(got), 5)
    finally:
        c.loop_stop()
        c.disconnect()
    assert got == [("venue/v/gateway/g/health", False)]
    # The probe is a valid health@1 message (the contract's probe: true), so a consumer that
    # validates the health channel is not handed garbage.
    from tests.contract_check import assert_valid

    assert assert_valid(got[0][0], payloads[0]).key == "health"
    assert json.loads(payloads[0])["probe"] is True


def test_a_plain_broker_behind_mqtts_fails(tmp_path: Path, broker: LocalBroker) -> None:
    rc, text = _doctor(_cfg(tmp_path, f"mqtts://127.0.0.1:{broker.port}", []))
    assert rc == 1
    assert "is it a TLS listener" in _line(text, f"[FAIL] broker mqtts://127.0.0.1:{broker.port}")


def test_tls_wrong_ca_fails_and_the_right_ca_passes(tmp_path: Path) -> None:
    from tests.tls_helpers import have_openssl, make_pki, tls_listener_conf

    have_openssl()
    pki = tmp_path / "pki"
    pki.mkdir()
    make_pki(pki)
    with start_mosquitto(tmp_path / "broker", extra_conf=tls_listener_conf(pki)) as b:
        url = f"mqtts://127.0.0.1:{b.port}"
        good = _cfg(tmp_path, url, [], f'ca_file = "{pki / "ca.crt"}"')
        rc, text = _doctor(good)
        assert "over TLS (certificate verified)" in _line(text, f"[ok] broker {url}")
        bad = _cfg(tmp_path, url, [], f'ca_file = "{pki / "rogue-ca.crt"}"')
        rc, text = _doctor(bad)
    assert rc == 1
    assert "does not verify against" in _line(text, f"[FAIL] broker {url}")


def test_certificate_expiry_is_reported(tmp_path: Path) -> None:
    """An expired broker certificate fails naming the cause; the broker's, the CA's and the
    client certificate's end dates are reported, a near one as a warning."""
    from tests.tls_helpers import have_openssl, make_cert, make_pki, tls_listener_conf

    have_openssl()
    pki = tmp_path / "pki"
    pki.mkdir()
    make_pki(pki)  # valid two days: a warning
    make_cert(pki, "expired-broker", not_before_days=-10, not_after_days=-1)
    make_cert(pki, "gw-soon", not_before_days=-1, not_after_days=10.5, server=False)
    client = (f'ca_file = "{pki / "ca.crt"}"\ncert_file = "{pki / "gw-soon.crt"}"\n'
              f'key_file = "{pki / "gw-soon.key"}"')
    with start_mosquitto(tmp_path / "old", extra_conf=tls_listener_conf(
            pki, cert="expired-broker")) as b:
        url = f"mqtts://127.0.0.1:{b.port}"
        rc, text = _doctor(_cfg(tmp_path, url, [], client))
    assert rc == 1
    line = _line(text, f"[FAIL] broker {url}")
    assert "certificate has expired" in line and "renew the broker's certificate" in line
    line = _line(text, f"[WARN] client certificate {pki / 'gw-soon.crt'}")
    assert "certificate expires" in line and "in 10 days" in line, line
    assert "in 2 days" in _line(text, f"[WARN] broker CA file {pki / 'ca.crt'}")
    with start_mosquitto(tmp_path / "new", extra_conf=tls_listener_conf(pki)) as b:
        url = f"mqtts://127.0.0.1:{b.port}"
        rc, text = _doctor(_cfg(tmp_path, url, [], client))
    assert "certificate verified" in _line(text, f"[ok] broker {url}")
    assert "renew it on the broker" in _line(text, f"[WARN] broker certificate {url}")


def test_certificate_dates() -> None:
    from agent.doctor import OK, WARN, expiry_check

    day = 86400.0
    assert expiry_check("c", 100 * day, 0.0, "fix").level == OK
    assert expiry_check("c", 100 * day, 0.0, "fix", not_before=day).level == "FAIL"
    assert expiry_check("c", 29 * day, 0.0, "fix").level == WARN
    expired = expiry_check("c", 0.0, 2 * day, "renew")
    assert expired.level == "FAIL" and "has expired" in expired.detail
    assert "2 days ago" in expired.detail and "renew" in expired.detail


def test_wrong_credentials_fail(tmp_path: Path) -> None:
    import subprocess

    pwfile = tmp_path / "mosq.passwd"
    subprocess.run(["mosquitto_passwd", "-b", "-c", str(pwfile), "gw", "right"], check=True,
                   capture_output=True)
    pw = tmp_path / "pw"
    pw.write_text("wrong\n")
    with start_mosquitto(tmp_path / "broker", extra_conf=[
            "allow_anonymous false", f"password_file {pwfile}"]) as b:
        rc, text = _doctor(_cfg(tmp_path, b.url, [],
                                f'username = "gw"\npassword_file = "{pw}"'))
    assert rc == 1
    line = _line(text, f"[FAIL] broker {b.url}")
    assert "0x87" in line and "wrong username or password" in line


def test_a_key_file_others_can_read_fails(tmp_path: Path, broker: LocalBroker) -> None:
    cfg = _cfg(tmp_path, broker.url, [])
    cfg.key_path.parent.mkdir(parents=True)
    cfg.key_path.write_bytes(b"k" * 32)
    cfg.key_path.chmod(0o644)
    rc, text = _doctor(cfg)
    assert rc == 1
    assert f"mode 0644 lets the group or others read it: chmod 600 {cfg.key_path}" in _line(
        text, "[FAIL] pseudonym key")
    cfg.key_path.chmod(0o600)
    rc, text = _doctor(cfg)
    assert rc == 0 and "[ok] pseudonym key" in text


def test_a_warm_numba_cache_is_reported(tmp_path: Path, broker: LocalBroker,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    cache = tmp_path / "nb"
    (cache / "kernels_abc").mkdir(parents=True)
    (cache / "kernels_abc" / "ingest.ingest_reads-107.py311.nbi").write_bytes(b"")
    monkeypatch.setenv("NUMBA_CACHE_DIR", str(cache))
    rc, text = _doctor(_cfg(tmp_path, broker.url, []))
    assert "warm (1 compiled kernels" in _line(text, f"[ok] numba cache {cache}")


def test_kernels_built_ahead_of_time_are_reported(tmp_path: Path, broker: LocalBroker,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil

    from kernels import backends

    so, meta = backends.module_paths(backends.source_tag())  # the test session's build
    cache = tmp_path / "nb"
    (cache / "aot").mkdir(parents=True)
    shutil.copy(so, cache / "aot")
    monkeypatch.setenv("NUMBA_CACHE_DIR", str(cache))
    rc, text = _doctor(_cfg(tmp_path, broker.url, []))
    # a module without its description (a copy cut short) is not loaded
    assert "no ahead-of-time module for this code" in _line(text, "[WARN] kernels")
    shutil.copy(meta, cache / "aot")
    rc, text = _doctor(_cfg(tmp_path, broker.url, []))
    assert f"ahead of time: {cache / 'aot' / so.name}" in _line(text, "[ok] kernels")


def test_disk_smaller_than_max_mb_fails(tmp_path: Path, broker: LocalBroker) -> None:
    cfg = _cfg(tmp_path, broker.url, [])
    huge = replace(cfg, storage=replace(cfg.storage, max_mb=2**40))
    rc, text = _doctor(huge)
    assert rc == 1 and "lower storage.max_mb" in _line(text, "[FAIL] storage")


def test_ble_adapter_blocked_or_missing(tmp_path: Path, broker: LocalBroker) -> None:
    text = _cfg_text(tmp_path, broker.url, []) + """
[[readers]]
id = "b1"
protocol = "ble"
zone = "q"
role = "entry"
adapter = "hci0"
"""
    cfg = parse_config(text, "gw.toml")
    sys_root = tmp_path / "sys"
    rc, out = _doctor(cfg, sys_root=sys_root)  # type: ignore[arg-type]
    assert "adapter state unknown" in _line(out, "[WARN] reader b1 (ble)")
    (sys_root / "class" / "bluetooth" / "hci0" / "rfkill3").mkdir(parents=True)
    kill = sys_root / "class" / "rfkill" / "rfkill3"
    kill.mkdir(parents=True)
    (kill / "soft").write_text("1\n")
    (kill / "hard").write_text("0\n")
    rc, out = _doctor(cfg, sys_root=sys_root)  # type: ignore[arg-type]
    assert rc == 1 and "rfkill unblock bluetooth" in _line(out, "[FAIL] reader b1 (ble)")
    (kill / "soft").write_text("0\n")
    rc, out = _doctor(replace(cfg, readers=(replace(cfg.readers[0], adapter="hci1"),)),
                      sys_root=sys_root)  # type: ignore[arg-type]
    assert "adapter hci1 not found (have: hci0)" in _line(out, "[FAIL] reader b1 (ble)")


def test_doctor_reports_bad_urls_instead_of_crashing(tmp_path: Path) -> None:
    # Configs built in code skip parse_config's checks; doctor still must not raise.
    cfg = _cfg(tmp_path, "mqtt://127.0.0.1:1", [("r1", "em4100", "socket://127.0.0.1:1")])
    for url in ("mqtt://h:99999", "mqtt://u@h", "mqtt://h h"):
        bad = replace(cfg, broker=BrokerConfig(url=url),
                      readers=(replace(cfg.readers[0], port="socket://h:abc"),))
        rc, text = _doctor(bad)
        assert rc == 1
        assert f"[FAIL] broker {url}: " in text and "[FAIL] reader r1" in text


def test_doctor_tries_every_broker_of_a_failover_list(tmp_path: Path,
                                                      broker: LocalBroker) -> None:
    free = _free_port()
    cfg = _cfg(tmp_path, broker.url, [])
    cfg = replace(cfg, broker=BrokerConfig(urls=(broker.url, f"mqtt://127.0.0.1:{free}")))
    rc, text = _doctor(cfg)
    assert rc == 1
    assert f"[ok] broker {broker.url}" in text
    assert f"[FAIL] broker mqtt://127.0.0.1:{free}" in text


def test_doctor_checks_the_password_file_is_readable(tmp_path: Path) -> None:
    pw = tmp_path / "pw"
    pw.write_text("secret")
    cfg = _cfg(tmp_path, "mqtt://127.0.0.1:1", [], f'username = "gw"\npassword_file = "{pw}"')
    assert f"[ok] broker password file {pw}" in _doctor(cfg)[1]
    pw.unlink()
    rc, text = _doctor(cfg)
    assert rc == 1 and f"[FAIL] broker password file {pw}" in text


def test_the_cli_exit_code(tmp_path: Path, broker: LocalBroker) -> None:
    import subprocess
    import sys

    good = tmp_path / "good.toml"
    bad = tmp_path / "bad.toml"
    good.write_text(_cfg_text(tmp_path, broker.url, []))
    bad.write_text(_cfg_text(tmp_path, f"mqtt://127.0.0.1:{_free_port()}", []))
    for f, code in ((good, 0), (bad, 1)):
        done = subprocess.run([sys.executable, "-m", "agent.cli", "doctor", "--config", str(f)],
                              capture_output=True, text=True, timeout=60, check=False)
        assert done.returncode == code, done.stdout + done.stderr


def test_a_port_another_process_holds_is_not_probed(tmp_path: Path,
                                                     broker: LocalBroker) -> None:
    import subprocess

    with VirtualUhfReader(tmp_path / "uhf", lambda: []) as reader, \
            open(tmp_path / "uhf", "rb") as held:
        holder = subprocess.Popen(["sleep", "30"], stdin=held)
        try:
            rc, text = _doctor(_cfg(tmp_path, broker.url,
                                    [("u1", "uhf-m100", str(tmp_path / "uhf"))]))
        finally:
            holder.kill()
            holder.wait()
        assert reader.commands == []  # nothing written to a port the agent may be reading
    assert rc == 0, text
    assert f"is open in process {holder.pid}" in _line(text, "[WARN] reader u1 (uhf-m100)")


def test_an_em4100_card_frame_is_ok(tmp_path: Path, broker: LocalBroker) -> None:
    import threading

    from firmware_bridge import em4100
    from simulators.pty_reader import VirtualSerialReader

    with VirtualSerialReader(tmp_path / "em", encode=em4100.encode) as port:
        stop = threading.Event()

        def card() -> None:
            while not stop.wait(0.05):
                port.send(bytes.fromhex("0102030405"))

        t = threading.Thread(target=card, daemon=True)
        t.start()
        try:
            rc, text = _doctor(_cfg(tmp_path, broker.url,
                                    [("e1", "em4100", str(tmp_path / "em"))]), listen_s=2.0)
        finally:
            stop.set()
            t.join()
    assert "sent a valid card frame" in _line(text, "[ok] reader e1 (em4100)")
