"""GPU backends of the node agent: one protocol (:class:`GpuBackend`), NVML over
``nvidia-ml-py`` (:class:`NvmlBackend`) and an in-memory stand-in (:class:`FakeGpuBackend`).

Everything is in our units: watts and degrees Celsius (NVML speaks milliwatts). Every failure is
a :class:`~drivers.errors.GpuError` (foreign errors chained with ``from exc``):

* :class:`~drivers.errors.GpuUnavailable`: no library, no driver, a lost GPU or handles made
  stale by a driver reload; :meth:`GpuBackend.open` again (the agent does, with backoff);
* :class:`~drivers.errors.GpuPermissionDenied`: setting a limit needs root;
* :class:`~drivers.errors.GpuNotSupported`: the GPU or driver lacks the call;
* :class:`~drivers.errors.GpuError`: anything else (NVML's code in ``.code``).

The calls are synchronous and short (NVML answers in microseconds to milliseconds; setting a
limit may take tens of ms): the agent runs them off the event loop (``asyncio.to_thread``), so a
backend must be safe to call from one worker thread at a time.

``pynvml`` is imported when :meth:`NvmlBackend.open` is called, not with this module, so a host
without it (the controller, the simulator, CI) never needs it.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, Protocol, runtime_checkable

from drivers.errors import GpuError, GpuNotSupported, GpuPermissionDenied, GpuUnavailable

__all__ = [
    "THROTTLE_WORDS",
    "FakeGpuBackend",
    "GpuBackend",
    "GpuInfo",
    "GpuReading",
    "NvmlBackend",
    "map_nvml_error",
    "throttle_words",
]


@dataclass(frozen=True, slots=True)
class GpuInfo:
    """What does not change while a GPU is up: its identity and power-limit range (W)."""

    index: int
    name: str
    uuid: str
    min_w: float          # the lowest power limit the GPU accepts
    max_w: float          # the highest
    default_w: float      # the limit it comes back at after a reboot or a driver reload


@dataclass(frozen=True, slots=True)
class GpuReading:
    """One GPU now: power draw (W), temperature (°C), the power limit it enforces (W) and the
    active throttle reasons (lower-case words, docs/mqtt.md)."""

    index: int
    power_w: float
    temp_c: float
    limit_w: float
    throttle: tuple[str, ...] = ()


@runtime_checkable
class GpuBackend(Protocol):
    """The GPUs of one server. ``open`` before use (and again after :class:`GpuUnavailable`),
    ``close`` at the end; indices run from 0 to ``count() - 1``."""

    name: str             # a lower-case word for the agent's status: "nvml", "fake"

    def open(self) -> None: ...

    def close(self) -> None: ...

    def count(self) -> int: ...

    def info(self, index: int) -> GpuInfo: ...

    def read(self, index: int) -> GpuReading: ...

    def set_power_limit_w(self, index: int, limit_w: float) -> None: ...


# --------------------------------------------------------------------------------------------
# Throttle reasons (NVML "clocks event reasons" bit mask → words)
# --------------------------------------------------------------------------------------------
#: NVML's ``nvmlClocksEventReason*`` bits and the words the agent reports for them.
THROTTLE_WORDS: tuple[tuple[int, str], ...] = (
    (0x001, "gpu_idle"),
    (0x002, "applications_clocks"),
    (0x004, "power_cap"),
    (0x008, "hw_slowdown"),
    (0x010, "sync_boost"),
    (0x020, "thermal_slowdown"),
    (0x040, "hw_thermal_slowdown"),
    (0x080, "hw_power_brake"),
    (0x100, "display_clocks"),
)


def throttle_words(mask: int) -> tuple[str, ...]:
    """The words of the bits set in ``mask``; an unknown bit is reported as ``bit_N``."""
    words = [word for bit, word in THROTTLE_WORDS if mask & bit]
    known = 0
    for bit, _ in THROTTLE_WORDS:
        known |= bit
    rest = mask & ~known
    k = 0
    while rest and len(words) < 16:
        if rest & 1:
            words.append(f"bit_{k}")
        rest >>= 1
        k += 1
    return tuple(words[:16])


# --------------------------------------------------------------------------------------------
# NVML
# --------------------------------------------------------------------------------------------
# NVML_ERROR_* codes (nvml.h) and what they mean for the agent.
_UNAVAILABLE = {
    1,    # UNINITIALIZED
    6,    # NOT_FOUND
    9,    # DRIVER_NOT_LOADED
    12,   # LIBRARY_NOT_FOUND
    15,   # GPU_IS_LOST
    16,   # RESET_REQUIRED
    18,   # LIB_RM_VERSION_MISMATCH (driver updated under a running library)
    27,   # NOT_READY
    28,   # GPU_NOT_FOUND
}
_NO_PERMISSION = {4}
_NOT_SUPPORTED = {3, 13}      # NOT_SUPPORTED, FUNCTION_NOT_FOUND
_TEMPERATURE_GPU = 0          # NVML_TEMPERATURE_GPU


def map_nvml_error(exc: Exception, what: str, gpu: int | None = None) -> GpuError:
    """Our error for a ``pynvml.NVMLError`` (its ``value`` is the NVML code)."""
    code = getattr(exc, "value", None)
    code = code if isinstance(code, int) else None
    message = f"{what}: {exc}"
    if code in _UNAVAILABLE:
        return GpuUnavailable(message, gpu=gpu, code=code, device="nvml")
    if code in _NO_PERMISSION:
        return GpuPermissionDenied(message, gpu=gpu, code=code, device="nvml")
    if code in _NOT_SUPPORTED:
        return GpuNotSupported(message, gpu=gpu, code=code, device="nvml")
    return GpuError(message, gpu=gpu, code=code, device="nvml")


class NvmlBackend:
    """The server's NVIDIA GPUs through NVML (``nvidia-ml-py``, imported as ``pynvml``).

    ``nvml`` injects the module (default: ``import pynvml`` at :meth:`open`). Reading needs no
    privileges; :meth:`set_power_limit_w` needs root and persistence mode is not required for
    it. Limits are set in whole milliwatts.
    """

    name = "nvml"

    def __init__(self, nvml: ModuleType | None = None) -> None:
        self._nvml = nvml
        self._handles: list[Any] = []
        self._initialised = False

    def _module(self) -> Any:
        if self._nvml is None:
            try:
                import pynvml
            except ImportError as exc:
                raise GpuUnavailable("nvidia-ml-py is not installed (pip install nvidia-ml-py)",
                                     device="nvml") from exc
            self._nvml = pynvml
        return self._nvml

    def _call(self, what: str, gpu: int | None, fn: Any, *args: Any) -> Any:
        nvml = self._module()
        try:
            return fn(*args)
        except nvml.NVMLError as exc:
            raise map_nvml_error(exc, what, gpu) from exc

    def open(self) -> None:
        nvml = self._module()
        if self._initialised:
            self.close()
        self._call("cannot initialise NVML", None, nvml.nvmlInit)
        self._initialised = True
        try:
            n = int(self._call("cannot count GPUs", None, nvml.nvmlDeviceGetCount))
            self._handles = [self._call("cannot open the GPU", k, nvml.nvmlDeviceGetHandleByIndex,
                                        k) for k in range(n)]
        except GpuError:
            self.close()
            raise

    def close(self) -> None:
        self._handles = []
        if self._initialised:
            self._initialised = False
            nvml = self._module()
            try:
                nvml.nvmlShutdown()
            except nvml.NVMLError:
                pass            # shutting down a library whose driver went away: nothing to do

    def _handle(self, index: int) -> Any:
        if not self._initialised:
            raise GpuUnavailable("NVML is not open", gpu=index, device="nvml")
        if not 0 <= index < len(self._handles):
            raise GpuError(f"no such GPU (this server has {len(self._handles)})", gpu=index,
                           device="nvml")
        return self._handles[index]

    def count(self) -> int:
        if not self._initialised:
            raise GpuUnavailable("NVML is not open", device="nvml")
        return len(self._handles)

    def info(self, index: int) -> GpuInfo:
        nvml, h = self._module(), self._handle(index)
        name = self._call("cannot read the name", index, nvml.nvmlDeviceGetName, h)
        uuid = self._call("cannot read the UUID", index, nvml.nvmlDeviceGetUUID, h)
        lo_mw, hi_mw = self._call("cannot read the power-limit range", index,
                                  nvml.nvmlDeviceGetPowerManagementLimitConstraints, h)
        default_mw = self._call("cannot read the default power limit", index,
                                nvml.nvmlDeviceGetPowerManagementDefaultLimit, h)
        return GpuInfo(index, _text(name), _text(uuid), lo_mw / 1e3, hi_mw / 1e3,
                       default_mw / 1e3)

    def read(self, index: int) -> GpuReading:
        nvml, h = self._module(), self._handle(index)
        power_mw = self._call("cannot read the power draw", index, nvml.nvmlDeviceGetPowerUsage,
                              h)
        temp_c = self._call("cannot read the temperature", index, nvml.nvmlDeviceGetTemperature,
                            h, _TEMPERATURE_GPU)
        limit_mw = self._call("cannot read the enforced power limit", index,
                              nvml.nvmlDeviceGetEnforcedPowerLimit, h)
        reasons = getattr(nvml, "nvmlDeviceGetCurrentClocksEventReasons", None) or \
            nvml.nvmlDeviceGetCurrentClocksThrottleReasons
        try:
            mask = int(self._call("cannot read the throttle reasons", index, reasons, h))
        except GpuNotSupported:
            mask = 0
        return GpuReading(index, power_mw / 1e3, float(temp_c), limit_mw / 1e3,
                          throttle_words(mask))

    def set_power_limit_w(self, index: int, limit_w: float) -> None:
        nvml, h = self._module(), self._handle(index)
        if not (math.isfinite(limit_w) and limit_w > 0):
            raise GpuError(f"refusing to set a power limit of {limit_w!r} W", gpu=index,
                           device="nvml")
        self._call(f"cannot set the power limit to {limit_w:g} W", index,
                   nvml.nvmlDeviceSetPowerManagementLimit, h, round(limit_w * 1e3))


def _text(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


# --------------------------------------------------------------------------------------------
# Fake
# --------------------------------------------------------------------------------------------
@dataclass
class _FakeGpu:
    limit_w: float
    demand_w: float


@dataclass
class FakeGpuBackend:
    """GPUs in memory, with the interface and the errors of a real backend.

    Power model: each GPU draws ``min(demand_w, limit_w)`` (at least ``idle_w``) and reports
    ``power_cap`` while its demand is above its limit; its temperature is
    ``ambient_c + c_per_w · power`` with ``thermal_slowdown`` from ``slowdown_c``.

    Faults: :meth:`simulate_reload` puts every limit back to its default, as a driver reload or
    a reboot does (with ``stale_handles`` every call then raises
    :class:`~drivers.errors.GpuUnavailable` until :meth:`open`); ``fail_reads`` and
    ``fail_sets``, while set, are raised by every read or set; ``read_only`` makes every set a
    :class:`~drivers.errors.GpuPermissionDenied`. ``sets`` records every limit applied.
    """

    gpus: int = 8
    min_w: float = 200.0
    max_w: float = 700.0
    default_w: float | None = None        # None: max_w
    idle_w: float = 60.0
    demand_w: float | None = None         # None: max_w (a GPU working flat out)
    ambient_c: float = 30.0
    c_per_w: float = 0.06
    slowdown_c: float = 87.0
    name: str = "fake"
    fail_reads: GpuError | None = None
    fail_sets: GpuError | None = None
    read_only: bool = False
    sets: list[tuple[int, float]] = field(default_factory=list)
    opens: int = 0
    reloads: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.gpus <= 64:
            raise ValueError(f"a fake server has 0 to 64 GPUs, got {self.gpus}")
        if not (0 < self.min_w <= self.max_w and math.isfinite(self.max_w)):
            raise ValueError(f"need 0 < min_w <= max_w, got {self.min_w}, {self.max_w}")
        default = self.max_w if self.default_w is None else self.default_w
        if not self.min_w <= default <= self.max_w:
            raise ValueError(f"default_w {default} is outside [{self.min_w}, {self.max_w}]")
        self.default_w = default
        demand = self.max_w if self.demand_w is None else self.demand_w
        self._gpus = [_FakeGpu(default, demand) for _ in range(self.gpus)]
        self._open = False
        self._stale = False
        self._lock = threading.Lock()

    # -- the protocol ---------------------------------------------------------------------
    def open(self) -> None:
        with self._lock:
            self._open, self._stale = True, False
            self.opens += 1

    def close(self) -> None:
        with self._lock:
            self._open = False

    def count(self) -> int:
        with self._lock:
            self._check(None)
            return len(self._gpus)

    def info(self, index: int) -> GpuInfo:
        with self._lock:
            self._check(index)
            assert self.default_w is not None
            return GpuInfo(index, "Fake GPU", f"GPU-fake-{index:04d}", self.min_w, self.max_w,
                           self.default_w)

    def read(self, index: int) -> GpuReading:
        with self._lock:
            gpu = self._check(index)
            if self.fail_reads is not None:
                raise self.fail_reads
            power_w = max(self.idle_w, min(gpu.demand_w, gpu.limit_w))
            temp_c = self.ambient_c + self.c_per_w * power_w
            throttle = []
            if gpu.demand_w > gpu.limit_w:
                throttle.append("power_cap")
            if temp_c >= self.slowdown_c:
                throttle.append("thermal_slowdown")
            return GpuReading(index, power_w, temp_c, gpu.limit_w, tuple(throttle))

    def set_power_limit_w(self, index: int, limit_w: float) -> None:
        with self._lock:
            gpu = self._check(index)
            if self.fail_sets is not None:
                raise self.fail_sets
            if self.read_only:
                raise GpuPermissionDenied("setting a power limit needs root", gpu=index,
                                          code=4, device=self.name)
            if not (math.isfinite(limit_w) and self.min_w <= limit_w <= self.max_w):
                raise GpuError(f"power limit {limit_w!r} W is outside [{self.min_w:g}, "
                               f"{self.max_w:g}] W", gpu=index, code=2, device=self.name)
            gpu.limit_w = float(limit_w)
            self.sets.append((index, float(limit_w)))

    # -- what tests and the simulator drive -----------------------------------------------
    def limits_w(self) -> tuple[float, ...]:
        """Every GPU's limit now, without the checks of a call (for tests)."""
        with self._lock:
            return tuple(g.limit_w for g in self._gpus)

    def set_demand_w(self, demand_w: float, index: int | None = None) -> None:
        with self._lock:
            for k, gpu in enumerate(self._gpus):
                if index is None or k == index:
                    gpu.demand_w = demand_w

    def simulate_reload(self, *, stale_handles: bool = True) -> None:
        """A driver reload (or a reboot): every limit is back at its default; with
        ``stale_handles`` the open handles are dead until :meth:`open` is called again."""
        with self._lock:
            assert self.default_w is not None
            for gpu in self._gpus:
                gpu.limit_w = self.default_w
            self._stale = self._stale or stale_handles
            self.reloads += 1

    def _check(self, index: int | None) -> _FakeGpu:
        if not self._open:
            raise GpuUnavailable("the fake backend is not open", gpu=index, device=self.name)
        if self._stale:
            raise GpuUnavailable("GPU handles are stale: the driver was reloaded", gpu=index,
                                 code=15, device=self.name)
        if index is None:
            return self._gpus[0] if self._gpus else _FakeGpu(0.0, 0.0)
        if not 0 <= index < len(self._gpus):
            raise GpuError(f"no such GPU (this server has {len(self._gpus)})", gpu=index,
                           device=self.name)
        return self._gpus[index]
