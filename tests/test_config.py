"""Config loading: the minimal file runs, defaults are filled in, every error is named."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from agent.config import ConfigError, effective, load_config, parse_config, to_toml

ROOT = Path(__file__).resolve().parents[1]
MINIMAL = (ROOT / "config" / "minimal.toml").read_text()


def test_minimal_config_runs_with_defaults() -> None:
    cfg = parse_config(MINIMAL, "minimal.toml")
    assert cfg.venue.id == "park-east" and cfg.gateway.id == "gw-01"
    assert cfg.gateway.tick_s == 1.0
    z = cfg.zone("dino-queue")
    assert z.timeout_s == 5400.0 and z.clear_wait_s == pytest.approx(0.8 * z.queue_long_wait_s)
    assert cfg.key_path == Path("/var/lib/venue-agent/pseudonym.key")
    assert cfg.client_id == "venue-agent-park-east-gw-01"


def test_example_configs_load_and_round_trip() -> None:
    for path in sorted((ROOT / "config").glob("*.toml")):
        cfg = load_config(path)
        # The printed effective config is itself a valid config with the same meaning.
        again = parse_config(to_toml(cfg), "printed")
        assert effective(again) == effective(cfg), path


def test_example_venue_has_two_queue_zones_and_an_area() -> None:
    cfg = load_config(ROOT / "config" / "example-venue.toml")
    kinds = [z.kind for z in cfg.zones]
    assert kinds.count("queue") == 2 and kinds.count("area") == 1
    for z in cfg.zones:
        roles = {r.role for r in cfg.readers if r.zone == z.id}
        assert roles == ({"entry", "exit"} if z.kind == "queue" else {"presence"})


def _error(text: str) -> ConfigError:
    with pytest.raises(ConfigError) as e:
        parse_config(text, "gw.toml")
    return e.value


@pytest.mark.parametrize("change, key, expected", [
    (("protocol = \"em4100\"", "protocol = \"em4200\""), "readers[0].protocol", "'em4100'"),
    (("role = \"entry\"", "role = \"door\""), "readers[0].role", "one of"),
    (("capacity = 400", "capacity = \"lots\""), "zones[0].capacity", "an integer"),
    (("capacity = 400", "capcity = 400"), "zones[0].capcity", "known keys"),
    (("zone = \"dino-queue\"\nrole", "zone = \"nowhere\"\nrole"), "readers[0].zone", "zone"),
    (("url = \"mqtt://127.0.0.1:1883\"", "url = \"http://x\""), "broker.url", "mqtt://"),
    (("[gateway]\nid = \"gw-01\"", "[gateway]\nid = \"gw/01\""), "gateway.id", "topic level"),
    (("kind = \"queue\"", "kind = \"line\""), "zones[0].kind", "'queue'"),
    (("port = \"/dev/ttyUSB0\"\n", ""), "readers[0].port", "pyserial URL"),
])
def test_errors_name_file_key_and_expectation(change: tuple[str, str], key: str,
                                              expected: str) -> None:
    old, new = change
    assert old in MINIMAL
    err = _error(MINIMAL.replace(old, new, 1))
    assert err.file == "gw.toml" and err.key == key
    assert str(err).startswith(f"gw.toml: {key}: expected") and expected in str(err)


def test_broken_toml_and_missing_sections() -> None:
    assert "valid TOML" in str(_error("[venue\nid = 1"))
    assert _error("[gateway]\nid='g'\n").key == "[venue]"
    assert _error(MINIMAL.replace("[[zones]]\nid = \"dino-queue\"", "[[zones]]\nid = \"x\"")
                  ).key == "readers[0].zone"
    no_zones = MINIMAL.split("[[zones]]")[0].replace("zone = \"dino-queue\"", "zone = \"z\"")
    assert _error(no_zones).key in ("zones", "readers[0].zone")


def test_duplicate_ids_and_hysteresis_checked() -> None:
    dup = MINIMAL + MINIMAL[MINIMAL.index("[[readers]]"):MINIMAL.index("[[zones]]")]
    assert "appears twice" in str(_error(dup))
    bad = MINIMAL + "queue_long_wait_s = 600\nqueue_long_clear_s = 700\n"
    assert _error(bad).key == "zones[0].queue_long_clear_s"


def test_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as e:
        load_config(tmp_path / "nope.toml")
    assert "nope.toml" in str(e.value) and "no such file" in str(e.value)


def test_cli_check_config_exit_codes(tmp_path: Path) -> None:
    good = subprocess.run([sys.executable, "-m", "agent.cli", "check-config",
                           str(ROOT / "config" / "minimal.toml")], capture_output=True, text=True)
    assert good.returncode == 0, good.stderr
    printed = tomllib.loads(good.stdout)
    assert printed["zones"][0]["absence_timeout_s"] == 5400.0
    assert printed["readers"][0]["baudrate"] == 9600
    bad_file = tmp_path / "bad.toml"
    bad_file.write_text(MINIMAL.replace("em4100", "magic-band-9000"))
    bad = subprocess.run([sys.executable, "-m", "agent.cli", "check-config", str(bad_file)],
                         capture_output=True, text=True)
    assert bad.returncode == 2
    assert str(bad_file) in bad.stderr and "readers[0].protocol" in bad.stderr
    assert "magic-band-9000" in bad.stderr
