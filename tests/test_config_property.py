"""Properties of config loading.

1. ``parse_config`` refuses a config exactly when the runtime's own start-up checks would:
   the publisher's ``BrokerSettings`` (after reading ``password_file`` as ``run`` does), the
   BLE decoder's ``WristbandFormat`` and the kernels' ``EngineParams``. So ``check-config``
   passing means ``run`` gets past start-up, and ``check-config`` refuses nothing ``run``
   would take.
2. No text at all makes ``parse_config`` raise anything but :class:`ConfigError`: random
   text, mutated example configs, deep nesting. What it accepts prints (``to_toml``) as a
   config with the same meaning.
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path
from typing import Any

import tomli_w
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.config import MAX_TAGS_LIMIT, ConfigError, effective, parse_config, to_toml
from agent.publisher import BrokerSettings
from firmware_bridge.ble_adverts import WristbandFormat
from kernels.engine import EngineParams

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((ROOT / "config").glob("*.toml"))

# A directory with one readable file in it, shared by every example (paths must be stable
# for Hypothesis to replay a failure).
_FILES = Path(tempfile.mkdtemp(prefix="venue-agent-config-prop-"))
(_FILES / "present").write_text("secret\n")
PRESENT, MISSING = str(_FILES / "present"), str(_FILES / "missing")

# ------------------------------------------------------------------ 1. refusal equivalence

urls = st.one_of(
    st.sampled_from(["mqtt://127.0.0.1:1883", "mqtts://broker.example", "mqtt://[::1]:1884",
                     "mqtt://h:99999", "mqtt://u@h", "mqtt://h:0", "mqtt://h/x", "http://h",
                     "mqtt://", "mqtt://h h", "mqtts://b:8883/", "mqtt://h:1:2", "mqtt://[::1"]),
    st.builds(lambda s, h, p: f"{s}://{h}{p}",
              st.sampled_from(["mqtt", "mqtts", "MQTT", "tcp", ""]),
              st.text(min_size=0, max_size=12),
              st.sampled_from(["", ":1883", ":0", ":65535", ":65536", ":x", "/", "?q"])),
)
numbers = st.one_of(st.integers(-3, 70000), st.floats(-10, 1e6), st.just(math.nan))


@st.composite
def runtime_configs(draw: st.DrawFn) -> dict[str, Any]:
    broker: dict[str, Any] = {}
    url_list = draw(st.lists(urls, min_size=1, max_size=3, unique=True))
    broker["url"] = url_list[0] if len(url_list) == 1 and draw(st.booleans()) else url_list
    if draw(st.booleans()):
        broker["keepalive_s"] = draw(st.integers(-2, 70000))
    if draw(st.booleans()):
        broker["username"] = draw(st.sampled_from(["", "gw"]))
    if draw(st.booleans()):
        broker["password_file"] = draw(st.sampled_from(["", PRESENT, MISSING]))
    if draw(st.booleans()):
        broker["ca_file"] = draw(st.sampled_from(["", PRESENT, MISSING]))
    if draw(st.booleans()):
        broker["protocol"] = draw(st.sampled_from(["auto", "5", "3.1.1", "4", ""]))
    bands = []
    for i in range(draw(st.integers(0, 2))):
        company = draw(st.integers(-2, 0x10002))
        bands.append({
            "name": f"band{i}",
            "company_id": draw(st.sampled_from([company, str(company), hex(company)]))
            if company >= 0 else company,
            "id_offset": draw(st.integers(-2, 40)),
            "id_length": draw(st.integers(-1, 70)),
        })
    estimation = {k: draw(v) for k, v in {
        "max_tags": st.integers(-1, MAX_TAGS_LIMIT),
        "window_s": numbers, "rate_window_s": numbers, "fifo_slack_s": numbers,
        "min_measured_waits": st.integers(-1, 30), "wait_recent": st.integers(-1, 30),
    }.items() if draw(st.booleans())}
    moments = {"forecast_horizon_s": draw(numbers)} if draw(st.booleans()) else {}
    return {
        "venue": {"id": "v"}, "gateway": {"id": "g"}, "broker": broker,
        "storage": {"path": "/var/lib/venue-agent/agent.db"},
        "moments": moments, "estimation": estimation,
        "zones": [{"id": "q", "kind": "queue"}, {"id": "a", "kind": "area"}],
        "readers": [{"id": "r1", "protocol": "em4100", "port": "/dev/ttyUSB0", "zone": "q",
                     "role": "entry"},
                    {"id": "b1", "protocol": "ble", "zone": "a", "identity": "wristband",
                     "wristbands": bands}],
    }


def _company_id(value: int | str) -> int:
    return value if isinstance(value, int) else int(value, 0)


def runtime_refuses(data: dict[str, Any]) -> bool:
    """What ``run`` does at start with these values, through the runtime's own checks."""
    b = data["broker"]
    try:
        password = None
        if b.get("password_file"):
            password = Path(b["password_file"]).read_text().strip()  # as the runtime does
        for url in b["url"] if isinstance(b["url"], list) else [b["url"]]:
            BrokerSettings(url=url, client_id="venue-agent-v-g",
                           keepalive_s=b.get("keepalive_s", 30),
                           username=b.get("username") or None, password=password,
                           ca_file=b.get("ca_file") or None, protocol=b.get("protocol", "auto"))
        for w in data["readers"][1]["wristbands"]:
            WristbandFormat(company_id=_company_id(w["company_id"]), id_offset=w["id_offset"],
                            id_length=w["id_length"], name=w["name"])
        est = {**{"max_tags": 131072, "window_s": 900.0, "rate_window_s": 300.0,
                  "fifo_slack_s": 120.0, "min_measured_waits": 5, "wait_recent": 20},
               **data["estimation"]}
        EngineParams(horizon_s=data["moments"].get("forecast_horizon_s", 900.0), **est)
    except (ValueError, OSError):
        return True
    return False


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(runtime_configs())
def test_parse_config_refuses_exactly_what_the_runtime_refuses(data: dict[str, Any]) -> None:
    text = tomli_w.dumps(data)
    try:
        parse_config(text, "gw.toml")
        refused: ConfigError | None = None
    except ConfigError as e:
        refused = e
    assert (refused is not None) == runtime_refuses(data), (refused, text)


def test_the_generator_reaches_both_sides() -> None:
    seen = set()

    @settings(max_examples=200, deadline=None, database=None)
    @given(runtime_configs())
    def collect(data: dict[str, Any]) -> None:
        seen.add(runtime_refuses(data))

    collect()
    assert seen == {True, False}


# ------------------------------------------------------------------ 2. never a traceback

def _outcome(text: str) -> None:
    """``text`` gives a Config that prints as an equal config, or a ConfigError."""
    try:
        cfg = parse_config(text, "fuzz.toml")
    except ConfigError as e:
        assert str(e).startswith("fuzz.toml")
        return
    again = parse_config(to_toml(cfg), "printed")
    assert effective(again) == effective(cfg)


@st.composite
def mutated_examples(draw: st.DrawFn) -> str:
    text = draw(st.sampled_from(EXAMPLES)).read_text()
    for _ in range(draw(st.integers(1, 4))):
        i = draw(st.integers(0, len(text)))
        j = draw(st.integers(i, min(len(text), i + 40)))
        op = draw(st.sampled_from(["delete", "insert", "replace", "duplicate"]))
        piece = draw(st.one_of(
            st.text(max_size=12),
            st.sampled_from(["[", "]", "{", "}", "=", '"', "\n", "0x0a12", "-1", "1e400", "nan",
                             "[[readers]]", "[[zones]]", "[broker]", "url = []",
                             "keepalive_s = 0", "id = \"X\"", "\\u0000", "'''", "inf"])))
        if op == "delete":
            text = text[:i] + text[j:]
        elif op == "insert":
            text = text[:i] + piece + text[i:]
        elif op == "replace":
            text = text[:i] + piece + text[j:]
        else:
            text = text[:j] + text[i:j] + text[j:]
    return text


@settings(max_examples=500, deadline=None)
@given(mutated_examples())
def test_mutated_example_configs_give_a_config_or_a_config_error(text: str) -> None:
    _outcome(text)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200))
def test_random_text_gives_a_config_or_a_config_error(text: str) -> None:
    _outcome(text)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.sampled_from(["[", "{a=", "[{a=[", "[["]), min_size=1, max_size=4),
       st.integers(1, 3000), st.sampled_from(["x", "venue", "zones", "readers"]))
def test_deep_nesting_gives_a_config_error(openers: list[str], depth: int, key: str) -> None:
    opening = "".join(openers[i % len(openers)] for i in range(depth))
    closing = "".join({"[": "]", "{": "}", "=": ""}.get(c, "") for c in reversed(opening))
    for body in (f"{key} = {opening}1{closing}\n", f"{key} = {opening}\n"):
        _outcome(body)
