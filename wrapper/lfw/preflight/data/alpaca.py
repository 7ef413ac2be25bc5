"""Alpaca-style rows (instruction / input / output, optional history and system), as LLaMA-Factory's
AlpacaDatasetConverter reads them: history pairs, then instruction and input joined by a newline, then the answer,
a chosen/rejected pair, or a KTO answer with its label."""

from __future__ import annotations

from lfw.preflight.data.fields import RowReporter, type_name
from lfw.preflight.data.layout import DataFormat
from lfw.preflight.data.preference import kto_tag, pair_str, same_pair
from lfw.preflight.data.samples import Conversation


def alpaca_conversation(r: RowReporter, row: dict, fmt: DataFormat) -> Conversation:
    """The row as a conversation; problems go to `r` (the caller keeps only rows without new errors)."""
    c = fmt.columns
    prompt = _history(r, row, c.get("history"))
    prompt.append(("user", _user_text(r, row, c.get("prompt"), c.get("query"))))
    system = r.opt_str(row, c.get("system"))
    if fmt.kto:
        label = kto_tag(r, row, fmt)
        answer = r.req_str(row, c.get("response"), "the answer")
        return Conversation(system, "", prompt, [[("assistant", answer or "")]], label)
    if fmt.ranking:
        chosen = pair_str(r, row, c.get("chosen"), "chosen")
        rejected = pair_str(r, row, c.get("rejected"), "rejected")
        if chosen is not None and rejected is not None:
            same_pair(r, chosen, rejected)
        return Conversation(system, "", prompt, [[("assistant", chosen or "")], [("assistant", rejected or "")]])
    answer = r.req_str(row, c.get("response"), "the answer")
    if answer is None and isinstance(row.get(c.get("response") or ""), list):
        r.err(
            "wrong-type",
            "the answer is a list; LLaMA-Factory treats the row as unsupervised and drops it",
            "store one answer string per row",
        )
    return Conversation(system, "", prompt, [[("assistant", answer or "")]])


def _history(r: RowReporter, row: dict, key: str | None) -> list[tuple[str, str]]:
    """Earlier turns: a list of [query, answer] string pairs, unpacked by LLaMA-Factory into exactly two."""
    history = row.get(key) if key else None
    if history is None:
        return []
    if not isinstance(history, list):
        r.err(
            "wrong-type",
            f"{key!r} is a {type_name(history)}, expected a list of [query, answer]",
            'write history as [["q1", "a1"], ["q2", "a2"]]',
        )
        return []
    turns: list[tuple[str, str]] = []
    for j, pair in enumerate(history):
        if not (isinstance(pair, list) and len(pair) == 2 and all(isinstance(x, str) for x in pair)):
            r.err(
                "wrong-type",
                f"{key}[{j}] must be a pair of strings [query, answer]",
                "LLaMA-Factory unpacks each history item into exactly two strings",
            )
            break
        turns += [("user", pair[0]), ("assistant", pair[1])]
    return turns


def _user_text(r: RowReporter, row: dict, pk: str | None, qk: str | None) -> str:
    """Instruction and input joined with a newline, as LLaMA-Factory does; an empty prompt is an error."""
    parts, bad_type = [], False
    for key in (pk, qk):
        value = row.get(key) if key else None
        if value is None or value == "":
            continue
        if not isinstance(value, str):
            r.err("wrong-type", f"{key!r} is a {type_name(value)}, expected a string", f"store {key!r} as text")
            bad_type = True
            continue
        parts.append(value)
    user = "\n".join(parts)
    if not user.strip() and not bad_type:
        _empty_prompt(r, row, pk, qk)
    return user


def _empty_prompt(r: RowReporter, row: dict, pk: str | None, qk: str | None) -> None:
    has_query = bool(qk and row.get(qk))
    if pk and pk not in row and not has_query:
        r.err("missing-field", f"missing field {pk!r} (the prompt)", f"add {pk!r} to every row")
    elif pk and pk in row and row[pk] is None and not has_query:
        r.err("null-field", f"{pk!r} is null (the prompt)", f"fill {pk!r} or drop the row")
    else:
        both = f"{pk!r} and {qk!r} are" if qk else f"{pk!r} is"
        r.err("empty-field", f"empty prompt: {both} empty", "fill the instruction or drop the row")
