"""``StrEnum``: enum members that are their own string values (``Rung.FULL == "full"``, ``f"{Rung.FULL}"`` is
``full``), so that the names clients and the log already read stay exactly as they were. Python 3.11's
``enum.StrEnum``; the same thing spelled out for 3.10."""

from __future__ import annotations

try:
    from enum import StrEnum
except ImportError:  # Python 3.10
    from enum import Enum

    class StrEnum(str, Enum):  # type: ignore[no-redef]
        def __str__(self) -> str:
            return str(self.value)

        def __format__(self, spec: str) -> str:
            return format(str(self.value), spec)

__all__ = ["StrEnum"]
