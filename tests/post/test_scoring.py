"""Every scorer of `lfw eval` against answers known by hand (no model involved: milliseconds)."""

from __future__ import annotations

import pytest

from lfw.post.eval import scoring
from lfw.post.eval.benchmarks import KINDS, Item, Output


@pytest.mark.parametrize(
    ("text", "letter"),
    [
        ("B", "B"),
        ("(C) Rome", "C"),
        ("D. Cairo", "D"),
        ("The answer is D.", "D"),
        ("Answer: (A)", "A"),
        ("I think the correct option is C because ...", "C"),
        ("答案是B", "B"),
        ("答案：C。", "C"),
        ("<think>maybe A</think>\nB", "B"),  # reasoning is not the answer
        ("the answer is a dog", None),  # lower-case "a" is a word, not option A
        ("Answer: The capital", None),
        ("E", None),  # only 4 options
        ("", None),
    ],
)
def test_extract_choice(text, letter):
    assert scoring.extract_choice(text, 4) == letter


def test_extract_choice_respects_option_count():
    assert scoring.extract_choice("E", 5) == "E"
    assert scoring.extract_choice("The answer is E", 4) is None


@pytest.mark.parametrize(
    ("prediction", "reference", "equal"),
    [
        ("1/2", "0.5", True),
        ("The answer is 0.5", "1/2", True),
        ("$\\frac{1}{2}$", "0.5", True),
        ("\\boxed{72}", "72", True),
        ("She sold 48 + 24 = 72 clips.\n#### 72", "72", True),
        ("#### 18,000", "18000", True),  # thousands separator
        ("72.0", "72", True),
        ("#### 73", "72", False),
        ("I cannot solve this.", "72", False),
        ("", "72", False),
    ],
)
def test_math_equal(prediction, reference, equal):
    assert scoring.math_equal(prediction, reference) is equal


def test_gsm8k_reference_and_final_answer():
    assert scoring.gsm8k_reference("Natalia sold 48/2 = 24 clips.\n#### 1,234") == "1234"
    assert scoring.final_answer_text("work... #### 5\n#### 6") == "6"  # the last one counts
    assert scoring.final_answer_text("<think>#### 1</think>So #### 2") == "2"


def test_rouge_english_matches_rouge_score_definition():
    exact = scoring.rouge("the cat sat on the mat", "the cat sat on the mat")
    assert exact == {"rouge1": 1.0, "rouge2": 1.0, "rougeL": 1.0}
    # LCS "the cat sat" = 3 of 3 predicted and 3 of 4 reference tokens: F = 2*1*0.75/1.75
    partial = scoring.rouge("the cat sat", "the cat sat down")
    assert partial["rougeL"] == pytest.approx(2 * 1.0 * 0.75 / 1.75)
    assert scoring.rouge("dog", "the cat")["rougeL"] == 0.0


def test_rouge_chinese_is_character_level():
    # rouge-score's own tokenizer drops every CJK character: any two Chinese sentences would score 0.
    # Character level: LCS of 北京是中国的首都 / 中国的首都是北京 is 中国的首都 (5 of 8 characters).
    scores = scoring.rouge("北京是中国的首都", "中国的首都是北京")
    assert scores["rouge1"] == 1.0  # same characters
    assert scores["rougeL"] == pytest.approx(5 / 8)
    assert scoring.rouge("北京是中国的首都", "中国的首都是北京", chinese=False)["rougeL"] == 0.0
    mixed = scoring.rouge("猫 means cat.", "猫 means cat.")
    assert mixed["rougeL"] == 1.0
    assert scoring.CjkTokenizer().tokenize("猫 Means CAT, 狗!") == ["猫", "means", "cat", "狗"]


def test_rouge_takes_the_best_reference():
    assert scoring.rouge("apple", ["pear", "apple"])["rougeL"] == 1.0


def test_bleu():
    assert scoring.sentence_bleu("the cat sat on the mat", "the cat sat on the mat") == pytest.approx(100.0)
    assert scoring.sentence_bleu("北京是中国的首都", "北京是中国的首都") == pytest.approx(100.0)  # zh tokenizer
    assert scoring.corpus_bleu(["completely different words here"], ["the cat sat on the mat"]) < 10
    # Ragged reference lists are padded without changing the score.
    two = scoring.corpus_bleu(["the cat sat on the mat", "a dog"], [["the cat sat on the mat", "x y z"], ["a dog"]])
    assert two == pytest.approx(100.0)
    assert scoring.corpus_bleu([], []) == 0.0


def test_exact_match_normalises():
    assert scoring.exact_match("  Paris. ", "paris") == 1.0
    assert scoring.exact_match("Paris is the capital", ["Paris"]) == 0.0
    assert scoring.normalize_text("Ｈｅｌｌｏ，　World!") == "hello world"


def test_strip_thinking():
    assert scoring.strip_thinking("<think>\nreasoning\n</think>\n\nAnswer") == "Answer"
    assert scoring.strip_thinking("<think>never finished") == ""


def _item(kind: str, row: dict) -> tuple:
    bench = KINDS[kind]("t", "test", [row])
    return bench, bench.items[0]


def test_multiple_choice_adapter_scores_both_ways():
    bench, item = _item("mc", {"question": "2+3?", "choices": ["4", "5", "6", "7"], "answer": 1})
    prompt = bench.prompt(item)
    assert prompt.continuations == ["A", "B", "C", "D"]
    assert "B. 5" in prompt.messages[-1]["content"]
    right = bench.score(item, Output("B", [-3.0, -1.0, -2.0, -4.0]))
    assert right == {"acc_gen": 1.0, "acc_loglik": 1.0}
    wrong = bench.score(item, Output("The answer is C", [-1.0, -3.0, -2.0, -4.0]))
    assert wrong == {"acc_gen": 0.0, "acc_loglik": 0.0}


def test_choice_text_adapter_normalises_by_length():
    bench, item = _item("mc-text", {"question": "Capital of Peru?", "choices": ["Lima", "Buenos Aires"], "answer": "A"})
    assert bench.prompt(item).continuations == ["Lima", "Buenos Aires"]
    # Summed, the short answer wins; per character (-4/4 = -1 vs -6/12 = -0.5) the long one does.
    assert bench.score(item, Output("Lima", [-4.0, -6.0])) == {"acc_gen": 1.0, "acc_loglik": 0.0}


def test_gsm8k_adapter():
    bench, item = _item("gsm8k", {"question": "Half of 1?", "answer": "1/2 = 0.5\n#### 0.5"})
    assert item.reference == "0.5"
    assert bench.score(item, Output("It is 1/2.\n#### 1/2")) == {"acc": 1.0}
    assert bench.score(item, Output("#### 2")) == {"acc": 0.0}


def test_generation_adapters_and_corpus_bleu():
    bench = KINDS["alpaca"]("t", "test", [{"instruction": "Translate to English.", "input": "猫", "output": "cat"}])
    item = bench.items[0]
    assert item.question == "Translate to English.\n猫"
    scores = bench.score(item, Output("<think>hmm</think>cat"))
    assert scores["rougeL"] == 1.0 and scores["exact_match"] == 1.0
    summary = bench.aggregate([item], [Output("cat")], [scores])
    assert summary["rougeL"] == 1.0 and "bleu" in summary


def test_sharegpt_adapter_uses_last_assistant_turn():
    row = {
        "conversations": [
            {"from": "system", "value": "Be brief."},
            {"from": "human", "value": "hi"},
            {"from": "gpt", "value": "hello"},
            {"from": "human", "value": "2+2?"},
            {"from": "gpt", "value": "4"},
        ]
    }
    bench, item = _item("sharegpt", row)
    assert item.reference == ["4"] and item.system == "Be brief."
    messages = bench.prompt(item).messages
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user"]
    assert messages[-1]["content"] == "2+2?"


def test_adapter_rejects_bad_rows_all_at_once():
    from lfw.infra.errors import UserError

    rows = [{"question": "q", "choices": ["a", "b"], "answer": "Z"}, {"question": "", "choices": [], "answer": 0}]
    with pytest.raises(UserError) as err:
        KINDS["mc"]("t", "bench.jsonl", rows)
    assert "row 0" in str(err.value) and "row 1" in str(err.value)


def test_item_defaults():
    assert Item(id="1", question="q", reference="r").choices == []
