"""Every `venue-agent` command explains itself: each has an example in its help, each option
has help text, and options with a fixed set of values list them."""

from __future__ import annotations

import argparse

import pytest

from agent.cli import build_parser


def _commands() -> dict[str, argparse.ArgumentParser]:
    p = build_parser()
    subs = [a for a in p._actions if isinstance(a, argparse._SubParsersAction)]
    assert len(subs) == 1
    return dict(subs[0].choices)


def _options(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in parser._actions
            if not isinstance(a, argparse._HelpAction | argparse._VersionAction
                              | argparse._SubParsersAction)]


def test_the_top_level_options_have_help() -> None:
    for action in _options(build_parser()):
        assert action.help and action.help != argparse.SUPPRESS, action.option_strings


@pytest.mark.parametrize("name", sorted(_commands()))
def test_every_command_has_an_example_and_every_option_help(name: str) -> None:
    parser = _commands()[name]
    assert parser.epilog and "example:" in parser.epilog, f"{name}: no example in its help"
    assert f"venue-agent {name}" in parser.epilog, f"{name}: the example does not run {name}"
    # The example's lines are printed as written, not re-wrapped into one paragraph.
    formatter = parser.formatter_class
    assert isinstance(formatter, type), name
    assert issubclass(formatter, argparse.RawDescriptionHelpFormatter), name
    text = parser.format_help()
    assert "example:\n  venue-agent " + name in text, text
    for action in _options(parser):
        what = f"{name} {'/'.join(action.option_strings) or action.dest}"
        assert action.help and action.help != argparse.SUPPRESS, f"{what}: no help text"
        if action.choices is not None:
            for choice in action.choices:
                assert str(choice) in text, f"{what}: choice {choice!r} not listed in help"


def test_scenarios_and_protocols_are_listed_and_checked() -> None:
    from firmware_bridge.protocols import PROTOCOL_NAMES
    from simulators.scenarios import SCENARIOS

    cmds = _commands()
    simulate = cmds["simulate"].format_help()
    assert all(s in simulate for s in SCENARIOS)
    decode = cmds["decode"].format_help()
    assert all(p in decode for p in PROTOCOL_NAMES)
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args(["simulate", "--dir", "x", "--scenario", "nope"])
    assert e.value.code == 2
    args = build_parser().parse_args(["simulate", "--dir", "x", "--scenario", "parade"])
    assert args.scenario == "parade"
