"""The staff console driven as a person drives it: in a real terminal (tmux), keys sent with
``send-keys``, the screen read with ``capture-pane``; and over TLS with a client certificate."""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.broker import _accepts, free_port
from agent.topics import Topics
from tests.agent_process import ROOT
from tests.mqtt_helpers import Collector, poll_until, start_mosquitto
from tests.test_console import VENUE, _cli, _publish, dispatch, moment, zone_state
from tests.tls_helpers import have_openssl, make_pki, tls_listener_conf

pytestmark = pytest.mark.e2e

T = Topics(VENUE, "gw-01")
MID_A, MID_B = "01JEEEEEEEEEEEEEEEEEEEEEEE", "01JFFFFFFFFFFFFFFFFFFFFFFF"


class Tmux:
    """A private tmux server (its own socket) with one 160x50 window running ``command``."""

    def __init__(self, sock: Path, command: str) -> None:
        self.base = ["tmux", "-S", str(sock)]
        subprocess.run([*self.base, "new-session", "-d", "-s", "t", "-x", "160", "-y", "50",
                        command], check=True)

    def screen(self) -> str:
        out = subprocess.run([*self.base, "capture-pane", "-p", "-t", "t"], capture_output=True,
                             text=True)
        return out.stdout

    def keys(self, *keys: str) -> None:
        subprocess.run([*self.base, "send-keys", "-t", "t", *keys], check=True)

    def wait_screen(self, text: str, timeout: float = 15) -> str:
        if not poll_until(lambda: text in self.screen(), timeout):
            raise AssertionError(f"{text!r} not on screen:\n{self.screen()}")
        return self.screen()

    def alive(self) -> bool:
        return subprocess.run([*self.base, "has-session", "-t", "t"],
                              capture_output=True).returncode == 0

    def kill(self) -> None:
        subprocess.run([*self.base, "kill-server"], capture_output=True)


def _watch_cmd(args: str, tail: str) -> str:
    """A shell command running `venue-agent watch ARGS` from this checkout at the terminal's
    own size (COLUMNS/LINES of the test's environment unset); the pane stays for reading."""
    return (f"cd {shlex.quote(str(ROOT))} && PYTHONPATH=. COLUMNS= LINES= "
            f"{shlex.quote(sys.executable)} -m agent.cli watch {args} {tail}; sleep 30")


@pytest.fixture
def tmux_console(tmp_path: Path) -> Iterator[tuple[Tmux, object]]:
    if shutil.which("tmux") is None:
        pytest.fail("tmux is not installed (make test installs it)", pytrace=False)
    with start_mosquitto(tmp_path / "broker") as broker:
        tmux = Tmux(tmp_path / "tmux.sock", _watch_cmd(
            f"--broker {broker.url} --venue {VENUE} --name bob",
            f"2>{shlex.quote(str(tmp_path / 'console.err'))}"))
        try:
            yield tmux, broker
        finally:
            tmux.kill()


def test_staff_take_an_alert_with_one_key_and_a_second_console_sees_it(
        tmux_console: tuple[Tmux, object]) -> None:
    tmux, broker = tmux_console
    port = broker.port  # type: ignore[attr-defined]
    url = broker.url  # type: ignore[attr-defined]
    tmux.wait_screen("venue park-east")
    _publish(port, T.zone_state("dino-queue"),
             zone_state("dino-queue", wait_s=2400, joining=2880, forecast=3600, queue=310),
             retain=True)
    tmux.wait_screen("dino-queue")
    for mid, at, kind in ((MID_A, "2026-07-01T12:00:00Z", "queue_long"),
                          (MID_B, "2026-07-01T12:05:00Z", "queue_rising")):
        _publish(port, T.moment("dino-queue", kind), moment(mid, kind=kind))
        _publish(port, T.dispatch("dino-ops"), dispatch(mid, at, kind=kind,
                                                         priority="medium"))
    screen = tmux.wait_screen("[a] take queue_rising at Dino Ride")
    assert screen.index("queue_rising opened") < screen.index("queue_long opened")
    with Collector(url, Topics(VENUE).ack_filter) as acks:
        tmux.keys("a")  # takes the newest open alert
        got = acks.wait_for(lambda ms: bool(ms))[0]
        assert got.topic == Topics(VENUE).ack(MID_B) and got.qos == 1
        body = json.loads(got.payload)
        assert body["by"] == "bob" and body["moment_id"] == MID_B
        screen = tmux.wait_screen("taken by bob")
        assert "[a] take queue_long at Dino Ride" in screen  # the next one is offered
        tmux.keys("a")
        acks.wait_for(lambda ms: len(ms) >= 2)
    # a second console, started afterwards, shows who took both (the acks are retained)
    second = _cli("watch", "--broker", url, "--venue", VENUE, "--duration", "2")
    assert f"ACK {MID_B} taken by bob" in second.stdout
    assert f"ACK {MID_A} taken by bob" in second.stdout
    tmux.keys("q")
    assert poll_until(lambda: "venue park-east" in tmux.screen() and not _console_running(
        tmux), 10)


def _console_running(tmux: Tmux) -> bool:
    out = subprocess.run([*tmux.base, "list-panes", "-t", "t", "-F", "#{pane_current_command}"],
                         capture_output=True, text=True).stdout
    return "python" in out


def test_the_banner_in_a_terminal_while_the_broker_is_down(tmp_path: Path) -> None:
    if shutil.which("tmux") is None:
        pytest.fail("tmux is not installed (make test installs it)", pytrace=False)
    url = f"mqtt://127.0.0.1:{free_port()}"
    rc_file = tmp_path / "rc"
    tmux = Tmux(tmp_path / "tmux.sock", _watch_cmd(
        f"--broker {url} --venue {VENUE} --connect-timeout 4",
        f"2>/dev/null; echo $? > {shlex.quote(str(rc_file))}"))
    try:
        screen = tmux.wait_screen("BROKER UNREACHABLE")
        assert url in screen
        assert poll_until(rc_file.exists, 15)
        time.sleep(0.1)
        assert rc_file.read_text().strip() == "1"
    finally:
        tmux.kill()


def test_watch_over_tls_with_a_client_certificate(tmp_path: Path) -> None:
    have_openssl()
    pki = tmp_path / "pki"
    pki.mkdir()
    make_pki(pki)
    plain = free_port()
    with start_mosquitto(tmp_path / "broker", extra_conf=[
            *tls_listener_conf(pki, require_certificate=True),
            f"listener {plain} 127.0.0.1"]) as broker:
        poll_until(lambda: _accepts(plain), 10)
        tls_url = f"mqtts://127.0.0.1:{broker.port}"
        with Collector(plain, Topics(VENUE).ack_filter) as acks:
            out = _cli("watch", "--broker", tls_url, "--venue", VENUE, "--ack", MID_A,
                       "--name", "carol", "--ca-file", str(pki / "ca.crt"),
                       "--cert-file", str(pki / "gw-a.crt"), "--key-file",
                       str(pki / "gw-a.key"))
            assert out.returncode == 0, out.stderr
            assert acks.wait_for(lambda ms: bool(ms))[0].json()["by"] == "carol"
        # without the client certificate the broker refuses: the console gives up, exit 1
        out = _cli("watch", "--broker", tls_url, "--venue", VENUE, "--ca-file",
                   str(pki / "ca.crt"), "--connect-timeout", "3")
        assert out.returncode == 1, (out.stdout, out.stderr)
        assert "no connection to the broker" in out.stderr
