"""Fixtures for the driver tests: a scripted raw Modbus TCP server for the misbehaviours a
well-behaved server cannot show (never answering, answering with the wrong register count)."""

from __future__ import annotations

import asyncio
import struct
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

#: ``respond(unit_id, pdu) -> reply pdu`` (None: say nothing).
Responder = Callable[[int, bytes], bytes | None]


class ScriptedModbusServer:
    """A Modbus TCP server on 127.0.0.1 that answers each request with ``respond``."""

    def __init__(self, respond: Responder) -> None:
        self.respond = respond
        self.requests: list[tuple[int, bytes]] = []
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._handlers: set[asyncio.Task[None]] = set()
        self.port = 0

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        self._writers.add(writer)
        try:
            while True:
                head = await reader.readexactly(7)
                tid, _pid, length, unit = struct.unpack(">HHHB", head)
                pdu = await reader.readexactly(length - 1)
                self.requests.append((unit, pdu))
                reply = self.respond(unit, pdu)
                if reply is not None:
                    writer.write(struct.pack(">HHHB", tid, 0, len(reply) + 1, unit) + reply)
                    await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()
            self._handlers.discard(task)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.close()             # the handlers see end of stream and return
        if self._handlers:
            await asyncio.wait(list(self._handlers), timeout=2.0)
        if self._server is not None:
            await self._server.wait_closed()


@pytest.fixture
async def scripted_server() -> AsyncIterator[Callable[[Responder],
                                                      Awaitable[ScriptedModbusServer]]]:
    servers: list[ScriptedModbusServer] = []

    async def start(respond: Responder) -> ScriptedModbusServer:
        server = ScriptedModbusServer(respond)
        await server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        await server.close()
