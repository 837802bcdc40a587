"""A Mosquitto of the test's own with TLS, a password file, ``allow_anonymous false`` and the
ACL of docs/security.md, on free loopback ports, with certificates made for it by ``openssl``
in the test's tmp dir: a CA, the broker's certificate (``localhost``, ``127.0.0.1``), a client
certificate, and a second CA that signed nothing the broker uses (the untrusted one).

Two listeners: ``port`` (TLS, user name and password) and ``mtls_port`` (TLS, user name and
password, and a client certificate signed by the CA). Users (password = ``pw-`` + user):
``rampguard-controller``, ``rampguard-sim``, the rig's agents ``RIG-S01`` .. ``RIG-S04``, and
``rogue`` (a valid login with no ACL entry of its own beyond the agent pattern).
"""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SECURITY_DOC = ROOT / "docs" / "security.md"
USERS = ("rampguard-controller", "rampguard-sim", "RIG-S01", "RIG-S02", "RIG-S03", "RIG-S04",
         "rogue")


def password(user: str) -> str:
    return f"pw-{user}"


def documented_acl() -> str:
    """The Mosquitto ACL that docs/security.md gives (the block after ``<!-- acl -->``)."""
    text = SECURITY_DOC.read_text(encoding="utf-8")
    block = text.split("<!-- acl -->", 1)[1]
    match = re.search(r"```text\n(.*?)```", block, flags=re.S)
    assert match, "docs/security.md has the ACL block"
    return match.group(1)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _reachable(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def _ca(d: Path, name: str) -> None:
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
             "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.pem", "-days", "2",
             "-subj", f"/CN={name}", cwd=d)


def _signed(d: Path, name: str, ca: str, cn: str, ext: str) -> None:
    (d / f"{name}.ext").write_text(ext + "\n")
    _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={cn}", cwd=d)
    _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key",
             "-CAcreateserial", "-out", f"{name}.pem", "-days", "2", "-extfile", f"{name}.ext",
             cwd=d)


@dataclass
class TlsBroker:
    """The running broker and the files a client needs."""

    dir: Path
    port: int
    mtls_port: int
    ca: Path
    rogue_ca: Path
    client_cert: Path
    client_key: Path
    log: Path

    def url(self, user: str | None, *, port: int | None = None) -> str:
        who = f"{user}@" if user else ""
        return f"mqtts://{who}127.0.0.1:{port or self.port}"

    def password_file(self, user: str, text: str | None = None) -> Path:
        """A file holding ``user``'s password (or ``text``), mode 0600."""
        path = self.dir / f"{user}.password"
        path.write_text((password(user) if text is None else text) + "\n")
        path.chmod(0o600)
        return path


@pytest.fixture
def tls_broker(tmp_path: Path) -> Iterator[TlsBroker]:
    mosquitto = shutil.which("mosquitto") or shutil.which("mosquitto", path="/usr/sbin")
    passwd = shutil.which("mosquitto_passwd")
    if mosquitto is None or passwd is None or shutil.which("openssl") is None:
        pytest.skip("the mosquitto, mosquitto_passwd and openssl binaries are needed to start "
                    "a TLS broker (a missing tool on this machine, not a missing feature)")
    d = tmp_path / "broker"
    d.mkdir()
    _ca(d, "ca")
    _ca(d, "rogue-ca")
    _signed(d, "server", "ca", "localhost",
            "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth")
    _signed(d, "client", "ca", "rampguard-client", "extendedKeyUsage=clientAuth")
    pwfile = d / "passwd"
    for k, user in enumerate(USERS):
        flags = ["-c"] if k == 0 else []
        subprocess.run([passwd, *flags, "-b", str(pwfile), user, password(user)], check=True,
                       capture_output=True, timeout=30)
    (d / "acl").write_text(documented_acl())
    port, mtls_port = _free_port(), _free_port()
    tls = f"cafile {d / 'ca.pem'}\ncertfile {d / 'server.pem'}\nkeyfile {d / 'server.key'}\n"
    conf = d / "mosquitto.conf"
    conf.write_text(
        "user root\npersistence false\nper_listener_settings false\nallow_anonymous false\n"
        f"password_file {pwfile}\nacl_file {d / 'acl'}\nmax_queued_messages 100000\n"
        f"listener {port} 127.0.0.1\n{tls}"
        f"listener {mtls_port} 127.0.0.1\n{tls}require_certificate true\n")
    log = d / "mosquitto.log"
    with log.open("ab") as out:
        proc = subprocess.Popen([mosquitto, "-c", str(conf), "-v"], stdout=out, stderr=out,
                                stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while not (_reachable(port) and _reachable(mtls_port)):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"mosquitto did not start: {log.read_text()[-2000:]}")
            time.sleep(0.05)
        yield TlsBroker(d, port, mtls_port, d / "ca.pem", d / "rogue-ca.pem",
                        d / "client.pem", d / "client.key", log)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
