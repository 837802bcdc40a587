"""What a controller can see of the plant at one moment: a snapshot, copied, never live.

Meter readings come with the time they were sampled and a quality code (meter faults show here
and only here); outlet states and breaker states are read-backs; node agents report each
server's power, GPU power, GPU temperature and the cap they say is in force; each zone reports its
inlet temperature. Indices refer to the compiled :class:`~controller.topology.Topology`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

F64 = npt.NDArray[np.float64]
I32 = npt.NDArray[np.int32]
I8 = npt.NDArray[np.int8]
B = npt.NDArray[np.bool_]


@dataclass(frozen=True, slots=True)
class Observation:
    """A controller's view at ``t_s`` (virtual s).

    Meters (M): ``meter_node`` node index; ``meter_i_a`` (M, 3) A and ``meter_v_v`` (M, 3) V
    (line to neutral) and ``meter_p_w`` (M, 3) W per phase; ``meter_e_wh`` (M,) Wh;
    ``meter_t_sample_s`` (M,) s when the value was measured (old for a stale meter, -inf before
    the first sample); ``meter_quality`` (M,) int8 (0 ok, 1 no reply, 2 device unreachable;
    values NaN unless ok); ``meter_device`` (M,) index into ``device_names``.

    Outlets (O, the outlets of switched rack PDUs): ``outlet_node``, ``outlet_on`` read-back,
    ``outlet_reachable`` (False when the PDU's Modbus device does not answer).

    Breakers (B): ``breaker_node``, ``breaker_closed``.

    Servers (S), as their node agents report: ``server_agent_up`` (booted: the agent answers),
    ``server_p_w`` W, ``server_gpu_w`` W per GPU, ``server_gpu_temp_c`` °C, ``server_cap_w`` W
    per GPU (the cap the agent says is in force; an agent that ignores caps still says so).
    Values are NaN where the agent is down.

    Zones (Z): ``zone_inlet_c`` °C.
    """

    t_s: float
    meter_node: I32
    meter_i_a: F64
    meter_v_v: F64
    meter_p_w: F64
    meter_e_wh: F64
    meter_t_sample_s: F64
    meter_quality: I8
    meter_device: I32
    device_names: tuple[str, ...]
    outlet_node: I32
    outlet_on: B
    outlet_reachable: B
    breaker_node: I32
    breaker_closed: B
    server_agent_up: B
    server_p_w: F64
    server_gpu_w: F64
    server_gpu_temp_c: F64
    server_cap_w: F64
    zone_inlet_c: F64
