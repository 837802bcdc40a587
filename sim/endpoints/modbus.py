"""Modbus TCP endpoints of the simulator: the HIL stand-ins for meters and switched PDUs.

One server per TCP port (:class:`sim.endpoints._server.LeanModbusServer`: pymodbus's server
costs four times the CPU per request, which a hall of thousands of devices cannot spare), one
device per unit id as :mod:`controller.bindings` deals them, serving the maps of
docs/registers.md through the same codec the driver decodes with (:mod:`drivers.registers`).
Registers are refreshed from a snapshot provider, or, for the devices of a built-in profile, from
an array provider that gives many devices of one shape at once (:mod:`sim.endpoints._arrays`,
the same registers for a tenth of the CPU); coil writes go to a callback.
docs/simulator-endpoints.md describes the interfaces the plant is wired through.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from enum import Enum
from types import TracebackType
from typing import Self

import numpy as np

from drivers._link import stop_task
from drivers.modbus import ModbusDeviceConfig
from drivers.registers import (
    PROFILE_METER,
    PROFILE_PDU,
    GenericProfile,
    MeterSnapshot,
    PduSnapshot,
    encode_generic,
    encode_meter,
    encode_pdu,
    meter_quantities,
)
from sim.endpoints._arrays import SnapshotArrays, encode_arrays
from sim.endpoints._datastore import DeviceImage, StrictContext
from sim.endpoints._server import LeanModbusServer

__all__ = [
    "ArrayProvider",
    "EndpointFault",
    "EndpointStats",
    "ModbusEndpoints",
    "OutletWriter",
    "SnapshotProvider",
]

_log = logging.getLogger(__name__)

#: ``snapshot(node_id)`` → what the device at that node measures now; ``None`` makes the
#: device silent (a dead meter answers nothing).
SnapshotProvider = Callable[[str], MeterSnapshot | PduSnapshot | None]
#: ``arrays(node_ids, shape)`` → what the devices at those nodes measure now, one row per node
#: in the order given: ``shape`` is ``(banks, outlets)`` for ``rampguard-pdu-v1`` devices (each
#: node must be a PDU of that shape) and ``None`` for ``rampguard-meter-v1`` devices (the inlet
#: only). A provider that raises (or returns the wrong shape) makes the endpoint refresh those
#: devices one by one through the snapshot provider instead, which then decides each device's
#: fate as it always does.
ArrayProvider = Callable[[Sequence[str], tuple[int, int] | None], SnapshotArrays]
#: ``on_outlet_write(pdu_node_id, outlet_n, on)`` → True if the relay switched (1-based n);
#: False refuses the write (the client gets exception 04).
OutletWriter = Callable[[str, int, bool], bool]


class EndpointFault(Enum):
    """A fault a device can be set to (on top of what its snapshot says)."""

    SILENT = "silent"                 # answers nothing: the client times out
    DEVICE_FAILURE = "device-failure"  # answers every request with exception 04


@dataclass
class EndpointStats:
    refreshes: int = 0
    provider_errors: int = 0
    #: devices refreshed from the array provider, and groups it failed for (then refreshed
    #: one by one)
    array_refreshed: int = 0
    array_fallbacks: int = 0
    writes_accepted: int = 0
    writes_refused: int = 0


@dataclass
class _Device:
    config: ModbusDeviceConfig
    image: DeviceImage
    sequence: int = 0
    fault: EndpointFault | None = None
    provider_failed: bool = False
    shape_error: bool = False
    #: the array batch this device belongs to: ``(banks, outlets)`` of a PDU, ``()`` for a meter
    #: without coils, ``None`` when it is refreshed one by one (a generic profile, a meter that
    #: switches outlets)
    batch: tuple[int, ...] | None = None


def _batch_of(cfg: ModbusDeviceConfig, n_coils: int) -> tuple[int, ...] | None:
    if cfg.profile == PROFILE_PDU:
        return (cfg.banks, cfg.outlets)
    if cfg.profile == PROFILE_METER and n_coils == 0:
        return ()
    return None


class ModbusEndpoints:
    """Serve ``devices`` on ``bind`` (127.0.0.1 unless told otherwise).

    ::

        async with ModbusEndpoints(devices, snapshot, on_outlet_write) as ep:
            port = ep.bound_port(15020)     # the port really bound (for a configured 0)

    ``refresh_period_s``: how often a background task re-reads every snapshot (a meter's update
    period; ``None``: only when :meth:`refresh` is called, e.g. after each plant step in virtual
    time). Each refresh increments the device's ``sequence`` unless the snapshot gives one.
    Configs that share a port and a unit id must name the same node (meter and actuator of one
    PDU are one device).

    ``arrays`` (optional, :data:`ArrayProvider`): the devices of a built-in profile are refreshed
    in batches of one shape from it; ``snapshot`` stays the provider of every other device and
    the fallback for a batch the array provider fails.
    """

    def __init__(
        self,
        devices: Sequence[ModbusDeviceConfig],
        snapshot: SnapshotProvider,
        on_outlet_write: OutletWriter | None = None,
        *,
        bind: str = "127.0.0.1",
        refresh_period_s: float | None = 1.0,
        clock: Callable[[], float] = time.monotonic,
        arrays: ArrayProvider | None = None,
    ) -> None:
        self._provider = snapshot
        self._arrays = arrays
        self._array_failed: set[tuple[int, ...]] = set()
        self._on_write = on_outlet_write
        self._bind = bind
        self._period = refresh_period_s
        self._clock = clock
        self._start_s = clock()
        self.stats = EndpointStats()
        self._ports: dict[int, dict[int, _Device]] = {}
        self._by_node: dict[str, list[_Device]] = {}
        for cfg in devices:
            units = self._ports.setdefault(cfg.port, {})
            known = units.get(cfg.unit_id)
            if known is not None:
                if known.config.node_id != cfg.node_id:
                    raise ValueError(f"port {cfg.port} unit {cfg.unit_id} is dealt to both "
                                     f"{known.config.node_id!r} and {cfg.node_id!r}")
                continue
            n_coils = cfg.outlets if (cfg.actuator or cfg.profile == PROFILE_PDU) else 0
            dev = _Device(cfg, DeviceImage(n_coils), batch=_batch_of(cfg, n_coils))
            units[cfg.unit_id] = dev
            self._by_node.setdefault(cfg.node_id, []).append(dev)
        self._devices = [d for units in self._ports.values() for d in units.values()]
        self._contexts = {
            port: StrictContext({u: d.image for u, d in units.items()}, self._writer(port))
            for port, units in self._ports.items()
        }
        self._servers: dict[int, LeanModbusServer] = {}
        self._bound: dict[int, int] = {}
        self._refresher: asyncio.Task[None] | None = None

    # -- lifecycle -------------------------------------------------------------------------
    async def __aenter__(self) -> Self:
        self.refresh()
        try:
            for port in self._ports:
                await self.start_port(port)
        except BaseException:
            await self._stop_all()
            raise
        if self._period is not None:
            self._refresher = asyncio.create_task(self._refresh_loop(self._period),
                                                  name="modbus endpoints refresh")
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self._stop_all()

    async def _stop_all(self) -> None:
        task, self._refresher = self._refresher, None
        failure = await stop_task(task)
        for port in list(self._servers):
            await self.stop_port(port)
        if failure is not None:       # the refresher catches provider errors: this is a bug
            raise failure

    async def start_port(self, port: int) -> None:
        """(Re)start the server of a configured port (on the same port number it had)."""
        if port in self._servers:
            return
        if port not in self._ports:
            raise KeyError(f"no device is configured on port {port}")
        server = LeanModbusServer(self._contexts[port], (self._bind, self._bound.get(port, port)))
        try:
            await server.start()
        except OSError as exc:
            raise OSError(f"cannot listen on {self._bind}:{port}: {exc}") from exc
        self._bound[port] = server.port
        self._servers[port] = server

    async def stop_port(self, port: int) -> None:
        """Stop the server of a configured port and close its connections (a dead gateway)."""
        server = self._servers.pop(port, None)
        if server is not None:
            await server.shutdown()

    def bound_port(self, port: int) -> int:
        """The port really listened on for a configured ``port`` (differs when it was 0)."""
        return self._bound[port]

    @property
    def ports(self) -> tuple[int, ...]:
        return tuple(self._ports)

    # -- faults ------------------------------------------------------------------------------
    def set_fault(self, node_id: str, fault: EndpointFault | None) -> None:
        """Make the device(s) of ``node_id`` silent or failing (``None`` clears)."""
        for dev in self._devices_of(node_id):
            dev.fault = fault
            self._apply_fault(dev)

    def _devices_of(self, node_id: str) -> list[_Device]:
        try:
            return self._by_node[node_id]
        except KeyError:
            raise KeyError(f"no endpoint device for node {node_id!r}") from None

    @staticmethod
    def _apply_fault(dev: _Device, silent: bool = False) -> None:
        dev.image.silent = silent or dev.fault is EndpointFault.SILENT
        failing = (dev.fault is EndpointFault.DEVICE_FAILURE or dev.provider_failed
                   or dev.shape_error)
        dev.image.exception = 4 if failing else None

    # -- registers ---------------------------------------------------------------------------
    def refresh(self, node_ids: Iterable[str] | None = None, *,
                part: tuple[int, int] | None = None) -> None:
        """Re-read the snapshot of every device (or of ``node_ids``) into its registers.

        ``part=(k, n)``: only every ``n``-th device from the ``k``-th (0 ≤ k < n): a caller that
        refreshes the parts ``0 .. n−1`` in turn, one per plant step, refreshes every device
        once per round without holding the event loop for the whole hall at once (on the 32k
        hall a whole refresh held it longer than a client's timeout). A round counts as one
        refresh in ``stats.refreshes`` (its part 0)."""
        if part is not None and not (0 <= part[0] < part[1]):
            raise ValueError(f"part {part[0]} of {part[1]}: expected 0 <= k < n")
        if part is None or part[0] == 0:
            self.stats.refreshes += 1
        uptime_s = self._clock() - self._start_s
        if node_ids is None:
            devices: Iterable[_Device] = self._devices if part is None \
                else self._devices[part[0]::part[1]]
        else:
            chosen = [d for n in node_ids for d in self._devices_of(n)]
            devices = chosen if part is None else chosen[part[0]::part[1]]
        if self._arrays is None:
            for dev in devices:
                self._refresh_one(dev, uptime_s)
            return
        batches: dict[tuple[int, ...], list[_Device]] = {}
        for dev in devices:
            if dev.batch is None:
                self._refresh_one(dev, uptime_s)
            else:
                batches.setdefault(dev.batch, []).append(dev)
        for batch, devs in batches.items():
            self._refresh_batch(batch, devs, uptime_s)

    def _refresh_batch(self, batch: tuple[int, ...], devs: list[_Device],
                       uptime_s: float) -> None:
        """Refresh ``devs`` (all of shape ``batch``) from one call of the array provider; one
        by one when it fails, or when a device is listed twice (each listing is a refresh)."""
        assert self._arrays is not None
        banks, outlets = batch if batch else (0, 0)
        shape = (banks, outlets) if batch else None
        try:
            if len({id(d) for d in devs}) != len(devs):
                raise ValueError("a device is listed twice")
            arrays = self._arrays([d.config.node_id for d in devs], shape)
            if arrays.n != len(devs):
                raise ValueError(f"{arrays.n} rows for {len(devs)} devices")
            present = np.asarray(arrays.present, dtype=np.bool_).reshape(len(devs))
            sequence = np.fromiter((d.sequence + 1 for d in devs), dtype=np.int64,
                                   count=len(devs))
            regs, bad = encode_arrays(arrays, banks=banks, outlets=outlets, sequence=sequence,
                                      uptime_s=uptime_s)
            relays = energized = None
            if shape is not None and outlets:
                relays = np.asarray(arrays.outlet_relay_on, dtype=np.bool_).tolist()
                energized = np.asarray(arrays.outlet_energized, dtype=np.bool_).tolist()
        except Exception as exc:
            self.stats.array_fallbacks += 1
            if batch not in self._array_failed:
                _log.warning("array refresh of %d devices of shape %s failed (%s); refreshing "
                             "them one by one", len(devs), shape, exc)
                self._array_failed.add(batch)
            for dev in devs:
                self._refresh_one(dev, uptime_s)
            return
        self._array_failed.discard(batch)
        width = 2 * regs.shape[1]
        raw = regs.astype(">u2").tobytes()       # every row's registers as they go on the wire
        present_l, bad_l = present.tolist(), bad.tolist()
        for k, dev in enumerate(devs):
            if dev.provider_failed:
                _log.info("snapshot provider recovered for %s", dev.config.node_id)
                dev.provider_failed = False
            if not present_l[k]:
                self._apply_fault(dev, silent=True)
                continue
            dev.sequence += 1
            img = dev.image
            if bad_l[k]:
                if not dev.shape_error:
                    _log.error("snapshot for %s does not fit its device (%s): phase powers "
                               "+inf and -inf", dev.config.node_id, dev.config.profile_id)
                dev.shape_error = True
            else:
                img.inputs = [(0, raw[k * width:(k + 1) * width])]
                if relays is not None and energized is not None:
                    img.coils[:] = relays[k]
                    img.discrete_inputs[:] = energized[k]
                dev.shape_error = False
            self._apply_fault(dev)
        self.stats.array_refreshed += len(devs)

    def _refresh_one(self, dev: _Device, uptime_s: float) -> None:
        cfg = dev.config
        try:
            snap = self._provider(cfg.node_id)
        except Exception:
            self.stats.provider_errors += 1
            if not dev.provider_failed:
                _log.exception("snapshot provider failed for %s; the device answers "
                               "exception 04 until it recovers", cfg.node_id)
            dev.provider_failed = True
            self._apply_fault(dev)
            return
        if dev.provider_failed:
            _log.info("snapshot provider recovered for %s", cfg.node_id)
        dev.provider_failed = False
        if snap is None:
            self._apply_fault(dev, silent=True)
            return
        dev.sequence += 1
        try:
            self._encode(dev, snap, uptime_s)
        except (TypeError, ValueError) as exc:
            if not dev.shape_error:
                _log.error("snapshot for %s does not fit its device (%s): %s", cfg.node_id,
                           cfg.profile_id, exc)
            dev.shape_error = True
        else:
            dev.shape_error = False
        self._apply_fault(dev)

    def _encode(self, dev: _Device, snap: MeterSnapshot | PduSnapshot, uptime_s: float) -> None:
        cfg, img = dev.config, dev.image
        inlet = snap.inlet if isinstance(snap, PduSnapshot) else snap
        if not isinstance(inlet, MeterSnapshot):
            raise TypeError(f"expected a MeterSnapshot or PduSnapshot, got {type(snap).__name__}")
        if isinstance(cfg.profile, GenericProfile):
            blocks = encode_generic(cfg.profile,
                                    meter_quantities(inlet, sequence=dev.sequence))
            if cfg.profile.function == 3:
                img.set_holding(blocks)
            else:
                img.set_inputs(blocks)
            if isinstance(snap, PduSnapshot) and img.coils:
                self._outlet_bits(cfg, img, snap)
            return
        if cfg.profile == PROFILE_PDU:
            if not isinstance(snap, PduSnapshot):
                raise TypeError("a rampguard-pdu-v1 device needs a PduSnapshot")
            if (len(snap.banks), len(snap.outlets)) != (cfg.banks, cfg.outlets):
                raise ValueError(f"snapshot has {len(snap.banks)} banks and "
                                 f"{len(snap.outlets)} outlets, the device {cfg.banks} and "
                                 f"{cfg.outlets}")
            image = encode_pdu(snap, sequence=dev.sequence, uptime_s=uptime_s)
            img.set_inputs(image.input_registers)
            img.coils[:] = image.coils
            img.discrete_inputs[:] = image.discrete_inputs
            return
        img.set_inputs(((0, encode_meter(inlet, sequence=dev.sequence, uptime_s=uptime_s)),))
        if isinstance(snap, PduSnapshot) and img.coils:
            self._outlet_bits(cfg, img, snap)

    @staticmethod
    def _outlet_bits(cfg: ModbusDeviceConfig, img: DeviceImage, snap: PduSnapshot) -> None:
        if len(snap.outlets) != len(img.coils):
            raise ValueError(f"snapshot has {len(snap.outlets)} outlets, the device "
                             f"{len(img.coils)}")
        img.coils[:] = [o.relay_on for o in snap.outlets]
        img.discrete_inputs[:] = [o.energized for o in snap.outlets]

    async def _refresh_loop(self, period_s: float) -> None:
        next_s = self._clock()
        while True:
            next_s += period_s
            await asyncio.sleep(max(0.0, next_s - self._clock()))
            self.refresh()

    # -- writes ------------------------------------------------------------------------------
    def _writer(self, port: int) -> Callable[[int, int, bool], bool]:
        units = self._ports[port]

        def write(unit_id: int, coil: int, on: bool) -> bool:
            dev = units[unit_id]
            if self._on_write is None:
                accepted = False
            else:
                accepted = bool(self._on_write(dev.config.node_id, coil + 1, on))
            if accepted:
                self.stats.writes_accepted += 1
            else:
                self.stats.writes_refused += 1
            return accepted

        return write
