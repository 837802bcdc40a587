"""The errors rampguard raises, all rooted at :class:`RampguardError`.

::

    RampguardError
    ├── ConfigError             a hall config that cannot be used (exit code 2)
    │     .issues: tuple[ConfigIssue, ...]   each with a field path and what was expected
    ├── TopologyError           a compiled hall whose arrays break an invariant (our bug: exit 1)
    ├── AuditError              the audit log (controller/audit.py)
    │     ├── AuditWriteError   a record could not be made durable: the action must not be sent
    │     │     .path, .os_error
    │     └── AuditReadError    an audit log that is missing, unreadable or not an audit log
    │           .path, .os_error (None when the file was read but is not an audit log)
    ├── StateFileError          the node agent's state file cannot be read or is another
    │     │                     server's (exit code 2)
    │     └── StateFileCorrupt  it reads but is not a state file: the agent reports it, moves
    │                           it aside and starts without re-applying caps
    └── CredentialError         a secret (password, token, key) or TLS file that cannot be
                                used: missing, empty, unreadable, too short (exit 2)

Later layers (drivers, telemetry, service) add their own branches under the same root. A user's
mistake is a :class:`ConfigError` and is reported without a traceback; anything else escaping the
CLI is an internal error.
"""

from __future__ import annotations

from dataclasses import dataclass


class RampguardError(Exception):
    """Root of every error rampguard raises on purpose."""


@dataclass(frozen=True, slots=True)
class ConfigIssue:
    """One thing wrong with a config: where (a dotted field path) and what was expected."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class ConfigError(RampguardError):
    """A config file that is missing, unreadable, not TOML, or not a valid hall description."""

    def __init__(self, source: str, issues: list[ConfigIssue] | tuple[ConfigIssue, ...]) -> None:
        self.source = source
        self.issues = tuple(issues)
        lines = "\n".join(f"  - {issue}" for issue in self.issues)
        super().__init__(f"{source}: invalid hall config ({len(self.issues)} problem(s)):\n{lines}")


class TopologyError(RampguardError):
    """The compiled arrays break an invariant that the compiler promised (a bug, not bad input)."""


class AuditError(RampguardError):
    """Something went wrong with the audit log at :attr:`path`."""

    def __init__(self, path: str, message: str, os_error: OSError | None = None) -> None:
        self.path = path
        self.os_error = os_error
        detail = f": {os_error.strerror or os_error}" if os_error is not None else ""
        super().__init__(f"{path}: {message}{detail}")


class AuditWriteError(AuditError):
    """A record could not be written and made durable (disk full, EIO, read-only, locked).

    Raised by :meth:`AuditLog.intent` before the action is sent: the caller must not send it
    (DESIGN.md safety rule 7) and the service goes to SAFE.
    """


class AuditReadError(AuditError):
    """An audit log that cannot be read: missing, a directory, unreadable, or not a log."""


class StateFileError(RampguardError):
    """The node agent's state file cannot be used: unreadable, or written for another server."""

    def __init__(self, path: str, message: str) -> None:
        self.path = path
        self.message = message
        super().__init__(f"{path}: {message}")


class StateFileCorrupt(StateFileError):  # noqa: N818 (reads as what it is)
    """The state file reads but is not one: truncated, not JSON, wrong fields."""


class CredentialError(RampguardError):
    """A secret or TLS file that cannot be used (a user's mistake: exit code 2). The message
    names the option or variable and the file, never the secret."""
