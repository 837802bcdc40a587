"""The service's own telemetry alarms (rule 5 for what comes over MQTT; docs/operations.md):
a zone inlet silent past ``meter_stale_s`` and node agents of energized servers gone silent are
alarmed once, listed in the status, and cleared when the readings return. Found by the HIL
campaign's broker restart (docs/campaign-hil.md): the service used to say nothing."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from controller.config import load_hall_config
from controller.service import Service, ServiceOptions
from controller.topology import compile_hall

ROOT = Path(__file__).resolve().parents[2]


class Clock:
    def __init__(self) -> None:
        self.t_s = 1000.0

    def __call__(self) -> float:
        return self.t_s


def _service(tmp_path: Path) -> tuple[Service, Clock]:
    config = load_hall_config(ROOT / "configs" / "rig.toml")
    topo = compile_hall(config)
    clock = Clock()
    options = ServiceOptions(mqtt_url=None, metrics_port=None, audit_path=tmp_path / "a.jsonl")
    return Service(config, topo, options, clock=clock), clock


def test_a_silent_zone_and_silent_agents_are_alarmed_then_cleared(tmp_path: Path) -> None:
    svc, clock = _service(tmp_path)
    stale_s = svc.settings.meter_stale_s
    assert svc._lost_telemetry_alarms(clock()) == ()            # just started: nothing yet
    clock.t_s += stale_s + 0.5                                  # the zone never reported
    raised = svc._lost_telemetry_alarms(clock())
    assert [(a.code, a.node, a.active) for a in raised] == [("telemetry", "LAB", True)]
    assert "telemetry:zone:LAB" in svc.status()["alarms"]
    assert svc._lost_telemetry_alarms(clock()) == ()            # once per fault
    svc._zone_t_s[:] = clock()                                  # the zone reports again
    cleared = svc._lost_telemetry_alarms(clock())
    assert [a.active for a in cleared] == [False] and not svc.status()["alarms"]
    # every server energized, its agent reported once, then went silent
    svc.state = svc.state.replace(psu_on_s=np.zeros_like(svc.state.psu_on_s))
    for s in range(svc.topo.n_servers):
        svc.store.ingest_server(s, [100.0] * 8, [300.0] * 8, clock())
    svc._zone_t_s[:] = clock() + 60.0                           # keep the zone fresh
    clock.t_s += svc.settings.agent_stale_s + 1.0
    svc.store.refresh()
    raised = svc._lost_telemetry_alarms(clock())
    assert [a.active for a in raised] == [True] and "4 node agent(s)" in raised[0].message
    assert "telemetry:agents" in svc.status()["alarms"]
    for s in range(svc.topo.n_servers):
        svc.store.ingest_server(s, [100.0] * 8, [300.0] * 8, clock())
    svc.store.refresh()
    assert [a.active for a in svc._lost_telemetry_alarms(clock())] == [False]
