"""`venue-agent acl`: what each user may write and read, the conflicts it refuses, the CLI.

The broker's side (the ACL enforced by a real Mosquitto) is tests/test_acl_mosquitto.py.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from agent import cli
from agent.acl import AclError, plan_acl, render_acl, render_password_template
from agent.config import parse_config
from agent.topics import ANY, Topics

ROOT = Path(__file__).resolve().parents[1]


def config(gateway: str, zones: dict[str, str], *, venue: str = "park-east",
           extra: str = "", file: str | None = None) -> str:
    text = f'[venue]\nid = "{venue}"\n[gateway]\nid = "{gateway}"\n{extra}\n'
    for zone, team in zones.items():
        text += f'[[zones]]\nid = "{zone}"\nkind = "area"\nteam = "{team}"\n'
    return text


def parsed(gateway: str, zones: dict[str, str], **kw: str):  # type: ignore[no-untyped-def]
    return parse_config(config(gateway, zones, **kw), f"{gateway}.toml")


def rules(acl: str) -> dict[str, list[str]]:
    """user -> its 'topic ...' lines."""
    out: dict[str, list[str]] = {}
    user = None
    for line in acl.splitlines():
        if line.startswith("user "):
            user = line[5:]
            out.setdefault(user, [])
        elif line.startswith("topic "):
            assert user is not None, "a rule before any user applies to anonymous clients"
            out[user].append(line[6:])
    return out


def test_each_gateway_writes_only_its_own_topics() -> None:
    a = parsed("gw-a", {"zone-a1": "team-a", "zone-a2": "operations"})
    b = parsed("gw-b", {"zone-b": "operations"},
               extra='[moments]\nreader_team = "tech-b"')
    acl = rules(render_acl(plan_acl([a, b])))
    t = Topics("park-east", "gw-a")
    assert acl["venue-agent-park-east-gw-a"] == [
        f"write {t.status}", f"write {t.health}", f"write {t.gateway_moment(ANY)}",
        f"write {t.zone_state('zone-a1')}", f"write {t.moment('zone-a1', ANY)}",
        f"write {t.nudge('zone-a1')}",
        f"write {t.zone_state('zone-a2')}", f"write {t.moment('zone-a2', ANY)}",
        f"write {t.nudge('zone-a2')}",
        f"write {t.dispatch('operations')}", f"write {t.dispatch('supervisors')}",
        f"write {t.dispatch('team-a')}",
        f"write {t.dispatch('technical')}",
        f"read {t.ack_filter}"]
    assert acl["venue-agent-park-east-gw-b"] == [
        "write venue/park-east/gateway/gw-b/status", "write venue/park-east/gateway/gw-b/health",
        "write venue/park-east/gateway/gw-b/moment/+",
        "write venue/park-east/zone/zone-b/state", "write venue/park-east/moment/zone-b/+",
        "write venue/park-east/nudge/zone-b",
        "write venue/park-east/dispatch/operations", "write venue/park-east/dispatch/supervisors",
        "write venue/park-east/dispatch/tech-b",
        "read venue/park-east/ack/#"]
    assert acl["staff"] == ["read venue/park-east/#", "write venue/park-east/ack/#"]
    assert acl["board"] == ["read venue/park-east/zone/+/state", "read venue/park-east/nudge/+",
                            "read venue/park-east/moment/+/+", "read venue/park-east/ack/#",
                            "read venue/park-east/gateway/+/status"]
    # no wildcard in any gateway's write rule except a moment's kind
    for user, lines in acl.items():
        if user.startswith("venue-agent-"):
            for line in lines:
                if line.startswith("write") and "/moment/" not in line:
                    assert not re.search(r"[+#]", line), line


def test_staff_read_what_the_console_subscribes_to() -> None:
    acl = rules(render_acl(plan_acl([parsed("gw-a", {"zone-a": "operations"})])))
    staff_read = [line.removeprefix("read ") for line in acl["staff"] if line.startswith("read")]
    assert staff_read == [Topics("park-east").venue_filter]
    for f in Topics("park-east").console_filters():
        assert f.startswith(staff_read[0].removesuffix("#")), f


def test_shared_team_topics_are_named_as_a_residual_risk() -> None:
    plan = plan_acl([parsed("gw-a", {"zone-a": "operations"}),
                     parsed("gw-b", {"zone-b": "operations"}),
                     parsed("gw-c", {"zone-c": "own-team"},
                            extra='[moments]\nreader_team = "tech-c"')])
    warnings = plan.warnings()
    # operations (a, b), supervisors (escalations: a, b, c) and technical (a, b)
    assert len(warnings) == 3
    assert "venue/park-east/dispatch/operations" in warnings[0]
    assert "venue-agent-park-east-gw-a, venue-agent-park-east-gw-b" in warnings[0]
    assert "venue/park-east/dispatch/supervisors" in warnings[1]
    assert "venue/park-east/dispatch/technical" in warnings[2]
    acl = render_acl(plan)
    for w in warnings:
        assert f"#   {w}" in acl


def test_two_gateways_claiming_one_zone_is_refused() -> None:
    a = parsed("gw-a", {"lobby": "operations", "zone-a": "operations"})
    b = parsed("gw-b", {"lobby": "operations"})
    with pytest.raises(AclError) as e:
        plan_acl([a, b])
    assert "gw-a.toml" in str(e.value) and "gw-b.toml" in str(e.value)
    assert "'lobby'" in str(e.value)
    # the same zone id in another venue is another zone
    plan_acl([a, parsed("gw-b", {"lobby": "operations"}, venue="park-west")])


@pytest.mark.parametrize(("second", "expected"), [
    (lambda: parsed("gw-a", {"zone-b": "operations"}), "both gateway 'gw-a'"),
    (lambda: parsed("gw-b", {"zone-b": "operations"},
                    extra='[broker]\nclient_id = "venue-agent-park-east-gw-a"'),
     "the same user 'venue-agent-park-east-gw-a'"),
    (lambda: parsed("gw-b", {"zone-b": "operations"}, extra='[broker]\nusername = "staff"'),
     "also a staff or board user"),
    (lambda: parsed("gw-b", {"zone-b": "operations"},
                    extra='[broker]\nusername = "gw b"'), "cannot go into a Mosquitto ACL"),
])
def test_conflicts_are_refused(second, expected: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(AclError, match=re.escape(expected)):
        plan_acl([parsed("gw-a", {"zone-a": "operations"}), second()])


def test_username_is_the_login_of_the_gateway() -> None:
    default = parsed("gw-a", {"zone-a": "operations"})
    named = parsed("gw-b", {"zone-b": "operations"}, extra='[broker]\nusername = "gate-b"')
    by_client_id = parsed("gw-c", {"zone-c": "operations"},
                          extra='[broker]\nclient_id = "east-c"')
    users = [g.username for g in plan_acl([default, named, by_client_id]).gateways]
    assert users == ["venue-agent-park-east-gw-a", "gate-b", "east-c"]


def test_staff_and_board_users_and_several_venues() -> None:
    plan = plan_acl([parsed("gw-a", {"zone-a": "operations"}),
                     parsed("gw-w", {"zone-w": "operations"}, venue="park-west")],
                    staff_users=["staff-east", "staff-tablet"], board_users=["board-1"])
    acl = rules(render_acl(plan))
    assert acl["staff-tablet"] == acl["staff-east"] == [
        "read venue/park-east/#", "write venue/park-east/ack/#",
        "read venue/park-west/#", "write venue/park-west/ack/#"]
    assert acl["board-1"] == [
        "read venue/park-east/zone/+/state", "read venue/park-east/nudge/+",
        "read venue/park-east/moment/+/+", "read venue/park-east/ack/#",
        "read venue/park-east/gateway/+/status",
        "read venue/park-west/zone/+/state", "read venue/park-west/nudge/+",
        "read venue/park-west/moment/+/+", "read venue/park-west/ack/#",
        "read venue/park-west/gateway/+/status"]
    with pytest.raises(AclError, match="both a staff and a board user"):
        plan_acl([parsed("gw-a", {"zone-a": "operations"})], staff_users=["x"],
                 board_users=["x"])
    with pytest.raises(AclError, match="user name"):
        plan_acl([parsed("gw-a", {"zone-a": "operations"})], staff_users=["staff:1"])


def test_password_template_has_usernames_and_no_passwords() -> None:
    plan = plan_acl([parsed("gw-a", {"zone-a": "operations"})])
    text = render_password_template(plan)
    entries = [line for line in text.splitlines() if line and not line.startswith("#")]
    assert entries == ["venue-agent-park-east-gw-a:", "staff:", "board:"]
    assert "mosquitto_passwd -c -b" in text and "mosquitto_passwd -b" in text


# ------------------------------------------------------------------------- CLI
def test_cli_prints_the_acl_and_exits_2_naming_both_configs(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a, b = tmp_path / "gw-a.toml", tmp_path / "gw-b.toml"
    a.write_text(config("gw-a", {"lobby": "operations"}))
    b.write_text(config("gw-b", {"lobby": "operations"}))
    assert cli.main(["acl", str(a), str(b)]) == 2
    err = capsys.readouterr().err
    assert str(a) in err and str(b) in err and "'lobby'" in err

    b.write_text(config("gw-b", {"hall": "operations"}))
    assert cli.main(["acl", str(a), str(b)]) == 0
    out, err = capsys.readouterr()
    assert "user venue-agent-park-east-gw-b" in out
    assert "topic write venue/park-east/zone/hall/state" in out
    assert "warning: dispatch topic venue/park-east/dispatch/operations" in err
    # the template rides along as comments: stdout is a valid ACL as it is
    assert "# | venue-agent-park-east-gw-a:" in out
    assert all(line == "" or line.startswith(("#", "user ", "topic ")) for line in out.splitlines())

    out_dir = tmp_path / "out"
    assert cli.main(["acl", str(a), str(b), "--out", str(out_dir), "--staff-user", "ops"]) == 0
    assert "user ops" in (out_dir / "venue-agent.acl").read_text()
    assert "ops:" in (out_dir / "passwd.template").read_text().splitlines()


def test_cli_refuses_a_bad_config_with_exit_2(tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[venue]\nid = 'Bad Id'\n")
    with pytest.raises(SystemExit) as e:
        cli.main(["acl", str(bad)])
    assert e.value.code == 2
    assert "bad.toml" in capsys.readouterr().err


def test_shipped_acl_is_the_generated_one(monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    """config/mosquitto.acl is `venue-agent acl config/example-venue.toml`, kept current."""
    monkeypatch.chdir(ROOT)
    assert cli.main(["acl", "config/example-venue.toml"]) == 0
    assert capsys.readouterr().out == (ROOT / "config" / "mosquitto.acl").read_text()


def test_a_gateway_with_alternatives_reads_their_state_and_statuses() -> None:
    """Venue-wide nudges: the gateway owning the long line follows the alternative other
    gateways own and every gateway's status, and writes its experiment summary; nothing
    more (not the state of zones it does not nudge to)."""
    import dataclasses

    from agent.config import AlternativeConfig

    a = parsed("gw-a", {"zone-a1": "operations", "zone-a2": "operations"})
    a = dataclasses.replace(a, zones=(dataclasses.replace(
        a.zones[0], alternatives=(AlternativeConfig("zone-b", 240.0),
                                  AlternativeConfig("zone-a2", 60.0))), a.zones[1]))
    b = parsed("gw-b", {"zone-b": "operations"}, extra='[moments]\nreader_team = "tech-b"')
    acl = rules(render_acl(plan_acl([a, b])))
    t = Topics("park-east", "gw-a")
    gw_a = acl["venue-agent-park-east-gw-a"]
    assert f"write {t.experiment()}" in gw_a
    assert [r for r in gw_a if r.startswith("read")] == [
        f"read {t.ack_filter}", "read venue/park-east/gateway/+/status",
        "read venue/park-east/zone/zone-b/state"]
    gw_b = acl["venue-agent-park-east-gw-b"]
    assert not any("experiment" in r or "/status" in r for r in gw_b if r.startswith("read"))
    assert not any("experiment" in r for r in gw_b)
