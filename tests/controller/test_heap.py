"""controller.heap: the collector of the long-running processes."""

from __future__ import annotations

import subprocess
import sys


def test_settle_freezes_what_lives_and_raises_the_young_threshold() -> None:
    code = (
        "import gc\n"
        "from controller import heap\n"
        "keep = [[k] for k in range(10000)]\n"
        "before = heap.settle()\n"
        "assert gc.get_freeze_count() >= 10000, gc.get_freeze_count()\n"
        "assert gc.get_threshold() == (heap.YOUNG_THRESHOLD, *heap.OLDER_THRESHOLDS)\n"
        "assert before == (700, 10, 10), before\n"
        "a = []; a.append(a); del a\n"          # a cycle made after: still collected
        "assert gc.collect() >= 1\n"
        "print('ok')\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_the_service_settles_only_when_told() -> None:
    from controller.service import ServiceOptions
    assert ServiceOptions().settle_heap is False          # tests and embedders keep theirs
