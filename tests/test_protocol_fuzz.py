"""Cross-protocol checks: the registry, and every serial decoder survives any bytes."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from firmware_bridge.protocols import (
    DEFAULT_BAUDRATE,
    PROTOCOL_NAMES,
    NotSerialProtocolError,
    UnknownProtocolError,
    is_serial_protocol,
    make_decoder,
)

SERIAL = [p for p in PROTOCOL_NAMES if is_serial_protocol(p)]


def test_registry_names_and_baudrates() -> None:
    assert PROTOCOL_NAMES == ("em4100", "uhf-m100", "pn532", "ble")
    assert SERIAL == ["em4100", "uhf-m100", "pn532"]
    assert DEFAULT_BAUDRATE == {"em4100": 9600, "uhf-m100": 115200, "pn532": 115200}


@pytest.mark.parametrize("name", SERIAL)
def test_make_decoder_gives_fresh_decoders(name: str) -> None:
    a, b = make_decoder(name), make_decoder(name)
    assert a is not b and a.stats is not b.stats
    assert a.protocol == name


def test_unknown_protocol_error_names_value_and_known_ones() -> None:
    with pytest.raises(UnknownProtocolError) as info:
        make_decoder("em4200")
    message = str(info.value)
    assert "'em4200'" in message
    assert all(name in message for name in PROTOCOL_NAMES)
    assert isinstance(info.value, ValueError)


def test_ble_is_known_but_not_serial() -> None:
    assert not is_serial_protocol("ble")
    with pytest.raises(NotSerialProtocolError, match="BLE scanner"):
        make_decoder("ble")


@pytest.mark.parametrize("name", SERIAL)
@settings(max_examples=400, deadline=None)
@given(chunks=st.lists(st.binary(max_size=200), max_size=10))
def test_random_bytes_never_raise(name: str, chunks: list[bytes]) -> None:
    dec = make_decoder(name)
    reads = []
    for chunk in chunks:
        reads += dec.feed(chunk)
        assert len(dec.buffered) <= dec.max_frame_len
    reads += dec.drain()
    assert dec.buffered == b""
    dec.reset()
    assert all(r.protocol == name for r in reads)
    assert dec.stats.skipped_bytes <= sum(map(len, chunks))
