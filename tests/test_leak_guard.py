"""The root conftest's guard fails tests that leak asyncio tasks, threads or sockets, and lets
clean ones pass (an executor thread that the event loop joins is not a leak)."""

from __future__ import annotations

from pathlib import Path

import pytest

CONFTEST = (Path(__file__).resolve().parent / "conftest.py").read_text()

LEAKY = '''
import asyncio, socket, threading, time

async def test_clean_async():
    await asyncio.get_running_loop().run_in_executor(None, time.sleep, 0.01)

def test_clean_sync():
    with socket.socket():
        pass

async def test_leaks_a_task():
    asyncio.create_task(asyncio.sleep(30), name="forgotten")

def test_leaks_a_socket():
    test_leaks_a_socket.s = socket.socket()

def test_leaks_a_thread():
    threading.Thread(target=time.sleep, args=(4,), name="stray", daemon=True).start()

def test_last():
    pass
'''


def test_the_guard(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_leaks=LEAKY)
    pytester.makeini("[pytest]\nasyncio_mode = auto\nasyncio_default_fixture_loop_scope = "
                     "function\nasyncio_default_test_loop_scope = function\n")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=6, errors=3)
    result.stdout.fnmatch_lines([
        "*ERROR at teardown of test_leaks_a_task*", "*leaked 1 asyncio task(s): forgotten*",
        "*ERROR at teardown of test_leaks_a_socket*", "*leaked 1 socket(s)*",
        "*ERROR at teardown of test_leaks_a_thread*", "*leaked 1 thread(s): stray*",
    ])
