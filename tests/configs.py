"""TOML fragments the unit tests' gateway configs share (a test keeps what it varies)."""

from __future__ import annotations

# A ride's queue zone "ride" read by an EM4100 reader at its entry and one at its exit,
# both over socket:// (the core tests never open them).
RIDE_READERS = """
[[readers]]
id = "ride-in"
protocol = "em4100"
port = "socket://127.0.0.1:7001"
zone = "ride"
role = "entry"
[[readers]]
id = "ride-out"
protocol = "em4100"
port = "socket://127.0.0.1:7002"
zone = "ride"
role = "exit"
"""
