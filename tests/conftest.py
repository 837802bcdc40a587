"""Root fixtures: the MQTT broker for the tests, private brokers that a test may kill, and a
guard that fails any test leaking asyncio tasks, threads or sockets.

Broker choice (DEPENDENCIES.md), in order: ``$RAMPGUARD_TEST_MQTT_URL``; else Mosquitto on
127.0.0.1:1883 if it answers; else a ``mosquitto`` binary started on a free port; else amqtt
started in a subprocess on 127.0.0.1 (MQTT 3.1.1, with a full config: its defaults bind
0.0.0.0:1883). The session header and the terminal summary say which one was used.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import shutil
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from hypothesis import HealthCheck, settings
from pytest_asyncio import is_async_test

# Hypothesis's timing checks (slow data generation, a slow example) measure the machine, not
# the code: on a shared two-core machine they failed a correct test (test_hostile_json_objects,
# too_slow). The properties are checked all the same; only the wall-clock health check and the
# per-example deadline go.
settings.register_profile("rampguard", deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("rampguard")

pytest_plugins = ["pytester"]

BROKER_ENV = "RAMPGUARD_TEST_MQTT_URL"
_used_broker: list[str] = []


# ============================================================================================
# MQTT brokers
# ============================================================================================
@dataclass(frozen=True)
class Broker:
    host: str
    port: int
    kind: str

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"


def _reachable(host: str, port: int, timeout_s: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@cache
def broker_choice() -> tuple[str, Broker | None]:
    """Which broker the session uses: (description, a running broker or None to start one)."""
    url = os.environ.get(BROKER_ENV)
    if url:
        parts = urlsplit(url)
        return (f"{BROKER_ENV}={url}",
                Broker(parts.hostname or "127.0.0.1", parts.port or 1883, "env"))
    if _reachable("127.0.0.1", 1883):
        return ("Mosquitto (or another broker) on 127.0.0.1:1883",
                Broker("127.0.0.1", 1883, "local"))
    if shutil.which("mosquitto"):
        return "a mosquitto binary started on a free port", None
    return "amqtt started in a subprocess on a free port", None


class BrokerProcess:
    """A broker this test run starts itself (mosquitto if installed, else amqtt), on
    127.0.0.1 and a free port, which a test may stop and start again on the same port."""

    def __init__(self, workdir: Path, port: int | None = None) -> None:
        self.workdir = workdir
        self.port = port or free_port()
        self.kind = "mosquitto" if shutil.which("mosquitto") else "amqtt"
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def broker(self) -> Broker:
        return Broker("127.0.0.1", self.port, self.kind)

    def start(self, timeout_s: float = 10.0) -> None:
        log = open(self.workdir / f"{self.kind}-{self.port}.log", "ab")
        if self.kind == "mosquitto":
            conf = self.workdir / f"mosquitto-{self.port}.conf"
            conf.write_text(f"listener {self.port} 127.0.0.1\nallow_anonymous true\n"
                            "persistence false\nmax_queued_messages 100000\n")
            cmd = [shutil.which("mosquitto") or "mosquitto", "-c", str(conf)]
        else:
            cmd = [sys.executable, "-c", _AMQTT_SCRIPT, str(self.port)]
        with log:
            self._proc = subprocess.Popen(cmd, stdout=log, stderr=log,
                                          stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout_s
        while not _reachable("127.0.0.1", self.port, 0.2):
            if self._proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"{self.kind} did not start on port {self.port}; see "
                                   f"{self.workdir}")
            time.sleep(0.05)

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)

    def kill(self) -> None:
        """Stop abruptly (SIGKILL): clients see their connection die."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(timeout=5)


_AMQTT_SCRIPT = textwrap.dedent("""
    import asyncio, sys
    from amqtt.broker import Broker

    async def main(port):
        config = {
            "listeners": {"default": {"type": "tcp", "bind": f"127.0.0.1:{port}",
                                      "max_connections": 10000}},
            "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin":
                        {"allow_anonymous": True}},
        }
        broker = Broker(config)
        await broker.start()
        await asyncio.Event().wait()

    asyncio.run(main(int(sys.argv[1])))
""")


@pytest.fixture(scope="session")
def mqtt_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    """The session's broker (see the module docstring)."""
    description, running = broker_choice()
    if running is not None:
        _used_broker.append(description)
        yield running
        return
    proc = BrokerProcess(tmp_path_factory.mktemp("broker"))
    proc.start()
    _used_broker.append(f"{proc.kind} on 127.0.0.1:{proc.port}, started by the tests")
    try:
        yield proc.broker
    finally:
        proc.stop()


@pytest.fixture
def private_broker(tmp_path: Path) -> Iterator[BrokerProcess]:
    """A broker of this test's own, on a free port, which the test may kill and restart."""
    proc = BrokerProcess(tmp_path)
    proc.start()
    try:
        yield proc
    finally:
        proc.stop()


def pytest_report_header(config: pytest.Config) -> list[str]:
    return [f"mqtt broker for tests: {broker_choice()[0]}"]


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _used_broker:
        terminalreporter.write_line(f"mqtt broker used: {_used_broker[0]}")


# ============================================================================================
# Leaks
# ============================================================================================
def _socket_fds() -> set[tuple[int, str]]:
    fd_dir = "/proc/self/fd"
    if not os.path.isdir(fd_dir):       # not Linux: sockets are not checked
        return set()
    out = set()
    for name in os.listdir(fd_dir):
        with contextlib.suppress(OSError):
            target = os.readlink(f"{fd_dir}/{name}")
            if target.startswith("socket:"):
                out.add((int(name), target))
    return out


@pytest.fixture
async def _no_leaked_tasks() -> AsyncIterator[None]:
    """Inside the test's event loop: after the test and its fixtures, no task may be left."""
    yield
    current = asyncio.current_task()
    for _ in range(3):
        await asyncio.sleep(0)
    leaked = [t for t in asyncio.all_tasks() if t is not current and not t.done()]
    if leaked:
        names = ", ".join(sorted(t.get_name() for t in leaked))
        for task in leaked:
            task.cancel()
        # bounded: a task that swallows its cancellation (aiomqtt's and pymodbus's wait_for on
        # Python 3.11 can) must fail the test, not hang the run
        _done, stuck = await asyncio.wait(leaked, timeout=5.0)
        if stuck:
            names += f" ({len(stuck)} ignored cancellation)"
        pytest.fail(f"the test leaked {len(leaked)} asyncio task(s): {names}", pytrace=False)


_BASELINE = pytest.StashKey[tuple[set[threading.Thread], set[tuple[int, str]]]]()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Iterator[None]:
    item.stash[_BASELINE] = (set(threading.enumerate()), _socket_fds())
    return (yield)


@pytest.fixture(autouse=True)
def _no_leaks(request: pytest.FixtureRequest) -> None:
    """Async tests also get the task check, inside their event loop."""
    if is_async_test(request.node):
        request.getfixturevalue("_no_leaked_tasks")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    """After every fixture of the test is torn down (its event loop closed): no thread and no
    socket may be left that was not there before the test's setup (STYLE.md). Fixtures wider
    than a function must therefore hold no sockets or threads in this process: run such
    servers in a subprocess, as DEPENDENCIES.md advises."""
    result = yield
    baseline = item.stash.get(_BASELINE, None)
    if baseline is None or nextitem is None:    # the last test also tears the session down
        return result
    threads_before, sockets_before = baseline
    deadline = time.monotonic() + 2.0
    while True:
        threads = [t for t in threading.enumerate() if t not in threads_before and t.is_alive()]
        gc.collect()
        sockets = _socket_fds() - sockets_before
        if (not threads and not sockets) or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    problems = []
    if threads:
        problems.append(f"{len(threads)} thread(s): {', '.join(t.name for t in threads)}")
    if sockets:
        problems.append(f"{len(sockets)} socket(s): fds {sorted(fd for fd, _ in sockets)}")
    if problems:
        pytest.fail(f"{item.nodeid} leaked " + "; ".join(problems), pytrace=False)
    return result
