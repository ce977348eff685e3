"""The open-addressing table against a dict, including dense clusters and wrap-around."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from kernels.hashtable import (
    home_slot,
    table_bits,
    table_find,
    table_remove,
    table_row,
    table_set,
)
from kernels.state import S_KEY, S_ROW


def _insert(slots: np.ndarray, key: int, row: int, shift: np.uint64) -> None:
    i = table_find(slots, np.uint64(key), shift)
    assert i < 0
    table_set(slots, -1 - i, np.uint64(key), row)


def test_table_bits_keeps_table_at_most_half_full() -> None:
    for n in (1, 2, 3, 1000, 1 << 17):
        assert (1 << table_bits(n)) >= 2 * n


def test_home_slot_is_in_range() -> None:
    shift = np.uint64(64 - 5)
    for key in (1, 2, 3, 2**63, 2**64 - 1):
        assert 0 <= home_slot(np.uint64(key), shift) < 32


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(st.booleans(), st.integers(min_value=1, max_value=40)),
        max_size=200,
    )
)
def test_table_matches_dict(ops: list[tuple[bool, int]]) -> None:
    bits = 6  # 64 slots, at most 40 keys: long clusters that wrap around the end
    shift = np.uint64(64 - bits)
    slots = np.zeros((1 << bits, 2), dtype=np.uint64)
    keys = slots[:, S_KEY]
    model: dict[int, int] = {}
    for n, (insert, key) in enumerate(ops):
        if insert and key not in model:
            _insert(slots, key, n, shift)
            model[key] = n
        elif not insert:
            got = table_remove(slots, np.uint64(key), shift)
            assert got == model.pop(key, -1)
        for k, row in model.items():
            i = table_find(slots, np.uint64(k), shift)
            assert i >= 0 and table_row(slots, i) == row
        assert int((keys != 0).sum()) == len(model)
        assert set(keys[keys != 0].tolist()) == set(model)
        assert (slots[keys == 0, S_ROW] == 0).all()  # an empty slot holds row 0
