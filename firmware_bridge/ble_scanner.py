"""A supervised BLE scanner: bleak's ``BleakScanner`` plus decoding, a watchdog and retries.

One :class:`BleScanner` per configured BLE reader (one adapter). It

* scans with BlueZ's duplicate filter **off** (``DuplicateData: false``), so a wristband
  that keeps sending the same advert is heard every time, not once per scan: presence and
  RSSI smoothing need the repeats;
* decodes each advert (:mod:`firmware_bridge.ble_adverts`) and hands the tag reads over;
* restarts the scan when no advert at all arrived for ``watchdog_s`` seconds, because
  BlueZ scans are known to stop delivering silently after hours (controller resets,
  ``bluetoothd`` restarts, discovery sessions dropped by another client);
* reports the adapter missing or BlueZ down through ``on_state`` and keeps retrying with
  exponential backoff; it never raises out of its task.

Threading: bleak's BlueZ backend runs on the asyncio event loop that called :meth:`start`,
and calls the detection callback *on that loop*. ``on_reads`` and ``on_state`` are
therefore called directly on the loop thread (no ``call_soon_threadsafe`` needed); they
must only hand data over (e.g. ``asyncio.Queue.put_nowait``) and return at once. An
exception raised by them is logged and counted, never propagated into bleak.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from bleak import BleakScanner
from bleak.args.bluez import BlueZScannerArgs, OrPattern, OrPatternLike
from bleak.assigned_numbers import AdvertisementDataType
from bleak.backends.device import BLEDevice
from bleak.backends.scanner import AdvertisementData
from bleak.exc import BleakBluetoothNotAvailableError, BleakDBusError, BleakError

from firmware_bridge.ble_adverts import (
    ALTBEACON_CODE,
    APPLE_COMPANY_ID,
    IBEACON_PREFIX,
    AdvertStats,
    WristbandFormat,
    decode_advert,
    parse_identity_rule,
    to_raw_reads,
)
from firmware_bridge.records import RawRead

log = logging.getLogger(__name__)

OnReads = Callable[[str, float, list[RawRead]], None]
"""``on_reads(reader_id, ts, reads)``: ts is ``clock()`` at receipt, seconds since the epoch."""
OnState = Callable[[str, bool, str | None], None]
"""``on_state(reader_id, online, message)``: message says why the reader is offline."""

ScanningMode = Literal["active", "passive"]
STOPPED = "stopped"  # on_state message after stop(): offline on purpose, not a fault

# D-Bus errors meaning "nobody owns org.bluez": bluetoothd is not running.
_NO_BLUEZ_ERRORS = (
    "org.freedesktop.DBus.Error.ServiceUnknown",
    "org.freedesktop.DBus.Error.NameHasNoOwner",
)


@dataclass(frozen=True, slots=True)
class BleHealth:
    """A snapshot of one scanner's counters (monotonic since construction).

    adverts: advertisements bleak delivered (any device, decodable or not).
    decoded_reads: tag reads handed to ``on_reads``.
    malformed: advert parts that matched a known format but failed its checks.
    ignored: advert parts of no configured format (phones, headphones...).
    handoff_errors: ``on_reads`` calls that raised.
    last_read_ts: ``clock()`` of the last handed-over read, ``None`` before the first.
    online: scanning right now; message: why not, when not.
    restarts: watchdog restarts of a scan that had gone quiet.
    """

    reader_id: str
    online: bool
    message: str | None
    adverts: int
    decoded_reads: int
    malformed: int
    ignored: int
    handoff_errors: int
    last_read_ts: float | None
    restarts: int


def passive_or_patterns(wristbands: Sequence[WristbandFormat]) -> list[OrPatternLike]:
    """BlueZ advertisement-monitor patterns that let our formats through a passive scan.

    Each pattern is ``(start, AD type, bytes)``; start counts from the first byte after the
    AD type, so manufacturer data starts with the company id, little-endian as on the air.
    """
    mfg = AdvertisementDataType.MANUFACTURER_SPECIFIC_DATA
    patterns: list[OrPatternLike] = [
        OrPattern(0, mfg, APPLE_COMPANY_ID.to_bytes(2, "little") + IBEACON_PREFIX),
        OrPattern(2, mfg, ALTBEACON_CODE),
        OrPattern(0, AdvertisementDataType.SERVICE_DATA_UUID16, b"\xaa\xfe"),  # Eddystone
    ]
    for fmt in wristbands:
        pattern = OrPattern(0, mfg, fmt.company_id.to_bytes(2, "little"))
        if pattern not in patterns:
            patterns.append(pattern)
    return patterns


class BleScanner:
    """Scan one adapter and hand decoded tag reads to ``on_reads``.

    reader_id: the reader id from the gateway config (passed back in every callback).
    rule: the identity rule (see :data:`firmware_bridge.ble_adverts.IdentityRule`);
        an unknown rule raises ``ValueError`` here, before anything starts.
    wristbands: manufacturer-data wristband formats to decode.
    adapter: BlueZ adapter name such as ``"hci0"``; ``None`` for BlueZ's first powered one.
    scanning_mode: ``"active"`` (default: asks for scan responses; works on every BlueZ) or
        ``"passive"`` (no scan requests sent; needs BlueZ's advertisement-monitor API,
        which bleak drives with :func:`passive_or_patterns`).
    watchdog_s: restart the scan after this many seconds without any advert.
    retry_initial_s, retry_max_s: backoff between failed starts (doubles up to the max).
    start_timeout_s: give up on a BlueZ that does not answer a start within this time.
    clock: wall clock for read timestamps (seconds since the epoch).
    """

    def __init__(
        self,
        reader_id: str,
        on_reads: OnReads,
        *,
        rule: str,
        wristbands: Sequence[WristbandFormat] = (),
        adapter: str | None = None,
        on_state: OnState | None = None,
        clock: Callable[[], float] = time.time,
        scanning_mode: ScanningMode = "active",
        watchdog_s: float = 60.0,
        retry_initial_s: float = 1.0,
        retry_max_s: float = 60.0,
        start_timeout_s: float = 10.0,
    ) -> None:
        if scanning_mode not in ("active", "passive"):
            raise ValueError(f"scanning_mode must be 'active' or 'passive', not {scanning_mode!r}")
        if watchdog_s <= 0 or retry_initial_s <= 0 or retry_max_s < retry_initial_s:
            raise ValueError("watchdog_s and retry delays must be positive, max >= initial")
        self.reader_id = reader_id
        self._on_reads = on_reads
        self._on_state = on_state
        self._rule = parse_identity_rule(rule)
        self._wristbands = tuple(wristbands)
        self._adapter = adapter
        self._clock = clock
        self._mode: ScanningMode = scanning_mode
        self._watchdog_s = watchdog_s
        self._retry_initial_s = retry_initial_s
        self._retry_max_s = retry_max_s
        self._start_timeout_s = start_timeout_s

        self._stats = AdvertStats()
        self._decoded_reads = 0
        self._handoff_errors = 0
        self._last_read_ts: float | None = None
        self._restarts = 0
        self._online = False
        self._message: str | None = "not started"
        self._last_advert_mono = 0.0

        self._task: asyncio.Task[None] | None = None
        self._stopping: asyncio.Event | None = None
        self._first_attempt: asyncio.Event | None = None

    # -- public API -----------------------------------------------------------------------

    @property
    def adapter_label(self) -> str:
        """How messages name the adapter: ``adapter 'hci0'`` or ``the default adapter``."""
        return f"adapter {self._adapter!r}" if self._adapter else "the default adapter"

    def bluez_args(self) -> BlueZScannerArgs:
        """The ``bluez=`` argument given to ``BleakScanner`` (adapter and filters)."""
        args: BlueZScannerArgs = {}
        if self._adapter:
            args["adapter"] = self._adapter
        if self._mode == "active":
            # Bleak 3 already defaults DuplicateData to False; it is stated here because
            # presence tracking breaks if a future default turned it back on.
            args["filters"] = {"DuplicateData": False}
        else:
            args["or_patterns"] = passive_or_patterns(self._wristbands)
        return args

    async def start(self) -> None:
        """Start scanning in a background task on the running loop.

        Returns once the first attempt has either started the scan or reported the failure
        through ``on_state``; it never raises for Bluetooth trouble (retries continue).
        """
        if self._task is not None:
            return
        self._stopping = asyncio.Event()
        self._first_attempt = asyncio.Event()
        self._task = asyncio.create_task(self._supervise(), name=f"ble-scanner-{self.reader_id}")
        waiter = asyncio.create_task(self._first_attempt.wait())
        await asyncio.wait({waiter, self._task}, return_when=asyncio.FIRST_COMPLETED)
        waiter.cancel()

    async def stop(self) -> None:
        """Stop scanning and wait for the scan to be released; reports offline :data:`STOPPED`."""
        task, self._task = self._task, None
        if task is None or self._stopping is None:
            return
        self._stopping.set()
        try:
            await asyncio.wait_for(asyncio.shield(task), self._start_timeout_s + 1.0)
        except TimeoutError:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._set_state(False, STOPPED)

    def health(self) -> BleHealth:
        """A snapshot of the counters; cheap, safe to call every tick."""
        return BleHealth(
            reader_id=self.reader_id,
            online=self._online,
            message=self._message,
            adverts=self._stats.adverts,
            decoded_reads=self._decoded_reads,
            malformed=self._stats.malformed,
            ignored=self._stats.ignored,
            handoff_errors=self._handoff_errors,
            last_read_ts=self._last_read_ts,
            restarts=self._restarts,
        )

    # -- detection ------------------------------------------------------------------------

    def _on_detection(self, device: BLEDevice, adv: AdvertisementData) -> None:
        # Runs inside bleak's D-Bus message handler: decode, count, hand over, return.
        self._last_advert_mono = time.monotonic()
        records = decode_advert(
            adv.manufacturer_data,
            adv.service_data,
            adv.rssi,
            wristbands=self._wristbands,
            stats=self._stats,
        )
        reads = to_raw_reads(records, self._rule, device.address)
        if not reads:
            return
        ts = self._clock()
        self._decoded_reads += len(reads)
        self._last_read_ts = ts
        try:
            self._on_reads(self.reader_id, ts, reads)
        except Exception:
            self._handoff_errors += 1
            log.exception("BLE reader %s: on_reads raised; reads dropped", self.reader_id)

    # -- supervision ----------------------------------------------------------------------

    def _set_state(self, online: bool, message: str | None) -> None:
        # Only transitions are reported, so a retry loop does not flood the agent.
        if (online, message) == (self._online, self._message):
            return
        self._online, self._message = online, message
        if online:
            log.info("BLE reader %s: scanning on %s", self.reader_id, self.adapter_label)
        elif message == STOPPED:
            log.info("BLE reader %s: stopped", self.reader_id)
        else:
            log.warning("BLE reader %s offline: %s", self.reader_id, message)
        if self._on_state is not None:
            try:
                self._on_state(self.reader_id, online, message)
            except Exception:
                log.exception("BLE reader %s: on_state raised", self.reader_id)

    def describe_failure(self, exc: BaseException) -> str:
        """A message for an operator: names the adapter and the likely cause."""
        where = f"BLE {self.adapter_label}"
        if isinstance(exc, BleakDBusError) and exc.dbus_error in _NO_BLUEZ_ERRORS:
            return f"{where} unavailable: BlueZ (bluetoothd) is not running on the system D-Bus"
        if isinstance(exc, BleakBluetoothNotAvailableError):
            return f"{where} unavailable: {exc.args[0] if exc.args else exc}"
        if isinstance(exc, BleakError) and "not found" in str(exc):
            return f"{where} not found in BlueZ: is the Bluetooth dongle plugged in? ({exc})"
        if isinstance(exc, TimeoutError):
            return f"{where} unavailable: BlueZ did not answer within {self._start_timeout_s:g} s"
        if isinstance(exc, OSError):
            return f"{where} unavailable: cannot reach the system D-Bus ({exc})"
        return f"{where} unavailable: {type(exc).__name__}: {exc}"

    async def _supervise(self) -> None:
        assert self._stopping is not None and self._first_attempt is not None
        delay = self._retry_initial_s
        while not self._stopping.is_set():
            scanner = await self._try_start()
            self._first_attempt.set()
            if scanner is None:
                if await self._sleep_unless_stopped(delay):
                    break
                delay = min(delay * 2, self._retry_max_s)
                continue
            delay = self._retry_initial_s
            self._set_state(True, None)
            quiet = await self._watch()
            await self._release(scanner)
            if quiet:
                self._restarts += 1
                log.warning(
                    "BLE reader %s: no advert for %g s, restarting the scan",
                    self.reader_id,
                    self._watchdog_s,
                )

    async def _try_start(self) -> BleakScanner | None:
        scanner: BleakScanner | None = None
        try:
            scanner = BleakScanner(
                self._on_detection, scanning_mode=self._mode, bluez=self.bluez_args()
            )
            await asyncio.wait_for(scanner.start(), self._start_timeout_s)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._set_state(False, self.describe_failure(exc))
            if scanner is not None:
                await self._release(scanner)
            return None
        self._last_advert_mono = time.monotonic()
        return scanner

    async def _watch(self) -> bool:
        """Wait while scanning; True when the watchdog fired, False when asked to stop."""
        assert self._stopping is not None
        while True:
            remaining = self._last_advert_mono + self._watchdog_s - time.monotonic()
            if remaining <= 0:
                return True
            if await self._sleep_unless_stopped(remaining):
                return False

    async def _sleep_unless_stopped(self, seconds: float) -> bool:
        """Sleep up to ``seconds``; True if stop() was requested meanwhile."""
        assert self._stopping is not None
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)
        return self._stopping.is_set()

    async def _release(self, scanner: BleakScanner) -> None:
        # The adapter may be gone already; stopping is best effort.
        try:
            await asyncio.wait_for(scanner.stop(), self._start_timeout_s)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.debug("BLE reader %s: stopping the scan failed: %s", self.reader_id, exc)
