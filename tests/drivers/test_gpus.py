"""GPU backends: the fake one (power model, limits, reload, failures), the NVML error mapping
with pynvml's own exception classes, and the NVML backend itself where a GPU is present —
read-only calls only: no test here sets a limit, a clock or resets anything on a real GPU."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from drivers.errors import (
    DeviceUnreachable,
    GpuError,
    GpuNotSupported,
    GpuPermissionDenied,
    GpuUnavailable,
)
from drivers.gpus import (
    FakeGpuBackend,
    GpuBackend,
    GpuInfo,
    NvmlBackend,
    map_nvml_error,
    throttle_words,
)
from drivers.payloads import GpuTelemetry

pynvml = pytest.importorskip("pynvml", reason="nvidia-ml-py is a runtime dependency")


# --------------------------------------------------------------------------------------------
# Fake backend
# --------------------------------------------------------------------------------------------
def test_fake_backend_is_a_gpu_backend() -> None:
    assert isinstance(FakeGpuBackend(), GpuBackend)
    assert isinstance(NvmlBackend(), GpuBackend)


def test_fake_power_model_and_limits() -> None:
    gpus = FakeGpuBackend(gpus=4, min_w=150, max_w=300, idle_w=30, ambient_c=25,
                          c_per_w=0.2)
    gpus.open()
    assert gpus.count() == 4
    assert gpus.info(2) == GpuInfo(2, "Fake GPU", "GPU-fake-0002", 150.0, 300.0, 300.0)
    r = gpus.read(0)
    assert (r.power_w, r.limit_w, r.throttle) == (300.0, 300.0, ())
    assert r.temp_c == pytest.approx(25 + 0.2 * 300)
    gpus.set_power_limit_w(1, 200.0)
    r = gpus.read(1)
    assert (r.power_w, r.limit_w, r.throttle) == (200.0, 200.0, ("power_cap",))
    gpus.set_demand_w(10.0)
    assert gpus.read(1).power_w == 30.0           # never below idle
    assert gpus.read(1).throttle == ()
    gpus.set_demand_w(300.0, index=3)
    gpus.set_power_limit_w(3, 299.5)
    assert gpus.read(3).throttle == ("power_cap",)
    assert gpus.sets == [(1, 200.0), (3, 299.5)]
    assert gpus.limits_w() == (300.0, 200.0, 300.0, 299.5)


def test_fake_hot_gpu_reports_thermal_slowdown() -> None:
    gpus = FakeGpuBackend(gpus=1, min_w=100, max_w=700, ambient_c=40, c_per_w=0.1,
                          slowdown_c=85)
    gpus.open()
    assert gpus.read(0).throttle == ("thermal_slowdown",)
    r = gpus.read(0)
    GpuTelemetry(index=0, power_w=r.power_w, temp_c=r.temp_c, limit_w=r.limit_w,
                 throttle=list(r.throttle))        # fits the contract


@pytest.mark.parametrize("limit_w", [149.9, 300.1, float("nan"), float("inf"), -1.0, 0.0])
def test_fake_refuses_limits_outside_its_range(limit_w: float) -> None:
    gpus = FakeGpuBackend(gpus=2, min_w=150, max_w=300)
    gpus.open()
    with pytest.raises(GpuError) as err:
        gpus.set_power_limit_w(0, limit_w)
    assert err.value.gpu == 0 and "outside [150, 300] W" in str(err.value)
    assert gpus.limits_w() == (300.0, 300.0) and gpus.sets == []


def test_fake_reload_resets_limits_and_stales_handles() -> None:
    gpus = FakeGpuBackend(gpus=2, min_w=150, max_w=300, default_w=280)
    gpus.open()
    gpus.set_power_limit_w(0, 160)
    gpus.set_power_limit_w(1, 170)
    gpus.simulate_reload()
    assert gpus.limits_w() == (280.0, 280.0)
    for call in (gpus.count, lambda: gpus.read(0), lambda: gpus.info(1),
                 lambda: gpus.set_power_limit_w(0, 200)):
        with pytest.raises(GpuUnavailable, match="stale"):
            call()
    gpus.open()
    assert gpus.read(0).limit_w == 280.0 and gpus.reloads == 1 and gpus.opens == 2
    gpus.set_power_limit_w(0, 200)
    gpus.simulate_reload(stale_handles=False)      # a reset under a live library
    assert gpus.read(0).limit_w == 280.0


def test_fake_failures_and_closed_backend() -> None:
    gpus = FakeGpuBackend(gpus=2)
    with pytest.raises(GpuUnavailable, match="not open"):
        gpus.read(0)
    gpus.open()
    with pytest.raises(GpuError, match="no such GPU"):
        gpus.read(2)
    gpus.fail_reads = GpuError("sensor fault", gpu=0, code=999)
    with pytest.raises(GpuError, match="sensor fault"):
        gpus.read(0)
    gpus.fail_reads = None
    gpus.read_only = True
    with pytest.raises(GpuPermissionDenied) as err:
        gpus.set_power_limit_w(0, 300)
    assert isinstance(err.value, PermissionError)
    gpus.close()
    with pytest.raises(GpuUnavailable):
        gpus.count()


@pytest.mark.parametrize("kwargs", [{"gpus": 65}, {"gpus": -1}, {"min_w": 0},
                                    {"min_w": 500, "max_w": 400},
                                    {"default_w": 100.0}, {"max_w": float("inf")}])
def test_fake_rejects_impossible_configs(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        FakeGpuBackend(**kwargs)  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------
# NVML: throttle words and error mapping (pynvml's own classes, no GPU needed)
# --------------------------------------------------------------------------------------------
def test_throttle_words() -> None:
    assert throttle_words(0) == ()
    assert throttle_words(0x004 | 0x020) == ("power_cap", "thermal_slowdown")
    assert throttle_words(0x080 | 0x008 | 0x010) == ("hw_slowdown", "sync_boost",
                                                     "hw_power_brake")
    assert throttle_words(1 << 12) == ("bit_12",)
    assert len(throttle_words((1 << 40) - 1)) == 16            # the contract's limit
    for word in throttle_words((1 << 12) - 1):
        GpuTelemetry(index=0, power_w=0, temp_c=0, limit_w=0, throttle=[word])


@pytest.mark.parametrize(("code", "kind"), [
    (pynvml.NVML_ERROR_LIBRARY_NOT_FOUND, GpuUnavailable),
    (pynvml.NVML_ERROR_DRIVER_NOT_LOADED, GpuUnavailable),
    (pynvml.NVML_ERROR_UNINITIALIZED, GpuUnavailable),
    (pynvml.NVML_ERROR_GPU_IS_LOST, GpuUnavailable),
    (pynvml.NVML_ERROR_LIB_RM_VERSION_MISMATCH, GpuUnavailable),
    (pynvml.NVML_ERROR_NO_PERMISSION, GpuPermissionDenied),
    (pynvml.NVML_ERROR_NOT_SUPPORTED, GpuNotSupported),
    (pynvml.NVML_ERROR_FUNCTION_NOT_FOUND, GpuNotSupported),
    (pynvml.NVML_ERROR_INVALID_ARGUMENT, GpuError),
    (pynvml.NVML_ERROR_UNKNOWN, GpuError),
])
def test_nvml_errors_map_into_our_tree(code: int, kind: type[GpuError]) -> None:
    exc = pynvml.NVMLError(code)                  # pynvml picks its own subclass
    mapped = map_nvml_error(exc, "cannot read the power draw", gpu=3)
    assert type(mapped) is kind and mapped.code == code and mapped.gpu == 3
    assert str(mapped).startswith("nvml: GPU 3: cannot read the power draw: ")
    assert str(exc) in str(mapped)
    assert isinstance(mapped, DeviceUnreachable) == (kind is GpuUnavailable)


def test_nvml_backend_refuses_calls_before_open() -> None:
    backend = NvmlBackend()
    with pytest.raises(GpuUnavailable, match="not open"):
        backend.count()
    with pytest.raises(GpuUnavailable, match="not open"):
        backend.read(0)
    backend.close()                               # closing what never opened is harmless


# --------------------------------------------------------------------------------------------
# NVML on this machine
# --------------------------------------------------------------------------------------------
def _nvml_error() -> GpuError | None:
    backend = NvmlBackend()
    try:
        backend.open()
    except GpuError as exc:
        return exc
    backend.close()
    return None


NVML_ERROR = _nvml_error()
needs_gpu = pytest.mark.skipif(
    NVML_ERROR is not None,
    reason=f"no usable NVIDIA GPU here (NVML cannot initialise: {NVML_ERROR})")


@pytest.mark.skipif(NVML_ERROR is None, reason="NVML initialises here: a GPU is present")
def test_nvml_without_a_driver_says_so() -> None:
    assert isinstance(NVML_ERROR, GpuUnavailable)
    assert "cannot initialise NVML" in str(NVML_ERROR)
    assert isinstance(NVML_ERROR.__cause__, pynvml.NVMLError)


@pytest.fixture
def nvml() -> Iterator[NvmlBackend]:
    backend = NvmlBackend()
    backend.open()
    try:
        yield backend
    finally:
        backend.close()


@needs_gpu
def test_nvml_reads_every_gpu_without_changing_anything(nvml: NvmlBackend) -> None:
    n = nvml.count()
    assert n >= 1
    before = [nvml.read(k).limit_w for k in range(n)]
    for k in range(n):
        info = nvml.info(k)
        assert info.index == k and info.uuid.startswith(("GPU-", "MIG-")) and info.name
        assert 0 < info.min_w <= info.default_w <= info.max_w <= 1e5
        r = nvml.read(k)
        assert 0 <= r.power_w <= 1e5 and -50 <= r.temp_c <= 200
        assert info.min_w - 1 <= r.limit_w <= info.max_w + 1
        GpuTelemetry(index=k, power_w=r.power_w, temp_c=r.temp_c, limit_w=r.limit_w,
                     throttle=list(r.throttle))
    assert [nvml.read(k).limit_w for k in range(n)] == before


@needs_gpu
def test_nvml_reopen_reads_the_same_gpus(nvml: NvmlBackend) -> None:
    uuids = [nvml.info(k).uuid for k in range(nvml.count())]
    nvml.open()                                    # close + init again, as after a reload
    assert [nvml.info(k).uuid for k in range(nvml.count())] == uuids
