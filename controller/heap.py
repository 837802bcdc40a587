"""The garbage collector of the long-running processes (``rampguard run``, ``rampguard sim
serve``).

CPython frees almost everything by reference counting; its cyclic collector is for cycles
only, yet it runs by allocation counts and its full collections walk every tracked object.
The service holds hundreds of thousands of long-lived objects (topology, bindings, one device
and link per Modbus unit and agent, numba dispatchers) and makes tens of thousands of
short-lived ones a second (replies, snapshots, log records), many of which live about a
poll period, long enough to be promoted. Measured on the 32k hall under load
(benchmarks/bench_load.py, gc callbacks timing each collection): with the defaults the
collector took 28 % of the service's core (12.8 s of 100 s in full collections of up to
0.39 s each, 8.6 s in generation 1, 7.1 s in generation 0).

:func:`settle` is called once, when a process has built what it keeps for its lifetime: it
collects, then freezes what survives (:func:`gc.freeze`: the permanent generation, which no
collection walks again) and raises the young generation's threshold tenfold (fewer young
collections, so fewer short-lived objects live long enough to be promoted). Cycles are still
collected. The same load afterwards: 11.9 s of 100 s (gen 0 7.5 s, gen 1 2.5 s, full 1.3 s);
what remains is mostly young collections walking the objects that live about one poll period.
"""

from __future__ import annotations

import gc

#: Allocations (net) between young collections; CPython's default is 700.
YOUNG_THRESHOLD = 7000
#: Young collections per generation-1 collection, and generation-1 collections per full one
#: (CPython's defaults; a full collection also waits until a quarter of the objects are new).
OLDER_THRESHOLDS = (10, 10)


def settle() -> tuple[int, int, int]:
    """Collect, freeze the survivors, set the thresholds; returns the previous thresholds."""
    before = gc.get_threshold()
    gc.collect()
    gc.freeze()
    gc.set_threshold(YOUNG_THRESHOLD, *OLDER_THRESHOLDS)
    return before
