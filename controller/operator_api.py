"""The operator HTTP API: status, plan, start ramp, pause, resume, abort.

A deliberately small HTTP/1.1 server on :func:`asyncio.start_server` (no dependency), bound to
127.0.0.1 unless told otherwise. One request per connection (``Connection: close``), JSON in
and out. The service implements :class:`OperatorCommands`; a command it refuses raises
:class:`CommandRefused`.

===========================  ==================================================================
route                        answer
===========================  ==================================================================
``GET /status``              ``commands.status()``
``GET /plan``                ``commands.plan()``
``POST /ramp/start``         ``commands.start_ramp()``
``POST /ramp/pause``         ``commands.pause()``
``POST /ramp/resume``        ``commands.resume()``
``POST /ramp/abort``         ``commands.abort()``
``GET /healthz``             ``{"ok": true}`` (open: no token needed)
===========================  ==================================================================

Every route but ``/healthz`` needs ``Authorization: Bearer <token>``: the token is mandatory
(``rampguard run`` reads it from a file or the environment, or generates one into a file of mode
0600; docs/security.md). Status codes: 200 done; 400 a malformed request; 401
``Authorization: Bearer <token>`` is missing or wrong; 404 an unknown path (paths are compared
as sent: no decoding, no normalization, a query string is ignored); 405 a wrong method (with
``Allow``); 408 the request head or body did not arrive within its timeout; 409 the command was
refused (``{"error": reason}``); 413 a body over :data:`MAX_BODY_BYTES`; 431 a header line, the
head or the header count over its limit; 500 the command raised (logged; the server goes on);
501 ``Transfer-Encoding``; 503 too many connections; 505 an HTTP version other than 1.0/1.1.
Every error answer is counted by status in :attr:`OperatorApi.rejected` (the service exports it
as ``rampguard_inputs_rejected_total{source="http"}``).

The command methods are called on the event loop thread, one at a time, so they see the
controller's state between ticks: they must be quick and must not block.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import re
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from http import HTTPStatus
from types import TracebackType
from typing import Any, Protocol, Self

from controller.errors import RampguardError
from controller.jsonsafe import dumps_safe

log = logging.getLogger(__name__)

#: Longest request or header line (the stream reader's limit).
MAX_LINE_BYTES = 8192
#: Longest request head (request line and headers).
MAX_HEAD_BYTES = 16384
#: Most header lines in one request.
MAX_HEADERS = 64
#: Largest request body (the commands take none; small JSON is tolerated and ignored).
MAX_BODY_BYTES = 4096

_TOKEN_RE = re.compile(rb"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
_VERSION_RE = re.compile(rb"^HTTP/(\d)\.(\d)$")
_TOKEN68_RE = re.compile(r"^[A-Za-z0-9\-._~+/]+=*$")


class CommandRefused(RampguardError):  # noqa: N818 (the name the service uses)
    """The service will not do this now (``reason`` says why): answered 409."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


class OperatorCommands(Protocol):
    """What the service offers the operator. Each returns a JSON-able dict (NaN becomes null,
    numpy values plain numbers) or raises :class:`CommandRefused`."""

    def status(self) -> dict[str, Any]: ...

    def plan(self) -> dict[str, Any]: ...

    def start_ramp(self) -> dict[str, Any]: ...

    def pause(self) -> dict[str, Any]: ...

    def resume(self) -> dict[str, Any]: ...

    def abort(self) -> dict[str, Any]: ...


@dataclass(frozen=True, slots=True)
class Route:
    method: str
    command: str | None         # the OperatorCommands method; None for /healthz
    needs_token: bool = True


ROUTES: Mapping[str, Route] = {
    "/status": Route("GET", "status"),
    "/plan": Route("GET", "plan"),
    "/ramp/start": Route("POST", "start_ramp"),
    "/ramp/pause": Route("POST", "pause"),
    "/ramp/resume": Route("POST", "resume"),
    "/ramp/abort": Route("POST", "abort"),
    "/healthz": Route("GET", None, needs_token=False),
}


class HttpError(Exception):
    """A request that gets an error answer instead of a command."""

    def __init__(self, status: int, message: str,
                 headers: tuple[tuple[str, str], ...] = ()) -> None:
        self.status = status
        self.message = message
        self.headers = headers
        super().__init__(f"{status} {message}")


@dataclass(frozen=True, slots=True)
class Request:
    """A parsed request head. Header names are lower case, values ``latin-1`` text."""

    method: str
    path: str
    query: str
    version: str
    headers: tuple[tuple[str, str], ...]
    content_length: int

    def header(self, name: str) -> str | None:
        name = name.lower()
        for key, value in self.headers:
            if key == name:
                return value
        return None


def parse_request_head(head: bytes) -> Request:
    """Parse a request line and its headers (up to and including the blank line).

    Lines end with CRLF or a bare LF. Pure: raises :class:`HttpError` (400, 431, 501, 505) for
    anything it does not accept, and nothing else.
    """
    if len(head) > MAX_HEAD_BYTES:
        raise HttpError(431, "request head too large")
    lines = head.split(b"\n")
    if len(lines) < 3 or lines[-1] != b"" or lines[-2] not in (b"", b"\r"):
        raise HttpError(400, "request head not terminated by an empty line")
    lines = [line[:-1] if line.endswith(b"\r") else line for line in lines[:-2]]
    while lines and lines[0] == b"":          # RFC 9112 2.2: ignore empty lines before it
        lines.pop(0)
    if not lines:
        raise HttpError(400, "no request line")
    if len(lines) - 1 > MAX_HEADERS:
        raise HttpError(431, "too many header fields")
    method, target, version = _request_line(lines[0])
    headers = tuple(_header_line(line) for line in lines[1:])
    content_length = _content_length(headers)
    hosts = [v for k, v in headers if k == "host"]
    if version == "HTTP/1.1" and len(hosts) != 1:
        raise HttpError(400, "an HTTP/1.1 request needs exactly one Host header")
    if any(k == "transfer-encoding" for k, _ in headers):
        raise HttpError(501, "Transfer-Encoding is not supported")
    path, _, query = target.partition("?")
    return Request(method, path, query, version, headers, content_length)


def _request_line(line: bytes) -> tuple[str, str, str]:
    parts = line.split(b" ")
    if len(parts) != 3:
        raise HttpError(400, "malformed request line")
    method, target, version = parts
    if not _TOKEN_RE.match(method):
        raise HttpError(400, "malformed method")
    match = _VERSION_RE.match(version)
    if match is None:
        raise HttpError(400, "malformed HTTP version")
    if match.group(1) != b"1" or match.group(2) not in (b"0", b"1"):
        raise HttpError(505, "only HTTP/1.0 and HTTP/1.1 are supported")
    if not target.startswith(b"/") or not all(0x21 <= b <= 0x7E for b in target):
        raise HttpError(400, "malformed request target")
    return method.decode("ascii"), target.decode("ascii"), version.decode("ascii")


def _header_line(line: bytes) -> tuple[str, str]:
    if line[:1] in (b" ", b"\t"):
        raise HttpError(400, "obsolete line folding")
    name, colon, value = line.partition(b":")
    if not colon or not _TOKEN_RE.match(name):
        raise HttpError(400, "malformed header field")
    value = value.strip(b" \t")
    if any((b < 0x20 and b != 0x09) or b == 0x7F for b in value):
        raise HttpError(400, "control character in a header value")
    return name.decode("ascii").lower(), value.decode("latin-1")


def _content_length(headers: tuple[tuple[str, str], ...]) -> int:
    values = {v for k, v in headers if k == "content-length"}
    if not values:
        return 0
    if len(values) > 1:
        raise HttpError(400, "conflicting Content-Length headers")
    (text,) = values
    if not (text.isascii() and text.isdigit()) or len(text) > 18:
        raise HttpError(400, "malformed Content-Length")
    return int(text)


def render_response(status: int, body: Any,
                    headers: tuple[tuple[str, str], ...] = ()) -> bytes:
    """A complete ``Connection: close`` response with ``body`` as JSON."""
    payload = (dumps_safe(body) + "\n").encode("ascii")
    reason = HTTPStatus(status).phrase
    lines = [f"HTTP/1.1 {status} {reason}", "Content-Type: application/json",
             f"Content-Length: {len(payload)}", "Connection: close", "Cache-Control: no-store"]
    lines += [f"{name}: {value}" for name, value in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + payload


def check_token(token: str) -> None:
    """Raise ValueError (without the token) unless ``token`` is a non-empty token68 string."""
    if not isinstance(token, str) or not _TOKEN68_RE.match(token):
        raise ValueError("the operator API token must be a non-empty token68 string "
                         "(letters, digits, -._~+/ and trailing =)")


class OperatorApi:
    """The operator HTTP server: ``async with OperatorApi(commands) as api: ... api.port``.

    ``token`` (required): every route but ``/healthz`` needs ``Authorization: Bearer <token>``;
    it is compared in constant time and never logged.
    ``header_timeout_s`` bounds the wait for a request head (slow clients get 408),
    ``body_timeout_s`` the wait for its body, ``write_timeout_s`` the wait for a client to take
    the answer. At most ``max_connections`` are served at once (more get 503).
    """

    def __init__(self, commands: OperatorCommands, host: str = "127.0.0.1", port: int = 0,
                 *, token: str, header_timeout_s: float = 5.0,
                 body_timeout_s: float = 5.0, write_timeout_s: float = 5.0,
                 max_connections: int = 32) -> None:
        check_token(token)
        self._commands = commands
        self._host = host
        self._port = port
        self._token = token.encode("ascii")
        self.header_timeout_s = header_timeout_s
        self.body_timeout_s = body_timeout_s
        self.write_timeout_s = write_timeout_s
        self.max_connections = max_connections
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[Any]] = set()
        #: requests answered with an error, by status code (``"400"``, ``"401"``, ...), and
        #: ``"incomplete"``: the client left inside its body (monotonic; for metrics)
        self.rejected: Counter[str] = Counter()

    @property
    def port(self) -> int:
        """The port the server listens on (the one chosen by the system when 0 was asked)."""
        if self._server is None:
            raise RuntimeError("the operator API is not started")
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def host(self) -> str:
        return self._host

    @property
    def url(self) -> str:
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"http://{host}:{self.port}"

    async def __aenter__(self) -> Self:
        self._server = await asyncio.start_server(self._serve_connection, self._host,
                                                  self._port, limit=MAX_LINE_BYTES)
        log.info("operator API listening on %s (bearer token required)", self.url)
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()

    async def close(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        tasks = [t for t in self._connections if not t.done()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await server.wait_closed()

    # -- one connection ---------------------------------------------------------------------
    async def _serve_connection(self, reader: asyncio.StreamReader,
                                writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._connections.add(task)
        try:
            if len(self._connections) > self.max_connections:
                self.rejected["503"] += 1
                await self._send(writer, 503, {"error": "too many connections"})
            else:
                try:
                    status, body, headers = await self._answer(reader)
                except _ClientGoneError:
                    return
                if status >= 400:
                    self.rejected[str(status)] += 1
                await self._send(writer, status, body, headers)
            await self._linger(reader, writer)
        finally:
            if task is not None:
                self._connections.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                async with asyncio.timeout(self.write_timeout_s):
                    await writer.wait_closed()

    async def _answer(self, reader: asyncio.StreamReader
                      ) -> tuple[int, Any, tuple[tuple[str, str], ...]]:
        try:
            try:
                async with asyncio.timeout(self.header_timeout_s):
                    head = await _read_head(reader)
            except TimeoutError:
                raise HttpError(408, "request head not received in time") from None
            request = parse_request_head(head)
            if request.content_length > MAX_BODY_BYTES:
                raise HttpError(413, f"request body over {MAX_BODY_BYTES} bytes")
            if request.content_length:
                try:
                    async with asyncio.timeout(self.body_timeout_s):
                        await reader.readexactly(request.content_length)
                except TimeoutError:
                    raise HttpError(408, "request body not received in time") from None
                except asyncio.IncompleteReadError:
                    self.rejected["incomplete"] += 1
                    raise _ClientGoneError from None
            status, body, headers = self._dispatch(request)
        except HttpError as exc:
            log.debug("operator API: %d %s", exc.status, exc.message)
            return exc.status, {"error": exc.message}, exc.headers
        log.debug("operator API: %s %s -> %d", request.method, ascii(request.path[:200]),
                  status)
        return status, body, headers

    def _dispatch(self, request: Request) -> tuple[int, Any, tuple[tuple[str, str], ...]]:
        route = ROUTES.get(request.path)
        if (route is None or route.needs_token) and not self._authorized(request):
            raise HttpError(401, "unauthorized", (("WWW-Authenticate", "Bearer"),))
        if route is None:
            raise HttpError(404, "not found")
        if request.method != route.method:
            raise HttpError(405, "method not allowed", (("Allow", route.method),))
        if route.command is None:
            return 200, {"ok": True}, ()
        try:
            result = getattr(self._commands, route.command)()
        except CommandRefused as exc:
            return 409, {"error": str(exc.reason)}, ()
        except Exception:
            log.exception("operator API: the %s command raised", route.command)
            return 500, {"error": "internal error"}, ()
        return 200, result, ()

    def _authorized(self, request: Request) -> bool:
        value = request.header("authorization") or ""
        scheme, _, credentials = value.partition(" ")
        if scheme.lower() != "bearer":
            return False
        return hmac.compare_digest(credentials.strip(" ").encode("latin-1"), self._token)

    async def _send(self, writer: asyncio.StreamWriter, status: int, body: Any,
                    headers: tuple[tuple[str, str], ...] = ()) -> None:
        with contextlib.suppress(ConnectionError, TimeoutError):
            writer.write(render_response(status, body, headers))
            async with asyncio.timeout(self.write_timeout_s):
                await writer.drain()


    async def _linger(self, reader: asyncio.StreamReader,
                      writer: asyncio.StreamWriter) -> None:
        """Half-close, then discard what the client still sends for a moment: closing with
        unread input makes the kernel send a reset that can destroy the answer in flight (a
        413 to a client still sending its body)."""
        with contextlib.suppress(ConnectionError, TimeoutError, OSError):
            if writer.can_write_eof():
                writer.write_eof()
            async with asyncio.timeout(_LINGER_S):
                discarded = 0
                while discarded < _LINGER_BYTES:
                    chunk = await reader.read(65536)
                    if not chunk:
                        break
                    discarded += len(chunk)


#: How long and how much a closing connection keeps reading what the client still sends.
_LINGER_S = 0.5
_LINGER_BYTES = 1 << 20


class _ClientGoneError(Exception):
    """The client closed its side before a request was complete: nothing to answer."""


async def _read_head(reader: asyncio.StreamReader) -> bytes:
    """Read up to and including the empty line that ends a request head, within the limits."""
    chunks: list[bytes] = []
    size = 0
    seen_request_line = False
    while True:
        try:
            line = await reader.readuntil(b"\n")
        except asyncio.LimitOverrunError:
            raise HttpError(431, "request or header line too long") from None
        except asyncio.IncompleteReadError as exc:
            if exc.partial or chunks:
                raise HttpError(400, "connection closed inside the request head") from None
            raise _ClientGoneError from None
        except ConnectionError:
            raise _ClientGoneError from None
        size += len(line)
        if size > MAX_HEAD_BYTES:
            raise HttpError(431, "request head too large")
        chunks.append(line)
        if len(chunks) > MAX_HEADERS + 8:        # empty lines before the request line count
            raise HttpError(431, "too many header fields")
        if line in (b"\r\n", b"\n"):
            if seen_request_line:
                return b"".join(chunks)
        else:
            seen_request_line = True
