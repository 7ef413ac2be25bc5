"""What every doctor check returns: a named verdict (ok / warn / fail) and, when not ok, the fix."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

OK, WARN, FAIL = "ok", "warn", "fail"

# dist name -> installed version or None; checks take one so tests can fake an environment.
VersionOf = Callable[[str], "str | None"]


@dataclass(frozen=True)
class Check:
    name: str
    status: str
    detail: str
    fix: str = ""
