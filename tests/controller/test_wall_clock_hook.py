"""The test-only wall-clock hook of `rampguard run` (RAMPGUARD_TEST_WALL_OFFSET_FILE,
docs/campaign-hil.md): the offset in the file is added to the wall clock and re-read when the
file changes; a missing or unreadable file leaves the clock as it is."""

from __future__ import annotations

import time
from pathlib import Path

from controller.run_command import _wall_clock


def test_the_offset_file_steps_the_wall_clock_both_ways(tmp_path: Path) -> None:
    path = tmp_path / "offset"
    wall = _wall_clock(str(path))
    assert abs(wall() - time.time()) < 1.0              # no file: no offset
    path.write_text("600\n")
    assert abs(wall() - time.time() - 600) < 1.0
    path.write_text("-1200.5")                           # another size: re-read
    assert abs(wall() - time.time() + 1200.5) < 1.0
    path.write_text("not a number")                      # unreadable: the last good offset
    assert abs(wall() - time.time() + 1200.5) < 1.0
