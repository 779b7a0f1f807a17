"""A TCP proxy per node in front of the one Redis, so a test can cut one node off the store.

Cut: the node's open connections are closed and new ones are closed as soon as accepted (the
node sees its Redis go away, as behind a broken link), while the other nodes keep theirs.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading

from tests.cluster.raftproxy import pipe_both


class StoreProxies:
    def __init__(self, listen_ports: list[int], target_port: int) -> None:
        self.listen_ports = listen_ports
        self.target_port = target_port
        self._cut: set[int] = set()
        self._conns: dict[int, list[asyncio.StreamWriter]] = {
            i: [] for i in range(len(listen_ports))
        }
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._servers: list[asyncio.base_events.Server] = []

    def url(self, index: int) -> str:
        return f"redis://127.0.0.1:{self.listen_ports[index]}/0"

    def start(self) -> StoreProxies:
        self._thread.start()
        for i, port in enumerate(self.listen_ports):
            fut = asyncio.run_coroutine_threadsafe(self._serve(i, port), self._loop)
            self._servers.append(fut.result(timeout=5))
        return self

    async def _serve(self, index: int, port: int) -> asyncio.base_events.Server:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await self._pipe(index, reader, writer)

        return await asyncio.start_server(handle, "127.0.0.1", port)

    async def _pipe(
        self, index: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        with self._lock:
            cut = index in self._cut
        if cut:
            writer.close()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.close()
            return
        with self._lock:
            self._conns[index] += [writer, up_writer]
        await pipe_both(reader, writer, up_reader, up_writer)

    def cut(self, index: int) -> None:
        with self._lock:
            self._cut.add(index)
            doomed, self._conns[index] = self._conns[index], []
        for w in doomed:
            self._loop.call_soon_threadsafe(w.close)

    def heal(self) -> None:
        with self._lock:
            self._cut.clear()

    def close(self) -> None:
        async def shutdown() -> None:
            for server in self._servers:
                server.close()
            with self._lock:
                conns = [w for ws in self._conns.values() for w in ws]
            for w in conns:
                w.close()
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
