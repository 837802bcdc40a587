"""Hypothesis-generated hostile HTTP against the operator API over a real loopback socket.

tests/controller/test_operator_api.py has a fixed list of hostile requests and fuzzes the pure
head parser. Here each example opens a real :class:`~controller.operator_api.OperatorApi`
(with a token and short timeouts) and throws a batch of raw requests at it, some at once:
valid requests mutated in their request line (methods, non-ASCII and odd paths, versions),
headers (huge, many, control characters, duplicate or garbage Content-Length, chunked with
garbage chunks), bodies (bad JSON, shorter or longer than announced) and their delivery
(truncated, half-closed or left open like a slowloris client). Every connection must end with a
well-formed answer of an expected status, or be closed with nothing to answer; every error
answer is counted in ``api.rejected``; and a good request still gets 200 afterwards.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from controller.operator_api import CommandRefused, OperatorApi

TOKEN = "fuzz-T0ken"
AUTH = f"Authorization: Bearer {TOKEN}\r\n".encode()
STATUSES = {200, 400, 401, 404, 405, 408, 409, 413, 431, 501, 503, 505}


class Commands:
    """The service's side: quick answers, one refusal (409)."""

    def status(self) -> dict[str, Any]:
        return {"mode": "IDLE", "headroom_a": float("nan")}

    def plan(self) -> dict[str, Any]:
        return {"plan": None}

    def start_ramp(self) -> dict[str, Any]:
        return {"accepted": "start"}

    def pause(self) -> dict[str, Any]:
        raise CommandRefused("not ramping")

    resume = start_ramp
    abort = start_ramp


# ============================================================================================
# Hostile requests
# ============================================================================================
METHODS = st.sampled_from([b"GET", b"POST", b"PUT", b"DELETE", b"HEAD", b"OPTIONS", b"get",
                           b"G\xc3\x89T", b"", b"GET GET", b"\x00", b"CONNECT", b"X" * 300])
PATHS = st.one_of(
    st.sampled_from([b"/status", b"/plan", b"/ramp/start", b"/ramp/pause", b"/healthz",
                     b"/status?x=1", b"/status/", b"//status", b"/%73tatus", b"/../status",
                     b"*", b"http://x/status", b"/st\xc3\xa4tus", b"/\xff\xfe", b"/\x00",
                     b"/" + b"a" * 9000, b"/status#frag", b""]),
    st.text(max_size=30).map(lambda t: ("/" + t).encode("utf-8", "surrogatepass")),
)
VERSIONS = st.sampled_from([b"HTTP/1.1", b"HTTP/1.0", b"HTTP/2.0", b"HTTP/1.2", b"HTTP/0.9",
                            b"http/1.1", b"HTTP/1", b"", b"HTTP/1.1 extra"])
HEADER = st.one_of(
    st.sampled_from([b"Host: x", b"Host: x", AUTH.rstrip(), b"Authorization: Bearer wrong",
                     b"Authorization: Basic Zm9vOmJhcg==", b"Authorization: Bearer",
                     b"Content-Length: 5", b"Content-Length: -1", b"Content-Length: 1e3",
                     b"Content-Length: 99999999999999999999", b"Content-Length: 2, 2",
                     b"Content-Length: 100000", b"Transfer-Encoding: chunked",
                     b"Transfer-Encoding: gzip, chunked", b"X-A: \x00", b"X-A: a\rb",
                     b" folded", b"NoColon", b": empty", b"X-\xff: v", b"X-A: \xe2\x82\xac",
                     b"Content-Type: application/json", b"Connection: keep-alive",
                     b"X-Big: " + b"b" * 9000, b"Expect: 100-continue"]),
    st.binary(max_size=40).filter(lambda b: b"\n" not in b),
)
BODIES = st.sampled_from([b"", b"{}", b'{"a": NaN}', b"[" * 3000, b"\xff\xfe\x00", b"hello",
                          b'{"x": "' + b"y" * 5000 + b'"}', b"0\r\n\r\n",
                          b"5\r\nhello\r\nzz\r\n\r\n", b"ffffffffffffffff\r\n", b"x" * 200_000])
ENDINGS = st.sampled_from(["close", "close", "close", "open", "truncate"])


def mostly(good: st.SearchStrategy[bytes], bad: st.SearchStrategy[bytes]
           ) -> st.SearchStrategy[bytes]:
    """Usually a well-formed part (so the request gets past the parser), else a hostile one."""
    return st.one_of(good, good, good, good, bad)


@st.composite
def hostile_request(draw: st.DrawFn) -> tuple[bytes, str]:
    eol = draw(st.sampled_from([b"\r\n", b"\r\n", b"\r\n", b"\n", b"\r"]))
    line = b" ".join([
        draw(mostly(st.sampled_from([b"GET", b"POST"]), METHODS)),
        draw(mostly(st.sampled_from([b"/status", b"/plan", b"/ramp/start", b"/ramp/pause",
                                     b"/healthz", b"/nope"]), PATHS)),
        draw(mostly(st.just(b"HTTP/1.1"), VERSIONS))])
    headers = draw(st.lists(mostly(st.sampled_from([b"Content-Type: application/json",
                                                    b"Accept: */*", b"User-Agent: fuzz"]),
                                   HEADER), max_size=4))
    if draw(st.integers(0, 3)):
        headers = [b"Host: x", *([AUTH.rstrip()] if draw(st.booleans()) else []), *headers]
    if draw(st.integers(0, 9)) == 0:
        headers += [b"X-%d: v" % i for i in range(draw(st.sampled_from([60, 70, 300])))]
    body = draw(BODIES)
    if draw(st.booleans()):
        headers.append(b"Content-Length: %d" % (len(body) + draw(st.integers(-3, 3))))
    raw = line + eol + b"".join(h + eol for h in headers) + eol + body
    ending = draw(ENDINGS)
    if ending == "truncate":
        raw = raw[:draw(st.integers(0, len(raw)))]
    return raw, ending


# ============================================================================================
# Talking to the server
# ============================================================================================
async def send(port: int, raw: bytes, ending: str) -> bytes:
    """Send ``raw`` and read until the server closes. ``open``: never half-close (a slow
    client: the server's deadline must end it)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        try:
            writer.write(raw)
            await writer.drain()
            if ending != "open":
                writer.write_eof()
        except ConnectionError:
            pass                        # the server answered and closed before all was sent
        async with asyncio.timeout(15):
            chunks = []
            while True:
                try:
                    chunk = await reader.read(65536)
                except ConnectionError:
                    break
                if not chunk:
                    break
                chunks.append(chunk)
            return b"".join(chunks)
    finally:
        writer.close()
        try:
            await writer.wait_closed()
        except ConnectionError:
            pass


def status_of(answer: bytes) -> int:
    head, sep, body = answer.partition(b"\r\n\r\n")
    assert sep and head.startswith(b"HTTP/1.1 "), answer[:200]
    status = int(head[9:12])
    length = next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")[1:]
                  if line.lower().startswith(b"content-length:"))
    assert len(body) == length, answer[:200]
    parsed = json.loads(body)
    assert isinstance(parsed, dict)
    if status >= 400:
        assert set(parsed) == {"error"} and parsed["error"]
    return status


GOOD = b"GET /status HTTP/1.1\r\nHost: x\r\n" + AUTH + b"\r\n"


async def exchange(requests: list[tuple[bytes, str]]) -> list[int]:
    """Send every request at once; check the answers and the counts; return the statuses."""
    async with OperatorApi(Commands(), token=TOKEN, header_timeout_s=0.5, body_timeout_s=0.5,
                           write_timeout_s=2.0) as api:
        answers = await asyncio.gather(*(send(api.port, raw, ending) for raw, ending in requests))
        errors = 0
        statuses: list[int] = []
        for (raw, _ending), answer in zip(requests, answers, strict=True):
            if not answer:     # nothing to answer: the client sent nothing or left in its body
                continue
            status = status_of(answer)
            assert status in STATUSES, (status, raw[:200])
            errors += status >= 400
            statuses.append(status)
        incomplete = api.rejected.get("incomplete", 0)
        assert sum(api.rejected.values()) - incomplete == errors, dict(api.rejected)
        assert incomplete == sum(1 for (raw, _), a in zip(requests, answers, strict=True)
                                 if raw and not a)
        # still serving, and a good request gets through
        assert status_of(await send(api.port, GOOD, "close")) == 200
    return statuses


@settings(max_examples=50, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.lists(hostile_request(), min_size=1, max_size=8))
def test_hostile_requests_over_a_real_socket(requests: list[tuple[bytes, str]]) -> None:
    for status in asyncio.run(exchange(requests)):
        event(f"status {status}")


def test_a_slowloris_client_gets_408_and_is_counted() -> None:
    """Partial headers, then silence: cut at the head deadline, answered 408, counted."""
    asyncio.run(exchange([(b"GET /status HTTP/1.1\r\nHost: x\r\nX-Slow: a", "open")] * 3
                         + [(GOOD, "close")]))

    async def once() -> None:
        async with OperatorApi(Commands(), token=TOKEN, header_timeout_s=0.3) as api:
            answer = await send(api.port, b"GET /status HTTP/1.1\r\nHo", "open")
            assert status_of(answer) == 408
            assert api.rejected == {"408": 1}

    asyncio.run(once())
