"""The world the agent is tested against: a crowd model with ground truth, scenarios, and
virtual readers that emit the exact bytes real hardware emits.

May import numpy, the standard library and ``firmware_bridge`` encoders; never ``agent``.
"""

from simulators.crowd import (
    READ_DTYPE,
    VISIT_DTYPE,
    AreaFlow,
    Layout,
    QueueFlow,
    RateSchedule,
    SimReader,
    Simulation,
    SimZone,
    simulate,
    tag_bytes,
)
from simulators.pty_reader import VirtualSerialReader
from simulators.scenarios import SCENARIOS, Scenario, get_scenario, standard_layout

__all__ = [
    "READ_DTYPE",
    "SCENARIOS",
    "VISIT_DTYPE",
    "AreaFlow",
    "Layout",
    "QueueFlow",
    "RateSchedule",
    "Scenario",
    "SimReader",
    "SimZone",
    "Simulation",
    "VirtualSerialReader",
    "get_scenario",
    "simulate",
    "standard_layout",
    "tag_bytes",
]
