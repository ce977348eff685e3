"""Fuzzing the serial decoders: a bounded slice in every test run, 10^6 inputs per decoder
with ``make fuzz`` (pytest marker ``fuzz``). The fuzzer itself is tests/fuzz_decoders.py."""

from __future__ import annotations

import os

import pytest

from tests.fuzz_decoders import SERIAL_PROTOCOLS, FuzzFailure, fuzz

#: Inputs per decoder for `make fuzz`; FUZZ_INPUTS overrides it (e.g. for a longer soak).
LONG_INPUTS = int(os.environ.get("FUZZ_INPUTS", "1000000"))


@pytest.mark.parametrize("protocol", SERIAL_PROTOCOLS)
def test_fuzz_slice(protocol: str) -> None:
    # A different seed each day would make failures hard to reproduce: fixed seed, and the
    # long run covers far more.
    report = fuzz(protocol, 3000, seed=1)
    assert report.inputs >= 3000 and report.reads > 0


def test_fuzz_failure_names_what_reproduces_it(monkeypatch: pytest.MonkeyPatch) -> None:
    # The harness must catch a decoder that raises, and say which bytes did it.
    from firmware_bridge.em4100 import Em4100Decoder

    def broken(self: Em4100Decoder, data: bytes) -> list[object]:
        raise IndexError("boom")

    monkeypatch.setattr(Em4100Decoder, "feed", broken)
    with pytest.raises(FuzzFailure, match=r"(?s)IndexError: boom.*chunks \(hex\)"):
        fuzz("em4100", 10)


@pytest.mark.fuzz
@pytest.mark.timeout(3600)
@pytest.mark.parametrize("protocol", SERIAL_PROTOCOLS)
def test_fuzz_million_inputs(protocol: str) -> None:
    # Deselected from `make test` by tests/conftest.py; `make fuzz` selects it.
    report = fuzz(protocol, LONG_INPUTS, seed=0)
    print(f"\n{protocol}: {report.inputs} inputs, {report.bytes_fed} bytes, {report.reads} "
          f"reads, {report.seconds:.1f} s, {report.inputs_per_s:,.0f} inputs/s, 0 exceptions")
    assert report.inputs >= LONG_INPUTS
