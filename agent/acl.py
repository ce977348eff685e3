"""Mosquitto ACL and password-file template for a venue, generated from its gateways' configs.

``venue-agent acl CONFIG...`` reads every gateway's config and writes an ACL in which

- each **gateway** may write only its own gateway topics (``status``, which is also its Last
  Will, and ``health``) and, for the zones its config owns, ``zone/{zone}/state``,
  ``moment/{zone}/+`` and ``nudge/{zone}``, plus ``dispatch/{team}`` for every team its zones
  and ``moments.reader_team`` name; it reads the acknowledgement topics ``ack/#``; a
  gateway with venue-wide nudges (``zones[].alternatives``) also writes its
  ``experiment/nudges/{gateway}`` summary and reads every gateway's ``status`` and the
  ``zone/{zone}/state`` of the alternatives other gateways own; with
  ``[homeassistant] discovery`` it also writes and reads its own discovery configs
  (``{prefix}/sensor/{venue}_{gateway}/+/config``);
- **staff consoles** (``--staff-user``, default ``staff``) read everything of the venue and
  write only acknowledgements;
- the **board** (``--board-user``, default ``board``) reads zone state and nudges;
- nobody else reads or writes anything: once ``acl_file`` is set, Mosquitto denies what the
  file does not grant, and anonymous clients are refused by ``allow_anonymous false``.

**Usernames.** A gateway's username is the one it logs in with: ``broker.username`` when its
config sets one, otherwise its MQTT client id (``broker.client_id``, by default
``venue-agent-<venue>-<gateway>``). The client id is unique across venues sharing a broker
(a gateway id such as ``gw-01`` is not), and it is the common name to put in the gateway's
client certificate when the listener sets ``use_identity_as_username true``.

**Refused** (:class:`AclError`): two gateways claiming one zone of a venue, two configs of
one gateway, two gateways with one username, a gateway named like a staff or board user, and
a username Mosquitto's files cannot hold (``:``, ``#``, spaces).

**Residual risk** (written into the ACL as comments): dispatch topics are per team, and a
team is usually served by several gateways (every zone's default team is ``operations``), so
every gateway that names a team may write that team's dispatches, also for zones it does not
own. Consumers can check a dispatch's ``zone`` against the ``gateway`` that sent it.

Every topic comes from :class:`agent.topics.Topics`, the one home for topic names.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from agent.config import Config
from agent.topics import ANY, Topics

__all__ = [
    "DEFAULT_BOARD_USERS",
    "DEFAULT_STAFF_USERS",
    "AclError",
    "AclPlan",
    "GatewayGrant",
    "plan_acl",
    "render_acl",
    "render_password_template",
]

DEFAULT_STAFF_USERS = ("staff",)
DEFAULT_BOARD_USERS = ("board",)

# What Mosquitto's ACL and password files can hold as a username (no ':' in a password file,
# no whitespace or '#' in an ACL line); client ids from configs always fit.
USERNAME_RE = re.compile(r"^[A-Za-z0-9._@-]{1,128}$")


class AclError(ValueError):
    """The configs cannot make a safe ACL; the message names the configs and the conflict."""


@dataclass(frozen=True)
class GatewayGrant:
    """One gateway's user and what it may write and read."""

    username: str
    venue: str
    gateway: str
    source: str  # the config file it came from
    zones: tuple[str, ...]
    teams: tuple[str, ...]
    write: tuple[str, ...]
    read: tuple[str, ...]


@dataclass(frozen=True)
class AclPlan:
    """The whole ACL: gateways, staff and board users per venue, and the shared-team risks."""

    gateways: tuple[GatewayGrant, ...]
    venues: tuple[str, ...]
    staff_users: tuple[str, ...]
    board_users: tuple[str, ...]
    # (venue, team) -> usernames of the gateways that may write that team's dispatches
    shared_teams: dict[tuple[str, str], tuple[str, ...]] = field(default_factory=dict)

    def staff_rules(self) -> list[tuple[str, str]]:
        """(access, topic) lines of a staff console: read the venue, write acknowledgements."""
        rules: list[tuple[str, str]] = []
        for v in self.venues:
            t = Topics(v)
            rules += [("read", t.venue_filter), ("write", t.ack_filter)]
        return rules

    def board_rules(self) -> list[tuple[str, str]]:
        """(access, topic) lines of the board, read only: what `venue-agent board` shows
        (zone state, nudges, open moments and who took them, gateways' status); never
        dispatches (staff instructions) or health."""
        rules: list[tuple[str, str]] = []
        for v in self.venues:
            t = Topics(v)
            rules += [("read", t.zone_state(ANY)), ("read", t.nudge(ANY)),
                      ("read", t.moment(ANY, ANY)), ("read", t.ack_filter),
                      ("read", f"{t.prefix}/gateway/{ANY}/status")]
        return rules

    def warnings(self) -> list[str]:
        """One line per dispatch topic that more than one gateway may write."""
        return [f"dispatch topic {Topics(v).dispatch(team)} is written by {len(users)} gateways "
                f"({', '.join(users)}): any of them can send that team a dispatch for a zone "
                "it does not own" for (v, team), users in sorted(self.shared_teams.items())]


def gateway_username(cfg: Config) -> str:
    """The username a gateway logs in with: ``broker.username``, else its client id."""
    return cfg.broker.username or cfg.client_id


def gateway_grant(cfg: Config) -> GatewayGrant:
    """What one gateway's config lets it write and read."""
    t = Topics(cfg.venue.id, cfg.gateway.id)
    zones = tuple(z.id for z in cfg.zones)
    teams = tuple(sorted({z.team for z in cfg.zones} | {cfg.moments.reader_team}
                         | {z.escalation_team for z in cfg.zones if z.escalate_after_s > 0}))
    write = [t.status, t.health, t.gateway_moment(ANY)]
    for z in zones:
        write += [t.zone_state(z), t.moment(z, ANY), t.nudge(z)]
    write += [t.dispatch(team) for team in teams]
    read = [t.ack_filter]
    alternatives = sorted({a.zone for z in cfg.zones for a in z.alternatives} - set(zones))
    if any(z.alternatives for z in cfg.zones):
        # Venue-wide nudges: its experiment summary; the zone state of the alternatives
        # other gateways own, and every gateway's status (an offline one withdraws).
        write.append(t.experiment())
        read += [t.status_filter, *(t.zone_state(a) for a in alternatives)]
    if cfg.homeassistant.discovery:
        # Its own discovery configs: written, and read back to clear removed zones' ones.
        own = t.ha_discovery_filter(cfg.homeassistant.prefix)
        write.append(own)
        read.append(own)
    return GatewayGrant(username=gateway_username(cfg), venue=cfg.venue.id,
                        gateway=cfg.gateway.id, source=cfg.source, zones=zones, teams=teams,
                        write=tuple(write), read=tuple(read))


def plan_acl(configs: Sequence[Config], *, staff_users: Iterable[str] = DEFAULT_STAFF_USERS,
             board_users: Iterable[str] = DEFAULT_BOARD_USERS) -> AclPlan:
    """Check the configs against each other and plan the ACL. Raises :class:`AclError`."""
    if not configs:
        raise AclError("no gateway configs given")
    staff, board = tuple(dict.fromkeys(staff_users)), tuple(dict.fromkeys(board_users))
    for u in staff + board:
        if not USERNAME_RE.match(u):
            raise AclError(f"user name {u!r}: expected 1..128 characters [A-Za-z0-9._@-]")
    if set(staff) & set(board):
        raise AclError(f"user {sorted(set(staff) & set(board))[0]!r} is both a staff and a "
                       "board user; give the board its own user")
    grants = [gateway_grant(c) for c in configs]
    zone_owner: dict[tuple[str, str], GatewayGrant] = {}
    gateway_seen: dict[tuple[str, str], GatewayGrant] = {}
    user_seen: dict[str, GatewayGrant] = {}
    team_writers: dict[tuple[str, str], list[str]] = {}
    for g in grants:
        if not USERNAME_RE.match(g.username):
            raise AclError(f"{g.source}: gateway username {g.username!r} (broker.username or "
                           "the client id) cannot go into a Mosquitto ACL; expected 1..128 "
                           "characters [A-Za-z0-9._@-]")
        if g.username in staff or g.username in board:
            raise AclError(f"{g.source}: gateway username {g.username!r} is also a staff or "
                           "board user")
        other = gateway_seen.get((g.venue, g.gateway))
        if other is not None:
            raise AclError(f"{other.source} and {g.source} are both gateway {g.gateway!r} of "
                           f"venue {g.venue!r}")
        gateway_seen[(g.venue, g.gateway)] = g
        other = user_seen.get(g.username)
        if other is not None:
            raise AclError(f"{other.source} and {g.source} log in as the same user "
                           f"{g.username!r}; give each gateway its own username or client id")
        user_seen[g.username] = g
        for z in g.zones:
            other = zone_owner.get((g.venue, z))
            if other is not None:
                raise AclError(f"zone {z!r} of venue {g.venue!r} is claimed by two gateways: "
                               f"{other.source} (gateway {other.gateway!r}) and {g.source} "
                               f"(gateway {g.gateway!r}); one zone, one gateway")
            zone_owner[(g.venue, z)] = g
        for team in g.teams:
            team_writers.setdefault((g.venue, team), []).append(g.username)
    venues = tuple(dict.fromkeys(g.venue for g in grants))
    shared = {k: tuple(v) for k, v in team_writers.items() if len(v) > 1}
    return AclPlan(gateways=tuple(grants), venues=venues, staff_users=staff,
                   board_users=board, shared_teams=shared)


def render_acl(plan: AclPlan) -> str:
    """The Mosquitto ACL file (``acl_file``), commented for the operator who installs it."""
    out = [
        f"# Mosquitto ACL for venue {', '.join(plan.venues)}: generated by `venue-agent acl` "
        f"from {len(plan.gateways)} gateway config(s).",
        "# Regenerate it when a gateway's zones, teams, ids or username change. Mosquitto",
        "# denies whatever this file does not grant; keep `allow_anonymous false`.",
        "# Gateway usernames: broker.username when set, else the MQTT client id (the CN of",
        "# the gateway's client certificate with `use_identity_as_username true`).",
    ]
    warnings = plan.warnings()
    if warnings:
        out += ["#", "# Residual risk: a team's dispatch topic is shared by its gateways."]
        out += [f"#   {w}" for w in warnings]
    for g in plan.gateways:
        out += ["", f"# gateway {g.gateway} of {g.venue} ({g.source}): zones "
                f"{', '.join(g.zones)}; teams {', '.join(g.teams)}",
                f"user {g.username}"]
        out += [f"topic write {t}" for t in g.write]
        out += [f"topic read {t}" for t in g.read]
    for title, users, rules in (
            ("staff consoles: read the whole venue, write acknowledgements only",
             plan.staff_users, plan.staff_rules()),
            ("board: zone state and nudges, read only", plan.board_users, plan.board_rules())):
        for u in users:
            out += ["", f"# {title}", f"user {u}"]
            out += [f"topic {access} {topic}" for access, topic in rules]
    return "\n".join(out) + "\n"


def render_password_template(plan: AclPlan) -> str:
    """A password-file template: every username of the ACL, no password. As it is, Mosquitto
    loads it and lets nobody in (an entry without a hash is dropped), so an unfilled template
    cannot open the broker. (``mosquitto_passwd -U`` refuses it: it reads no comments.)"""
    users = [(g.username, f"gateway {g.gateway} of {g.venue} ({g.source})")
             for g in plan.gateways]
    users += [(u, "staff console") for u in plan.staff_users]
    users += [(u, "board") for u in plan.board_users]
    out = [
        "# Mosquitto password file template: generated by `venue-agent acl`. It holds the",
        "# usernames of the ACL and no password; as it is, Mosquitto lets none of them in.",
        "# Make the real file with mosquitto_passwd (it stores salted hashes), one user a line:",
        "#   mosquitto_passwd -c -b /etc/mosquitto/passwd FIRST-USER 'PASSWORD'   # -c creates",
        "#   mosquitto_passwd -b /etc/mosquitto/passwd USER 'PASSWORD'             # every other",
        "# Use a long random password per user (e.g. `openssl rand -base64 24`) and give each",
        "# gateway its own in the file its broker.password_file names (mode 0600).",
        "# Gateways with client certificates and `use_identity_as_username true` need no entry.",
    ]
    for u, what in users:
        out += [f"# {what}", f"{u}:"]
    return "\n".join(out) + "\n"
