"""The answers of preference and KTO rows: chosen/rejected pairs (alpaca strings or sharegpt message objects)
and the boolean kto tag, checked as LLaMA-Factory's converters read them."""

from __future__ import annotations

from lfw.preflight.data.fields import RowReporter, type_name
from lfw.preflight.data.layout import DataFormat


def pair_str(r: RowReporter, row: dict, key: str | None, what: str) -> str | None:
    """An alpaca-style answer of a pair: one string."""
    value = row.get(key) if key else None
    if isinstance(value, dict | list) and key in row:
        r.err(
            "wrong-type",
            f"{key!r} is a {type_name(value)}; alpaca-style preference rows need a string",
            "store the answer text, or use format preference_sharegpt (prompt in conversations)",
        )
        return None
    return r.req_str(row, key, f"the {what} answer")


def same_pair(r: RowReporter, chosen: str, rejected: str) -> None:
    if chosen.strip() == rejected.strip():
        r.err(
            "chosen-equals-rejected",
            "chosen and rejected are identical: the pair teaches nothing",
            "fix the pair or drop the row",
        )


def kto_tag(r: RowReporter, row: dict, fmt: DataFormat) -> bool | None:
    """A KTO row's label: a JSON boolean, else LLaMA-Factory drops the row."""
    key = fmt.columns.get("kto_tag")
    value = row.get(key) if key else None
    if isinstance(value, bool):
        return value
    got = "it is missing" if key not in row else f"got a {type_name(value)} ({value!r})"[:80]
    r.err(
        "kto-tag",
        f"kto tag {key!r} must be true or false; {got}",
        "LLaMA-Factory drops KTO rows without a JSON boolean label",
    )
    return None


def pair_message(r: RowReporter, row: dict, key: str | None, what: str, fmt: DataFormat) -> tuple[str, str] | None:
    """A sharegpt-style answer message as (role, content), the role as LLaMA-Factory maps it."""
    t = fmt.tags
    role_tag, content_tag = t.get("role_tag") or "from", t.get("content_tag") or "value"
    shape = f"{{{role_tag!r}: {t.get('assistant_tag')!r}, {content_tag!r}: ...}}"
    if not key or key not in row or row[key] is None:
        code = "missing-field" if not key or key not in row else "null-field"
        state = "missing" if code == "missing-field" else "null"
        r.err(code, f"{what} is {state}", f"every preference row needs {what!r}")
        return None
    value = row[key]
    if isinstance(value, list):
        r.err(
            "wrong-type",
            f"{what!r} is a list of messages (TRL style); LLaMA-Factory wants one message object",
            f"put the shared prompt in the conversation and only the final answer in {what}: {shape}",
        )
        return None
    if not isinstance(value, dict):
        r.err(
            "wrong-type",
            f"{what!r} is a {type_name(value)}; sharegpt-style preference rows need a message object {shape}",
            "wrap the answer in a message object, or use format preference (alpaca-style strings)",
        )
        return None
    return _answer(r, value, what, fmt)


def _answer(r: RowReporter, value: dict, what: str, fmt: DataFormat) -> tuple[str, str] | None:
    t = fmt.tags
    role_tag, content_tag = t.get("role_tag") or "from", t.get("content_tag") or "value"
    role, content = value.get(role_tag), value.get(content_tag)
    if role not in (t.get("assistant_tag"), t.get("function_tag")) or not isinstance(role, str):
        r.err(
            "answer-role",
            f"{what}.{role_tag} is {role!r}, expected {t.get('assistant_tag')!r}",
            "chosen and rejected are assistant answers",
        )
        return None
    if not isinstance(content, str) or not content.strip():
        state = "empty" if isinstance(content, str) else f"a {type_name(content)}"
        r.err(
            "empty-field" if state == "empty" else "wrong-type",
            f"{what}.{content_tag} is {state}",
            "give both answers as non-empty text",
        )
        return None
    return ("assistant" if role == t.get("assistant_tag") else "function"), content
