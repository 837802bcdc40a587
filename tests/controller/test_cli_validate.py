"""`rampguard validate` on the reference configs: summary contents, JSON keys, exit codes."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from controller.cli import EXIT_OK, main
from controller.summary import summarize
from controller.topology import Topology

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "configs"


@pytest.mark.parametrize("name", ["rig", "demo-hall", "hall-32k"])
def test_validate_accepts_reference_configs(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", str(CONFIGS / f"{name}.toml")]) == EXIT_OK
    out = capsys.readouterr().out
    assert "valid" in out and "verdict:" in out
    for level in ("source", "ups" if name != "rig" else "panel", "bank", "outlet"):
        assert re.search(rf"^\s+{level}\s+\d", out, re.M), level


def test_validate_json_keys(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", str(CONFIGS / "hall-32k.toml"), "--json"]) == EXIT_OK
    data = json.loads(capsys.readouterr().out)
    assert data["valid"] is True
    assert data["counts"]["gpus"] == 32_768 and data["counts"]["servers"] == 4096
    kinds = {level["kind"] for level in data["levels"]}
    assert kinds == {"source", "ups", "switchboard", "branch", "rack_pdu", "bank", "outlet"}
    assert data["fits"] is False
    ups = next(level for level in data["levels"] if level["kind"] == "ups")
    assert ups["over_limit"] == 32
    assert 1.08 < ups["worst_utilization"] < 1.12
    assert ups["worst"][0]["scenario"] in ("feed A lost", "feed B lost")


def test_demo_hall_fits_at_full_power_even_after_feed_loss(demo: Topology) -> None:
    summary = summarize(demo)
    assert summary.fits, summary.verdict
    by_kind = {lv.kind: lv for lv in summary.levels}
    # a bank carries one PSU: after feed loss 10.2 kW / 3 / 0.95 / 239.6 V ≈ 14.9 A of 16 A
    assert by_kind["bank"].worst_utilization == pytest.approx(10_200 / 3 / 0.95
                                                              / (415 / 3**0.5) / 16, rel=1e-6)
    assert by_kind["bank"].worst[0].scenario != "normal"
    assert all(z.utilization_n_minus_1 <= 1.0 for z in summary.zones)
    # ... but the sources' ramp limit makes an instant start impossible
    assert all(s.min_ramp_time_s and s.min_ramp_time_s > 30 for s in summary.sources)


def test_rig_banks_at_96_percent(rig: Topology) -> None:
    summary = summarize(rig)
    bank = next(lv for lv in summary.levels if lv.kind == "bank")
    # 4 servers × 2.8 kW / 0.95 / 2 banks / 239.6 V / 25.6 A
    assert bank.worst_utilization == pytest.approx(4 * 2800 / 0.95 / 2 / (415 / 3**0.5) / 25.6)
    assert 0.95 < bank.worst_utilization < 0.98
    assert summary.fits


def test_console_script_runs_as_a_user_would() -> None:
    """The README's main job through a real subprocess, exit code included."""
    proc = subprocess.run(
        [sys.executable, "-m", "controller.cli", "validate", str(CONFIGS / "demo-hall.toml")],
        capture_output=True, text=True, timeout=120, cwd=ROOT, check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "demo-hall" in proc.stdout and "Traceback" not in proc.stderr
