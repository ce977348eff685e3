"""The keys added for the field: storage size and checkpoints, broker failover and replay
rate, per-reader RSSI floor and read count, per-zone departure by missed reads."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from agent.config import BrokerConfig, ConfigError, effective, parse_config, to_toml

ROOT = Path(__file__).resolve().parents[1]
MINIMAL = (ROOT / "config" / "minimal.toml").read_text()


def test_defaults() -> None:
    cfg = parse_config(MINIMAL)
    assert cfg.storage.max_mb == 2048 and isinstance(cfg.storage.max_mb, int)
    assert cfg.storage.checkpoint_interval_s == 10.0
    assert cfg.broker.url == "mqtt://127.0.0.1:1883"
    assert cfg.broker.urls == ("mqtt://127.0.0.1:1883",)
    assert cfg.broker.replay_per_s == 50.0
    r = cfg.readers[0]
    assert r.rssi_floor_dbm == -127.0 and r.min_reads == 1
    assert cfg.zones[0].departure_missed_reads == 4.0


def test_effective_config_prints_the_new_keys() -> None:
    printed = tomllib.loads(to_toml(parse_config(MINIMAL)))
    assert printed["storage"]["max_mb"] == 2048
    assert printed["storage"]["checkpoint_interval_s"] == 10.0
    assert printed["broker"]["url"] == "mqtt://127.0.0.1:1883"
    assert "urls" not in printed["broker"]
    assert printed["broker"]["replay_per_s"] == 50.0
    assert printed["readers"][0]["rssi_floor_dbm"] == -127.0
    assert printed["readers"][0]["min_reads"] == 1
    assert printed["zones"][0]["departure_missed_reads"] == 4.0


def _key_of(text: str) -> str:
    """The key named by the ConfigError that ``text`` raises."""
    with pytest.raises(ConfigError) as e:
        parse_config(text, "gw.toml")
    return e.value.key


def _set(section: str, line: str) -> str:
    if f"[{section}]\n" in MINIMAL:
        return MINIMAL.replace(f"[{section}]\n", f"[{section}]\n{line}\n", 1)
    return MINIMAL + f"[{section}]\n{line}\n"


def test_values_load() -> None:
    cfg = parse_config(_set("storage", "max_mb = 512\ncheckpoint_interval_s = 0"))
    assert cfg.storage.max_mb == 512 and cfg.storage.checkpoint_interval_s == 0.0
    cfg = parse_config(MINIMAL.replace('role = "entry"',
                                       'role = "entry"\nrssi_floor_dbm = -80\nmin_reads = 3'))
    assert cfg.readers[0].rssi_floor_dbm == -80.0 and cfg.readers[0].min_reads == 3
    cfg = parse_config(MINIMAL + "departure_missed_reads = 2.5\n")
    assert cfg.zones[0].departure_missed_reads == 2.5
    cfg = parse_config(MINIMAL.replace('url = "mqtt://127.0.0.1:1883"', "replay_per_s = 5"))
    assert cfg.broker.replay_per_s == 5.0


def test_broker_url_list_is_a_failover_list() -> None:
    text = MINIMAL.replace('url = "mqtt://127.0.0.1:1883"',
                           'url = ["mqtt://10.0.0.2:1883", "mqtts://backup.example"]')
    cfg = parse_config(text)
    assert cfg.broker.url == "mqtt://10.0.0.2:1883"
    assert cfg.broker.urls == ("mqtt://10.0.0.2:1883", "mqtts://backup.example")
    printed = to_toml(cfg)
    assert tomllib.loads(printed)["broker"]["url"] == list(cfg.broker.urls)
    assert effective(parse_config(printed)) == effective(cfg)


@pytest.mark.parametrize(("url", "key"), [
    ("[]", "broker.url"),
    ('["mqtt://a", "mqtt://b:99999"]', "broker.url[1]"),
    ('["mqtt://a", 3]', "broker.url[1]"),
    ('["mqtt://a", "mqtt://a"]', "broker.url"),
    ("3", "broker.url"),
])
def test_broker_url_list_refusals(url: str, key: str) -> None:
    assert _key_of(MINIMAL.replace('url = "mqtt://127.0.0.1:1883"', f"url = {url}")) == key


def test_ca_file_applies_to_every_url(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("x")
    assert _key_of(MINIMAL.replace('url = "mqtt://127.0.0.1:1883"',
                                   f'url = ["mqtts://a", "mqtt://b"]\nca_file = "{ca}"')
                   ) == "broker.ca_file"


@pytest.mark.parametrize(("section", "line", "key"), [
    ("storage", "max_mb = 0", "storage.max_mb"),
    ("storage", "max_mb = 1.5", "storage.max_mb"),
    ("storage", "checkpoint_interval_s = -1", "storage.checkpoint_interval_s"),
    ("storage", 'checkpoint_interval_s = "10"', "storage.checkpoint_interval_s"),
    ("broker", "replay_per_s = 0", "broker.replay_per_s"),
    ("broker", "replay_per_s = nan", "broker.replay_per_s"),
])
def test_section_refusals(section: str, line: str, key: str) -> None:
    assert _key_of(_set(section, line)) == key


@pytest.mark.parametrize(("line", "key"), [
    ("rssi_floor_dbm = -128", "readers[0].rssi_floor_dbm"),
    ("rssi_floor_dbm = 21", "readers[0].rssi_floor_dbm"),
    ("rssi_floor_dbm = inf", "readers[0].rssi_floor_dbm"),
    ("min_reads = 0", "readers[0].min_reads"),
    ("min_reads = 2.0", "readers[0].min_reads"),
])
def test_reader_refusals(line: str, key: str) -> None:
    assert _key_of(MINIMAL.replace('role = "entry"', f'role = "entry"\n{line}')) == key


@pytest.mark.parametrize("line", ["departure_missed_reads = 0.5", "departure_missed_reads = 0",
                                  'departure_missed_reads = "4"'])
def test_zone_refusals(line: str) -> None:
    assert _key_of(MINIMAL + line + "\n") == "zones[0].departure_missed_reads"


def test_broker_config_built_in_code_keeps_url_and_urls_consistent() -> None:
    assert BrokerConfig().urls == (BrokerConfig().url,)
    assert BrokerConfig(url="mqtt://a").urls == ("mqtt://a",)
    b = BrokerConfig(urls=("mqtt://a", "mqtt://b"))
    assert b.url == "mqtt://a"
    with pytest.raises(ValueError):
        BrokerConfig(url="mqtt://c", urls=("mqtt://a", "mqtt://b"))


def test_every_key_is_in_the_config_reference() -> None:
    from dataclasses import fields

    from agent import config

    doc = (ROOT / "docs" / "operations.md").read_text()
    reference = doc[doc.index("## Config reference"):]
    for cls in (config.VenueConfig, config.GatewayConfig, config.BrokerConfig,
                config.StorageConfig, config.MomentsConfig, config.EstimationConfig,
                config.ZoneConfig, config.ReaderConfig, config.WristbandConfig,
                config.HomeAssistantConfig):
        for f in fields(cls):
            if f.name != "urls":  # written as a list in broker.url
                assert re.search(rf"[`.]{f.name}[`\[]", reference), (cls, f.name)
