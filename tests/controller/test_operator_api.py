"""The operator HTTP API over real loopback TCP: a stdlib client for the routes, codes and
token, raw streams for hostile requests, and hypothesis on the pure request parser."""

from __future__ import annotations

import asyncio
import http.client
import json
import logging
import time
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from controller.errors import RampguardError
from controller.operator_api import (
    MAX_BODY_BYTES,
    MAX_HEAD_BYTES,
    MAX_HEADERS,
    ROUTES,
    CommandRefused,
    HttpError,
    OperatorApi,
    OperatorCommands,
    parse_request_head,
)

TOKEN = "s3cr3t-T0ken_with.chars~+/=="
AUTH = {"Authorization": f"Bearer {TOKEN}"}


class FakeService:
    """A tiny state machine standing in for the service's side of the protocol."""

    def __init__(self) -> None:
        self.state = "IDLE"
        self.calls: list[str] = []
        self.fail_next = False

    def _check(self, name: str) -> None:
        self.calls.append(name)
        if self.fail_next:
            self.fail_next = False
            raise RuntimeError("a bug in the service")

    def status(self) -> dict[str, Any]:
        self._check("status")
        return {"state": self.state, "headroom_a": float("nan"), "energized": 3}

    def plan(self) -> dict[str, Any]:
        self._check("plan")
        return {"stages": [{"t_s": 0.0, "outlets": ["R1-PDU-o1"]}], "makespan_s": 120.0}

    def _move(self, name: str, allowed: tuple[str, ...], to: str) -> dict[str, Any]:
        self._check(name)
        if self.state not in allowed:
            raise CommandRefused(f"cannot {name} while {self.state}")
        self.state = to
        return {"state": self.state}

    def start_ramp(self) -> dict[str, Any]:
        return self._move("start_ramp", ("IDLE",), "RAMPING")

    def pause(self) -> dict[str, Any]:
        return self._move("pause", ("RAMPING",), "HOLDING")

    def resume(self) -> dict[str, Any]:
        return self._move("resume", ("HOLDING",), "RAMPING")

    def abort(self) -> dict[str, Any]:
        return self._move("abort", ("RAMPING", "HOLDING"), "IDLE")


def _protocol_check(service: OperatorCommands) -> OperatorCommands:
    return service          # mypy checks that FakeService satisfies the protocol


def _request(port: int, method: str, path: str, headers: dict[str, str] | None = None,
             body: bytes | None = None) -> tuple[int, dict[str, str], Any]:
    """One request; with the right token unless ``headers`` are given."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, path, body=body, headers=AUTH if headers is None else headers)
        response = conn.getresponse()
        data = response.read()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, \
            json.loads(data)
    finally:
        conn.close()


async def _http(port: int, method: str, path: str, headers: dict[str, str] | None = None,
                body: bytes | None = None) -> tuple[int, dict[str, str], Any]:
    return await asyncio.to_thread(_request, port, method, path, headers, body)


async def _raw(port: int, data: bytes, *, close_write: bool = True,
               read_timeout_s: float = 10.0) -> bytes:
    """Send raw bytes and read the answer until the server closes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        if close_write:
            writer.write_eof()
        async with asyncio.timeout(read_timeout_s):
            return await reader.read()
    finally:
        writer.close()
        await writer.wait_closed()


def _status_of(answer: bytes) -> int:
    assert answer.startswith(b"HTTP/1.1 "), answer[:100]
    return int(answer[9:12])


def _body_of(answer: bytes) -> Any:
    head, _, body = answer.partition(b"\r\n\r\n")
    length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length:")))
    assert len(body) == length
    return json.loads(body)


# ============================================================================================
# routes over a real stdlib client
# ============================================================================================
async def test_routes_commands_and_codes() -> None:
    service = FakeService()
    async with OperatorApi(_protocol_check(service), token=TOKEN) as api:
        assert api.host == "127.0.0.1" and api.port > 0
        assert api.url == f"http://127.0.0.1:{api.port}"
        status, headers, body = await _http(api.port, "GET", "/status")
        assert status == 200 and headers["content-type"] == "application/json"
        assert headers["connection"] == "close"
        assert body == {"state": "IDLE", "headroom_a": None, "energized": 3}   # NaN -> null
        status, _, body = await _http(api.port, "GET", "/plan")
        assert status == 200 and body["makespan_s"] == 120.0
        assert (await _http(api.port, "POST", "/ramp/start"))[::2] == (200, {"state": "RAMPING"})
        assert (await _http(api.port, "POST", "/ramp/pause"))[::2] == (200, {"state": "HOLDING"})
        assert (await _http(api.port, "POST", "/ramp/resume"))[::2] == (200,
                                                                        {"state": "RAMPING"})
        status, _, body = await _http(api.port, "POST", "/ramp/start")
        assert (status, body) == (409, {"error": "cannot start_ramp while RAMPING"})
        assert (await _http(api.port, "POST", "/ramp/abort"))[::2] == (200, {"state": "IDLE"})
        assert (await _http(api.port, "GET", "/healthz"))[::2] == (200, {"ok": True})
        # a query string is ignored; a body on a POST is tolerated
        assert (await _http(api.port, "GET", "/status?verbose=1&x=%20"))[0] == 200
        assert (await _http(api.port, "POST", "/ramp/start", body=b'{"why": "test"}'))[0] == 200
        status, headers, body = await _http(api.port, "GET", "/ramp/start")
        assert (status, headers["allow"], body) == (405, "POST", {"error": "method not allowed"})
        status, headers, _ = await _http(api.port, "POST", "/status")
        assert (status, headers["allow"]) == (405, "GET")
        head = await _raw(api.port, b"HEAD /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert _status_of(head) == 405 and b"Allow: GET" in head
        assert (await _http(api.port, "DELETE", "/plan"))[0] == 405
        assert (await _http(api.port, "GET", "/nope"))[::2] == (404, {"error": "not found"})
    assert service.calls == ["status", "plan", "start_ramp", "pause", "resume", "start_ramp",
                             "abort", "status", "start_ramp"]


@pytest.mark.parametrize("path", [
    "/../status", "/status/../status", "//status", "/%2e%2e/status", "/%73tatus", "/status/",
    "/STATUS", "/ramp", "/ramp/", "/ramp/start/../../status", "/./status", "/status%00",
    "/" + "a" * 4000,
])
async def test_paths_are_matched_exactly(path: str) -> None:
    service = FakeService()
    async with OperatorApi(service, token=TOKEN) as api:
        status, _, body = await _http(api.port, "GET", path)
    assert (status, body) == (404, {"error": "not found"})
    assert service.calls == []


async def test_a_failing_command_is_500_logged_and_the_server_goes_on(
    caplog: pytest.LogCaptureFixture
) -> None:
    service = FakeService()
    async with OperatorApi(service, token=TOKEN) as api:
        service.fail_next = True
        with caplog.at_level(logging.ERROR, logger="controller.operator_api"):
            status, _, body = await _http(api.port, "POST", "/ramp/start")
        assert (status, body) == (500, {"error": "internal error"})
        assert "the start_ramp command raised" in caplog.text
        assert "a bug in the service" in caplog.text          # the traceback is logged
        assert (await _http(api.port, "POST", "/ramp/start"))[0] == 200


def test_command_refused_is_a_rampguard_error() -> None:
    exc = CommandRefused("telemetry unknown")
    assert isinstance(exc, RampguardError) and exc.reason == "telemetry unknown"


# ============================================================================================
# token
# ============================================================================================
@pytest.mark.parametrize(("authorization", "expected"), [
    (None, 401), ("", 401), ("Bearer", 401), ("Bearer ", 401), (f"Bearer {TOKEN}x", 401),
    (f"Bearer {TOKEN[:-1]}", 401), (f"Basic {TOKEN}", 401), (TOKEN, 401),
    ("Bearer " + "\u00e9" * 10, 401), (f"Bearer {TOKEN}", 200), (f"bearer {TOKEN}", 200),
    (f"BEARER  {TOKEN}", 200),
])
async def test_token(authorization: str | None, expected: int,
                     caplog: pytest.LogCaptureFixture) -> None:
    service = FakeService()
    headers = {} if authorization is None else {"Authorization": authorization}
    with caplog.at_level(logging.DEBUG, logger="controller.operator_api"):
        async with OperatorApi(service, token=TOKEN) as api:
            status, response_headers, body = await _http(api.port, "GET", "/status", headers)
            assert status == expected
            if expected == 401:
                assert body == {"error": "unauthorized"}
                assert response_headers["www-authenticate"] == "Bearer"
                assert service.calls == []
                # unknown paths and wrong methods do not tell an unauthenticated client more
                assert (await _http(api.port, "GET", "/nope", headers))[0] == 401
                assert (await _http(api.port, "POST", "/status", headers))[0] == 401
            # /healthz is open
            assert (await _http(api.port, "GET", "/healthz"))[0] == 200
            # POST commands need it too
            assert (await _http(api.port, "POST", "/ramp/abort", headers))[0] == (
                401 if expected == 401 else 409)
    assert TOKEN not in caplog.text and TOKEN[:-1] not in caplog.text


@pytest.mark.parametrize("token", ["", "with space", "new\nline", "é", None])
def test_a_bad_or_missing_token_is_refused_at_construction(token: str) -> None:
    with pytest.raises(ValueError, match="token"):
        OperatorApi(FakeService(), token=token)
    with pytest.raises(TypeError):
        OperatorApi(FakeService())  # type: ignore[call-arg]  # the token is mandatory


# ============================================================================================
# hostile raw requests
# ============================================================================================
HOST = b"Host: x\r\nAuthorization: Bearer " + TOKEN.encode() + b"\r\n"
BEARER = b"Authorization: Bearer " + TOKEN.encode()

#: name -> (raw bytes, expected status)
HOSTILE: dict[str, tuple[bytes, int]] = {
    "garbage": (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(range(256)) + b"\n\n",
                400),
    "tls-hello": (b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03\r\n\r\n", 400),
    "bare-lf": (b"GET /status HTTP/1.1\nHost: x\n" + BEARER + b"\n\n", 200),
    "http10-no-host": (b"GET /status HTTP/1.0\r\n" + BEARER + b"\r\n\r\n", 200),
    "no-token": (b"GET /status HTTP/1.1\r\nHost: x\r\n\r\n", 401),
    "leading-empty-lines": (b"\r\n\r\nGET /status HTTP/1.1\r\n" + HOST + b"\r\n", 200),
    "no-host": (b"GET /status HTTP/1.1\r\n\r\n", 400),
    "two-hosts": (b"GET /status HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
    "http2": (b"GET /status HTTP/2.0\r\n" + HOST + b"\r\n", 505),
    "http09": (b"GET /status\r\n\r\n", 400),
    "bad-version": (b"GET /status HTTPS/1.1\r\n" + HOST + b"\r\n", 400),
    "lowercase-version": (b"GET /status http/1.1\r\n" + HOST + b"\r\n", 400),
    "extra-spaces": (b"GET  /status HTTP/1.1\r\n" + HOST + b"\r\n", 400),
    "tab-separated": (b"GET\t/status\tHTTP/1.1\r\n" + HOST + b"\r\n", 400),
    "bad-method": (b"G(T /status HTTP/1.1\r\n" + HOST + b"\r\n", 400),
    "absolute-form": (b"GET http://x/status HTTP/1.1\r\n" + HOST + b"\r\n", 400),
    "asterisk": (b"OPTIONS * HTTP/1.1\r\n" + HOST + b"\r\n", 400),
    "non-utf8-path": (b"GET /st\xffatus HTTP/1.1\r\n" + HOST + b"\r\n", 400),
    "utf8-path": ("GET /stätus HTTP/1.1\r\n".encode() + HOST + b"\r\n", 400),
    "nul-in-path": (b"GET /status\x00 HTTP/1.1\r\n" + HOST + b"\r\n", 400),
    "nul-in-header": (b"GET /status HTTP/1.1\r\n" + HOST + b"X-A: a\x00b\r\n\r\n", 400),
    "cr-in-header": (b"GET /status HTTP/1.1\r\n" + HOST + b"X-A: a\rb\r\n\r\n", 400),
    "obs-fold": (b"GET /status HTTP/1.1\r\n" + HOST + b"X-A: a\r\n  b\r\n\r\n", 400),
    "space-before-colon": (b"GET /status HTTP/1.1\r\n" + HOST + b"X-A : a\r\n\r\n", 400),
    "no-colon": (b"GET /status HTTP/1.1\r\n" + HOST + b"X-A a\r\n\r\n", 400),
    "empty-name": (b"GET /status HTTP/1.1\r\n" + HOST + b": a\r\n\r\n", 400),
    "cl-not-a-number": (b"POST /ramp/abort HTTP/1.1\r\n" + HOST + b"Content-Length: ab\r\n\r\n",
                        400),
    "cl-negative": (b"POST /ramp/abort HTTP/1.1\r\n" + HOST + b"Content-Length: -1\r\n\r\n", 400),
    "cl-plus": (b"POST /ramp/abort HTTP/1.1\r\n" + HOST + b"Content-Length: +1\r\n\r\n", 400),
    "cl-huge-digits": (b"POST /ramp/abort HTTP/1.1\r\n" + HOST + b"Content-Length: "
                       + b"9" * 40 + b"\r\n\r\n", 400),
    "cl-unicode-digits": ("POST /ramp/abort HTTP/1.1\r\nHost: x\r\nContent-Length: \u0663\r\n"
                          "\r\n".encode("utf-8"), 400),
    "cl-conflict": (b"POST /ramp/abort HTTP/1.1\r\n" + HOST
                    + b"Content-Length: 1\r\nContent-Length: 2\r\n\r\nab", 400),
    "cl-same-twice": (b"POST /ramp/abort HTTP/1.1\r\n" + HOST
                      + b"Content-Length: 2\r\nContent-Length: 2\r\n\r\n{}", 409),
    "cl-too-big": (b"POST /ramp/abort HTTP/1.1\r\n" + HOST
                   + b"Content-Length: %d\r\n\r\n" % (MAX_BODY_BYTES + 1), 413),
    "cl-too-big-with-body": (b"POST /ramp/abort HTTP/1.1\r\n" + HOST + b"Content-Length: 200000"
                             b"\r\n\r\n" + b"x" * 200000, 413),
    "cl-short-then-eof": (b"POST /ramp/abort HTTP/1.1\r\n" + HOST
                          + b"Content-Length: 100\r\n\r\nabc", -1),
    "chunked": (b"POST /ramp/abort HTTP/1.1\r\n" + HOST + b"Transfer-Encoding: chunked\r\n\r\n"
                b"0\r\n\r\n", 501),
    "eof-mid-head": (b"GET /status HTTP/1.1\r\nHost", 400),
    "eof-before-anything": (b"", -1),
    "huge-line": (b"GET /" + b"a" * 70000 + b" HTTP/1.1\r\n\r\n", 431),
    "huge-header": (b"GET /status HTTP/1.1\r\n" + HOST + b"X-A: " + b"a" * 9000 + b"\r\n\r\n",
                    431),
    "huge-head": (b"GET /status HTTP/1.1\r\n" + HOST
                  + b"".join(b"X-%d: %s\r\n" % (i, b"a" * 4000) for i in range(6)) + b"\r\n",
                  431),
    "too-many-headers": (b"GET /status HTTP/1.1\r\n" + HOST
                         + b"".join(b"X-%d: a\r\n" % i for i in range(MAX_HEADERS + 1))
                         + b"\r\n", 431),
    "many-empty-lines": (b"\r\n" * 200 + b"GET /status HTTP/1.1\r\n" + HOST + b"\r\n", 431),
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
async def test_hostile_requests(name: str) -> None:
    data, expected = HOSTILE[name]
    service = FakeService()
    async with OperatorApi(service, token=TOKEN) as api:
        answer = await _raw(api.port, data)
        if expected == -1:
            assert answer == b""                 # the client left: nothing to answer
        else:
            assert _status_of(answer) == expected
            body = _body_of(answer)
            assert isinstance(body, dict)
            if expected != 200:
                assert set(body) == {"error"}
        # the server is still fine
        assert (await _http(api.port, "GET", "/healthz"))[0] == 200


async def test_a_stalled_client_gets_408_and_others_are_served_meanwhile() -> None:
    service = FakeService()
    async with OperatorApi(service, token=TOKEN, header_timeout_s=0.5,
                           body_timeout_s=0.5) as api:
        t0 = time.monotonic()
        slow_head = asyncio.create_task(_raw(api.port, b"GET /status HTTP/1.1\r\nHost: x\r\n",
                                             close_write=False))
        slow_body = asyncio.create_task(_raw(api.port, b"POST /ramp/abort HTTP/1.1\r\nHost: x"
                                             b"\r\nContent-Length: 10\r\n\r\nabc",
                                             close_write=False))
        assert (await _http(api.port, "GET", "/status"))[0] == 200
        assert _status_of(await slow_head) == 408
        assert _status_of(await slow_body) == 408
        assert 0.4 < time.monotonic() - t0 < 5.0
    assert service.calls == ["status"]


async def test_slowloris_dripping_bytes_is_cut_by_the_head_deadline() -> None:
    async with OperatorApi(FakeService(), token=TOKEN, header_timeout_s=0.6) as api:
        reader, writer = await asyncio.open_connection("127.0.0.1", api.port)
        t0 = time.monotonic()
        answer = b""
        try:
            writer.write(b"GET /status HTTP/1.1\r\nHost: x\r\n")
            for i in range(100):                  # a header line every 50 ms, never ending
                writer.write(b"X-%d: y\r\n" % i)
                await writer.drain()
                try:
                    async with asyncio.timeout(0.05):
                        answer = await reader.read(4096)
                except TimeoutError:
                    continue
                break
        finally:
            writer.close()
            await writer.wait_closed()
        assert _status_of(answer) == 408
        assert time.monotonic() - t0 < 3.0


async def test_too_many_connections_get_503() -> None:
    async with OperatorApi(FakeService(), token=TOKEN, max_connections=2,
                           header_timeout_s=2.0) as api:
        idle = [await asyncio.open_connection("127.0.0.1", api.port) for _ in range(2)]
        try:
            await asyncio.sleep(0.1)
            answer = await _raw(api.port, b"GET /status HTTP/1.1\r\nHost: x\r\n\r\n")
            assert _status_of(answer) == 503
            assert _body_of(answer) == {"error": "too many connections"}
        finally:
            for _, writer in idle:
                writer.close()
                await writer.wait_closed()
        await asyncio.sleep(0.1)
        assert (await _http(api.port, "GET", "/status"))[0] == 200


async def test_closing_with_a_stalled_client_is_prompt() -> None:
    api = OperatorApi(FakeService(), token=TOKEN, header_timeout_s=30.0)
    async with api:
        reader, writer = await asyncio.open_connection("127.0.0.1", api.port)
        writer.write(b"GET /status HTTP/1.1\r\n")
        await writer.drain()
        await asyncio.sleep(0.1)
        t0 = time.monotonic()
    assert time.monotonic() - t0 < 2.0
    assert await asyncio.wait_for(reader.read(), 5) == b""
    writer.close()
    await writer.wait_closed()
    with pytest.raises(RuntimeError, match="not started"):
        _ = api.port


async def test_binds_loopback_by_default_and_a_given_port() -> None:
    async with OperatorApi(FakeService(), token=TOKEN) as first:
        port = first.port
    async with OperatorApi(FakeService(), token=TOKEN, port=port) as api:
        assert api.port == port
        assert (await _http(port, "GET", "/healthz"))[0] == 200


# ============================================================================================
# the pure parser
# ============================================================================================
def test_parser_reads_a_request() -> None:
    request = parse_request_head(b"POST /ramp/start?x=1 HTTP/1.1\r\nHost: h\r\n"
                                 b"Content-Length: 7\r\nX-Thing:  spaced value \t\r\n\r\n")
    assert (request.method, request.path, request.query, request.version) == (
        "POST", "/ramp/start", "x=1", "HTTP/1.1")
    assert request.content_length == 7
    assert request.header("X-THING") == "spaced value"
    assert request.header("missing") is None


def test_parser_limits() -> None:
    with pytest.raises(HttpError) as info:
        parse_request_head(b"GET / HTTP/1.1\r\nHost: h\r\nX: " + b"a" * MAX_HEAD_BYTES
                           + b"\r\n\r\n")
    assert info.value.status == 431
    with pytest.raises(HttpError) as info:
        parse_request_head(b"GET / HTTP/1.1\r\n")
    assert info.value.status == 400


_TCHAR = st.sampled_from("!#$%&'*+-.^_`|~0123456789"
                         "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
_token = st.text(_TCHAR, min_size=1, max_size=12)
_path = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters="?"),
                max_size=30).map(lambda s: "/" + s)
_value = st.text(st.characters(min_codepoint=0x21, max_codepoint=0xFF, exclude_characters="\x7f"),
                 max_size=30)


@settings(max_examples=300, deadline=None)
@given(method=_token, path=_path, query=st.none() | _path.map(lambda p: p[1:]),
       headers=st.lists(st.tuples(_token, _value), max_size=10),
       crlf=st.booleans())
def test_parser_round_trips_well_formed_requests(
    method: str, path: str, query: str | None, headers: list[tuple[str, str]], crlf: bool
) -> None:
    headers = [(k, v) for k, v in headers
               if k.lower() not in ("host", "content-length", "transfer-encoding")]
    eol = "\r\n" if crlf else "\n"
    target = path if query is None else f"{path}?{query}"
    text = f"{method} {target} HTTP/1.1{eol}Host: h{eol}"
    text += "".join(f"{k}: {v}{eol}" for k, v in headers) + eol
    request = parse_request_head(text.encode("latin-1"))
    assert (request.method, request.path, request.query) == (method, path, query or "")
    assert request.headers[0] == ("host", "h")
    assert list(request.headers[1:]) == [(k.lower(), v) for k, v in headers]


@settings(max_examples=500, deadline=None)
@given(data=st.binary(max_size=2000)
       | st.lists(st.sampled_from([b"GET", b" ", b"/status", b"HTTP/1.1", b"\r\n", b"\n",
                                   b"Host: x", b"Content-Length: ", b"1", b"-", b":", b"\x00",
                                   b"\xff", b"\t", b"Transfer-Encoding: chunked", b"?"]),
                  max_size=40).map(b"".join))
def test_parser_fuzz_only_raises_http_errors(data: bytes) -> None:
    try:
        request = parse_request_head(data)
    except HttpError as exc:
        assert exc.status in (400, 431, 501, 505)
        return
    assert request.path.startswith("/") and request.path.isascii()
    assert request.content_length >= 0
    assert request.method.isascii()


def test_routes_table_matches_the_protocol() -> None:
    commands = {route.command for route in ROUTES.values()} - {None}
    assert commands == {"status", "plan", "start_ramp", "pause", "resume", "abort"}
    assert all(hasattr(OperatorCommands, name) for name in commands if name)
