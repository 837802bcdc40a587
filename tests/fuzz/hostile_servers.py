"""A hostile Modbus TCP server for the fuzz tests (tests/fuzz/test_hostile_modbus.py and the
service test): raw asyncio, frame by frame, each request answered as a script says."""

from __future__ import annotations

import asyncio
import random
import struct
from collections import deque
from dataclasses import dataclass, field

from drivers.registers import (
    PROFILE_METER,
    BankSnapshot,
    MeterSnapshot,
    OutletSnapshot,
    PduSnapshot,
    encode_meter,
    encode_pdu,
)

#: The client timeout the fuzz tests use; a ``late`` answer comes after three of them.
TIMEOUT_S = 0.15
BEHAVIOURS = ("good", "random", "wrong_tid", "wrong_unit", "wrong_fc", "truncated",
              "truncated_close", "garbage_pdu", "exception", "short_count", "long_count",
              "huge_length", "twice", "late", "silent", "close")
BANKS, OUTLETS = 2, 40


def _image(profile: str, sequence: int) -> tuple[dict[int, int], list[bool]]:
    """Register address -> value, and the coils, of a device reading 12.5 A on L1."""
    inlet = MeterSnapshot(current_a=(12.5, 0.0, 0.0), voltage_v=(230.0, 230.0, 230.0),
                          power_w=(2875.0, 0.0, 0.0), energy_wh=1.0)
    if profile == PROFILE_METER:
        regs = encode_meter(inlet, sequence=sequence, uptime_s=1.0)
        return dict(enumerate(regs)), []
    pdu = PduSnapshot(inlet, (BankSnapshot(6.25, 230.0, 1437.5),) * BANKS,
                      tuple(OutletSnapshot(0.5, 115.0, k % 2 == 0, k % 2 == 0)
                            for k in range(OUTLETS)))
    img = encode_pdu(pdu, sequence=sequence, uptime_s=1.0)
    ((start, values),) = img.input_registers
    return {start + k: v for k, v in enumerate(values)}, list(img.coils)


@dataclass
class HostileServer:
    """Modbus TCP on 127.0.0.1: each request is answered by the next behaviour of
    :attr:`script` (``good`` once it is empty), with bytes from :attr:`rng`."""

    profile: str
    script: deque[str] = field(default_factory=deque)
    rng: random.Random = field(default_factory=lambda: random.Random(0))
    port: int = 0
    requests: int = 0
    sequence: int = 0
    _server: asyncio.Server | None = None
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)
    _writers: set[asyncio.StreamWriter] = field(default_factory=set)

    async def __aenter__(self) -> HostileServer:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for w in list(self._writers):
            w.close()                   # the handlers see end of stream and return
        if self._tasks:
            _done, late = await asyncio.wait(list(self._tasks), timeout=2.0)
            for t in late:              # a "late" answer still sleeping
                t.cancel()
            await asyncio.gather(*late, return_exceptions=True)
        await self._server.wait_closed()

    def _good(self, tid: int, unit: int, pdu: bytes) -> bytes:
        fc, address, count = struct.unpack(">BHH", pdu[:5])
        self.sequence += 1
        regs, coils = _image(self.profile, self.sequence)
        if fc in (3, 4):
            body = struct.pack(f">{count}H", *(regs.get(address + k, 0) for k in range(count)))
            reply = bytes([fc, len(body)]) + body
        elif fc in (1, 2):
            bits = [coils[address + k] if address + k < len(coils) else False
                    for k in range(count)]
            data = bytearray((count + 7) // 8)
            for k, b in enumerate(bits):
                if b:
                    data[k // 8] |= 1 << (k % 8)
            reply = bytes([fc, len(data)]) + bytes(data)
        else:
            reply = pdu[:5]                                  # a write: the echo
        return struct.pack(">HHHB", tid, 0, len(reply) + 1, unit) + reply

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(writer)
        rng = self.rng
        try:
            while True:
                head = await reader.readexactly(7)
                tid, _pid, length, unit = struct.unpack(">HHHB", head)
                pdu = await reader.readexactly(max(length - 1, 0))
                self.requests += 1
                how = self.script.popleft() if self.script else "good"
                good = self._good(tid, unit, pdu)
                if how == "good":
                    out = good
                elif how == "random":
                    out = rng.randbytes(rng.randint(1, 300))
                elif how == "wrong_tid":
                    out = struct.pack(">H", tid ^ 0x5A5A) + good[2:]
                elif how == "wrong_unit":
                    out = good[:6] + bytes([(unit + 1) % 256]) + good[7:]
                elif how == "wrong_fc":
                    out = good[:7] + bytes([good[7] ^ 0x07]) + good[8:]
                elif how in ("truncated", "truncated_close"):
                    out = good[:rng.randint(1, len(good) - 1)]
                elif how == "garbage_pdu":
                    junk = rng.randbytes(rng.randint(1, 250))
                    out = struct.pack(">HHHB", tid, 0, len(junk) + 1, unit) + junk
                elif how == "exception":
                    code = rng.randint(0, 255)
                    out = struct.pack(">HHHBBB", tid, 0, 3, unit, pdu[0] | 0x80, code)
                elif how in ("short_count", "long_count"):
                    fc, _a, count = struct.unpack(">BHH", pdu[:5])
                    n = max(count - 1, 0) if how == "short_count" else count + 3
                    body = bytes([fc, 2 * n]) + b"\x00\x07" * n
                    out = struct.pack(">HHHB", tid, 0, len(body) + 1, unit) + body
                elif how == "huge_length":
                    out = struct.pack(">HHHB", tid, 0, 0xFFFF, unit) + good[7:]
                elif how == "twice":
                    out = good + good
                elif how == "late":
                    await asyncio.sleep(TIMEOUT_S * 3)
                    out = good
                elif how == "silent":
                    continue
                else:                                        # close
                    break
                writer.write(out)
                await writer.drain()
                if how == "truncated_close":
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()
            self._tasks.discard(task)
