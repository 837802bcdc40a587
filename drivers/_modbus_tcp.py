"""A lean Modbus TCP client for the functions the drivers use (01, 02, 03, 04, 05).

:class:`ModbusDevice` talks to a device through the :class:`~drivers.modbus.ModbusClient`
surface. pymodbus's ``AsyncModbusTcpClient`` costs about 120 µs of CPU per request (its framer,
transaction manager and logging); a hall of 4,256 devices polled at 1 Hz makes 8,352 requests a
second, which is a whole core. :class:`LeanModbusClient` is the same surface over one asyncio
protocol: MBAP frames out, replies matched by transaction id, with the timeout per request
pymodbus has. Clients made with one :class:`ConnectionPool` share a connection per endpoint
(host, port): the units behind one gateway use one socket, and the frames queued in one pass of
the event loop leave in one write (:class:`_Connection`). It has no retries and no reconnect of
its own (the device's supervisor is the one strategy). Replies come back as :class:`Reply`
objects shaped like pymodbus's responses (``registers``, ``bits``, ``isError()``,
``exception_code``); failures raise:

* no answer within ``timeout_s``: :class:`TimeoutError` (the text says "timeout");
* not connected, the connection lost while waiting, or a frame that does not answer the request
  (wrong transaction, unit or function, or malformed): :class:`ConnectionError`.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import struct
from collections.abc import Callable
from typing import Any, TypeAlias

_MBAP = struct.Struct(">HHHB")          # transaction, protocol (0), length, unit
_READ = struct.Struct(">HHHBBHH")       # MBAP + function, address, count
_COIL_ON, _COIL_OFF = 0xFF00, 0x0000
#: Least time a connect may take (s).
CONNECT_TIMEOUT_MIN_S = 2.0
_WORDS: dict[int, struct.Struct] = {}


def _words(n: int) -> struct.Struct:
    s = _WORDS.get(n)
    if s is None:
        s = _WORDS[n] = struct.Struct(f">{n}H")
    return s


class Reply:
    """A decoded reply: ``registers`` (03, 04), ``bits`` (01, 02: padded to whole bytes as on
    the wire; 05: the echoed state), or an exception (``isError()``, ``exception_code``)."""

    __slots__ = ("bits", "exception_code", "function_code", "registers")

    def __init__(self, function_code: int, registers: tuple[int, ...] = (),
                 bits: list[bool] | None = None, exception_code: int = 0) -> None:
        self.function_code = function_code
        self.registers = registers
        self.bits = bits if bits is not None else []
        self.exception_code = exception_code

    def isError(self) -> bool:  # noqa: N802 (pymodbus's name)
        return self.exception_code != 0

    def __repr__(self) -> str:
        if self.exception_code:
            return f"Reply(function {self.function_code}, exception {self.exception_code})"
        return (f"Reply(function {self.function_code}, {len(self.registers)} registers, "
                f"{len(self.bits)} bits)")


def _decode(function: int, pdu: bytes) -> Reply:
    fc = pdu[0]
    if fc == function | 0x80:
        if len(pdu) < 2:
            raise ConnectionError(f"malformed exception reply to function {function}")
        return Reply(function, exception_code=pdu[1])
    if fc != function:
        raise ConnectionError(f"reply of function {fc} to a request of function {function}")
    if function in (3, 4):
        count = pdu[1] if len(pdu) > 1 else -1
        if count < 0 or count % 2 or len(pdu) < 2 + count:
            raise ConnectionError(f"malformed register reply ({len(pdu)} bytes)")
        return Reply(function, registers=_words(count // 2).unpack_from(pdu, 2))
    if function in (1, 2):
        count = pdu[1] if len(pdu) > 1 else -1
        if count < 0 or len(pdu) < 2 + count:
            raise ConnectionError(f"malformed bit reply ({len(pdu)} bytes)")
        return Reply(function, bits=[bool(byte >> k & 1) for byte in pdu[2:2 + count]
                                     for k in range(8)])
    if function == 5:
        if len(pdu) < 5:
            raise ConnectionError(f"malformed write-coil reply ({len(pdu)} bytes)")
        value = pdu[3] << 8 | pdu[4]
        return Reply(function, bits=[value == _COIL_ON])
    raise ConnectionError(f"unsupported function {function}")  # pragma: no cover


#: Where a request's outcome goes: a future (awaited), or a callback called with the
#: :class:`Reply` or the exception (:meth:`LeanModbusClient.submit`; no future, no task).
ReplySink: TypeAlias = "asyncio.Future[Reply] | Callable[[Reply | Exception], None]"


class _Protocol(asyncio.Protocol):
    """The socket of one :class:`_Connection`: splits the byte stream into MBAP frames."""

    def __init__(self, conn: _Connection) -> None:
        self.conn = conn
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.conn._lost(self, exc)

    def data_received(self, data: bytes) -> None:
        buf = self.buffer
        buf += data
        while len(buf) >= 8:
            tid, pid, length, unit = _MBAP.unpack_from(buf)
            if length < 2 or pid != 0:
                self.conn._protocol_error(self, f"malformed frame header (length {length})")
                return
            end = 6 + length
            if len(buf) < end:
                return
            pdu = bytes(buf[7:end])
            del buf[:end]
            self.conn._reply(tid, unit, pdu)
        self.conn._drain()


class _Connection:
    """One TCP connection to ``host:port``, used by one client or shared by every client of a
    :class:`ConnectionPool` that names the same endpoint (the units behind one gateway).

    Requests are matched to replies by transaction id, so any number may be in flight. Frames
    queued in one pass of the event loop leave in one write (the flush is scheduled with
    ``call_soon``): the polls of the units that share a slot of the period cost one send and,
    as the simulator's server answers a batch with one write, one receive. The connection is
    opened by the first client that connects (the others wait for that attempt) and closed
    when the last attached client closes.

    A request's outcome goes to its sink: a future, or a callback
    (:meth:`LeanModbusClient.submit`). Callbacks are queued while the connection walks its
    replies, deadlines or pending requests and called after the walk (:meth:`_drain`), so a
    callback that closes its client cannot disturb the walk.

    Timeouts: one timer per connection, not one per request. Each request's deadline goes on a
    heap; the timer is set for the earliest deadline of a request still unanswered, and when
    it fires it fails every request whose deadline has passed and sets itself for the next.
    A request still fails at its own deadline (the timer is never later than the earliest
    one), but the thousands of requests a second a gateway's units make in a hall no longer
    cost a timer each (a timer handle, an entry in the loop's heap, a cancel: about 5 % of
    the polling CPU in benchmarks/bench_drivers.py with 2,000 devices, noisy).
    """

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.proto: _Protocol | None = None
        self.clients: set[LeanModbusClient] = set()
        self._tid = 0
        # transaction id -> (sink, function, unit, deadline (loop time, s), client)
        self.pending: dict[int, tuple[ReplySink, int, int, float, LeanModbusClient]] = {}
        self._ready: list[tuple[Callable[[Reply | Exception], None], Reply | Exception]] = []
        self._draining = False
        self._deadlines: list[tuple[float, int]] = []   # heap of (deadline_s, tid)
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at_s = float("inf")
        self._out: list[bytes] = []
        self._flush_scheduled = False
        self._connecting: asyncio.Task[bool] | None = None
        self._waiters = 0                   # callers awaiting self._connecting

    @property
    def alive(self) -> bool:
        p = self.proto
        return p is not None and p.transport is not None and not p.transport.is_closing()

    async def connect(self, timeout_s: float) -> bool:
        if self.alive:
            return True
        task = self._connecting
        if task is None or task.done():
            task = self._connecting = asyncio.get_running_loop().create_task(
                self._open(timeout_s), name=f"modbus connect {self.host}:{self.port}")
        self._waiters += 1
        try:
            # shielded: a caller cancelled does not cancel the attempt the others wait on
            return await asyncio.shield(task)
        finally:
            self._waiters -= 1
            if self._waiters == 0 and not task.done():   # every caller was cancelled
                task.add_done_callback(self._orphaned)

    def _orphaned(self, task: asyncio.Task[bool]) -> None:
        """A connect that nobody waits for any more has finished: no client, no socket."""
        if not self.clients and self._waiters == 0:
            self._close_socket()

    def _close_socket(self) -> None:
        proto, self.proto = self.proto, None
        self._out.clear()
        if proto is not None and proto.transport is not None:
            proto.transport.close()
        self._fail_all(ConnectionError("connection closed"))

    async def _open(self, timeout_s: float) -> bool:
        loop = asyncio.get_running_loop()
        proto = _Protocol(self)
        try:
            async with asyncio.timeout(max(timeout_s, CONNECT_TIMEOUT_MIN_S)):
                await loop.create_connection(lambda: proto, self.host, self.port)
        except (OSError, TimeoutError):
            return False
        self.proto = proto
        return True

    def send(self, client: LeanModbusClient, function: int, address: int, word: int,
             unit: int, timeout_s: float) -> asyncio.Future[Reply]:
        fut: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        self.submit(client, function, address, word, unit, timeout_s, fut)
        return fut

    def submit(self, client: LeanModbusClient, function: int, address: int, word: int,
               unit: int, timeout_s: float, sink: ReplySink) -> None:
        loop = asyncio.get_running_loop()
        if not self.alive or client not in self.clients:
            self._deliver(sink, ConnectionError("not connected"))
            self._drain()
            return
        tid = (self._tid + 1) & 0xFFFF
        while tid in self.pending:          # 65,536 in flight on one connection: never
            tid = (tid + 1) & 0xFFFF        # pragma: no cover
        self._tid = tid
        deadline_s = loop.time() + timeout_s
        self.pending[tid] = (sink, function, unit, deadline_s, client)
        heapq.heappush(self._deadlines, (deadline_s, tid))
        if deadline_s < self._timer_at_s:
            self._arm(loop, deadline_s)
        self._out.append(_READ.pack(tid, 0, 6, unit, function, address, word))
        if not self._flush_scheduled:
            self._flush_scheduled = True
            loop.call_soon(self._flush)

    # -- outcomes ------------------------------------------------------------------------------
    def _deliver(self, sink: ReplySink, result: Reply | Exception) -> None:
        if isinstance(sink, asyncio.Future):
            if sink.done():
                return
            if isinstance(result, Exception):
                sink.set_exception(result)
                with contextlib.suppress(Exception):
                    sink.exception()  # retrieved: no "never retrieved" warning when unawaited
            else:
                sink.set_result(result)
        else:
            self._ready.append((sink, result))

    def _drain(self) -> None:
        """Call the callbacks queued by the walk that just ended (once each, in order); a
        callback's own outcomes (its client closed, say) join the queue."""
        if self._draining:
            return
        self._draining = True
        try:
            ready = self._ready
            k = 0
            while k < len(ready):
                sink, result = ready[k]
                k += 1
                try:
                    sink(result)
                except Exception as exc:   # a consumer's bug: reported, the others still run
                    asyncio.get_running_loop().call_exception_handler({
                        "message": f"Modbus reply callback failed ({self.host}:{self.port})",
                        "exception": exc})
        finally:
            del self._ready[:]
            self._draining = False

    def _flush(self) -> None:
        self._flush_scheduled = False
        out, self._out = self._out, []
        p = self.proto
        if out and p is not None and p.transport is not None and not p.transport.is_closing():
            p.transport.write(out[0] if len(out) == 1 else b"".join(out))
        # a transport gone meanwhile: the requests fail by connection_lost or their timers

    def attach(self, client: LeanModbusClient) -> None:
        self.clients.add(client)

    def detach(self, client: LeanModbusClient) -> None:
        """``client`` closes: its requests fail; the socket closes with the last client."""
        self.clients.discard(client)
        mine = [tid for tid, entry in self.pending.items() if entry[4] is client]
        self._fail([self.pending.pop(tid) for tid in mine], ConnectionError("connection closed"))
        self._disarm_if_idle()
        if not self.clients and self._waiters == 0:
            self._close_socket()
        self._drain()

    # -- timeouts --------------------------------------------------------------------------
    def _arm(self, loop: asyncio.AbstractEventLoop, at_s: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at_s = at_s
        self._timer = loop.call_at(at_s, self._expire_due)

    def _live(self, deadline_s: float, tid: int) -> bool:
        """Whether a heap entry is a request still waiting (not answered, failed or a
        transaction id used again since)."""
        entry = self.pending.get(tid)
        return entry is not None and entry[3] == deadline_s

    def _expire_due(self) -> None:
        """The timer: fail the requests whose deadline has passed, set the timer for the
        next request still waiting."""
        self._timer, self._timer_at_s = None, float("inf")
        loop = asyncio.get_running_loop()
        now_s = loop.time() + 1e-6      # the loop runs a timer up to its clock's resolution early
        heap = self._deadlines
        while heap:
            deadline_s, tid = heap[0]
            if not self._live(deadline_s, tid):
                heapq.heappop(heap)              # answered or failed meanwhile
                continue
            if deadline_s > now_s:
                self._arm(loop, deadline_s)
                break
            heapq.heappop(heap)
            sink, _f, _u, _d, client = self.pending.pop(tid)
            self._deliver(sink, TimeoutError(f"no response within {client.timeout_s} s "
                                             "(timeout)"))
        self._drain()

    def _disarm_if_idle(self) -> None:
        if not self.pending:
            self._deadlines.clear()
            if self._timer is not None:
                self._timer.cancel()
            self._timer, self._timer_at_s = None, float("inf")

    # -- replies (from the protocol) -----------------------------------------------------------

    def _reply(self, tid: int, unit: int, pdu: bytes) -> None:
        entry = self.pending.pop(tid, None)
        if entry is None:
            return                    # a late answer to a request that timed out
        sink, function, want_unit, _deadline_s, _client = entry
        result: Reply | Exception
        try:
            if unit != want_unit:
                raise ConnectionError(f"reply from unit {unit} to a request to unit "
                                      f"{want_unit}")
            result = _decode(function, pdu)
        except ConnectionError as exc:
            result = exc
        except (IndexError, struct.error) as exc:
            result = ConnectionError(f"malformed reply: {exc}")
        self._deliver(sink, result)

    def _protocol_error(self, proto: _Protocol, message: str) -> None:
        """A stream that is not Modbus TCP: nothing after it can be trusted, for any unit."""
        if proto.transport is not None:
            proto.transport.close()
        if proto is self.proto:
            self.proto = None
        self._fail_all(ConnectionError(message))

    def _lost(self, proto: _Protocol, exc: Exception | None) -> None:
        if proto is self.proto:
            self.proto = None
            self._fail_all(ConnectionError(f"connection lost: {exc or 'closed by peer'}"))

    def _fail_all(self, exc: Exception) -> None:
        pending, self.pending = self.pending, {}
        self._disarm_if_idle()
        self._fail(list(pending.values()), exc)
        self._drain()

    def _fail(self, entries: list[tuple[ReplySink, int, int, float, LeanModbusClient]],
              exc: Exception) -> None:
        for sink, _f, _u, _d, _c in entries:
            self._deliver(sink, exc)


class ConnectionPool:
    """One :class:`_Connection` per endpoint (host, port), for the clients made with it: the
    units behind one gateway share one socket. A poller holds one pool for its devices."""

    def __init__(self) -> None:
        self._conns: dict[tuple[str, int], _Connection] = {}

    def get(self, host: str, port: int) -> _Connection:
        conn = self._conns.get((host, port))
        if conn is None:
            conn = self._conns[(host, port)] = _Connection(host, port)
        return conn

    def __len__(self) -> int:
        return len(self._conns)

    def open_sockets(self) -> int:
        """Endpoints with a live socket (for tests and metrics)."""
        return sum(1 for c in self._conns.values() if c.alive)


class LeanModbusClient:
    """The :class:`~drivers.modbus.ModbusClient` surface for one unit (see the module
    docstring). ``timeout_s`` bounds each request and the connect. With ``pool``, the client
    shares its endpoint's connection with the pool's other clients of that endpoint; without,
    it has a connection of its own."""

    def __init__(self, host: str, port: int, timeout_s: float,
                 pool: ConnectionPool | None = None) -> None:
        self.host, self.port, self.timeout_s = host, port, timeout_s
        self._conn = pool.get(host, port) if pool is not None else _Connection(host, port)
        self._attached = False

    @property
    def connected(self) -> bool:
        return self._attached and self._conn.alive

    async def connect(self) -> bool:
        """Open (or join) the connection; False (never an exception) when it cannot be opened
        in ``timeout_s`` (at least ``CONNECT_TIMEOUT_MIN_S``: a refused connection fails at
        once anyway, and a busy event loop must not turn a thousand good connects into
        timeouts)."""
        if self.connected:
            return True
        if not await self._conn.connect(self.timeout_s):
            return False
        self._conn.attach(self)
        self._attached = True
        return True

    def close(self) -> None:
        """Fail this client's requests in flight and leave the connection (closed when no
        other client uses it)."""
        self._attached = False
        self._conn.detach(self)

    # -- requests ----------------------------------------------------------------------------
    def read_input_registers(self, address: int, *, count: int = 1,
                             device_id: int = 1) -> asyncio.Future[Reply]:
        return self._conn.send(self, 4, address, count, device_id, self.timeout_s)

    def read_holding_registers(self, address: int, *, count: int = 1,
                               device_id: int = 1) -> asyncio.Future[Reply]:
        return self._conn.send(self, 3, address, count, device_id, self.timeout_s)

    def read_coils(self, address: int, *, count: int = 1,
                   device_id: int = 1) -> asyncio.Future[Reply]:
        return self._conn.send(self, 1, address, count, device_id, self.timeout_s)

    def read_discrete_inputs(self, address: int, *, count: int = 1,
                             device_id: int = 1) -> asyncio.Future[Reply]:
        return self._conn.send(self, 2, address, count, device_id, self.timeout_s)

    def write_coil(self, address: int, value: bool, *,
                   device_id: int = 1) -> asyncio.Future[Reply]:
        return self._conn.send(self, 5, address, _COIL_ON if value else _COIL_OFF, device_id,
                               self.timeout_s)

    def submit(self, function: int, address: int, count: int, device_id: int,
               on_reply: Callable[[Reply | Exception], None]) -> None:
        """Send a read (function 01-04) now, without a future: ``on_reply`` is called once
        with the :class:`Reply` or the exception the methods above would raise (at once when
        not connected). Called from the reply path, so it must not block; an exception it
        raises propagates into the event loop's protocol callbacks, so it must not raise.
        A poller of thousands of devices uses this: no future and no task wake-up per
        request."""
        self._conn.submit(self, function, address, count, device_id, self.timeout_s, on_reply)


def lean_client(host: str, port: int, timeout_s: float,
                pool: ConnectionPool | None = None) -> Any:
    """A :class:`LeanModbusClient` (typed loosely: it satisfies ``ModbusClient``)."""
    return LeanModbusClient(host, port, timeout_s, pool)
