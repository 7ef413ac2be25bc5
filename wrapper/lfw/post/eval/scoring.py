"""Scorers for `lfw eval`: letters of multiple-choice answers, math answers, ROUGE, BLEU, exact match.

Every function here is pure (text in, number out) and runs in lfw's own environment, never in the vLLM
worker, so the generation environment needs nothing but vLLM. The scoring libraries (math-verify,
rouge-score, sacrebleu) are imported inside the functions that need them: `lfw --help` stays fast and a
missing library becomes one clear message naming the package to install.

Chinese text: rouge-score's tokenizer keeps only ``[a-z0-9]`` and would score any two Chinese sentences 0,
so ROUGE switches to a tokenizer that makes each CJK character one token (the usual practice for Chinese
ROUGE, as character-level BLEU is for sacrebleu's ``zh`` tokenizer) whenever the reference or the
prediction contains CJK characters; ``chinese=True/False`` forces either way.
"""

from __future__ import annotations

import re
import string
import unicodedata
from collections.abc import Sequence
from functools import lru_cache

from lfw.infra.errors import UserError

__all__ = [
    "has_cjk",
    "strip_thinking",
    "normalize_text",
    "exact_match",
    "extract_choice",
    "gsm8k_reference",
    "final_answer_text",
    "math_equal",
    "rouge",
    "sentence_bleu",
    "corpus_bleu",
    "CjkTokenizer",
]

# CJK Unified Ideographs (+ extension A, compatibility ideographs), kana and Hangul: scored per character.
_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff]")
_THINK = re.compile(r"<think>.*?</think>\s*", re.DOTALL)
_PUNCT = set(string.punctuation) | set("，。！？、：；“”‘’（）《》【】…—·「」『』")


def _require(module: str, package: str):
    """Import a scoring library or tell the user which package is missing (one line, no traceback)."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise UserError(f"scoring needs the Python package {package!r}: pip install {package}") from err


def has_cjk(text: str) -> bool:
    """True when ``text`` contains Chinese, Japanese or Korean characters."""
    return bool(_CJK.search(text or ""))


def strip_thinking(text: str) -> str:
    """Drop ``<think>...</think>`` blocks (and an unterminated one): reasoning is never scored as the answer.

    Qwen3-style models may think before answering; only the text after the reasoning is the answer.
    """
    text = _THINK.sub("", text)
    if "<think>" in text:  # ran out of tokens while thinking: there is no answer
        text = text.split("<think>", 1)[0]
    return text.strip()


def normalize_text(text: str) -> str:
    """Lower case, NFKC, punctuation removed, whitespace collapsed: the SQuAD-style normalisation."""
    text = unicodedata.normalize("NFKC", text).lower()
    text = "".join(" " if ch in _PUNCT else ch for ch in text)
    return " ".join(text.split())


def exact_match(prediction: str, references: str | Sequence[str]) -> float:
    """1.0 when the normalised prediction equals a normalised reference."""
    refs = [references] if isinstance(references, str) else list(references)
    pred = normalize_text(prediction)
    return float(any(pred == normalize_text(ref) for ref in refs))


# --------------------------------------------------------------------------------------------------------
# Multiple choice


def extract_choice(text: str, n_choices: int = 4) -> str | None:
    """The option letter a generated answer picks (``"B"``), or None when it names none.

    Tries, in order: an explicit statement ("answer is (B)", "答案是B", "Answer: B"), a letter opening the
    answer ("B", "B.", "(B) ..."), then the first stand-alone letter. Only letters of existing options count,
    so the article "A" is not taken for option A when the answer says "the answer is C".
    """
    letters = string.ascii_uppercase[:n_choices]
    cls = f"[{letters}]"
    text = strip_thinking(text)
    patterns = (
        rf"(?i:answer|option|choice)\s*(?:is|:|：)?\s*[:：]?\s*\(?({cls})(?![A-Za-z])",
        rf"(?:答案|选项|正确答案)\s*(?:是|为|应为|：|:)?\s*[:：]?\s*[（(]?({cls})(?![A-Za-z])",
        rf"^\s*[（(\[]?({cls})(?:[\s.。,，:：)）\]]|$)",
        rf"(?<![A-Za-z])({cls})(?![A-Za-z])",
    )
    for pattern in patterns:
        match = re.search(pattern, text)
        if match:
            return match.group(1)
    return None


# --------------------------------------------------------------------------------------------------------
# Math (GSM8K style)


def gsm8k_reference(answer: str) -> str:
    """The final answer of a GSM8K solution: the text after ``####``, thousands separators removed."""
    final = answer.rsplit("####", 1)[-1].strip()
    return re.sub(r"(?<=\d),(?=\d{3}\b)", "", final)


def final_answer_text(prediction: str) -> str:
    """The part of a generated solution that holds its answer (after the last ``####`` when present).

    Models prompted GSM8K-style end with ``#### N``; others end with "The answer is N" or ``\\boxed{N}``,
    which math-verify finds in the whole text.
    """
    text = strip_thinking(prediction)
    if "####" in text:
        text = text.rsplit("####", 1)[-1]
    return re.sub(r"(?<=\d),(?=\d{3}\b)", "", text).strip()


def math_equal(prediction: str, reference: str) -> bool:
    """Mathematical equivalence checked by math-verify: "1/2" = "0.5" = "\\frac{1}{2}", "72" = "72.0".

    The reference is parsed as the gold answer and the prediction's final answer as the candidate;
    an answer math-verify cannot parse counts as wrong.
    """
    math_verify = _require("math_verify", "math-verify")
    gold = math_verify.parse(reference)
    if not gold:  # a bare number or fraction that the LaTeX-oriented parser missed: wrap it
        gold = math_verify.parse(f"${reference}$")
    answer = math_verify.parse(final_answer_text(prediction))
    if not gold or not answer:
        return False
    return bool(math_verify.verify(gold, answer))


# --------------------------------------------------------------------------------------------------------
# ROUGE and BLEU


class CjkTokenizer:
    """rouge-score tokenizer for mixed Chinese/English text: one token per CJK character, words otherwise.

    Latin words and numbers are lower-cased and kept whole; punctuation and spaces separate tokens and are
    dropped, as rouge-score's own tokenizer does for English.
    """

    _TOKEN = re.compile(rf"{_CJK.pattern}|[^\W_]+", re.UNICODE)

    def tokenize(self, text: str) -> list[str]:
        text = unicodedata.normalize("NFKC", text).lower()
        return self._TOKEN.findall(text)


@lru_cache(maxsize=4)
def _rouge_scorer(chinese: bool):
    rouge_scorer = _require("rouge_score.rouge_scorer", "rouge-score")
    types = ["rouge1", "rouge2", "rougeL"]
    if chinese:
        return rouge_scorer.RougeScorer(types, tokenizer=CjkTokenizer())
    return rouge_scorer.RougeScorer(types, use_stemmer=False)


def rouge(prediction: str, references: str | Sequence[str], chinese: bool | None = None) -> dict[str, float]:
    """ROUGE-1/2/L F-measures of ``prediction`` against the best-matching reference.

    ``chinese=None`` picks character-level tokenization when either side contains CJK characters.
    """
    refs = [references] if isinstance(references, str) else list(references)
    if chinese is None:
        chinese = has_cjk(prediction) or any(has_cjk(r) for r in refs)
    scorer = _rouge_scorer(bool(chinese))
    best: dict[str, float] = {"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0}
    for ref in refs:
        scores = scorer.score(ref, prediction)
        if scores["rougeL"].fmeasure >= best["rougeL"]:
            best = {name: score.fmeasure for name, score in scores.items()}
    return best


def _bleu_tokenize(texts: Sequence[str], chinese: bool | None) -> str:
    if chinese is None:
        chinese = any(has_cjk(t) for t in texts)
    return "zh" if chinese else "13a"


def sentence_bleu(prediction: str, references: str | Sequence[str], chinese: bool | None = None) -> float:
    """sacrebleu sentence BLEU (0-100, exponential smoothing), ``zh`` tokenization for Chinese."""
    sacrebleu = _require("sacrebleu", "sacrebleu")
    refs = [references] if isinstance(references, str) else list(references)
    tokenize = _bleu_tokenize([prediction, *refs], chinese)
    return float(sacrebleu.sentence_bleu(prediction, refs, tokenize=tokenize).score)


def corpus_bleu(
    predictions: Sequence[str], references: Sequence[str | Sequence[str]], chinese: bool | None = None
) -> float:
    """sacrebleu corpus BLEU (0-100): the standard number, not a mean of sentence BLEUs.

    Items may have different numbers of references; shorter lists are padded with their own first
    reference, which changes neither clipped n-gram counts nor the closest reference length.
    """
    sacrebleu = _require("sacrebleu", "sacrebleu")
    if not predictions:
        return 0.0
    ref_lists = [[r] if isinstance(r, str) else list(r) or [""] for r in references]
    width = max(len(r) for r in ref_lists)
    streams = [[refs[i] if i < len(refs) else refs[0] for refs in ref_lists] for i in range(width)]
    tokenize = _bleu_tokenize([*predictions, *(r for refs in ref_lists for r in refs)], chinese)
    return float(sacrebleu.corpus_bleu(list(predictions), streams, tokenize=tokenize).score)
