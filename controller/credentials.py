"""Secrets and TLS files for the commands (docs/security.md): read from files or the
environment, never from the command line, never logged.

* The operator API token (``rampguard run``): ``--token-file FILE``, else
  ``RAMPGUARD_API_TOKEN``, else a random one written to a file of mode 0600 beside the audit log
  (:func:`operator_token`); the ready line and the logs name the file, never the token.
* The MQTT password: ``--mqtt-password-file FILE``, else ``RAMPGUARD_MQTT_PASSWORD``; a
  password inside the ``--mqtt`` URL is refused (it would show in the process list, the ready
  line and the logs). The user name comes from the URL (``mqtts://user@host``). TLS:
  ``--mqtt-ca``, ``--mqtt-cert``, ``--mqtt-key`` with an ``mqtts://`` URL
  (:func:`add_mqtt_arguments`, :func:`mqtt_config`).
* The cap-command key shared by the controller and its agents: ``--command-key-file FILE``,
  else ``RAMPGUARD_COMMAND_KEY`` (:func:`command_key`).

Every failure is a :class:`~controller.errors.CredentialError` whose message names the option
or variable and the file, never the secret: the commands print it on one line and exit 2.
A secret file that others may read is used, with a warning that names it.
"""

from __future__ import annotations

import argparse
import logging
import os
import secrets
import ssl
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from controller.errors import CredentialError
from drivers.errors import DriverConfigError
from drivers.mqtt import MqttConfig, TlsConfig, tls_context

__all__ = [
    "API_TOKEN_ENV",
    "COMMAND_KEY_ENV",
    "MIN_COMMAND_KEY_BYTES",
    "MQTT_PASSWORD_ENV",
    "OperatorToken",
    "add_command_key_argument",
    "add_mqtt_arguments",
    "command_key",
    "mqtt_config",
    "operator_token",
    "read_secret_file",
    "write_private_file",
]

log = logging.getLogger(__name__)

API_TOKEN_ENV = "RAMPGUARD_API_TOKEN"  # noqa: S105 (a variable name)
MQTT_PASSWORD_ENV = "RAMPGUARD_MQTT_PASSWORD"  # noqa: S105 (a variable name)
COMMAND_KEY_ENV = "RAMPGUARD_COMMAND_KEY"
#: Shortest cap-command key accepted (bytes of the file or variable, stripped).
MIN_COMMAND_KEY_BYTES = 16
#: Largest secret file read.
_MAX_SECRET_BYTES = 4096


def read_secret_file(path: str | Path, option: str) -> str:
    """The stripped text of a secret file; :class:`CredentialError` when it is missing,
    unreadable, not UTF-8, empty or over 4 KiB. Warns when others may read it."""
    p = Path(path)
    try:
        with p.open("rb") as f:
            mode = os.fstat(f.fileno()).st_mode
            data = f.read(_MAX_SECRET_BYTES + 1)
    except OSError as exc:
        raise CredentialError(f"{option} {p}: {exc.strerror or exc}") from None
    if len(data) > _MAX_SECRET_BYTES:
        raise CredentialError(f"{option} {p}: larger than {_MAX_SECRET_BYTES} bytes: not a "
                              "secret file")
    try:
        text = data.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise CredentialError(f"{option} {p}: not UTF-8 text") from None
    if not text:
        raise CredentialError(f"{option} {p} is empty")
    if stat.S_ISREG(mode) and mode & 0o077:
        log.warning("%s %s can be read by other users (mode %03o): chmod 600 it", option, p,
                    stat.S_IMODE(mode))
    return text


def write_private_file(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` readable by its owner only (mode 0600), replacing it."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.fchmod(fd, 0o600)
            os.write(fd, (text + "\n").encode("utf-8"))
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise CredentialError(f"cannot write the operator token to {path}: "
                              f"{exc.strerror or exc}") from None


def _secret(file: str | None, option: str, env: str) -> tuple[str | None, str | None]:
    """(secret, where from): the file, else the environment variable, else (None, None)."""
    if file is not None:
        return read_secret_file(file, option), f"file {file}"
    value = os.environ.get(env, "").strip()
    if value:
        return value, f"environment {env}"
    return None, None


# ------------------------------------------------------------------------------ operator API
@dataclass(frozen=True, slots=True)
class OperatorToken:
    """The operator API token and where it came from: ``source`` is ``file``, ``env`` or
    ``generated``; ``path`` the file (None for ``env``). ``repr`` hides the token."""

    token: str = field(repr=False)
    source: str
    path: Path | None


def operator_token(token_file: str | None, audit_path: Path) -> OperatorToken:
    """``--token-file``, else :data:`API_TOKEN_ENV`, else a random token (256 bits, URL-safe
    base64: a token68 string) written with mode 0600 to ``AUDIT.token`` beside the audit log,
    replaced at every start."""
    if token_file is not None:
        return OperatorToken(read_secret_file(token_file, "--token-file"), "file",
                             Path(token_file))
    value = os.environ.get(API_TOKEN_ENV, "").strip()
    if value:
        return OperatorToken(value, "env", None)
    path = audit_path.with_name(audit_path.name + ".token")
    token = secrets.token_urlsafe(32)
    write_private_file(path, token)
    return OperatorToken(token, "generated", path)


# ------------------------------------------------------------------------------ MQTT
def add_mqtt_arguments(parser: argparse.ArgumentParser | Any) -> None:
    """The MQTT credential and TLS options next to a command's ``--mqtt URL``."""
    group = parser.add_argument_group(
        "MQTT authentication and TLS (docs/security.md)",
        "The user name goes in the URL (mqtts://USER@HOST:PORT); the password never does.")
    group.add_argument("--mqtt-password-file", metavar="FILE", default=None,
                       help=f"the MQTT password, read from this file (else the environment "
                            f"variable {MQTT_PASSWORD_ENV})")
    group.add_argument("--mqtt-ca", metavar="FILE", default=None,
                       help="CA bundle (PEM) that signed the broker's certificate (mqtts://; "
                            "default: the system's)")
    group.add_argument("--mqtt-cert", metavar="FILE", default=None,
                       help="client certificate (PEM) for brokers that require one (mqtts://)")
    group.add_argument("--mqtt-key", metavar="FILE", default=None,
                       help="the client certificate's private key (PEM), if not in --mqtt-cert")


def mqtt_config(url: str, args: argparse.Namespace, **overrides: Any) -> MqttConfig:
    """The broker of ``--mqtt URL`` with the password and TLS files of
    :func:`add_mqtt_arguments`; :class:`CredentialError` for anything unusable (the TLS files
    are loaded once here, so that a bad one is reported now and not at the first connect)."""
    try:
        parts = urlsplit(url)
        has_password = parts.password is not None
    except ValueError:
        has_password = False
    if has_password:
        raise CredentialError(f"--mqtt: a password in the URL is refused (it shows in the "
                              f"process list and the logs); put it in --mqtt-password-file "
                              f"or {MQTT_PASSWORD_ENV}")
    try:
        base = MqttConfig.from_url(url, **overrides)
    except (DriverConfigError, ValueError) as exc:
        raise CredentialError(f"--mqtt: {exc}") from None
    password, _ = _secret(getattr(args, "mqtt_password_file", None), "--mqtt-password-file",
                          MQTT_PASSWORD_ENV)
    if password is not None and base.username is None:
        raise CredentialError("an MQTT password needs a user name: --mqtt mqtts://USER@HOST")
    ca, cert, key = (getattr(args, name, None) for name in ("mqtt_ca", "mqtt_cert", "mqtt_key"))
    tls = base.tls
    if ca or cert or key:
        if tls is None:
            raise CredentialError("--mqtt-ca, --mqtt-cert and --mqtt-key need an mqtts:// URL")
        if key and not cert:
            raise CredentialError("--mqtt-key needs --mqtt-cert")
        _check_tls_files(ca, cert, key)
        tls = TlsConfig(ca_file=ca, cert_file=cert, key_file=key)
    try:
        return MqttConfig(**{**_fields(base), "password": password, "tls": tls})
    except DriverConfigError as exc:
        raise CredentialError(f"--mqtt: {exc}") from None


def _fields(config: MqttConfig) -> dict[str, Any]:
    return {name: getattr(config, name) for name in config.__dataclass_fields__}


def _check_tls_files(ca: str | None, cert: str | None, key: str | None) -> None:
    """Load the files as the driver will (:func:`drivers.mqtt.tls_context`), naming the bad
    one."""
    try:
        tls_context(TlsConfig(ca_file=ca))
    except (OSError, ssl.SSLError) as exc:
        raise CredentialError(f"--mqtt-ca {ca}: {_ssl_reason(exc)}") from None
    if not cert:
        return
    try:
        tls_context(TlsConfig(ca_file=ca, cert_file=cert, key_file=key))
    except (OSError, ssl.SSLError) as exc:
        files = f"{cert}" + (f" / --mqtt-key {key}" if key else "")
        raise CredentialError(f"--mqtt-cert {files}: {_ssl_reason(exc)}") from None


def _ssl_reason(exc: OSError | ssl.SSLError) -> str:
    if isinstance(exc, ssl.SSLError):
        return f"not a usable PEM file ({exc.reason or exc})"
    return str(exc.strerror or exc)


# ------------------------------------------------------------------------------ command key
def add_command_key_argument(parser: argparse.ArgumentParser | Any, *, required_for: str
                             ) -> None:
    parser.add_argument("--command-key-file", metavar="FILE", default=None,
                        help=f"the key of the cap-command signatures (HMAC-SHA256), read "
                             f"from this file (else the environment variable "
                             f"{COMMAND_KEY_ENV}): the hall's key for the controller and the "
                             f"simulator, which sign each agent's commands with a key derived "
                             f"from it; an agent's own key for an agent (rampguard agent-key "
                             f"derives it); {required_for}")


def command_key(file: str | None) -> bytes | None:
    """The cap-command key (``--command-key-file``, else :data:`COMMAND_KEY_ENV`), or None
    when neither is given; :class:`CredentialError` for one under
    :data:`MIN_COMMAND_KEY_BYTES` bytes."""
    text, where = _secret(file, "--command-key-file", COMMAND_KEY_ENV)
    if text is None:
        return None
    key = text.encode("utf-8")
    if len(key) < MIN_COMMAND_KEY_BYTES:
        raise CredentialError(f"the command key from {where} is shorter than "
                              f"{MIN_COMMAND_KEY_BYTES} bytes (make one with: "
                              "python3 -c 'import secrets; print(secrets.token_hex(32))')")
    return key
