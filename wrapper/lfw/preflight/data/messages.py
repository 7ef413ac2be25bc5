"""Message-list rows (sharegpt from/value, openai role/content), as LLaMA-Factory's Sharegpt and OpenAI
converters read them: an optional first system message, then turns that strictly alternate user -> assistant
(observation and function call count as user and assistant), ending with the answer; preference rows end with
the user turn and carry the answers in chosen/rejected."""

from __future__ import annotations

import json
from typing import Any

from lfw.preflight.data.fields import RowReporter, type_name
from lfw.preflight.data.layout import DataFormat
from lfw.preflight.data.preference import kto_tag, pair_message, same_pair
from lfw.preflight.data.samples import Conversation

Turn = tuple[int, str, str]  # (index in the message list, role, content)

_ROLE_TAGS = (
    ("user_tag", "user"),
    ("assistant_tag", "assistant"),
    ("observation_tag", "observation"),
    ("function_tag", "function"),
    ("system_tag", "system"),
)


def messages_conversation(r: RowReporter, row: dict, fmt: DataFormat) -> Conversation | None:
    """The row as a conversation, or None after the first problem that makes LLaMA-Factory drop it."""
    key = fmt.columns.get("messages") or "conversations"
    msgs = _message_list(r, row, key)
    parsed = parse_messages(r, key, msgs, fmt) if msgs is not None else None
    if parsed is None:
        return None
    roles = {fmt.tags.get(tag): role for tag, role in _ROLE_TAGS if fmt.tags.get(tag)}
    unknown = next(((j, role) for j, role, _ in parsed if role not in roles), None)
    if unknown is not None:
        known = ", ".join(repr(name) for name in roles)
        r.err(
            "unknown-role",
            f"{key}[{unknown[0]}].{fmt.tags.get('role_tag')} is {unknown[1]!r}; this file uses {known}",
            "use one role vocabulary in the whole file (human/gpt or user/assistant)",
        )
        return None
    sys_tag = fmt.tags.get("system_tag")
    if sys_tag and parsed[0][1] == sys_tag:
        system, parsed = parsed[0][2], parsed[1:]
    else:
        system = r.opt_str(row, fmt.columns.get("system"))
    turns = [(j, roles[name], content) for j, name, content in parsed]
    if fmt.formatting == "openai":
        turns = merge_tool_messages(turns)
    if not _alternates(r, key, turns, {j: name for j, name, _ in parsed}, fmt):
        return None
    pairs = [(role, content) for _, role, content in turns]
    if fmt.ranking:
        return _preference(r, row, key, system, pairs, fmt)
    return _answered(r, row, system, pairs, fmt)


def _message_list(r: RowReporter, row: dict, key: str) -> list | None:
    msgs = row.get(key)
    if key not in row:
        other = next((k for k in ("conversations", "messages", "instruction") if k in row and k != key), None)
        hint = f" (the row has {other!r}: mixed formats in one file?)" if other else ""
        r.err("missing-field", f"missing field {key!r}{hint}", f"every row needs a {key!r} list of messages")
        return None
    if not isinstance(msgs, list):
        r.err(
            "null-field" if msgs is None else "wrong-type",
            f"{key!r} is a {type_name(msgs)}, expected a list of messages",
            "CSV cannot hold message lists: use JSON or JSONL" if isinstance(msgs, str) else "",
        )
        return None
    if not msgs:
        r.err("empty-field", f"{key!r} is an empty list", "drop the row or add the conversation")
        return None
    return msgs


def parse_messages(r: RowReporter, key: str, msgs: list, fmt: DataFormat) -> list[Turn] | None:
    """(index, role name as written, content) per message; None at the first malformed one."""
    out: list[Turn] = []
    for j, m in enumerate(msgs):
        parsed = _parse_message(r, f"{key}[{j}]", m, fmt)
        if parsed is None:
            return None
        out.append((j, *parsed))
    return out


def _parse_message(r: RowReporter, where: str, m: Any, fmt: DataFormat) -> tuple[str, str] | None:
    role_tag, content_tag = fmt.tags.get("role_tag") or "from", fmt.tags.get("content_tag") or "value"
    if not isinstance(m, dict):
        r.err("wrong-type", f"{where} is a {type_name(m)}, expected an object with {role_tag!r} and {content_tag!r}")
        return None
    if role_tag not in m:
        other = ("role", "content") if role_tag == "from" else ("from", "value")
        hint = f" (it uses {other[0]!r}/{other[1]!r}; this file uses {role_tag!r}/{content_tag!r})"
        r.err(
            "missing-field",
            f"{where} has no {role_tag!r}" + (hint if other[0] in m else ""),
            "use one tag style in the whole file",
        )
        return None
    role = m[role_tag]
    if not isinstance(role, str):
        r.err("wrong-type", f"{where}.{role_tag} is a {type_name(role)}, expected a string")
        return None
    calls = m.get("tool_calls") if fmt.formatting == "openai" else None
    if calls:
        return _tool_calls(r, where, calls, fmt)
    content = _content(r, where, m, role, fmt)
    return None if content is None else (role, content)


def _tool_calls(r: RowReporter, where: str, calls: Any, fmt: DataFormat) -> tuple[str, str] | None:
    """An openai assistant message with tool_calls: a function-call turn holding the calls as JSON."""
    if not (
        isinstance(calls, list) and all(isinstance(x, dict) and isinstance(x.get("function"), dict) for x in calls)
    ):
        r.err("wrong-type", f'{where}.tool_calls must be a list of {{"function": {{...}}}}')
        return None
    role = fmt.tags.get("function_tag") or "function_call"
    return role, json.dumps([x["function"] for x in calls], ensure_ascii=False)


def _content(r: RowReporter, where: str, m: dict, role: str, fmt: DataFormat) -> str | None:
    content_tag = fmt.tags.get("content_tag") or "value"
    content = m.get(content_tag)
    if content_tag not in m:
        r.err("missing-field", f"{where} has no {content_tag!r}", f"every message needs {content_tag!r}")
    elif content is None:
        r.err("null-field", f"{where}.{content_tag} is null", "fill the message or drop it")
    elif not isinstance(content, str):
        r.err(
            "wrong-type",
            f"{where}.{content_tag} is a {type_name(content)}, expected a string",
            "multimodal content goes in the text as <image> tags plus an images list",
        )
    elif not content.strip() and role in (fmt.tags.get("user_tag"), fmt.tags.get("assistant_tag")):
        r.err("empty-field", f"{where}.{content_tag} is empty ({role})", "fill the message or drop the row")
    else:
        return content
    return None


def _alternates(r: RowReporter, key: str, turns: list[Turn], original: dict[int, str], fmt: DataFormat) -> bool:
    """Turns alternate user -> assistant after the optional first system message (else LLaMA-Factory drops it)."""
    user, assistant = fmt.tags.get("user_tag"), fmt.tags.get("assistant_tag")
    for k, (j, role, _) in enumerate(turns):
        want = ("user", "observation") if k % 2 == 0 else ("assistant", "function")
        if role == "system":
            r.err(
                "role-order",
                f"{key}[{j}] is a system message; only the first message may be system",
                "merge it into the first system message or drop it",
            )
            return False
        if role not in want:
            expect = f"{user!r} (or observation)" if k % 2 == 0 else f"{assistant!r} (or function call)"
            r.err(
                "role-order",
                f"{key}[{j}] is {original.get(j, role)!r} but {expect} was expected: turns must "
                f"alternate {user} -> {assistant} after an optional first system message",
                "merge consecutive messages of a speaker or fix the roles (LLaMA-Factory drops the row)",
            )
            return False
    return True


def _preference(
    r: RowReporter, row: dict, key: str, system: str, pairs: list[tuple[str, str]], fmt: DataFormat
) -> Conversation | None:
    """A shared prompt ending with the user turn, and the two answers in chosen/rejected."""
    if len(pairs) % 2 == 0:
        r.err(
            "message-count",
            f"for preference data {key!r} must end with a {fmt.tags.get('user_tag')!r} turn "
            f"(it has {len(pairs)} turns)",
            "keep the shared prompt in the conversation and put only the final answers in chosen/rejected",
        )
        return None
    chosen = pair_message(r, row, fmt.columns.get("chosen"), "chosen", fmt)
    rejected = pair_message(r, row, fmt.columns.get("rejected"), "rejected", fmt)
    if chosen is None or rejected is None:
        return None
    same_pair(r, chosen[1], rejected[1])
    return Conversation(system, "", pairs, [[chosen], [rejected]])


def _answered(
    r: RowReporter, row: dict, system: str, pairs: list[tuple[str, str]], fmt: DataFormat
) -> Conversation | None:
    """A conversation that ends with the answer the model learns (and, for KTO, its label)."""
    if not pairs:
        r.err("message-count", "only a system message: no turns to train on", "add a user and an assistant turn")
        return None
    if len(pairs) % 2 == 1:
        r.err(
            "message-count",
            f"the conversation ends with a {fmt.tags.get('user_tag')!r} turn; the last turn must be "
            f"{fmt.tags.get('assistant_tag')!r} (LLaMA-Factory drops this row)",
            "add the answer or drop the last message",
        )
        return None
    label = kto_tag(r, row, fmt) if fmt.kto else None
    return Conversation(system, "", pairs[:-1], [pairs[-1:]], label)


def merge_tool_messages(turns: list[Turn]) -> list[Turn]:
    """OpenAI layout: consecutive tool results form one observation turn, joined as LLaMA-Factory joins them."""
    out: list[Turn] = []
    for j, role, content in turns:
        if role == "observation" and out and out[-1][1] == "observation":
            out[-1] = (out[-1][0], role, out[-1][2] + "\n</tool_response>\n<tool_response>\n" + content)
        else:
            out.append((j, role, content))
    return out
