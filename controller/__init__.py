"""rampguard's controller package: the hall model, its loading and compilation, and the CLI.

Public API:

* :func:`load_hall_config`, :func:`loads_hall_config` — a TOML hall config → :class:`HallConfig`
* :func:`compile_hall` — a :class:`HallConfig` → :class:`Topology` (flat numpy arrays)
* :func:`summarize` — the capacity summary that ``rampguard validate`` prints
* :class:`Schedule` and the baselines in :mod:`controller.schedule`
* :class:`AuditLog`, :func:`read_audit`, :func:`pending_intents` — the audit log
  (:mod:`controller.audit`); the operator HTTP API is :mod:`controller.operator_api` and the
  service's metrics :mod:`controller.metrics` (imported on use: they pull in the HTTP stack)
* the errors: :class:`RampguardError`, :class:`ConfigError`, :class:`ConfigIssue`,
  :class:`AuditError`, :class:`AuditWriteError`, :class:`AuditReadError`
"""

from controller.audit import AuditLog, AuditRecord, pending_intents, read_audit
from controller.config import load_hall_config, loads_hall_config, validate_hall_dict
from controller.errors import (
    AuditError,
    AuditReadError,
    AuditWriteError,
    ConfigError,
    ConfigIssue,
    RampguardError,
    TopologyError,
)
from controller.model import HallConfig
from controller.schedule import Schedule
from controller.topology import Topology, compile_hall

__all__ = [
    "AuditError",
    "AuditLog",
    "AuditReadError",
    "AuditRecord",
    "AuditWriteError",
    "ConfigError",
    "ConfigIssue",
    "HallConfig",
    "RampguardError",
    "Schedule",
    "Topology",
    "TopologyError",
    "compile_hall",
    "load_hall_config",
    "loads_hall_config",
    "pending_intents",
    "read_audit",
    "validate_hall_dict",
]
