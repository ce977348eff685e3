"""`venue-agent` — a thin command line over the library.

Exit codes: 0 ok, 1 runtime failure (message on stderr), 2 bad config or bad arguments.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from agent import __version__
from agent.config import DEFAULT_BROKER_URL, LOG_LEVELS, ConfigError, load_config, to_toml
from firmware_bridge.protocols import PROTOCOL_NAMES

EXIT_OK, EXIT_FAIL, EXIT_CONFIG = 0, 1, 2


def _fail(message: str, code: int) -> int:
    """Say what went wrong on stderr, prefixed with the program's name; return ``code``."""
    print(f"venue-agent: {message}", file=sys.stderr)
    return code


class _LazyChoices(Sequence[str]):
    """Valid values loaded on first use (checking a value, printing help): the scenario
    list lives in simulators.scenarios, whose import (numpy, the crowd model) would slow
    every command's start by most of a second."""

    def __init__(self, load: Callable[[], Iterable[str]]) -> None:
        self._load = load
        self._items: tuple[str, ...] | None = None

    def _get(self) -> tuple[str, ...]:
        if self._items is None:
            self._items = tuple(self._load())
        return self._items

    def __getitem__(self, i: int) -> str:  # type: ignore[override]
        return self._get()[i]

    def __len__(self) -> int:
        return len(self._get())

    def __contains__(self, value: object) -> bool:
        return value in self._get()


def _scenario_names() -> Iterable[str]:
    from simulators.scenarios import SCENARIOS

    return SCENARIOS


def _command(sub: Any, name: str, help: str, example: str,
             description: str | None = None) -> argparse.ArgumentParser:
    """A sub-command whose help ends with an example (kept as written: several lines)."""
    return sub.add_parser(name, help=help, description=description or help[:1].upper() + help[1:],
                          epilog="example:\n" + "".join(f"  {line}\n"
                                                        for line in example.splitlines()),
                          formatter_class=argparse.RawDescriptionHelpFormatter)


def _setup_logging(level: str) -> None:
    logging.basicConfig(level=getattr(logging, level.upper(), logging.INFO),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)


def _load(path: str):  # type: ignore[no-untyped-def]
    try:
        return load_config(path)
    except ConfigError as e:
        print(f"venue-agent: bad config: {e}", file=sys.stderr)
        raise SystemExit(EXIT_CONFIG) from None


def cmd_check_config(args: argparse.Namespace) -> int:
    cfg = _load(args.config)
    sys.stdout.write(f"# effective config of {args.config} (defaults filled in)\n")
    sys.stdout.write(to_toml(cfg))
    return EXIT_OK


def cmd_run(args: argparse.Namespace) -> int:
    cfg = _load(args.config)
    _setup_logging(args.log_level or cfg.gateway.log_level)
    from agent.runtime import Agent, StartupError

    try:
        agent = Agent(cfg)
    except StartupError as e:
        return _fail(f"cannot start: {e}", EXIT_FAIL)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        if args.duration:
            loop.call_later(args.duration, stop.set)
        await agent.run(stop)

    asyncio.run(main())
    return EXIT_OK


def cmd_build_kernels(args: argparse.Namespace) -> int:
    """Compile the ahead-of-time kernels where ``run`` with the same config will load them."""
    if args.dir:
        folder: Path | None = Path(args.dir)
    else:
        folder = None
        if args.config:
            from agent.runtime import prepare_numba_cache

            prepare_numba_cache(_load(args.config))  # the directory `run` uses
    from kernels.aot_build import BuildError, build

    try:
        path, took = build(folder)
    except BuildError as e:
        return _fail(f"cannot build the kernels: {e}", EXIT_FAIL)
    print(f"built {path} in {took:.1f} s")
    return EXIT_OK


def cmd_demo(args: argparse.Namespace) -> int:
    from agent.demo import run_demo

    _setup_logging(args.log_level)
    return run_demo(duration_s=args.duration, broker=args.broker, seed=args.seed,
                    workdir=Path(args.workdir) if args.workdir else None,
                    console=not args.no_console)


def cmd_simulate(args: argparse.Namespace) -> int:
    from agent.demo import run_simulate

    _setup_logging(args.log_level)
    return run_simulate(scenario=args.scenario, workdir=Path(args.dir), broker_url=args.broker,
                        seed=args.seed, truth_path=Path(args.truth) if args.truth else None,
                        duration_s=args.duration)


def cmd_watch(args: argparse.Namespace) -> int:
    from agent.console import NeverConnected, watch

    try:
        watch(args.broker, args.venue, team=args.team, duration_s=args.duration,
              username=args.username, password_file=args.password_file, ca_file=args.ca_file,
              cert_file=args.cert_file, key_file=args.key_file, protocol=args.protocol,
              name=args.name, ack=args.ack,
              connect_timeout_s=args.connect_timeout or None)
    except ValueError as e:
        return _fail(str(e), EXIT_CONFIG)
    except NeverConnected as e:
        return _fail(str(e), EXIT_FAIL)
    return EXIT_OK


def cmd_tail(args: argparse.Namespace) -> int:
    from agent.share import TailError, TailOptions, run_tail

    opts = TailOptions(
        broker=args.broker, venue=args.venue, group=args.share, filters=tuple(args.filter or ()),
        member=args.member, username=args.username, password_file=args.password_file,
        ca_file=args.ca_file, cert_file=args.cert_file, key_file=args.key_file,
        grace_s=args.gap_grace, sync_s=args.sync, connect_timeout_s=args.connect_timeout,
        duration_s=args.duration)
    try:
        asyncio.run(run_tail(opts, sys.stdout, err=sys.stderr))
    except ValueError as e:
        return _fail(str(e), EXIT_CONFIG)
    except TailError as e:
        return _fail(str(e), EXIT_FAIL)
    return EXIT_OK


def cmd_board(args: argparse.Namespace) -> int:
    from agent.board import run_board

    _setup_logging(args.log_level)
    try:
        return run_board(args.broker, args.venue, host=args.host, port=args.port,
                         username=args.username, password_file=args.password_file,
                         ca_file=args.ca_file, cert_file=args.cert_file,
                         key_file=args.key_file, protocol=args.protocol,
                         duration_s=args.duration)
    except ValueError as e:
        return _fail(str(e), EXIT_CONFIG)


def cmd_decode(args: argparse.Namespace) -> int:
    from firmware_bridge.decode_tool import run_decode

    return run_decode(args.protocol, sys.stdin.buffer, sys.stdout, sys.stderr, port=args.port)


def cmd_doctor(args: argparse.Namespace) -> int:
    from agent.doctor import run_doctor

    return run_doctor(_load(args.config), sys.stdout, listen_s=args.listen_s)


def cmd_acl(args: argparse.Namespace) -> int:
    from agent import acl as gen

    try:
        plan = gen.plan_acl([_load(c) for c in args.configs],
                            staff_users=args.staff_user or gen.DEFAULT_STAFF_USERS,
                            board_users=args.board_user or gen.DEFAULT_BOARD_USERS)
    except gen.AclError as e:
        return _fail(f"acl: {e}", EXIT_CONFIG)
    for w in plan.warnings():
        print(f"venue-agent: acl: warning: {w}", file=sys.stderr)
    acl, users = gen.render_acl(plan), gen.render_password_template(plan)
    if not args.out:
        sys.stdout.write(acl + "\n" + "".join(f"# | {line}\n" for line in users.splitlines()))
        return EXIT_OK
    out = Path(args.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        (out / "venue-agent.acl").write_text(acl)
        (out / "passwd.template").write_text(users)
    except OSError as e:
        return _fail(f"acl: cannot write {out}: {e}", EXIT_FAIL)
    print(f"wrote {out / 'venue-agent.acl'} and {out / 'passwd.template'}", file=sys.stderr)
    return EXIT_OK


def cmd_init(args: argparse.Namespace) -> int:
    from agent.config import is_id, parse_config
    from agent.install import UDEV_RULES, UNIT_FILE, shipped_file, starter_config

    for flag, value in (("--venue", args.venue), ("--gateway", args.gateway)):
        if not is_id(value):
            print(f"venue-agent: init: {flag} {value!r}: expected 1..64 of [a-z0-9-] "
                  "(it becomes an MQTT topic level)", file=sys.stderr)
            return EXIT_CONFIG
    text = starter_config(args.venue, args.gateway, args.broker)
    try:
        parse_config(text, "<starter config>")
    except ConfigError as e:
        return _fail(f"init: {e}", EXIT_CONFIG)
    if args.out in (None, "-"):
        sys.stdout.write(text)
        return EXIT_OK
    out = Path(args.out)
    if out.exists() and not args.force:
        print(f"venue-agent: init: {out} exists; keep it, or pass --force to replace it",
              file=sys.stderr)
        return EXIT_CONFIG
    try:
        out.write_text(text, encoding="utf-8")
    except OSError as e:
        return _fail(f"init: cannot write {out}: {e}", EXIT_FAIL)
    print(f"wrote {out}; next: edit its zones and readers, then\n"
          f"  venue-agent check-config {out}\n  venue-agent doctor --config {out}\n"
          f"systemd unit: {shipped_file(UNIT_FILE)}\nudev rules:   {shipped_file(UDEV_RULES)}",
          file=sys.stderr)
    return EXIT_OK


def cmd_contract(args: argparse.Namespace) -> int:
    from agent import contract

    if args.check:
        problems = contract.check_files(args.out)
        for line in problems:
            print(f"venue-agent: contract: {line}", file=sys.stderr)
        if problems:
            print("venue-agent: contract: run `make contract` and commit the result",
                  file=sys.stderr)
        return EXIT_FAIL if problems else EXIT_OK
    for path in contract.write_files(args.out):
        print(path)
    for line in contract.check_files(args.out):
        print(f"venue-agent: contract: {line}", file=sys.stderr)
    return EXIT_OK


def cmd_report(args: argparse.Namespace) -> int:
    import json
    import time

    from agent import experiment

    cfg = _load(args.config)
    try:
        since = experiment.parse_since(args.since, time.time())
    except ValueError as e:
        return _fail(str(e), EXIT_CONFIG)
    if not experiment.table_exists(cfg.db_path):
        print(f"venue-agent: {cfg.db_path} holds no nudge experiment records (no zone of this "
              "gateway has alternatives, or it has not run yet)", file=sys.stderr)
        return EXIT_FAIL
    store = experiment.OpportunityStore(cfg.db_path, readonly=True)
    try:
        outcomes, counts = store.outcomes(since), store.counts(since)
    finally:
        store.close()
    from agent.nudges import NudgePlanner
    from agent.topics import Topics

    window_s = NudgePlanner(cfg, Topics(cfg.venue.id, cfg.gateway.id)).window_s
    if args.json:
        est = experiment.estimate(outcomes)
        print(json.dumps({"since": since, "window_s": window_s, "counts": counts,
                          **est.as_dict(), "by_alternative": [
                              {"zone": z, "alternative": a, **e.as_dict()}
                              for (z, a), e in experiment.by_alternative(outcomes).items()]}))
    else:
        sys.stdout.write(experiment.report_text(outcomes, counts, since, window_s))
    return EXIT_OK


def cmd_bench(args: argparse.Namespace) -> int:
    import subprocess

    bench = Path(__file__).resolve().parents[1] / "bench" / "run.py"
    if not bench.exists():
        print("venue-agent: the benchmarks ship with the source tree (bench/run.py); "
              "run `make bench` in a checkout", file=sys.stderr)
        return EXIT_FAIL
    return subprocess.call([sys.executable, str(bench), *args.rest])


def _broker_options(s: argparse.ArgumentParser) -> None:
    """The broker options the gateway has, for the consumers (watch, board)."""
    s.add_argument("--broker", default=DEFAULT_BROKER_URL,
                   help="mqtt://host:port, or mqtts://host:port for TLS")
    s.add_argument("--username", help="broker user name (default: none)")
    s.add_argument("--password-file", help="a file holding the password")
    s.add_argument("--ca-file", help="CA certificate(s) to verify the broker (mqtts://)")
    s.add_argument("--cert-file", help="client certificate for mutual TLS (mqtts://)")
    s.add_argument("--key-file", help="the client certificate's private key")
    s.add_argument("--protocol", choices=["auto", "5", "3.1.1"], default="auto",
                   help="MQTT version, one of %(choices)s (auto: 5, falling back to 3.1.1)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="venue-agent", description=(
        "Edge agent for venues: reads RFID and BLE wristband readers, computes queue length, "
        "wait, dwell and flow, and publishes crowding moments over MQTT."))
    p.add_argument("--version", action="version", version=f"venue-agent {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = _command(sub, "run", "run the gateway (systemd runs this)",
                 "venue-agent run --config /etc/venue-agent/gateway.toml")
    s.add_argument("--config", required=True, help="gateway config (TOML)")
    s.add_argument("--log-level", choices=LOG_LEVELS,
                   help="one of %(choices)s (default: gateway.log_level of the config)")
    s.add_argument("--duration", type=float, default=0.0,
                   help="stop after this many seconds (0: run until SIGTERM)")
    s.set_defaults(func=cmd_run)

    s = _command(sub, "check-config", "validate a config and print it with defaults",
                 "venue-agent check-config /etc/venue-agent/gateway.toml   # exit 2 if bad")
    s.add_argument("config", help="gateway config (TOML)")
    s.set_defaults(func=cmd_check_config)

    s = _command(sub, "demo", "simulated venue + broker + agent + live console",
                 "venue-agent demo --duration 90")
    s.add_argument("--duration", type=float, default=None,
                   help="stop after this many seconds (default: run until Ctrl-C)")
    s.add_argument("--broker", choices=["auto", "mosquitto", "embedded"], default="auto",
                   help="auto: the local mosquitto if installed, else an embedded broker")
    s.add_argument("--seed", type=int, default=7,
                   help="random seed of the simulated crowd (default 7)")
    s.add_argument("--workdir", help="keep the demo's files here (default: a temp dir)")
    s.add_argument("--no-console", action="store_true", help="no live view (logs only)")
    s.add_argument("--log-level", default="warning",
                   choices=LOG_LEVELS, help="one of %(choices)s (default: warning)")
    s.set_defaults(func=cmd_demo)

    s = _command(sub, "simulate", "only the virtual readers, for testing a real agent",
                 "venue-agent simulate --scenario demo_rush --dir sim\n"
                 "venue-agent run --config sim/gateway.toml   # in another terminal")
    s.add_argument("--scenario", default="demo_rush", choices=_LazyChoices(_scenario_names),
                   metavar="SCENARIO", help="one of %(choices)s (default: demo_rush)")
    s.add_argument("--dir", required=True,
                   help="where to put the virtual serial ports and the agent config")
    s.add_argument("--broker", default="mqtt://127.0.0.1:1883",
                   help="broker URL written into the generated agent config")
    s.add_argument("--truth", help="write ground truth as JSON lines to this file")
    s.add_argument("--seed", type=int, default=7,
                   help="random seed of the simulated crowd (default 7)")
    s.add_argument("--duration", type=float, default=None,
                   help="stop after this many seconds (default: the scenario's length + 5 s)")
    s.add_argument("--log-level", default="info", choices=LOG_LEVELS,
                   help="one of %(choices)s (default: info)")
    s.set_defaults(func=cmd_simulate)

    s = _command(sub, "watch", "dispatch console for staff",
                 "venue-agent watch --broker mqtt://broker:1883 --venue park-east "
                 "--team dino-ops", description=(
        "Staff console: zones, the alert feed newest first, and who took which alert. "
        "Keys: a (or Enter) takes the newest open alert, q quits."))
    _broker_options(s)
    s.add_argument("--venue", required=True, help="the venue's id")
    s.add_argument("--team", help="only this team's dispatch alerts")
    s.add_argument("--name", help="who takes alerts (default: the OS user)")
    s.add_argument("--ack", metavar="MOMENT_ID",
                   help="acknowledge this moment (publish, wait for the broker) and exit")
    s.add_argument("--connect-timeout", type=float, default=30.0, metavar="S",
                   help="exit 1 if the broker never accepts a connection within S seconds "
                   "(0: keep trying; default 30)")
    s.add_argument("--duration", type=float, default=None,
                   help="stop after this many seconds (default: until q or Ctrl-C)")
    s.set_defaults(func=cmd_watch)

    s = _command(sub, "board", "live venue board in the browser (and /signage)",
                 "venue-agent board --broker mqtt://broker:1883 --venue park-east --port 8080",
                 description=(
        "Serve a live venue board: every zone's posted wait, queue, forecast and trend, "
        "open moments and current nudges, pushed to the page with Server-Sent Events. "
        "/signage shows large wait times only, for guests."))
    _broker_options(s)
    s.add_argument("--venue", required=True, help="the venue's id")
    s.add_argument("--host", default="127.0.0.1", help="listen address (default 127.0.0.1)")
    s.add_argument("--port", type=int, default=8080, help="listen port (default 8080)")
    s.add_argument("--duration", type=float, default=None,
                   help="stop after this many seconds (default: until Ctrl-C)")
    s.add_argument("--log-level", default="info", choices=LOG_LEVELS,
                   help="one of %(choices)s (default: info)")
    s.set_defaults(func=cmd_board)

    s = _command(sub, "tail", "central consumer: one JSON line per message, gaps, duplicates",
                 "venue-agent tail --share central --broker mqtts://broker:8883 --venue park-east"
                 " \\\n    --ca-file ca.pem --username central --password-file central.pw\n"
                 "venue-agent tail --share central --broker nats://nats:4222 --venue +",
                 description=(
        "Print the venue's guaranteed stream (moments, dispatches, nudges) as one JSON line "
        "per message ({topic, payload, member}), deduped on id, with {\"gap\": ...} and "
        "{\"duplicate\": ...} lines of their own. With --share GROUP several members share "
        "the load: an MQTT 5 shared subscription ($share/GROUP/...) or, with a nats:// URL, a "
        "NATS queue group; the members merge their ledgers so that each gap is reported once "
        "by the group (docs/central.md)."))
    s.add_argument("--broker", default=DEFAULT_BROKER_URL,
                   help="mqtt://host:port, mqtts://host:port (TLS), nats://host:port or "
                   "tls://host:port (NATS over TLS)")
    s.add_argument("--venue", required=True, help="the venue's id, or + for every venue")
    s.add_argument("--share", metavar="GROUP",
                   help="join consumer group GROUP: each message goes to one member")
    s.add_argument("--member", metavar="NAME",
                   help="this member's name in the group (default: host-pid-random)")
    s.add_argument("--filter", action="append", metavar="TOPIC_FILTER",
                   help="an MQTT topic filter instead of the guaranteed stream (repeatable; "
                   "gap reports assume the whole guaranteed stream is covered)")
    s.add_argument("--username", help="the broker user name")
    s.add_argument("--password-file", help="a file holding the password")
    s.add_argument("--ca-file", help="CA certificate(s) to verify the broker (TLS)")
    s.add_argument("--cert-file", help="client certificate for mutual TLS")
    s.add_argument("--key-file", help="the client certificate's private key")
    s.add_argument("--gap-grace", type=float, default=10.0, metavar="S",
                   help="report a missing seq after S seconds unseen by the group (default 10)")
    s.add_argument("--sync", type=float, default=1.0, metavar="S",
                   help="seconds between the members' ledger exchanges (default 1)")
    s.add_argument("--connect-timeout", type=float, default=10.0, metavar="S",
                   help="exit 1 if the broker is unreachable for S seconds (default 10)")
    s.add_argument("--duration", type=float, default=None, metavar="S",
                   help="stop after S seconds (default: until SIGTERM or Ctrl-C)")
    s.set_defaults(func=cmd_tail)

    s = _command(sub, "decode", "reader bytes (stdin or --port) -> JSON lines",
                 "venue-agent decode --protocol em4100 --port /dev/ttyUSB0\n"
                 "venue-agent decode --protocol uhf-m100 < capture.bin")
    s.add_argument("--protocol", required=True, choices=PROTOCOL_NAMES,
                   help="the reader's protocol, one of %(choices)s")
    s.add_argument("--port", help="read from this pyserial URL instead of stdin")
    s.set_defaults(func=cmd_decode)

    s = _command(sub, "build-kernels",
                 "compile the kernels ahead of time: starts without numba, in less memory",
                 "venue-agent build-kernels --config /etc/venue-agent/gateway.toml",
                 description=(
                     "Compile the zone kernels once, for this code and this CPU, into the "
                     "\"aot\" folder of the numba cache directory (storage.numba_cache_dir, "
                     "or NUMBA_CACHE_DIR). `run` then loads them without numba or LLVM; "
                     "without them it compiles with numba's JIT, as before. Needs a C "
                     "compiler and the Python headers (Debian: build-essential python3-dev). "
                     "Run it again after an upgrade: a module built for other code is "
                     "ignored."))
    s.add_argument("--config", help="gateway config (TOML): build where `run` will look")
    s.add_argument("--dir", help="build into this directory instead")
    s.set_defaults(func=cmd_build_kernels)

    s = _command(sub, "doctor", "check a gateway: config, ports, storage, broker",
                 "venue-agent doctor --config /etc/venue-agent/gateway.toml")
    s.add_argument("--config", required=True, help="gateway config (TOML)")
    s.add_argument("--listen-s", type=float, default=3.0,
                   help="seconds to listen to an EM4100 reader for a frame (default 3)")
    s.set_defaults(func=cmd_doctor)

    s = _command(sub, "acl", "Mosquitto ACL + password-file template from gateway configs",
                 "venue-agent acl gw-01.toml gw-02.toml --out /etc/mosquitto/venue-agent")
    s.add_argument("configs", nargs="+", metavar="CONFIG",
                   help="every gateway config of the venue")
    s.add_argument("--out", help="write venue-agent.acl and passwd.template into this directory "
                   "(default: print the ACL, the template as comments)")
    s.add_argument("--staff-user", action="append", metavar="USER",
                   help="a staff console user (repeatable; default: staff)")
    s.add_argument("--board-user", action="append", metavar="USER",
                   help="a board user (repeatable; default: board)")
    s.set_defaults(func=cmd_acl)

    s = _command(sub, "init", "write a starter gateway config",
                 "venue-agent init --venue park-east --gateway gw-01 "
                 "--out /etc/venue-agent/gateway.toml", description=(
        "Write a starter gateway config (one queue with an entry and an exit reader) that "
        "check-config accepts; edit its zones and readers."))
    s.add_argument("--venue", required=True, help="the venue's id ([a-z0-9-])")
    s.add_argument("--gateway", required=True, help="this gateway's id ([a-z0-9-])")
    s.add_argument("--broker", default=DEFAULT_BROKER_URL,
                   help=f"the broker URL (default {DEFAULT_BROKER_URL}; mqtts:// for TLS)")
    s.add_argument("--out", help="write the config here (default: print it)")
    s.add_argument("--force", action="store_true", help="replace an existing --out file")
    s.set_defaults(func=cmd_init)

    s = _command(sub, "contract", "write the MQTT contract: AsyncAPI + JSON Schemas",
                 "venue-agent contract --out docs\nvenue-agent contract --out docs --check",
                 description=(
        "Write asyncapi.yaml and schemas/*.json (the topic contract, generated from "
        "agent/contract.py) into a directory."))
    s.add_argument("--out", default="docs", help="the directory (default: docs)")
    s.add_argument("--check", action="store_true",
                   help="write nothing; exit 1 if the files there differ from the code")
    s.set_defaults(func=cmd_contract)

    s = _command(sub, "report", "the nudge experiment: uplift of arrivals at the alternatives",
                 "venue-agent report --config /etc/venue-agent/gateway.toml --since 7d\n"
                 "venue-agent report --config gateway.toml --since 2025-06-01 --json",
                 description=(
        "Report the venue-wide nudge experiment this gateway runs, from the records in its "
        "database: measured opportunities per arm (sent, held out), mean arrivals at the "
        "alternative per opportunity window, the uplift with its 95 % interval, overall and "
        "per alternative. Runs beside a live gateway."))
    s.add_argument("--config", required=True,
                   help="the gateway config (TOML); its storage.path holds the records")
    s.add_argument("--since", default="7d",
                   help="opportunities that began since: a duration back from now (90m, 12h, "
                   "7d) or a date or time (2025-06-01, 2025-06-01T09:00:00Z); default 7d")
    s.add_argument("--json", action="store_true",
                   help="print one JSON object instead of the table")
    s.set_defaults(func=cmd_report)

    s = _command(sub, "bench", "run the benchmarks (source checkout)",
                 "venue-agent bench --quick")
    s.add_argument("rest", nargs=argparse.REMAINDER, metavar="ARGS",
                   help="passed to bench/run.py (--quick: a bounded run; --help: its options)")
    s.set_defaults(func=cmd_bench)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
