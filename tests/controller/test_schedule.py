"""The Schedule currency and the open-loop baselines."""

from __future__ import annotations

import numpy as np
import pytest

from controller.schedule import (
    Schedule,
    all_at_once,
    baseline,
    fixed_delay,
    fixed_rate,
    server_boot_time_s,
)
from controller.topology import Topology


def test_all_at_once_switches_everything_at_zero(demo: Topology) -> None:
    s = all_at_once(demo)
    assert s.psu_on_s.shape == (demo.n_psus,) and np.all(s.psu_on_s == 0)
    assert np.array_equal(s.gpu_cap_w, demo.server_gpu_max_w)
    assert np.all(s.server_on_s(demo) == 0)


def test_fixed_delay_sequences_each_pdu_in_parallel(demo: Topology) -> None:
    s = fixed_delay(demo, 2.0)
    # 6 used outlets per DGX rack PDU: 0, 2, ..., 10 s on every PDU; 12 per storage PDU
    dgx = demo.server_gpus > 0
    dgx_psu = dgx[demo.psu_server]
    assert sorted(set(s.psu_on_s[dgx_psu].tolist())) == [0.0, 2.0, 4.0, 6.0, 8.0, 10.0]
    assert sorted(set(s.psu_on_s[~dgx_psu].tolist())) == [2.0 * i for i in range(12)]
    assert s.last_switch_s == 22.0
    pdu_of = demo.parent_idx[demo.parent_idx[demo.psu_node]]  # outlet → bank → PDU
    for pdu in np.unique(pdu_of[dgx_psu])[:20]:
        times = np.sort(s.psu_on_s[pdu_of == pdu])
        assert times.tolist() == [0.0, 2.0, 4.0, 6.0, 8.0, 10.0]
    # a DGX boots on its third powered PSU
    boot = s.server_on_s(demo)
    for server in np.flatnonzero(dgx)[::37]:
        mine = np.sort(s.psu_on_s[demo.psu_server == server])
        assert boot[server] == mine[2]
    assert boot.max() <= s.last_switch_s


def test_fixed_rate_releases_bursts_like_slurm(demo: Topology) -> None:
    s = fixed_rate(demo, 300.0)  # 50 servers per 10 s pass
    on = s.server_on_s(demo)
    counts = np.unique(on, return_counts=True)
    assert counts[0][:3].tolist() == [0.0, 10.0, 20.0]
    assert counts[1][:-1].tolist() == [50] * (len(counts[1]) - 1)
    assert on.max() == 120.0  # 608 servers → 13 bursts


def test_boot_time_is_the_kth_powered_psu(rig: Topology) -> None:
    on = np.array([5.0, 1.0, np.inf, 3.0, 0.0, 0.0, np.inf, np.inf])
    # rig servers boot on 1 PSU: the earliest of their two
    assert server_boot_time_s(rig, on).tolist() == [1.0, 3.0, 0.0, np.inf]


@pytest.mark.parametrize("bad", [np.nan, -1.0])
def test_schedule_refuses_bad_times(bad: float) -> None:
    with pytest.raises(ValueError, match="psu_on_s"):
        Schedule("x", np.array([0.0, bad]), np.array([700.0]))


def test_cap_events_must_be_sorted_and_in_range() -> None:
    caps = np.array([700.0, 700.0])
    with pytest.raises(ValueError, match="sorted"):
        Schedule("x", np.zeros(2), caps, np.array([2.0, 1.0]), np.array([0, 1], np.int32),
                 np.array([300.0, 300.0]))
    with pytest.raises(ValueError, match="out of range"):
        Schedule("x", np.zeros(2), caps, np.array([1.0]), np.array([5], np.int32),
                 np.array([300.0]))
    s = Schedule("x", np.zeros(2), caps, np.array([1.0, 2.0, 3.0]),
                 np.array([0, 1, 0], np.int32), np.array([300.0, 400.0, 500.0]))
    assert s.final_cap_w().tolist() == [500.0, 400.0]


def test_unknown_baseline_and_bad_parameters(rig: Topology) -> None:
    with pytest.raises(ValueError, match="unknown baseline"):
        baseline(rig, "staggered", 1.0, 1.0)
    with pytest.raises(ValueError):
        fixed_delay(rig, -1.0)
    with pytest.raises(ValueError):
        fixed_rate(rig, 0.0)
