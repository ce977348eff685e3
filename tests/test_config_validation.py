"""What `run` would refuse at start, `check-config` refuses first, naming the file and key.

Each case here was a config that `check-config` accepted and `run` then died on (or that
could not be written at all), found in the field.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from agent.config import ConfigError, effective, parse_config, to_toml

ROOT = Path(__file__).resolve().parents[1]
MINIMAL = (ROOT / "config" / "minimal.toml").read_text()

BLE_READER = """
[[readers]]
id = "lounge-ble"
protocol = "ble"
zone = "lounge"
identity = "wristband"
[[readers.wristbands]]
name = "parkband"
company_id = {company_id}
id_offset = 2
id_length = {id_length}
[[zones]]
id = "lounge"
kind = "area"
"""


def _error(text: str) -> ConfigError:
    with pytest.raises(ConfigError) as e:
        parse_config(text, "gw.toml")
    assert e.value.file == "gw.toml"
    assert str(e.value).startswith(f"gw.toml: {e.value.key}: expected")
    return e.value


def _broker(extra: str) -> str:
    return MINIMAL.replace('url = "mqtt://127.0.0.1:1883"', extra, 1)


@pytest.mark.parametrize("url", ["mqtt://h:99999", "mqtt://u@h", "mqtt://u:pw@h:1883",
                                 "mqtt://h:0", "mqtt://h:x", "mqtt://[::1", "mqtt://h h"])
def test_broker_urls_the_publisher_refuses_are_refused(url: str) -> None:
    err = _error(_broker(f'url = "{url}"'))
    assert err.key == "broker.url" and "mqtt://host" in err.expected


def test_keepalive_zero_is_refused() -> None:
    assert _error(_broker('url = "mqtt://h"\nkeepalive_s = 0')).key == "broker.keepalive_s"
    assert _error(_broker('url = "mqtt://h"\nkeepalive_s = 70000')).key == "broker.keepalive_s"


def test_password_file_without_username_is_refused(tmp_path: Path) -> None:
    pw = tmp_path / "pw"
    pw.write_text("secret\n")
    err = _error(_broker(f'url = "mqtt://h"\npassword_file = "{pw}"'))
    assert err.key in ("broker.username", "broker.password_file")
    assert "username" in str(err)
    ok = parse_config(_broker(f'url = "mqtts://h"\npassword_file = "{pw}"\nusername = "gw"'))
    assert ok.broker.password_file == str(pw)


def test_missing_password_file_is_refused(tmp_path: Path) -> None:
    err = _error(_broker(f'url = "mqtt://h"\nusername = "gw"\n'
                         f'password_file = "{tmp_path / "nope"}"'))
    assert err.key == "broker.password_file"


def test_missing_ca_file_and_ca_file_without_tls_are_refused(tmp_path: Path) -> None:
    err = _error(_broker(f'url = "mqtts://h"\nca_file = "{tmp_path / "ca.pem"}"'))
    assert err.key == "broker.ca_file" and "does not exist" in str(err)
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    assert _error(_broker(f'url = "mqtt://h"\nca_file = "{ca}"')).key == "broker.ca_file"
    assert parse_config(_broker(f'url = "mqtts://h"\nca_file = "{ca}"')).broker.ca_file == str(ca)


def _with_ble(company_id: str = "0x0a12", id_length: int = 6) -> str:
    return MINIMAL + BLE_READER.format(company_id=company_id, id_length=id_length)


def test_wristband_company_id_as_the_docs_show_it_loads() -> None:
    cfg = parse_config(_with_ble("0x0a12"))
    (band,) = cfg.readers[1].wristbands
    assert band.company_id == 0x0A12 and band.id_offset == 2 and band.id_length == 6


@pytest.mark.parametrize(("text", "value"), [('"2578"', 2578), ('"0x0a12"', 0x0A12),
                                             ('"0X0A12"', 0x0A12), ("2578", 2578)])
def test_wristband_company_id_as_a_string_is_decimal_or_hex(text: str, value: int) -> None:
    assert parse_config(_with_ble(text)).readers[1].wristbands[0].company_id == value


@pytest.mark.parametrize("text", ['"acme"', '"0x"', '"-1"', '"0x10000"', "65536", "-1", "1.5",
                                  "true", '""', '" 12"'])
def test_wristband_company_id_refusals_are_named(text: str) -> None:
    err = _error(_with_ble(text))
    assert err.key == "readers[1].wristbands[0].company_id"


def test_wristband_id_length_beyond_64_is_refused() -> None:
    assert _error(_with_ble(id_length=65)).key == "readers[1].wristbands[0].id_length"
    assert _error(_with_ble(id_length=0)).key == "readers[1].wristbands[0].id_length"
    assert parse_config(_with_ble(id_length=64)).readers[1].wristbands[0].id_length == 64


@pytest.mark.parametrize("depth", [100, 500, 5000])
@pytest.mark.parametrize("shape", ["array", "table"])
def test_deep_nesting_is_a_config_error(depth: int, shape: str) -> None:
    value = "[" * depth + "]" * depth if shape == "array" else "{a=" * depth + "1" + "}" * depth
    with pytest.raises(ConfigError):
        parse_config(MINIMAL + f"\n[moments]\nhold_s = {value}\n", "gw.toml")
    with pytest.raises(ConfigError):
        parse_config(f"x = {value}\n", "gw.toml")


# ------------------------------------------------------------------ ids become topic levels

@pytest.mark.parametrize(("old", "new", "key"), [
    ('[venue]\nid = "park-east"', '[venue]\nid = "Park-East"', "venue.id"),
    ('[gateway]\nid = "gw-01"', '[gateway]\nid = "gw_01"', "gateway.id"),
    ('[gateway]\nid = "gw-01"', '[gateway]\nid = "gw.01"', "gateway.id"),
    ('[gateway]\nid = "gw-01"', '[gateway]\nid = ""', "gateway.id"),
    ('[gateway]\nid = "gw-01"', f'[gateway]\nid = "{"g" * 65}"', "gateway.id"),
    ('id = "dino-entry"', 'id = "dino+entry"', "readers[0].id"),
    ('[[zones]]\nid = "dino-queue"', '[[zones]]\nid = "dino queue"', "zones[0].id"),
    ('capacity = 400', 'capacity = 400\nteam = "ops/#"', "zones[0].team"),
])
def test_every_topic_level_from_config_is_an_id(old: str, new: str, key: str) -> None:
    assert old in MINIMAL
    err = _error(MINIMAL.replace(old, new, 1))
    assert err.key == key and "[a-z0-9-]" in err.expected


def test_reader_team_wildcard_is_refused() -> None:
    err = _error(MINIMAL + '[moments]\nreader_team = "tech/#"\n')
    assert err.key == "moments.reader_team"
    assert parse_config(MINIMAL + '[moments]\nreader_team = "g" \n').moments.reader_team == "g"
    assert parse_config(MINIMAL.replace('id = "gw-01"', f'id = "{"g" * 64}"')).gateway.id


# ------------------------------------------------------------------ other start-up refusals

@pytest.mark.parametrize(("extra", "key"), [
    ("[moments]\nforecast_horizon_s = 0\n", "moments.forecast_horizon_s"),
    ("[estimation]\nmax_tags = 0\n", "estimation.max_tags"),
    ("[estimation]\nmax_tags = 99999999999999999999\n", "estimation.max_tags"),
    ("[broker]\nnudge_expiry_s = 9999999999999\n", "broker.nudge_expiry_s"),
    ("[gateway]\ntick_s = 1e300\n", "gateway.tick_s"),
])
def test_numbers_the_runtime_cannot_use_are_refused(extra: str, key: str) -> None:
    text = MINIMAL
    for section in ("[moments]", "[estimation]", "[gateway]", "[broker]"):
        if extra.startswith(section) and section in text:
            text = text.replace(section + "\n", extra, 1)
            break
    else:
        text = text + extra
    assert _error(text).key == key


def test_control_characters_in_strings_are_refused() -> None:
    err = _error(MINIMAL.replace('port = "/dev/ttyUSB0"', 'port = "/dev/tty\\u0000USB0"'))
    assert err.key == "readers[0].port"


@pytest.mark.parametrize("port", ["socket://h:abc", "socket://h:0", "socket://h:99999",
                                  "socket://:4001", "rfc2217://h"])
def test_tcp_reader_urls_need_host_and_port(port: str) -> None:
    err = _error(MINIMAL.replace('port = "/dev/ttyUSB0"', f'port = "{port}"'))
    assert err.key == "readers[0].port"


def test_huge_values_are_shortened_in_messages() -> None:
    err = _error(MINIMAL.replace('role = "entry"', f'role = "{"x" * 100000}"'))
    assert len(str(err)) < 500


# ------------------------------------------------------------------ the CLI, end to end

@pytest.mark.parametrize("broker", ['url = "mqtt://h:99999"', 'url = "mqtt://u@h"',
                                    'url = "mqtt://h"\nkeepalive_s = 0'])
def test_check_config_exits_2_naming_the_key(tmp_path: Path, broker: str) -> None:
    f = tmp_path / "gw.toml"
    f.write_text(_broker(broker))
    r = subprocess.run([sys.executable, "-m", "agent.cli", "check-config", str(f)],
                       capture_output=True, text=True)
    assert r.returncode == 2, r.stdout + r.stderr
    assert str(f) in r.stderr and "broker." in r.stderr and "Traceback" not in r.stderr


def test_deep_nesting_in_check_config_is_exit_2(tmp_path: Path) -> None:
    f = tmp_path / "gw.toml"
    f.write_text("x = " + "[" * 600 + "]" * 600 + "\n")
    r = subprocess.run([sys.executable, "-m", "agent.cli", "check-config", str(f)],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "Traceback" not in r.stderr and str(f) in r.stderr


def test_effective_config_of_a_ble_reader_round_trips() -> None:
    cfg = parse_config(_with_ble("0x0a12"))
    again = parse_config(to_toml(cfg), "printed")
    assert effective(again) == effective(cfg)
