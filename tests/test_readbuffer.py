from __future__ import annotations

import numpy as np

from agent.readbuffer import ReadBuffer


def test_buffer_grows_and_keeps_every_read_in_order() -> None:
    buf = ReadBuffer(capacity=16)
    for i in range(1000):
        buf.append(float(i), i + 1, i % 5, None if i % 2 else -60.0 - i % 7)
    ts, tag, reader, rssi = buf.take()
    assert ts.dtype == np.float64 and tag.dtype == np.uint64
    assert reader.dtype == np.int32 and rssi.dtype == np.float32
    assert np.array_equal(ts, np.arange(1000.0))
    assert np.array_equal(tag, np.arange(1, 1001, dtype=np.uint64))
    assert np.isnan(rssi[1]) and rssi[0] == -60.0
    assert buf.take()[0].size == 0


def test_a_batch_without_rssi_is_stored_as_nan() -> None:
    buf = ReadBuffer()
    buf.append_batch(2.5, [7, 8, 9], 3, None)
    buf.append_batch(3.0, [10], 1, [-55.0])
    ts, tag, reader, rssi = buf.take()
    assert ts.tolist() == [2.5, 2.5, 2.5, 3.0] and tag.tolist() == [7, 8, 9, 10]
    assert reader.tolist() == [3, 3, 3, 1]
    assert np.isnan(rssi[:3]).all() and rssi[3] == -55.0
