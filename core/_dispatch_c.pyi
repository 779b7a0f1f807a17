"""Type stub of the compiled dispatch loop; its twin core/_dispatch_py.py documents the rules."""

from collections.abc import Mapping, Sequence

from core.dispatch_types import DispatchQueue, NodeSlots

def dispatch(
    queue: DispatchQueue,
    nodes: Sequence[NodeSlots],
    type_of: Mapping[str, str],
    *,
    batch_max: int,
    scan_max: int,
) -> list[tuple[str, str]]: ...
