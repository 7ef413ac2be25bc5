"""Benchmarks for `lfw eval`: local files only, one small adapter class per kind of benchmark.

Evaluation harnesses that fetch benchmarks from a hub break on offline machines, hub caches, lock files and
per-subject configs (seed 000 lost a day to this). Here a benchmark is a local file or folder that the user
already has — JSONL, JSON, Parquet, CSV, or a ``datasets`` ``save_to_disk`` folder — and an adapter that
says how to turn one row into a prompt and how to score the answer:

* ``mc``: multiple choice in MMLU / ARC / C-Eval style (question, choices A-D, answer letter), scored by
  the log-likelihood of each option letter and by the letter the model generates;
* ``mc-text``: the same rows scored by the log-likelihood of each choice's text (ARC/HellaSwag style),
  for models that were never taught to answer with a letter;
* ``gsm8k``: grade-school math (question, solution ending in ``#### N``), answers checked with math-verify;
* ``gen``: open generation against references (ROUGE, Chinese-aware, and BLEU);
* ``alpaca`` / ``sharegpt``: the user's own training-format files, scored against the reference answer.

A benchmark spec on the command line is ``[LABEL=][KIND:]PATH``, or a NAME found as ``NAME.jsonl`` (or
.json/.parquet/.csv/folder) in the benchmark folder (``--bench-dir``, ``$LFW_BENCH_DIR``, ``./benchmarks``);
``PATH@SPLIT`` picks a split of a folder. Without KIND the adapter is guessed from the name (mmlu, ceval,
arc, gsm8k, ...) or from the columns. Adding a benchmark means writing one ``Benchmark`` subclass with
``detect``/``load``/``prompt``/``score`` and listing it in ``KINDS``.

File reading (local files and folders only) is in ``lfw.post.eval.records``.
"""

from __future__ import annotations

import os
import random
import string
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from lfw.infra.errors import ProblemCollector, UserError
from lfw.post.eval import scoring
from lfw.post.eval.records import DATA_SUFFIXES, read_records

__all__ = [
    "Item",
    "Prompt",
    "Output",
    "Benchmark",
    "KINDS",
    "resolve",
]

NAME_HINTS = {
    "mmlu": "mc",
    "cmmlu": "mc",
    "ceval": "mc",
    "c-eval": "mc",
    "c_eval": "mc",
    "arc": "mc",
    "gsm8k": "gsm8k",
}


# --------------------------------------------------------------------------------------------------------
# Adapters


@dataclass
class Item:
    """One benchmark question, normalised by an adapter's ``load``."""

    id: str
    question: str
    reference: Any  # what ``score`` compares against: a letter, a number, a list of references...
    choices: list[str] = field(default_factory=list)
    messages: list[dict[str, str]] = field(default_factory=list)  # earlier turns (sharegpt, alpaca history)
    system: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class Prompt:
    """What the worker is asked: chat messages, and continuations whose log-probability it returns."""

    messages: list[dict[str, str]]
    continuations: list[str] | None = None


@dataclass
class Output:
    """What the worker answered for one item."""

    prediction: str
    choice_logprobs: list[float] | None = None


def _text(value: Any) -> str:
    return "" if value is None else str(value)


def _first(row: dict[str, Any], *keys: str) -> Any:
    for key in keys:
        if key in row and row[key] not in (None, ""):
            return row[key]
    return None


class Benchmark:
    """Base adapter: a named list of items, a prompt per item, a score per answer.

    Subclasses set ``kind``, ``primary`` (the headline metric), ``max_new_tokens`` and implement
    ``detect`` (does this row look like mine?), ``load`` (row -> Item, ValueError when malformed),
    ``prompt`` and ``score``. ``aggregate`` averages per-sample scores; override it for corpus metrics.
    """

    kind: ClassVar[str] = ""
    primary: ClassVar[str] = ""
    max_new_tokens: ClassVar[int] = 256
    description: ClassVar[str] = ""

    def __init__(self, name: str, source: str, rows: list[dict[str, Any]]) -> None:
        self.name = name
        self.source = source
        problems = ProblemCollector()
        self.items: list[Item] = []
        for index, row in enumerate(rows):
            try:
                self.items.append(self.load(row, index))
            except (ValueError, KeyError, TypeError) as err:
                problems.add(f"{source} row {index}", str(err) or type(err).__name__)
                if len(problems.problems) >= 10:
                    break
        problems.raise_if_any(f"{source}: rows that do not fit the {self.kind!r} benchmark kind")
        if not self.items:
            raise UserError(f"{source}: the benchmark has no rows")

    @classmethod
    def detect(cls, row: dict[str, Any]) -> bool:
        raise NotImplementedError

    def load(self, row: dict[str, Any], index: int) -> Item:
        raise NotImplementedError

    def prompt(self, item: Item) -> Prompt:
        raise NotImplementedError

    def score(self, item: Item, output: Output) -> dict[str, float]:
        raise NotImplementedError

    def aggregate(self, items: list[Item], outputs: list[Output], scores: list[dict[str, float]]) -> dict:
        """Mean of each per-sample metric (metrics missing for some samples average over the rest)."""
        names: list[str] = []
        for sample in scores:
            names += [n for n in sample if n not in names]
        return {n: sum(s[n] for s in scores if n in s) / max(1, sum(n in s for s in scores)) for n in names}

    def messages(self, item: Item, user: str) -> list[dict[str, str]]:
        """System prompt, earlier turns, then this question."""
        head = [{"role": "system", "content": item.system}] if item.system else []
        return head + item.messages + [{"role": "user", "content": user}]


class MultipleChoice(Benchmark):
    """MMLU / ARC / C-Eval rows: the model sees the lettered options and answers with a letter.

    Scored twice: ``acc_loglik`` takes the option letter with the highest log-probability right after the
    prompt (MMLU's original method: needs no parsing, works for base models), ``acc_gen`` the letter found
    in the greedy answer (what a chat user sees).
    """

    kind = "mc"
    primary = "acc_loglik"
    max_new_tokens = 32
    description = "multiple choice (MMLU/ARC/C-Eval): log-likelihood of the letters + generated letter"

    @classmethod
    def detect(cls, row: dict[str, Any]) -> bool:
        has_choices = any(k in row for k in ("choices", "options")) or all(k in row for k in "ABCD")
        return "question" in row and has_choices and any(k in row for k in ("answer", "answerKey", "label"))

    def load(self, row: dict[str, Any], index: int) -> Item:
        question = _first(row, "question", "query")
        raw = _first(row, "choices", "options")
        if isinstance(question, dict):  # ARC's original JSONL: {"stem": ..., "choices": [{label, text}]}
            raw = {
                "text": [c.get("text") for c in question.get("choices", [])],
                "label": [c.get("label") for c in question.get("choices", [])],
            }
            question = question.get("stem")
        question = _text(question)
        labels: list[str] = []
        if isinstance(raw, dict):  # ARC: {"text": [...], "label": ["A", ...] or ["1", ...]}
            texts, labels = list(raw.get("text", [])), [str(x) for x in raw.get("label", [])]
        elif isinstance(raw, list | tuple):
            texts = [_text(c) for c in raw]
        elif raw is None:
            texts = [_text(row[k]) for k in string.ascii_uppercase if k in row and row[k] not in (None, "")]
        else:
            raise ValueError("'choices' must be a list or ARC's {'text': [...], 'label': [...]}")
        if not question or len(texts) < 2:
            raise ValueError("needs a question and at least two choices")
        if len(texts) > 26:
            raise ValueError("more than 26 choices")
        answer = _first(row, "answerKey", "answer", "label")
        gold = self._gold_index(answer, labels, len(texts))
        return Item(
            id=str(_first(row, "id", "ID") or index),
            question=question,
            reference=string.ascii_uppercase[gold],
            choices=texts,
            meta={"subject": row["subject"]} if "subject" in row else {},
        )

    @staticmethod
    def _gold_index(answer: Any, labels: list[str], n: int) -> int:
        if isinstance(answer, bool) or answer is None:
            raise ValueError(f"answer {answer!r} is not an option letter or index")
        text = str(answer).strip()
        if labels and text in labels:
            index = labels.index(text)
        elif len(text) == 1 and text.upper() in string.ascii_uppercase[:n]:
            index = string.ascii_uppercase.index(text.upper())
        elif text.isdigit():
            index = int(text)  # MMLU on the hub: 0-based index
        else:
            raise ValueError(f"answer {answer!r} is not an option letter or index")
        if not 0 <= index < n:
            raise ValueError(f"answer {answer!r} is outside the {n} choices")
        return index

    def prompt(self, item: Item) -> Prompt:
        letters = string.ascii_uppercase[: len(item.choices)]
        options = "\n".join(f"{letter}. {text}" for letter, text in zip(letters, item.choices, strict=True))
        if scoring.has_cjk(item.question):
            ask = "请直接回答正确选项的字母。"
        else:
            ask = "Answer with the letter of the correct option."
        return Prompt(self.messages(item, f"{item.question}\n{options}\n{ask}"), list(letters))

    def score(self, item: Item, output: Output) -> dict[str, float]:
        letters = string.ascii_uppercase[: len(item.choices)]
        scores = {"acc_gen": float(scoring.extract_choice(output.prediction, len(letters)) == item.reference)}
        logprobs = output.choice_logprobs
        if logprobs:
            best = max(range(len(letters)), key=lambda i: logprobs[i])
            scores["acc_loglik"] = float(letters[best] == item.reference)
        return scores


class ChoiceText(MultipleChoice):
    """Multiple choice scored on the text of each choice (lm-eval's ``acc_norm`` for ARC/HellaSwag).

    The prompt is the bare question; each choice text is a possible answer, and the one with the highest
    log-probability per character wins (per character, so longer answers are not penalised). The
    generated answer counts as correct when it is closer (ROUGE-L) to the right choice than to any other.
    """

    kind = "mc-text"
    max_new_tokens = 48
    description = "multiple choice scored on each choice's text (ARC/HellaSwag acc_norm style)"

    @classmethod
    def detect(cls, row: dict[str, Any]) -> bool:
        return False  # chosen explicitly: same rows as ``mc``

    def prompt(self, item: Item) -> Prompt:
        return Prompt(self.messages(item, item.question), list(item.choices))

    def score(self, item: Item, output: Output) -> dict[str, float]:
        gold = string.ascii_uppercase.index(item.reference)
        overlap = [scoring.rouge(output.prediction, c)["rougeL"] for c in item.choices]
        best = max(overlap)
        scores = {"acc_gen": float(overlap[gold] == best and overlap.count(best) == 1)}
        if output.choice_logprobs:
            norm = [lp / max(1, len(c)) for lp, c in zip(output.choice_logprobs, item.choices, strict=True)]
            scores["acc_loglik"] = float(max(range(len(norm)), key=norm.__getitem__) == gold)
        return scores


class GSM8K(Benchmark):
    """Grade-school math: the final answer (after ``####`` or wherever math-verify finds it) must equal the
    reference mathematically, so "0.5", "1/2" and "\\frac{1}{2}" all count."""

    kind = "gsm8k"
    primary = "acc"
    max_new_tokens = 512
    description = "GSM8K-style math (answer after '####'), checked with math-verify"

    @classmethod
    def detect(cls, row: dict[str, Any]) -> bool:
        return "question" in row and "####" in _text(row.get("answer"))

    def load(self, row: dict[str, Any], index: int) -> Item:
        question, answer = _text(row.get("question")), _text(row.get("answer"))
        if not question or not answer:
            raise ValueError("needs 'question' and 'answer'")
        return Item(id=str(row.get("id", index)), question=question, reference=scoring.gsm8k_reference(answer))

    def prompt(self, item: Item) -> Prompt:
        ask = "Solve the problem step by step. End with a line '#### N' where N is the final answer."
        return Prompt(self.messages(item, f"{item.question}\n{ask}"))

    def score(self, item: Item, output: Output) -> dict[str, float]:
        return {"acc": float(scoring.math_equal(output.prediction, item.reference))}


class OpenGeneration(Benchmark):
    """Free-form answers compared with one or more references: ROUGE-1/2/L (character-level for Chinese),
    exact match per sample, and sacrebleu's corpus BLEU for the benchmark."""

    kind = "gen"
    primary = "rougeL"
    max_new_tokens = 256
    description = "open generation vs references: ROUGE (Chinese-aware), BLEU, exact match"
    _PROMPT_KEYS: ClassVar[tuple[str, ...]] = ("prompt", "question", "query", "input", "source")
    _REF_KEYS: ClassVar[tuple[str, ...]] = (
        "references",
        "reference",
        "target",
        "answer",
        "output",
        "response",
    )

    @classmethod
    def detect(cls, row: dict[str, Any]) -> bool:
        return any(k in row for k in cls._PROMPT_KEYS) and any(k in row for k in cls._REF_KEYS)

    def load(self, row: dict[str, Any], index: int) -> Item:
        question = _text(_first(row, *self._PROMPT_KEYS))
        refs = _first(row, *self._REF_KEYS)
        refs = [_text(r) for r in refs] if isinstance(refs, list | tuple) else [_text(refs)]
        if not question or not any(refs):
            raise ValueError(f"needs a prompt ({'/'.join(self._PROMPT_KEYS)}) and a reference")
        return Item(id=str(row.get("id", index)), question=question, reference=refs, system=row.get("system"))

    def prompt(self, item: Item) -> Prompt:
        return Prompt(self.messages(item, item.question))

    def score(self, item: Item, output: Output) -> dict[str, float]:
        answer = scoring.strip_thinking(output.prediction)
        return {
            **scoring.rouge(answer, item.reference),
            "exact_match": scoring.exact_match(answer, item.reference),
        }

    def aggregate(self, items: list[Item], outputs: list[Output], scores: list[dict[str, float]]) -> dict:
        result = super().aggregate(items, outputs, scores)
        answers = [scoring.strip_thinking(o.prediction) for o in outputs]
        result["bleu"] = scoring.corpus_bleu(answers, [i.reference for i in items])
        return result


class Alpaca(OpenGeneration):
    """The user's own alpaca file (instruction, input, output, optional system/history): does the model
    answer like the reference output? Scored as open generation, ROUGE-L first."""

    kind = "alpaca"
    description = "alpaca rows (instruction/input/output): generate, compare with output (ROUGE-L)"

    @classmethod
    def detect(cls, row: dict[str, Any]) -> bool:
        return "instruction" in row and "output" in row

    def load(self, row: dict[str, Any], index: int) -> Item:
        instruction, inp = _text(row.get("instruction")), _text(row.get("input"))
        output = row.get("output")
        if not instruction or output in (None, ""):
            raise ValueError("needs 'instruction' and 'output'")
        history: list[dict[str, str]] = []
        for turn in row.get("history") or []:
            history += [
                {"role": "user", "content": _text(turn[0])},
                {"role": "assistant", "content": _text(turn[1])},
            ]
        question = f"{instruction}\n{inp}" if inp else instruction  # as LLaMA-Factory's alpaca converter
        return Item(
            id=str(row.get("id", index)),
            question=question,
            reference=[_text(output)],
            messages=history,
            system=row.get("system"),
        )


class ShareGPT(OpenGeneration):
    """The user's own sharegpt/OpenAI-messages file: every turn before the last assistant turn is the
    prompt, the last assistant turn the reference."""

    kind = "sharegpt"
    description = "sharegpt / messages conversations: the last assistant turn is the reference"
    _ROLES: ClassVar[dict[str, str]] = {
        "human": "user",
        "user": "user",
        "gpt": "assistant",
        "assistant": "assistant",
        "system": "system",
        "function_call": "assistant",
        "observation": "tool",
        "tool": "tool",
    }

    @classmethod
    def detect(cls, row: dict[str, Any]) -> bool:
        turns = row.get("conversations", row.get("messages"))
        return isinstance(turns, list) and bool(turns) and isinstance(turns[0], dict)

    def load(self, row: dict[str, Any], index: int) -> Item:
        turns = row.get("conversations", row.get("messages")) or []
        messages = []
        for turn in turns:
            role = self._ROLES.get(_text(turn.get("from", turn.get("role"))))
            if role is None:
                raise ValueError(f"unknown role {turn.get('from', turn.get('role'))!r}")
            messages.append({"role": role, "content": _text(turn.get("value", turn.get("content")))})
        system = row.get("system")
        if messages and messages[0]["role"] == "system":
            system = messages.pop(0)["content"]
        last = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=-1)
        if last < 1 or messages[last - 1]["role"] not in ("user", "tool"):
            raise ValueError("needs a user turn followed by an assistant turn")
        return Item(
            id=str(row.get("id", index)),
            question=messages[last - 1]["content"],
            reference=[messages[last]["content"]],
            messages=messages[: last - 1],
            system=system,
        )


#: Every adapter by kind; detection tries them in this order (the most specific first).
KINDS: dict[str, type[Benchmark]] = {
    cls.kind: cls for cls in (ShareGPT, Alpaca, MultipleChoice, ChoiceText, GSM8K, OpenGeneration)
}


# --------------------------------------------------------------------------------------------------------
# Command-line specs


def bench_dirs(explicit: str | Path | None = None) -> list[Path]:
    """Folders searched for NAME specs: --bench-dir, $LFW_BENCH_DIR (os.pathsep list), ./benchmarks."""
    dirs = [Path(explicit)] if explicit else []
    dirs += [Path(p) for p in os.environ.get("LFW_BENCH_DIR", "").split(os.pathsep) if p]
    return dirs + [Path("benchmarks")]


def _find(target: str, bench_dir: str | Path | None) -> Path | None:
    path = Path(target).expanduser()
    if path.exists():
        return path
    if os.sep in target or "/" in target:
        return None
    for folder in bench_dirs(bench_dir):
        for candidate in [folder / target, *(folder / f"{target}{s}" for s in DATA_SUFFIXES)]:
            if candidate.exists():
                return candidate
    return None


def _detect_kind(name: str, rows: list[dict[str, Any]], source: str) -> str:
    lowered = name.lower()
    for prefix, kind in NAME_HINTS.items():
        if lowered.startswith(prefix):
            return kind
    sample = rows[:20]
    for kind, cls in KINDS.items():
        if sample and all(cls.detect(row) for row in sample):
            return kind
    columns = sorted({k for row in sample for k in row})
    raise UserError(
        f"{source}: cannot tell what kind of benchmark this is (columns: {', '.join(columns) or 'none'}); "
        f"name the kind: --bench KIND:{source} with KIND one of {', '.join(KINDS)}"
    )


def resolve(spec: str, bench_dir: str | Path | None = None) -> Benchmark:
    """Turn ``[LABEL=][KIND:]PATH|NAME[@SPLIT]`` into a loaded benchmark adapter."""
    label, sep, rest = spec.partition("=")
    if not sep or not label or "/" in label or os.sep in label or Path(spec).exists():
        label, rest = "", spec
    kind = None
    head, sep, tail = rest.partition(":")
    if sep and head in KINDS:
        kind, rest = head, tail
    elif sep and head and not Path(rest).exists() and len(head) > 1:
        raise UserError(f"--bench {spec}: unknown benchmark kind {head!r}; kinds: {', '.join(KINDS)}")
    target, split = rest, None
    if "@" in rest and not Path(rest).exists():
        target, _, split = rest.rpartition("@")
    path = _find(target, bench_dir)
    if path is None:
        where = ", ".join(str(d) for d in bench_dirs(bench_dir))
        raise UserError(f"--bench {spec}: no file or folder {target!r} (benchmark names are looked up in {where})")
    rows = read_records(path, split)
    name = label or (path.name if path.is_dir() else path.stem)
    if split:
        name = label or f"{name}@{split}"
    kind = kind or _detect_kind(name, rows, str(path))
    return KINDS[kind](name, str(path), rows)


def subset(items: list[Item], limit: int | None, seed: int, shuffle: bool = False) -> list[Item]:
    """The first ``limit`` items, or with ``shuffle`` a seeded random sample (same seed, same sample)."""
    chosen = list(items)
    if shuffle:
        random.Random(seed).shuffle(chosen)
    return chosen[:limit] if limit else chosen


def describe_kinds() -> Iterable[str]:
    return (f"{kind}: {cls.description}" for kind, cls in KINDS.items())
