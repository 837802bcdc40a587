"""DESIGN: drivers import nothing of controller or sim."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_drivers_import_nothing_of_controller_or_sim() -> None:
    code = ("import sys, drivers, drivers.modbus, drivers.mqtt, drivers.payloads, drivers.caps, "
            "drivers.gpus; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('controller', 'sim')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=ROOT, env={"PYTHONPATH": str(ROOT)}, check=True)
    assert out.stdout.strip() == "[]"
