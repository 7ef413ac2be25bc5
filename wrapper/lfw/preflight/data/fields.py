"""Checks of single fields of the row being checked; every problem is filed at that row's place.

The layout modules (alpaca, messages, preference, media) take a `RowReporter` and report through it, so they never
carry the row number or line themselves.
"""

from __future__ import annotations

from typing import Any

from lfw.preflight.data.readers import Record
from lfw.preflight.data.report import Sink


def type_name(value: Any) -> str:
    """A JSON type name for messages: null, boolean, number, string, list, object."""
    if value is None:
        return "null"
    return {bool: "boolean", int: "number", float: "number", str: "string", list: "list", dict: "object"}.get(
        type(value), type(value).__name__
    )


class RowReporter:
    """Files problems at the current row (`rec`) and checks the string fields every layout has."""

    def __init__(self, sink: Sink) -> None:
        self.sink = sink
        self.rec = Record(0, None, None)

    def err(self, code: str, message: str, fix: str = "") -> None:
        self.sink.add("error", code, message, fix, self.rec.index, self.rec.line)

    def warn(self, code: str, message: str, fix: str = "") -> None:
        self.sink.add("warning", code, message, fix, self.rec.index, self.rec.line)

    def req_str(self, row: dict, key: str | None, what: str, allow_empty: bool = False) -> str | None:
        """A required string field: missing, null, non-string and empty are each reported as such."""
        if key is None:
            return None
        if key not in row:
            self.err("missing-field", f"missing field {key!r} ({what})", f"add {key!r} to every row")
        elif row[key] is None:
            self.err("null-field", f"{key!r} is null ({what})", f"fill {key!r} or drop the row")
        elif not isinstance(row[key], str):
            self.err(
                "wrong-type",
                f"{key!r} is a {type_name(row[key])}, expected a string ({what})",
                f"store {key!r} as text",
            )
        elif not allow_empty and not row[key].strip():
            self.err("empty-field", f"{key!r} is empty ({what})", f"fill {key!r} or drop the row")
        else:
            return row[key]
        return None

    def opt_str(self, row: dict, key: str | None) -> str:
        """An optional string field: absent or null is fine, another type is not."""
        if key is None or row.get(key) is None:
            return ""
        if not isinstance(row[key], str):
            self.err(
                "wrong-type",
                f"{key!r} is a {type_name(row[key])}, expected a string",
                f"store {key!r} as text",
            )
            return ""
        return row[key]
