"""Typed keys of the aiohttp application: each resource the handlers reach."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from aiohttp import web

from node.config import NodeConfig

if TYPE_CHECKING:
    from core.store_model import TaskRecord
    from node.metrics import Metrics
    from node.store import RedisStore


class RuntimeView(Protocol):
    """What the HTTP layer needs from the node's runtime (node/runtime.py implements it)."""

    node_id: str

    def notify_changed(self, records: list[TaskRecord]) -> None:
        """Tasks were created or changed through this node: wake the local leader at once."""

    def cluster(self) -> dict[str, Any]:
        """The body of GET /v1/cluster: leader, term, members."""

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        """(ready, checks) for GET /readyz: Redis reachable, a leader known, dispatch alive."""

    def accepting(self) -> bool:
        """False while shutting down: refuse new submissions with 503."""

    async def change_membership(self, action: str, raft_addr: str) -> tuple[int, dict[str, Any]]:
        """Add ("add") or remove ("remove") a Raft member; (HTTP status, JSON body)."""


# Annotated rather than given a type argument: the store and metrics modules are only imported
# for type checking (no import cycle), and a Protocol is not a concrete class that AppKey takes.
CONFIG = web.AppKey("config", NodeConfig)
STORE: web.AppKey[RedisStore] = web.AppKey("store")
RUNTIME: web.AppKey[RuntimeView] = web.AppKey("runtime")
METRICS: web.AppKey[Metrics] = web.AppKey("metrics")
