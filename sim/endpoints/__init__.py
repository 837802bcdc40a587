"""The simulator's hardware-in-the-loop endpoints: Modbus TCP servers standing in for meters and
switched PDUs, and MQTT stand-ins for node agents and zone sensors.

Public API (docs/simulator-endpoints.md describes the wiring to the plant):

* :class:`ModbusEndpoints`, :class:`EndpointFault`, :data:`SnapshotProvider`,
  :data:`OutletWriter`
* :class:`MqttEndpoints`, :class:`AgentState`, :class:`GpuState`, :class:`ZoneState`,
  :data:`AgentProvider`, :data:`CapApplier`, :data:`ZoneProvider`, :data:`SimClock`
"""

from sim.endpoints.modbus import (
    EndpointFault,
    EndpointStats,
    ModbusEndpoints,
    OutletWriter,
    SnapshotProvider,
)
from sim.endpoints.mqtt import (
    AgentProvider,
    AgentState,
    CapApplier,
    GpuState,
    MqttEndpoints,
    MqttEndpointStats,
    SimClock,
    ZoneProvider,
    ZoneState,
)

__all__ = [
    "AgentProvider",
    "AgentState",
    "CapApplier",
    "EndpointFault",
    "EndpointStats",
    "GpuState",
    "ModbusEndpoints",
    "MqttEndpointStats",
    "MqttEndpoints",
    "OutletWriter",
    "SimClock",
    "SnapshotProvider",
    "ZoneProvider",
    "ZoneState",
]
