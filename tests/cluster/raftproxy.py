"""A TCP proxy in front of each Raft member that the test can cut between chosen members.

Each member advertises its proxy's address (``--raft-advertise``) and binds its real port behind
it, so every Raft connection to a member passes through that member's proxy. pysyncobj opens a
connection by sending the connecting member's own address as its first frame (a 4-byte length,
then zlib-compressed pickle); the proxy reads that frame to learn who is calling, and refuses or
drops connections between members that the test has cut apart.
"""

from __future__ import annotations

import asyncio
import contextlib
import pickle
import struct
import threading
import zlib
from collections.abc import Iterable

# The first frame is a short address string; anything longer is not pysyncobj talking.
FIRST_FRAME_BYTES_MAX = 4096


async def _copy(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
    try:
        while data := await r.read(65536):
            w.write(data)
            await w.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        w.close()


async def pipe_both(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    up_reader: asyncio.StreamReader,
    up_writer: asyncio.StreamWriter,
) -> None:
    """Copy both ways until either side closes (the test proxies' plumbing)."""
    await asyncio.gather(_copy(reader, up_writer), _copy(up_reader, writer))


class RaftProxies:
    def __init__(self, routes: dict[str, int]) -> None:
        """``routes``: advertised address (127.0.0.1:proxy_port) -> the member's real port."""
        self.routes = routes
        self._cut: set[frozenset[str]] = set()
        self._conns: list[tuple[str, str, asyncio.StreamWriter, asyncio.StreamWriter]] = []
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._servers: list[asyncio.base_events.Server] = []
        self._lock = threading.Lock()

    def start(self) -> RaftProxies:
        self._thread.start()
        for addr, port in self.routes.items():
            fut = asyncio.run_coroutine_threadsafe(self._serve(addr, port), self._loop)
            self._servers.append(fut.result(timeout=5))
        return self

    async def _serve(self, addr: str, target_port: int) -> asyncio.base_events.Server:
        listen_port = int(addr.rsplit(":", 1)[1])

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await self._pipe(addr, target_port, reader, writer)

        return await asyncio.start_server(handle, "127.0.0.1", listen_port)

    async def _pipe(
        self,
        dst: str,
        target_port: int,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        try:
            head = await asyncio.wait_for(reader.readexactly(4), 5)
            (size,) = struct.unpack("i", head)
            if not 0 < size <= FIRST_FRAME_BYTES_MAX:
                raise ValueError("not a pysyncobj handshake")
            body = await asyncio.wait_for(reader.readexactly(size), 5)
            src = pickle.loads(zlib.decompress(body))  # our own members' address strings
            if not isinstance(src, str) or self.is_cut(src, dst):
                raise ConnectionError("cut")
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", target_port)
        except (Exception, asyncio.CancelledError):
            writer.close()
            return
        up_writer.write(head + body)
        with self._lock:
            self._conns.append((src, dst, writer, up_writer))
        await pipe_both(reader, writer, up_reader, up_writer)

    def is_cut(self, a: str, b: str) -> bool:
        with self._lock:
            return frozenset((a, b)) in self._cut

    def partition(self, side_a: Iterable[str], side_b: Iterable[str]) -> None:
        """Cut every link between the two sides (advertised addresses), both ways."""
        pairs = {frozenset((a, b)) for a in side_a for b in side_b}
        with self._lock:
            self._cut |= pairs
            doomed = [c for c in self._conns if frozenset((c[0], c[1])) in pairs]
        for _, _, w1, w2 in doomed:
            self._loop.call_soon_threadsafe(w1.close)
            self._loop.call_soon_threadsafe(w2.close)

    def heal(self) -> None:
        with self._lock:
            self._cut.clear()

    def close(self) -> None:
        async def shutdown() -> None:
            for server in self._servers:
                server.close()
            with self._lock:
                conns = list(self._conns)
            for _, _, w1, w2 in conns:
                w1.close()
                w2.close()
            for server in self._servers:
                await server.wait_closed()
            current = asyncio.current_task()
            tasks = [t for t in asyncio.all_tasks() if t is not current]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(shutdown(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
        if not self._thread.is_alive():
            self._loop.close()
