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


CONFIG = web.AppKey("config", NodeConfig)
STORE = web.AppKey("store", "RedisStore")
RUNTIME = web.AppKey("runtime", RuntimeView)
METRICS = web.AppKey("metrics", "Metrics")
