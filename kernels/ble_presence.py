"""BLE zone assignment: per (tag, reader) RSSI smoothing, strongest zone with hysteresis.

Each tag keeps K candidate readers (``cand_reader`` int32[M, K], -1 = unused) with a smoothed
RSSI ``cand_s`` (float64 dBm), the time of its last advert ``cand_t`` (float64 s) and the adverts
behind it ``cand_n`` (int32). K small and fixed keeps memory at O(tags), not O(tags x readers).

Smoothing: an EWMA whose weight follows the time since the reader last heard the tag,
``alpha = max(alpha_min, 1 - exp(-dt / tau_s))``: a long gap trusts the new advert more, a
burst of adverts at once does not stall it. After ``stale_s`` of silence the candidate starts
over from the new advert (an old average says nothing about where the tag is now).

Scores age: ``score = s - decay_db_per_s * max(0, t - cand_t - holdoff_s)``, so a reader that
stopped hearing the tag (the guest walked away) loses out to one that still does, while the
gaps of a few seconds that lost adverts (30-70 %) cause do not count against it.

Assignment at each advert (time t): the zone of the best-scoring candidate wins when the tag is
in no zone; otherwise the tag moves only if that zone's best score beats the current zone's
best score by more than ``margin_db`` and its candidate has at least ``min_reads`` adverts.
That hysteresis is what stops flapping between neighbouring zones at 4-6 dB of noise.
"""

from __future__ import annotations

import numpy as np

from ._jit import jit


@jit
def aged_score(s: float, last_t: float, t: float, decay_db_per_s: float, holdoff_s: float) -> float:
    """Smoothed RSSI ``s`` (dBm) heard last at ``last_t``, as it counts at ``t`` (s)."""
    return s - decay_db_per_s * max(0.0, t - last_t - holdoff_s)


@jit
def ble_observe(
    row: int,
    r: int,
    t: float,
    rssi: float,
    current_zone: int,
    reader_zone: np.ndarray,
    cand_reader: np.ndarray,
    cand_s: np.ndarray,
    cand_t: np.ndarray,
    cand_n: np.ndarray,
    tau_s: float,
    alpha_min: float,
    stale_s: float,
    decay_db_per_s: float,
    holdoff_s: float,
) -> None:
    """Fold one advert (``rssi`` dBm from reader ``r`` at ``t`` s) into the tag's candidates."""
    width = cand_reader.shape[1]
    k = -1
    for j in range(width):
        if cand_reader[row, j] == r:
            k = j
            break
    if k >= 0:
        dt = t - cand_t[row, k]
        if dt > stale_s:
            cand_s[row, k] = rssi
            cand_n[row, k] = 1
        else:
            alpha = max(alpha_min, 1.0 - np.exp(-dt / tau_s))
            cand_s[row, k] += alpha * (rssi - cand_s[row, k])
            cand_n[row, k] += 1
        cand_t[row, k] = t
        return
    # A new reader: take a free candidate, else replace the weakest one outside the tag's
    # current zone (keeping the current zone's evidence), else the weakest overall.
    victim = -1
    victim_out = -1
    low = np.inf
    low_out = np.inf
    for j in range(width):
        rj = cand_reader[row, j]
        if rj < 0:
            victim = j
            victim_out = j
            break
        score = aged_score(cand_s[row, j], cand_t[row, j], t, decay_db_per_s, holdoff_s)
        if score < low:
            low = score
            victim = j
        if reader_zone[rj] != current_zone and score < low_out:
            low_out = score
            victim_out = j
    k = victim_out if victim_out >= 0 else victim
    cand_reader[row, k] = r
    cand_s[row, k] = rssi
    cand_t[row, k] = t
    cand_n[row, k] = 1


@jit
def ble_zone(
    row: int,
    t: float,
    current_zone: int,
    reader_zone: np.ndarray,
    cand_reader: np.ndarray,
    cand_s: np.ndarray,
    cand_t: np.ndarray,
    cand_n: np.ndarray,
    decay_db_per_s: float,
    holdoff_s: float,
    margin_db: float,
    min_reads: int,
) -> int:
    """The zone the tag should be in at ``t`` (``current_zone`` -1 = none). Needs a candidate."""
    best_k = -1
    best = -np.inf
    here = -np.inf
    for j in range(cand_reader.shape[1]):
        rj = cand_reader[row, j]
        if rj < 0:
            continue
        score = aged_score(cand_s[row, j], cand_t[row, j], t, decay_db_per_s, holdoff_s)
        if best_k < 0 or score > best:
            best = score
            best_k = j
        if reader_zone[rj] == current_zone and score > here:
            here = score
    zb = int(reader_zone[cand_reader[row, best_k]])
    if current_zone < 0 or zb == current_zone:
        return zb
    if best > here + margin_db and cand_n[row, best_k] >= min_reads:
        return zb
    return current_zone
