"""The errors the drivers raise, all rooted at :class:`DriverError`.

::

    DriverError                      .device .unit_id .register .topic (None where not apt)
    ├── DriverConfigError (ValueError)   a driver config that cannot work (a bug or a bad binding)
    ├── DeviceUnreachable (ConnectionError)  no transport to the device or broker
    │     ├── NotConnected                 not connected now; nothing was sent (a supervisor is
    │     │                                 reconnecting): the caller decides what to do
    │     └── AuthenticationFailed          the broker refused the credentials, or the TLS
    │                                       handshake failed (an untrusted or wrong certificate)
    ├── NotAllowed (PermissionError)     an actuation the allowlist does not name (.target):
    │                                       refused before anything was sent
    ├── DeviceTimeout (TimeoutError)     the request went out and no answer came in time
    ├── DeviceException                  the device answered with a Modbus exception
    │                                       .exception_code (1 illegal function, 2 address,
    │                                       3 value, 4 device failure, 11 gateway: no target ...)
    ├── DecodeError (ValueError)         an answer that does not decode: wrong register count,
    │     └── DeviceMismatch                 wrong length; or a device that is not the one
    │                                       configured (map version, bank or outlet count)
    ├── WriteNotConfirmed                a write whose read-back disagrees (.expected .observed)
    ├── PayloadError (ValueError)        an MQTT payload that breaks docs/mqtt.md (.reason)
    └── GpuError                         a GPU backend call failed (.gpu index, .code of NVML)
          ├── GpuUnavailable (DeviceUnreachable)  no library or driver, GPU lost, driver
          │                                 reloaded (stale handles): reopen the backend
          ├── GpuPermissionDenied (PermissionError)  setting a limit needs privileges
          └── GpuNotSupported                the GPU or driver does not support the call

The drivers import nothing of the controller: the controller maps these errors into its own
tree at its boundary (``raise TelemetryError(...) from exc``). Foreign errors (pymodbus, paho,
aiomqtt, OSError) never leave a driver unmapped; each is chained with ``from exc``.
``asyncio.CancelledError`` is never caught and turned into one of these.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "AuthenticationFailed",
    "DecodeError",
    "DeviceException",
    "DeviceMismatch",
    "DeviceTimeout",
    "DeviceUnreachable",
    "DriverConfigError",
    "DriverError",
    "GpuError",
    "GpuNotSupported",
    "GpuPermissionDenied",
    "GpuUnavailable",
    "NotAllowed",
    "NotConnected",
    "PayloadError",
    "WriteNotConfirmed",
]

#: Modbus exception codes (Modbus Application Protocol v1.1b3, §7).
EXCEPTION_NAMES: dict[int, str] = {
    1: "illegal function",
    2: "illegal data address",
    3: "illegal data value",
    4: "server device failure",
    5: "acknowledge",
    6: "server device busy",
    8: "memory parity error",
    10: "gateway path unavailable",
    11: "gateway target device failed to respond",
}


class DriverError(Exception):
    """Root of every error a driver raises on purpose.

    ``device`` names the device or broker (``"host:port/unit"`` for Modbus, ``"host:port"`` for
    MQTT, or a node id where the config gives one); ``unit_id``, ``register`` (a protocol
    address) and ``topic`` say where, when they apply.
    """

    def __init__(
        self,
        message: str,
        *,
        device: str | None = None,
        unit_id: int | None = None,
        register: int | None = None,
        topic: str | None = None,
    ) -> None:
        self.message = message
        self.device = device
        self.unit_id = unit_id
        self.register = register
        self.topic = topic
        super().__init__(self._render())

    def _render(self) -> str:
        where = []
        if self.device is not None:
            where.append(self.device)
        if self.unit_id is not None and (self.device is None or "/" not in self.device):
            where.append(f"unit {self.unit_id}")
        if self.register is not None:
            where.append(f"register {self.register}")
        if self.topic is not None:
            where.append(f"topic {self.topic!r}")
        return f"{', '.join(where)}: {self.message}" if where else self.message


class DriverConfigError(DriverError, ValueError):
    """A driver config that cannot work: out-of-range port, unit id, timeout, profile."""


class DeviceUnreachable(DriverError, ConnectionError):  # noqa: N818 (names of the contract)
    """No transport to the device (or broker): refused, reset, closed, lost mid-request."""


class NotConnected(DeviceUnreachable):
    """Not connected at this moment, so nothing was sent; a supervisor is reconnecting."""


class AuthenticationFailed(DeviceUnreachable):
    """The broker refused the user name or password (CONNACK "bad user name or password",
    "not authorised"), or the TLS handshake failed: the broker's certificate is not signed by a
    trusted CA or does not name the host, or the broker wants a client certificate."""


class NotAllowed(DriverError, PermissionError):  # noqa: N818 (names of the contract)
    """An actuation (a coil write, a command publish) to a target the allowlist built from the
    config does not name. Raised before anything is sent. ``target`` names what was refused."""

    def __init__(self, message: str, *, target: str, **where: Any) -> None:
        self.target = target
        super().__init__(message, **where)


class DeviceTimeout(DriverError, TimeoutError):  # noqa: N818 (names of the contract)
    """A request went out and no answer came within the timeout."""


class DeviceException(DriverError):  # noqa: N818 (names of the contract)
    """The device answered with a Modbus exception response."""

    def __init__(self, message: str, *, exception_code: int, function_code: int | None = None,
                 **where: Any) -> None:
        self.exception_code = exception_code
        self.function_code = function_code
        name = EXCEPTION_NAMES.get(exception_code, "unknown exception")
        super().__init__(f"{message}: exception {exception_code:02d} ({name})", **where)


class DecodeError(DriverError, ValueError):
    """An answer that does not decode into the register map (wrong count, wrong length)."""


class DeviceMismatch(DecodeError):  # noqa: N818 (names of the contract)
    """The device at this address is not the one configured (map version, banks, outlets)."""


class WriteNotConfirmed(DriverError):  # noqa: N818 (names of the contract)
    """A write whose read-back disagrees with what was written."""

    def __init__(self, message: str, *, expected: object, observed: object,
                 **where: Any) -> None:
        self.expected = expected
        self.observed = observed
        super().__init__(f"{message} (wrote {expected!r}, read back {observed!r})", **where)


class PayloadError(DriverError, ValueError):
    """An MQTT payload that breaks the contract of docs/mqtt.md.

    ``reason`` is a short, stable key for counting (``too_large``, ``json``, ``schema``,
    ``future``, ``expired``, ``unknown_topic``); the message says what exactly was wrong.
    """

    def __init__(self, message: str, *, reason: str, **where: Any) -> None:
        self.reason = reason
        super().__init__(message, **where)


class GpuError(DriverError):
    """A GPU backend call failed. ``gpu`` is the GPU's index (None for the whole backend),
    ``code`` the backend's own error code (NVML's ``NVML_ERROR_*`` value) where it has one."""

    def __init__(self, message: str, *, gpu: int | None = None, code: int | None = None,
                 **where: Any) -> None:
        self.gpu = gpu
        self.code = code
        if gpu is not None:
            message = f"GPU {gpu}: {message}"
        super().__init__(message, **where)


class GpuUnavailable(GpuError, DeviceUnreachable):  # noqa: N818 (names of the contract)
    """No GPU library or driver, a GPU that is lost, or handles made stale by a driver reload:
    the backend must be reopened before it can be used again."""


class GpuPermissionDenied(GpuError, PermissionError):  # noqa: N818 (names of the contract)
    """The call needs privileges the agent does not have (setting a power limit needs root)."""


class GpuNotSupported(GpuError):  # noqa: N818 (names of the contract)
    """The GPU or its driver does not support the call."""
