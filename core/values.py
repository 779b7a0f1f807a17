"""The decorator of the values that flow through the core per task: states, records, events,
effects, requests.

They are immutable, as frozen dataclasses are, but the immutability is the type checker's to
keep (mypy refuses an assignment to a field, as for ``frozen=True``; core/ and node/ are checked
strict): a frozen dataclass sets each field through ``object.__setattr__``, which made
constructing a 13-field TaskState 7x slower than a plain slotted one, and a node builds several
of these per task. Equality and hashing are a frozen dataclass's (by fields).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TypeVar, dataclass_transform

T = TypeVar("T")


@dataclass_transform(frozen_default=True, field_specifiers=(field,))
def value(cls: type[T]) -> type[T]:
    """``@dataclass(frozen=True, slots=True)`` to a type checker; at run time the same class
    without the per-field ``object.__setattr__`` of frozen construction."""
    return dataclass(slots=True, unsafe_hash=True)(cls)
