"""Task priorities. Lower value runs first; the values are part of the wire and storage format."""

from enum import IntEnum


class Priority(IntEnum):
    HIGH = 0
    MEDIUM = 1
    LOW = 2

    @classmethod
    def parse(cls, name: str) -> "Priority":
        """Map the API's lowercase name to a Priority; ValueError names the choices."""
        try:
            return cls[name.upper()]
        except KeyError:
            raise ValueError(f"unknown priority {name!r}; use one of high, medium, low") from None

    @property
    def label(self) -> str:
        return self.name.lower()


PRIORITY_LEVELS = len(Priority)
# Each priority's label by its value: what a per-task path looks up instead of building the
# enum member and its name (the value is what records and the heap hold).
PRIORITY_LABELS: tuple[str, ...] = tuple(p.label for p in sorted(Priority))
