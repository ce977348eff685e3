"""A virtual BlueZ: python-dbusmock's ``bluez5`` template on a private D-Bus system bus.

Real bleak talks to it exactly as it talks to ``bluetoothd``; what the mock cannot do is
a radio, so :meth:`VirtualBluez.advertise` plays one received advertisement by setting the
properties BlueZ would set on its ``org.bluez.Device1`` object:

* the first advert from an address creates the device and emits ``InterfacesAdded``;
* every later one updates ``RSSI``, ``ManufacturerData`` and ``ServiceData`` and emits
  ``PropertiesChanged``, always, like BlueZ with the ``DuplicateData: false`` discovery
  filter. Bleak runs its detection callback once for each of these signals.

Process environment: :meth:`VirtualBluez.start` points ``DBUS_SYSTEM_BUS_ADDRESS`` of *this*
process at the private bus, because bleak (dbus-fast) reads that variable each time it
connects to the system bus. Start the virtual BlueZ before the first ``BleakScanner`` is
started in the process (or on the event loop: bleak keeps one connection per loop and only
reconnects when that connection drops). :meth:`stop` restores the previous value.

Needs the Debian package ``dbus`` (for ``dbus-daemon``) and the pip packages
``python-dbusmock`` and ``dbus-python`` (the ``dev`` extra).
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping
from types import TracebackType
from typing import Any

import dbus
from dbusmock import MOCK_IFACE, OBJECT_MANAGER_IFACE
from dbusmock.testcase import BusType, PrivateDBus, SpawnedMock

BLUEZ_MOCK_IFACE = "org.bluez.Mock"
DEVICE_IFACE = "org.bluez.Device1"
SYSTEM_BUS_ENV = "DBUS_SYSTEM_BUS_ADDRESS"


def _manufacturer_variant(data: Mapping[int, bytes]) -> dbus.Dictionary:
    # BlueZ type a{qv}: company id -> byte array. The template's AddDevice creates an array
    # here instead, which bleak cannot read, so devices are built by hand below.
    return dbus.Dictionary(
        {dbus.UInt16(k): dbus.Array(bytes(v), signature="y") for k, v in data.items()},
        signature="qv",
    )


def _service_variant(data: Mapping[str, bytes]) -> dbus.Dictionary:
    # BlueZ type a{sv}: 128-bit UUID string -> byte array.
    return dbus.Dictionary(
        {dbus.String(k): dbus.Array(bytes(v), signature="y") for k, v in data.items()},
        signature="sv",
    )


class VirtualBluez:
    """A private system bus running a mocked ``bluetoothd``; a context manager.

    >>> with VirtualBluez() as bluez:
    ...     bluez.add_adapter("hci0")
    ...     bluez.advertise("C0:FF:EE:00:00:01", {0x004C: ibeacon_body}, {}, rssi=-61)
    """

    def __init__(self) -> None:
        self._bus: PrivateDBus | None = None
        self._mock: SpawnedMock | None = None
        self._conn: Any = None
        self._devices: dict[str, str] = {}  # "adapter/address" -> object path
        self._saved_env: str | None = None

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> VirtualBluez:
        """Start ``dbus-daemon`` and the mocked BlueZ, and export the bus address."""
        if self._bus is not None:
            return self
        self._saved_env = os.environ.get(SYSTEM_BUS_ENV)
        self._bus = PrivateDBus(BusType.SYSTEM)
        try:
            self._bus.start()  # sets DBUS_SYSTEM_BUS_ADDRESS for this process
            # The mock logs every method call to stdout; nobody reads it, and a full pipe
            # would block the mock, so it goes nowhere.
            self._mock = SpawnedMock.spawn_with_template(
                "bluez5", {}, BusType.SYSTEM, stdout=subprocess.DEVNULL, stderr=None
            )
            self._conn = BusType.SYSTEM.get_connection()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Terminate the mock and the bus daemon; restore ``DBUS_SYSTEM_BUS_ADDRESS``."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        if self._mock is not None:
            self._mock.terminate()
            self._mock = None
        if self._bus is not None:
            self._bus.stop()
            self._bus = None
            if self._saved_env is None:
                os.environ.pop(SYSTEM_BUS_ENV, None)
            else:
                os.environ[SYSTEM_BUS_ENV] = self._saved_env
        self._devices.clear()

    def __enter__(self) -> VirtualBluez:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def bus_address(self) -> str:
        """The private bus address, ``unix:path=...``."""
        if self._bus is None:
            raise RuntimeError("VirtualBluez is not started")
        return self._bus.address

    @property
    def pids(self) -> tuple[int, ...]:
        """Process ids this instance spawned (bus daemon, mock), for leak checks."""
        pids = []
        if self._bus is not None:
            pids.append(self._bus.pid)
        if self._mock is not None:
            pids.append(self._mock.process.pid)
        return tuple(pids)

    # -- adapters -------------------------------------------------------------------------

    def _object(self, path: str, interface: str) -> Any:
        if self._conn is None:
            raise RuntimeError("VirtualBluez is not started")
        return dbus.Interface(self._conn.get_object("org.bluez", path), interface)

    def add_adapter(self, name: str = "hci0", alias: str = "venue-gateway") -> str:
        """Add a powered adapter such as ``"hci0"``; returns its object path."""
        return str(self._object("/", BLUEZ_MOCK_IFACE).AddAdapter(name, alias))

    def remove_adapter(self, name: str) -> None:
        """Unplug an adapter and its devices (``InterfacesRemoved``)."""
        self._object("/", BLUEZ_MOCK_IFACE).RemoveAdapterWithDevices(name)
        prefix = f"{name}/"
        for key in [k for k in self._devices if k.startswith(prefix)]:
            del self._devices[key]

    def method_calls(self, adapter: str, method: str) -> list[tuple[Any, ...]]:
        """Arguments of each call bleak made to ``org.bluez.Adapter1.<method>``, oldest first
        (e.g. ``"SetDiscoveryFilter"``, ``"StartDiscovery"``)."""
        calls = self._object(f"/org/bluez/{adapter}", MOCK_IFACE).GetMethodCalls(method)
        return [tuple(args) for _ts, args in calls]

    # -- adverts --------------------------------------------------------------------------

    def advertise(
        self,
        address: str,
        manufacturer_data: Mapping[int, bytes],
        service_data: Mapping[str, bytes],
        rssi: int,
        *,
        adapter: str = "hci0",
        name: str | None = None,
    ) -> None:
        """Play one received advertisement from ``address`` heard at ``rssi`` dBm.

        manufacturer_data: ``{company_id: payload without the company id}`` (as bleak
        reports it); service_data: ``{128-bit UUID string: payload}``. Both replace what
        the device had before. Blocks until the mock has emitted the D-Bus signal.
        """
        props: dict[str, Any] = {
            "RSSI": dbus.Int16(rssi),
            "ManufacturerData": _manufacturer_variant(manufacturer_data),
            "ServiceData": _service_variant(service_data),
        }
        key = f"{adapter}/{address.upper()}"
        path = self._devices.get(key)
        if path is not None:
            self._object(path, MOCK_IFACE).UpdateProperties(DEVICE_IFACE, props)
            return
        path = f"/org/bluez/{adapter}/dev_{address.upper().replace(':', '_')}"
        adapter_path = f"/org/bluez/{adapter}"
        props.update(
            {
                "Address": dbus.String(address.upper()),
                # Wristbands and beacons mostly use random addresses; bleak only reads it.
                "AddressType": dbus.String("random"),
                "Alias": dbus.String(name or address.upper().replace(":", "-")),
                "Adapter": dbus.ObjectPath(adapter_path),
                "Paired": dbus.Boolean(False),
                "Connected": dbus.Boolean(False),
                "Trusted": dbus.Boolean(False),
                "Blocked": dbus.Boolean(False),
                "LegacyPairing": dbus.Boolean(False),
                "ServicesResolved": dbus.Boolean(False),
                "UUIDs": dbus.Array([dbus.String(u) for u in service_data], signature="s"),
            }
        )
        if name is not None:
            props["Name"] = dbus.String(name)
        root = self._object("/", MOCK_IFACE)
        root.AddObject(path, DEVICE_IFACE, dbus.Dictionary(props, signature="sv"), [])
        self._devices[key] = path
        root.EmitSignal(
            OBJECT_MANAGER_IFACE,
            "InterfacesAdded",
            "oa{sa{sv}}",
            [
                dbus.ObjectPath(path),
                dbus.Dictionary(
                    {DEVICE_IFACE: dbus.Dictionary(props, signature="sv")}, signature="sa{sv}"
                ),
            ],
        )
