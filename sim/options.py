"""Plant parameters that the hall config does not carry: estimates, each a configurable default.

PHYSICS.md asks that a value without a first-hand source stays a configurable default, never a
constant buried in code. These are them. A scenario file may override any of them in its
``[plant]`` table; the dry-run harness passes them to :class:`sim.Plant`.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, model_validator

Pos = Annotated[float, Field(gt=0, allow_inf_nan=False)]
NonNeg = Annotated[float, Field(ge=0, allow_inf_nan=False)]


class PlantOptions(BaseModel):
    """Estimates and model settings of the simulated plant (units in the names)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    # -- GPUs (PHYSICS.md §3: H100 slowdown 89 °C, shutdown 92 °C) --------------------------
    gpu_temp_rise_k: Annotated[float, Field(ge=0, le=100)] = Field(
        default=45.0, description="GPU temperature above inlet at full GPU power (estimate)")
    gpu_thermal_tau_s: Annotated[float, Field(gt=0, le=3600)] = Field(
        default=30.0, description="time constant of a GPU's temperature (estimate)")
    gpu_slowdown_c: Annotated[float, Field(gt=0, le=150)] = 89.0
    gpu_shutdown_c: Annotated[float, Field(gt=0, le=150)] = 92.0
    gpu_slowdown_hysteresis_k: Annotated[float, Field(ge=0, le=20)] = Field(
        default=2.0, description="a slowed GPU recovers below slowdown minus this (estimate)")
    gpu_slowdown_power_x: Annotated[float, Field(gt=0, le=1)] = Field(
        default=0.6, description="GPU power while slowed, as a fraction of its cap (estimate)")

    # -- meters ---------------------------------------------------------------------------
    meter_noise_x: Annotated[float, Field(ge=0, le=0.5)] = Field(
        default=0.005, description="relative standard deviation of current and power readings")
    meter_voltage_noise_x: Annotated[float, Field(ge=0, le=0.5)] = 0.002
    meter_current_quantum_a: NonNeg = 0.01
    meter_voltage_quantum_v: NonNeg = 0.1
    meter_power_quantum_w: NonNeg = 1.0
    meter_energy_quantum_wh: NonNeg = 1.0
    meter_default_period_s: Pos = Field(
        default=1.0, description="update period of meters and zone sensors without a binding")
    agent_period_s: Pos = Field(default=1.0, description="node agent telemetry period")

    # -- violations -------------------------------------------------------------------------
    ramp_window_s: Pos = Field(default=1.0, description="window of the ramp check")
    unprotected_shed_deadline_s: Pos = Field(
        default=60.0,
        description="shed deadline of an overloaded node without a breaker of its own "
        "(UPS, rack PDU inlet, outlet): estimate")
    max_shed_deadline_s: Pos = Field(
        default=900.0,
        description="longest shed deadline: an overload the trip curve would carry for ever "
        "(between the continuous limit and the thermal pickup) is a violation after this")

    # -- numerics -------------------------------------------------------------------------
    zone_substep_s: Pos = 1.0
    resync_period_s: Pos = Field(
        default=60.0, description="full recomputation of tree loads against rounding drift")

    @model_validator(mode="after")
    def _ordered(self) -> PlantOptions:
        if self.gpu_shutdown_c <= self.gpu_slowdown_c:
            raise ValueError("gpu_shutdown_c must be above gpu_slowdown_c")
        return self
