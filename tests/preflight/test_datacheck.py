"""Tests for `lfw data check` (lfw.preflight.data + lfw.cli.data).

Fixtures in tests/fixtures/data hold one file per failure kind; tests/fixtures/data/dataset_dir is a
LLaMA-Factory dataset_dir in the layouts of its demo data (alpaca, identity, tool calls, dpo pairs, images, kto),
written for these tests, and must pass. A slow test runs LLaMA-Factory's converters as the oracle.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lfw.cli.data import data as data_cli
from lfw.infra.errors import UserError
from lfw.preflight.data.check import check_dataset, check_rows
from lfw.preflight.data.convert import convert_to_jsonl
from lfw.preflight.data.layout import DataFormat, detect_format
from lfw.preflight.data.lengths import length_stats, render_chatml
from lfw.recipe.vocabulary import FORMATS

FIX = Path(__file__).parents[1] / "fixtures" / "data"
LF_DIR = FIX / "dataset_dir"  # LLaMA-Factory's demo layouts, with its dataset_info.json


def codes(report) -> list[tuple[str, int | None]]:
    return [(p.code, p.row) for p in report.problems]


# ------------------------------------------------------------------ LLaMA-Factory's demo layouts pass


@pytest.mark.parametrize(
    ("name", "fmt", "rows"),
    [
        ("alpaca_demo.json", "alpaca", 6),
        ("identity.json", "alpaca", 4),
        ("dpo_demo.json", "preference_sharegpt", 4),
        ("toolcall_demo.json", "sharegpt", 3),
        ("mllm_demo.json", "multimodal", 3),
        ("kto_demo.json", "kto", 2),
    ],
)
def test_lf_demo_layouts_pass(name: str, fmt: str, rows: int) -> None:
    report = check_dataset(LF_DIR / name)
    assert report.ok, [str(p) for p in report.errors]
    assert (report.format, report.rows, report.container) == (fmt, rows, "json")
    assert {p.code for p in report.warnings} <= {"duplicate"}  # demo files repeat some rows


def test_every_demo_file_passes_with_its_registered_entry() -> None:
    """The folder with dataset_info.json: each local file is checked with its registered columns and tags."""
    report = check_dataset(LF_DIR)
    assert report.container == "dataset_dir"
    assert report.ok, [str(p) for p in report.errors]
    present = sorted(p.name for p in LF_DIR.iterdir() if p.suffix == ".json" and p.name != "dataset_info.json")
    assert sorted(part.path.name for part in report.parts) == present
    assert report.skipped == [
        "1 registered file(s) not present: absent_demo.json",
        "1 hub dataset(s) (hf_hub_url / ms_hub_url): not local, not checked",
    ]
    assert [(p.code, p.row) for p in report.warnings] == [("duplicate", 5), ("duplicate", 4)]
    registered = {part.path.name: part.data_format for part in report.parts}
    assert registered["mllm_demo.json"].tags["user_tag"] == "user"  # the entry's tags, not the defaults
    assert registered["toolcall_demo.json"].columns["tools"] == "tools"
    # pointing at the registry file itself checks the folder
    assert check_dataset(LF_DIR / "dataset_info.json").container == "dataset_dir"


def test_demo_data_with_declared_formats_and_stages() -> None:
    assert check_dataset(LF_DIR / "dpo_demo.json", "preference_sharegpt", stage="dpo").ok
    assert check_dataset(LF_DIR / "dpo_demo.json", "dpo").code_counts == {"format-mismatch": 1, "duplicate": 1}
    assert check_dataset(LF_DIR / "mllm_demo.json", "multimodal", stage="sft").ok
    assert check_dataset(LF_DIR / "mllm_demo.json", "sharegpt", tags="role_content").ok
    assert check_dataset(LF_DIR / "toolcall_demo.json", "sharegpt", tags="from_value").ok
    assert check_dataset(LF_DIR / "kto_demo.json", "kto", stage="kto").ok


def test_a_registered_entry_that_disagrees_with_the_rows(tmp_path: Path) -> None:
    """dataset_info.json is what LLaMA-Factory reads: rows that do not fit their entry are errors."""
    (tmp_path / "pairs.json").write_bytes((LF_DIR / "dpo_demo.json").read_bytes())
    (tmp_path / "dataset_info.json").write_text(json.dumps({"pairs": {"file_name": "pairs.json"}}))  # alpaca
    report = check_dataset(tmp_path)
    assert report.container == "dataset_dir" and not report.ok
    assert {p.code for p in report.errors} == {"missing-field", "column-absent"}  # no instruction, no input
    declared = check_dataset(tmp_path, "preference_sharegpt")
    assert "format-mismatch" in declared.code_counts


# ------------------------------------------------------------------ good fixtures


@pytest.mark.parametrize(
    ("name", "container", "fmt", "rows"),
    [
        ("alpaca_ok.jsonl", "jsonl", "alpaca", 3),
        ("alpaca_ok.csv", "csv", "alpaca", 2),
        ("sharegpt_ok.jsonl", "jsonl", "sharegpt", 2),
        ("openai_ok.jsonl", "jsonl", "openai", 2),
        ("preference_ok.json", "json", "preference", 2),
        ("kto_ok.jsonl", "jsonl", "kto", 2),
        ("multimodal_ok.json", "json", "multimodal", 2),
        ("text_ok.txt", "text", "text", 2),
    ],
)
def test_good_fixtures(name: str, container: str, fmt: str, rows: int) -> None:
    report = check_dataset(FIX / name)
    expected = ["openai-system"] if name == "openai_ok.jsonl" else []  # tool_calls: LF edits the system prompt
    assert [p.code for p in report.problems] == expected, [str(p) for p in report.problems]
    assert (report.container, report.format, report.rows) == (container, fmt, rows)
    assert report.ok and not report.needs_conversion
    report.raise_for_errors()  # no-op


def test_dataset_info_entry_round_trip(tmp_path: Path) -> None:
    """The entry lfw would register reads back (LLaMA-Factory's rules) as the same layout, and passes."""
    info = {}
    for name in (
        "alpaca_ok.jsonl",
        "sharegpt_ok.jsonl",
        "openai_ok.jsonl",
        "preference_ok.json",
        "kto_ok.jsonl",
    ):
        fmt = check_dataset(FIX / name).data_format
        entry = fmt.dataset_info_entry(name)
        back = DataFormat.from_dataset_info(entry)
        assert (back.name, back.formatting, back.ranking) == (fmt.name, fmt.formatting, fmt.ranking)
        assert {k: v for k, v in back.columns.items() if v} == {k: v for k, v in fmt.columns.items() if v}
        info[name.split(".")[0]] = entry
        (tmp_path / name).write_bytes((FIX / name).read_bytes())
    (tmp_path / "dataset_info.json").write_text(json.dumps(info))
    report = check_dataset(tmp_path)
    assert report.container == "dataset_dir" and report.ok
    assert [p.code for p in report.problems] == ["openai-system"]
    assert DataFormat.from_dataset_info(info["openai_ok"]).tags["observation_tag"] == "tool"
    assert info["sharegpt_ok"] == {
        "file_name": "sharegpt_ok.jsonl",
        "formatting": "sharegpt",
        "columns": {"messages": "conversations", "tools": "tools"},
    }


# ------------------------------------------------------------------ every failure kind: exact rows and lines


@pytest.mark.parametrize(
    ("name", "code", "row", "line", "text"),
    [
        ("alpaca_bad.json", "missing-field", 2, 7, "missing field 'output'"),
        ("alpaca_bad.json", "null-field", 3, 11, "'instruction' is null"),
        ("alpaca_bad.json", "empty-field", 4, 16, "'output' is empty"),
        ("alpaca_bad.json", "wrong-type", 5, 21, "'output' is a number, expected a string"),
        ("alpaca_bad.json", "wrong-type", 6, 25, "history[0] must be a pair of strings"),
        ("alpaca_bad.json", "not-object", 8, 39, "the row is a list, expected a JSON object"),
        ("sharegpt_bad.jsonl", "role-order", 2, 2, "conversations[1] is 'human' but 'gpt'"),
        ("sharegpt_bad.jsonl", "role-order", 3, 3, "only the first message may be system"),
        ("sharegpt_bad.jsonl", "message-count", 4, 4, "ends with a 'human' turn"),
        ("sharegpt_bad.jsonl", "unknown-role", 5, 5, "conversations[1].from is 'bot'"),
        ("sharegpt_bad.jsonl", "null-field", 6, 6, "conversations[0].value is null"),
        ("sharegpt_bad.jsonl", "missing-field", 7, 7, "conversations[1] has no 'value'"),
        ("sharegpt_bad.jsonl", "empty-field", 8, 8, "'conversations' is an empty list"),
        (
            "sharegpt_bad.jsonl",
            "missing-field",
            9,
            9,
            "it uses 'role'/'content'; this file uses 'from'/'value'",
        ),
        ("sharegpt_bad.jsonl", "empty-field", 10, 10, "conversations[1].value is empty"),
        ("sharegpt_bad.jsonl", "missing-field", 11, 11, "mixed formats in one file"),
        ("preference_bad.json", "chosen-equals-rejected", 2, 18, "chosen and rejected are identical"),
        ("preference_bad.json", "wrong-type", 3, 34, "'chosen' is a string; sharegpt-style preference rows"),
        ("preference_bad.json", "message-count", 4, 47, "must end with a 'human' turn"),
        ("preference_bad.json", "wrong-type", 5, 67, "list of messages (TRL style)"),
        ("preference_bad.json", "answer-role", 6, 89, "chosen.from is 'human', expected 'gpt'"),
        ("preference_alpaca_bad.jsonl", "chosen-equals-rejected", 1, 1, "identical"),
        ("preference_alpaca_bad.jsonl", "null-field", 2, 2, "'rejected' is null"),
        ("kto_bad.jsonl", "kto-tag", 2, 2, "must be true or false; got a string ('false')"),
        ("kto_bad.jsonl", "kto-tag", 3, 3, "must be true or false; it is missing"),
        (
            "multimodal_bad.json",
            "media-count",
            2,
            17,
            "2 <image> tag(s) in the text but 1 item(s) in 'images'",
        ),
        ("multimodal_bad.json", "media-missing", 3, 32, "images[0] 'images/missing.png' does not exist"),
        ("multimodal_bad.json", "media-count", 4, 47, "0 <image> tag(s) in the text but 1 item(s)"),
        ("tools_bad.jsonl", "tools-json", 1, 1, "'tools' is not valid JSON"),
        ("conversations.csv", "wrong-type", 1, 2, "'conversations' is a string, expected a list of messages"),
        ("bad_syntax.jsonl", "parse", 2, 3, "invalid JSON (column 55)"),
        ("bad_syntax.json", "parse", 2, 3, "invalid JSON at line 3 column 23: Expecting ',' delimiter"),
    ],
)
def test_errors_name_row_line_and_fix(name: str, code: str, row: int, line: int, text: str) -> None:
    report = check_dataset(FIX / name)
    hits = [p for p in report.errors if p.code == code and p.row == row]
    assert hits, f"no {code} at row {row}; got {codes(report)}"
    p = hits[0]
    assert p.line == line
    assert text in p.message
    assert p.fix, "every problem says how to fix it"
    assert p.where == f"{FIX / name} row {row} (line {line})"
    assert not report.ok


@pytest.mark.parametrize(
    ("name", "expected"),
    [  # exactly these problems, no more: the good rows in each file stay clean
        (
            "alpaca_bad.json",
            [
                ("missing-field", 2),
                ("null-field", 3),
                ("empty-field", 4),
                ("wrong-type", 5),
                ("wrong-type", 6),
                ("not-object", 8),
                ("duplicate", 7),
            ],
        ),
        (
            "sharegpt_bad.jsonl",
            [
                ("role-order", 2),
                ("role-order", 3),
                ("message-count", 4),
                ("unknown-role", 5),
                ("null-field", 6),
                ("missing-field", 7),
                ("empty-field", 8),
                ("missing-field", 9),
                ("empty-field", 10),
                ("missing-field", 11),
            ],
        ),
        (
            "preference_bad.json",
            [
                ("chosen-equals-rejected", 2),
                ("wrong-type", 3),
                ("message-count", 4),
                ("wrong-type", 5),
                ("answer-role", 6),
            ],
        ),
        (
            "multimodal_bad.json",
            [("media-count", 2), ("media-missing", 3), ("media-count", 4), ("media-tag-without-media", 6)],
        ),
        ("bad_syntax.jsonl", [("parse", 2)]),  # rows 1 and 3 are still read and checked
    ],
)
def test_exact_problem_sets(name: str, expected: list[tuple[str, int]]) -> None:
    assert codes(check_dataset(FIX / name)) == expected


def test_warnings_are_separate_from_errors() -> None:
    report = check_dataset(FIX / "alpaca_bad.json")
    assert (report.error_count, report.warning_count) == (6, 1)
    dup = report.warnings[0]
    assert (dup.code, dup.row, dup.severity) == ("duplicate", 7, "warning")
    assert "exact duplicate of row 1" in dup.message
    mm = check_dataset(FIX / "multimodal_bad.json")
    assert [p.code for p in mm.warnings] == ["media-tag-without-media"]
    assert mm.problems[-1].severity == "warning"  # errors are listed first


def test_json_container_errors() -> None:
    trailing = check_dataset(FIX / "trailing_comma.json")
    assert [(p.code, p.line) for p in trailing.errors] == [("parse", 4)]
    assert "trailing comma" in trailing.errors[0].message and trailing.rows == 2
    top = check_dataset(FIX / "top_object.json")
    assert [p.code for p in top.errors] == ["parse"] and "single JSON object" in top.errors[0].message
    bad = check_dataset(FIX / "bad_syntax.json")
    assert bad.rows == 1 and "nothing after this point can be read" in bad.errors[0].fix


def test_json_file_holding_json_lines(tmp_path: Path) -> None:
    f = tmp_path / "lines.json"  # datasets (and so LLaMA-Factory) reads JSON lines in a .json file
    f.write_text('{"instruction": "a", "output": "b"}\n{"instruction": "c", "output": "d"}\n')
    report = check_dataset(f)
    assert (report.container, report.rows, report.ok) == ("jsonl", 2, True)


def test_unsupported_and_empty_files(tmp_path: Path) -> None:
    report = check_dataset(FIX / "notes.xlsx")
    assert [p.code for p in report.errors] == ["container"]
    assert ".jsonl" in report.errors[0].fix
    (tmp_path / "empty.jsonl").write_text("\n\n")
    assert [p.code for p in check_dataset(tmp_path / "empty.jsonl").errors] == ["empty-dataset"]
    (tmp_path / "empty.json").write_text("[]")
    assert [p.code for p in check_dataset(tmp_path / "empty.json").errors] == ["empty-dataset"]
    (tmp_path / "latin1.jsonl").write_bytes('{"instruction": "caf\xe9", "output": "x"}\n'.encode("latin-1"))
    assert [(p.code, p.line) for p in check_dataset(tmp_path / "latin1.jsonl").errors] == [("encoding", 1)]


def test_unknown_format_cannot_be_guessed(tmp_path: Path) -> None:
    f = tmp_path / "odd.jsonl"
    f.write_text('{"question": "q", "answer": "a"}\n')
    report = check_dataset(f)
    assert [p.code for p in report.errors] == ["format-unknown"]
    assert "keys seen: answer, question" in report.errors[0].message
    # a declared format checks the rows against its default layout instead
    declared = check_dataset(f, "alpaca")
    assert [p.message for p in declared.errors] == [
        "missing field 'instruction' (the prompt)",
        "missing field 'output' (the answer)",
    ]


def test_format_mismatch_and_aliases() -> None:
    report = check_dataset(FIX / "sharegpt_ok.jsonl", "alpaca")
    assert [p.code for p in report.errors] == ["format-mismatch"]
    assert "declared format 'alpaca', but the rows look like sharegpt" in report.errors[0].message
    assert "use format sharegpt" in report.errors[0].fix
    assert check_dataset(FIX / "preference_ok.json", "dpo").ok  # alias
    assert check_dataset(FIX / "multimodal_ok.json", "llava").ok
    assert check_dataset(FIX / "openai_ok.jsonl", "sharegpt").ok  # lenient on tag style
    with pytest.raises(UserError, match="did you mean 'sharegpt'"):
        check_dataset(FIX / "sharegpt_ok.jsonl", "sharegtp")


def test_tag_style_enforced() -> None:
    report = check_dataset(FIX / "kto_ok.jsonl", tags="from_value")
    assert {p.code for p in report.errors} == {"missing-field"}
    assert "it uses 'role'/'content'; this file uses 'from'/'value'" in report.errors[0].message


def test_stage_fit() -> None:
    assert [p.code for p in check_dataset(FIX / "alpaca_ok.jsonl", stage="dpo").errors] == ["stage-mismatch"]
    assert [p.code for p in check_dataset(FIX / "preference_ok.json", stage="sft").errors] == ["stage-mismatch"]
    assert [p.code for p in check_dataset(FIX / "sharegpt_ok.jsonl", stage="kto").errors] == ["stage-mismatch"]
    assert check_dataset(FIX / "kto_ok.jsonl", stage="kto").ok


def test_bad_arguments_are_user_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="no such file"):
        check_dataset(tmp_path / "nope.json")
    with pytest.raises(UserError, match="needs a tokenizer"):
        check_dataset(FIX / "alpaca_ok.jsonl", cutoff_len=128)
    with pytest.raises(UserError, match="no tokenizer.json"):
        check_dataset(FIX / "alpaca_ok.jsonl", tokenizer_dir=tmp_path)
    with pytest.raises(UserError, match="not a LLaMA-Factory column"):
        check_dataset(FIX / "alpaca_ok.jsonl", columns={"promt": "question"})


def test_columns_override(tmp_path: Path) -> None:
    f = tmp_path / "qa.jsonl"
    f.write_text('{"question": "q", "answer": "a"}\n')
    report = check_dataset(f, "alpaca", columns={"prompt": "question", "response": "answer"})
    assert report.ok, [str(p) for p in report.problems]


def test_raise_for_errors_lists_rows() -> None:
    report = check_dataset(FIX / "sharegpt_bad.jsonl")
    with pytest.raises(UserError) as info:
        report.raise_for_errors(limit=3)
    text = info.value.render()
    assert "10 data error(s) in 11 rows" in text
    assert "sharegpt_bad.jsonl row 2 (line 2)" in text and "fix:" in text
    assert "... and 7 more errors" in text
    assert len(info.value.problems) == 4


# ------------------------------------------------------------------ media paths


def test_media_resolved_against_data_folder_and_media_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rows = [
        {
            "messages": [{"role": "user", "content": "<image>x"}, {"role": "assistant", "content": "y"}],
            "images": ["images/cat.png"],
        }
    ]
    f = tmp_path / "mm.json"
    f.write_text(json.dumps(rows))
    assert [p.code for p in check_dataset(f).errors] == ["media-missing"]
    assert check_dataset(f, media_dir=FIX).ok
    monkeypatch.chdir(FIX)  # found only relative to the working directory: works by luck
    assert [p.code for p in check_dataset(f).warnings] == ["media-cwd"]
    rows[0]["images"] = [str(FIX / "images" / "cat.png")]  # absolute paths are fine
    f.write_text(json.dumps(rows))
    assert check_dataset(f).problems == []
    rows[0]["images"] = ["https://example.com/cat.png"]  # URLs are not checked
    f.write_text(json.dumps(rows))
    assert check_dataset(f).problems == []


def test_llava_singular_image_key(tmp_path: Path) -> None:
    row = {
        "id": "1",
        "image": "images/cat.png",
        "conversations": [
            {"from": "human", "value": "<image>\nWhat is it?"},
            {"from": "gpt", "value": "A cat."},
        ],
    }
    f = tmp_path / "llava.json"
    f.write_text(json.dumps([row]))
    report = check_dataset(f, media_dir=FIX)
    assert report.format == "multimodal" and report.ok
    assert report.data_format.dataset_info_entry("llava.json")["columns"]["images"] == "image"


def test_preference_media_counted_per_answer() -> None:
    rows = [
        {
            "conversations": [{"from": "human", "value": "<image>Which?"}],
            "chosen": {"from": "gpt", "value": "left"},
            "rejected": {"from": "gpt", "value": "<image> right"},
            "images": [str(FIX / "images" / "cat.png")],
        }
    ]
    report = check_rows(rows)
    assert report.format == "preference_sharegpt"
    assert [p.code for p in report.errors] == ["media-count"]


# ------------------------------------------------------------------ Parquet, Arrow, save_to_disk, folders


def _alpaca_rows(n: int) -> list[dict]:
    return [{"instruction": f"q{i}", "input": "", "output": f"a{i}"} for i in range(n)]


def test_parquet(tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    rows = _alpaca_rows(5) + [{"instruction": "q", "input": "", "output": None}]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "train.parquet")
    report = check_dataset(tmp_path / "train.parquet")
    assert (report.container, report.format, report.rows) == ("parquet", "alpaca", 6)
    assert codes(report) == [("null-field", 6)]
    assert report.errors[0].where.endswith("train.parquet row 6")  # no line numbers in columnar files


def test_parquet_embedded_images(tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    png = (FIX / "images" / "cat.png").read_bytes()
    rows = [
        {
            "messages": [{"role": "user", "content": "<image>?"}, {"role": "assistant", "content": "cat"}],
            "images": [{"bytes": png, "path": None}],
        }
    ]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "mm.parquet")
    assert check_dataset(tmp_path / "mm.parquet").ok
    out = convert_to_jsonl(tmp_path / "mm.parquet", tmp_path / "out" / "mm.jsonl")
    row = json.loads(out.read_text())
    assert row["images"][0].startswith("mm_media/") and row["images"][0].endswith(".png")
    assert (out.parent / row["images"][0]).read_bytes() == png
    assert check_dataset(out).problems == []


def _write_saved_split(folder: Path, rows: list[dict]) -> None:
    """What datasets' save_to_disk writes for a split: Arrow IPC stream, state.json, dataset_info.json."""
    import pyarrow as pa

    folder.mkdir(parents=True)
    table = pa.Table.from_pylist(rows)
    with pa.OSFile(str(folder / "data-00000-of-00001.arrow"), "wb") as sink:
        with pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table)
    (folder / "state.json").write_text(json.dumps({"_data_files": [{"filename": "data-00000-of-00001.arrow"}]}))
    (folder / "dataset_info.json").write_text(json.dumps({"features": {}}))


def test_save_to_disk_dataset_dict(tmp_path: Path) -> None:
    pytest.importorskip("pyarrow")
    root = tmp_path / "ultrafeedback"
    _write_saved_split(root / "train", _alpaca_rows(4))
    _write_saved_split(root / "test", _alpaca_rows(2) + [{"instruction": "", "input": "", "output": "x"}])
    (root / "dataset_dict.json").write_text(json.dumps({"splits": ["train", "test"]}))
    report = check_dataset(root)
    assert report.container == "save_to_disk" and report.needs_conversion
    assert [p.path.name for p in report.parts] == ["train", "test"]
    assert (report.rows, report.format) == (7, "alpaca")
    assert [(p.code, p.severity) for p in report.problems] == [
        ("empty-field", "error"),
        ("save-to-disk", "warning"),
    ]
    warning = report.warnings[0]
    assert "LLaMA-Factory cannot load it" in warning.message and "seed 000" in warning.message
    assert "lfw data convert" in warning.fix
    assert report.errors[0].where == f"{root}[test] row 3"
    out = convert_to_jsonl(root, tmp_path / "train.jsonl")  # default split: train
    assert check_dataset(out).rows == 4 and check_dataset(out).ok
    out = convert_to_jsonl(root, tmp_path / "test.jsonl", split="test")
    assert check_dataset(out).rows == 3
    with pytest.raises(UserError, match="no split 'dev'"):
        convert_to_jsonl(root, tmp_path / "dev.jsonl", split="dev")


def test_save_to_disk_single_split_and_arrow_file(tmp_path: Path) -> None:
    pytest.importorskip("pyarrow")
    _write_saved_split(tmp_path / "split", _alpaca_rows(3))
    report = check_dataset(tmp_path / "split")
    assert (report.container, report.rows, report.error_count) == ("save_to_disk", 3, 0)
    assert [p.code for p in report.warnings] == ["save-to-disk"]
    arrow = check_dataset(tmp_path / "split" / "data-00000-of-00001.arrow")
    assert (arrow.container, arrow.rows, arrow.problems) == ("arrow", 3, [])


def test_real_datasets_save_to_disk(tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    dd = datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_list(_alpaca_rows(3)),
            "validation": datasets.Dataset.from_list(_alpaca_rows(2)),
        }
    )
    dd.save_to_disk(str(tmp_path / "saved"))
    report = check_dataset(tmp_path / "saved")
    assert (report.container, report.rows, report.error_count) == ("save_to_disk", 5, 0)
    out = convert_to_jsonl(tmp_path / "saved", tmp_path / "train.jsonl")
    assert [json.loads(x) for x in out.read_text().splitlines()] == _alpaca_rows(3)


def test_folders(tmp_path: Path) -> None:
    shards = tmp_path / "shards"
    shards.mkdir()
    for i in range(2):
        (shards / f"part{i}.jsonl").write_text("\n".join(json.dumps(r) for r in _alpaca_rows(3)) + "\n")
    report = check_dataset(shards)
    assert (report.container, report.rows, report.format) == ("folder", 6, "alpaca")
    assert report.error_count == 0 and len(report.parts) == 2
    (shards / "notes.txt").write_text("hello\n")  # LLaMA-Factory: "File types should be identical"
    mixed = check_dataset(shards)
    assert [p.code for p in mixed.errors] == ["container"] and ".jsonl, .txt" in mixed.errors[0].message
    assert mixed.format == "mixed"


def test_unregistered_column_warning(tmp_path: Path) -> None:
    (tmp_path / "d.jsonl").write_text('{"instruction": "q", "output": "a", "system": "Be brief."}\n')
    (tmp_path / "dataset_info.json").write_text(json.dumps({"d": {"file_name": "d.jsonl"}}))
    report = check_dataset(tmp_path)
    assert [p.code for p in report.warnings] == ["unregistered-column"]
    assert "'system' is in the data but not in dataset_info.json" in report.warnings[0].message


# ------------------------------------------------------------------ token lengths


def _word_tokenizer(folder: Path) -> Path:
    """A word-level tokenizer: one token per word, so lengths are predictable."""
    tokenizers = pytest.importorskip("tokenizers")
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace

    tok = tokenizers.Tokenizer(WordLevel({"[UNK]": 0, "w": 1}, unk_token="[UNK]"))
    tok.pre_tokenizer = Whitespace()
    tok.enable_truncation(max_length=16)  # must be ignored: it would hide long rows
    folder.mkdir(parents=True, exist_ok=True)
    tok.save(str(folder / "tokenizer.json"))
    return folder


def test_token_lengths_and_cutoff(tmp_path: Path) -> None:
    model = _word_tokenizer(tmp_path / "model")
    rows = [{"instruction": "q", "output": " ".join(["w"] * n)} for n in range(1, 101)]
    f = tmp_path / "lens.jsonl"
    f.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    base = check_dataset(f, tokenizer_dir=model).lengths
    overhead = base.p50 - 50  # ChatML wrapping costs the same in every row
    assert overhead > 0
    assert (base.count, base.max, base.p90, base.p95, base.p99) == (
        100,
        overhead + 100,
        overhead + 90,
        overhead + 95,
        overhead + 99,
    )
    assert base.suggested_cutoff_len % 64 == 0 and base.suggested_cutoff_len >= base.p95
    assert base.suggested_cutoff_len - 64 < base.p95
    report = check_dataset(f, tokenizer_dir=model, cutoff_len=overhead + 90)
    assert report.lengths.over_cutoff == 10
    assert [p.row for p in report.warnings] == list(range(91, 101))
    assert report.warnings[0].code == "truncated" and report.ok  # truncation warns, it does not fail
    assert f"{overhead + 91} tokens > cutoff_len {overhead + 90}" in report.warnings[0].message


def test_lengths_merge_over_folder_parts(tmp_path: Path) -> None:
    model = _word_tokenizer(tmp_path / "model")
    d = tmp_path / "d"
    d.mkdir()
    for i in range(2):
        (d / f"{i}.jsonl").write_text(json.dumps({"instruction": "q", "output": "w " * (10 * (i + 1))}) + "\n")
    report = check_dataset(d, tokenizer_dir=model)
    assert report.lengths.count == 2 and report.lengths.max - report.lengths.p50 == 10


def test_suggested_cutoff_rounds_to_128_above_1024() -> None:
    assert length_stats([1500] * 10, None).suggested_cutoff_len == 1536
    assert length_stats([100] * 10, None).suggested_cutoff_len == 128
    assert length_stats([10] * 10, None).suggested_cutoff_len == 64


def test_render_chatml() -> None:
    text = render_chatml("sys", "", [("user", "hi"), ("assistant", "yo")])
    expected = "<|im_start|>system\nsys<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n"
    assert text == expected + "<|im_start|>assistant\nyo<|im_end|>\n"


# ------------------------------------------------------------------ CLI


def test_cli_check_ok_and_failing() -> None:
    runner = CliRunner()
    ok = runner.invoke(data_cli, ["check", str(FIX / "alpaca_ok.jsonl")])
    assert ok.exit_code == 0, ok.output
    assert "OK: 3 rows, no errors" in ok.output and "dataset_info.json entry" in ok.output
    bad = runner.invoke(data_cli, ["check", str(FIX / "sharegpt_bad.jsonl"), "-n", "2"])
    assert bad.exit_code == 1
    assert "Errors (first 2 of 10):" in bad.output
    assert "sharegpt_bad.jsonl row 2 (line 2): conversations[1] is 'human'" in bad.output  # no markup eaten
    assert "fix: merge consecutive messages" in bad.output
    assert "by kind:" in bad.output and "FAILED: 10 error(s) in 11 rows" in bad.output


def test_cli_json_and_lengths(tmp_path: Path) -> None:
    model = _word_tokenizer(tmp_path / "model")
    runner = CliRunner()
    res = runner.invoke(data_cli, ["check", str(FIX / "alpaca_ok.jsonl"), "--json"])
    payload = json.loads(res.output)
    assert payload["format"] == "alpaca" and payload["rows"] == 3 and payload["error_count"] == 0
    res = runner.invoke(data_cli, ["check", str(FIX / "alpaca_ok.jsonl"), "--model", str(model), "--cutoff-len", "8"])
    assert res.exit_code == 0, res.output
    assert "Token lengths (approximate: ChatML wrapping" in res.output and "> 8" in res.output


def test_cli_convert(tmp_path: Path) -> None:
    pytest.importorskip("pyarrow")
    _write_saved_split(tmp_path / "saved", _alpaca_rows(3))
    res = CliRunner().invoke(data_cli, ["convert", str(tmp_path / "saved"), str(tmp_path / "o.jsonl")])
    assert res.exit_code == 0 and "wrote 3 rows" in res.output


def test_lfw_main_exit_codes(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from lfw import cli

    monkeypatch.setitem(cli.COMMANDS, "data", ("data", "data", "Check and convert training data."))
    assert cli.main(["data", "check", str(FIX / "alpaca_ok.jsonl")]) == 0
    assert cli.main(["data", "check", str(FIX / "alpaca_bad.json")]) == 1
    assert cli.main(["data", "check", str(FIX / "alpaca_ok.jsonl"), "--format", "alpacca"]) == 2
    err = capsys.readouterr().err
    assert "unknown format 'alpacca'" in err and "Traceback" not in err


def test_import_stays_light() -> None:
    code = (
        "import sys, lfw.cli.data, lfw.preflight.data.check, lfw.preflight.data.convert\n"
        "from lfw.preflight.data.check import check_dataset\n"
        f"check_dataset({str(FIX / 'alpaca_ok.jsonl')!r})\n"
        "bad = [m for m in ('torch', 'transformers', 'llamafactory', 'vllm', 'pandas', 'datasets', 'pyarrow')"
        " if m in sys.modules]\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    assert out.stdout.strip() == ""


# ------------------------------------------------------------------ property: never crash

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
KEYS = [
    "instruction",
    "input",
    "output",
    "history",
    "system",
    "conversations",
    "messages",
    "chosen",
    "rejected",
    "label",
    "kto_tag",
    "images",
    "image",
    "videos",
    "audios",
    "tools",
    "text",
    "from",
    "value",
    "role",
    "content",
    "tool_calls",
    "prompt",
    "response",
]
ROLE_VALUES = st.sampled_from(
    ["human", "gpt", "user", "assistant", "system", "tool", "observation", "function_call", "<image>", ""]
)
plausible_values = st.recursive(
    st.none() | st.booleans() | st.integers() | ROLE_VALUES | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.sampled_from(KEYS), inner, max_size=5),
    max_leaves=20,
)
plausible_rows = st.dictionaries(st.sampled_from(KEYS), plausible_values, max_size=6)


@settings(max_examples=150, deadline=None)
@given(rows=st.lists(json_values, max_size=6), fmt=st.sampled_from([None, *FORMATS]))
def test_arbitrary_json_rows_never_crash(rows: list, fmt: str | None) -> None:
    report = check_rows(rows, fmt)
    assert report.rows == len(rows)
    assert all(p.severity in ("error", "warning") and p.message for p in report.problems)


@settings(max_examples=200, deadline=None)
@given(
    rows=st.lists(plausible_rows, min_size=1, max_size=6),
    fmt=st.sampled_from([None, *FORMATS]),
    tags=st.sampled_from([None, "from_value", "role_content"]),
    stage=st.sampled_from([None, "sft", "dpo", "kto"]),
)
def test_plausible_rows_never_crash(rows: list, fmt: str | None, tags: str | None, stage: str | None) -> None:
    report = check_rows(rows, fmt, tags=tags, stage=stage)
    assert report.error_count == len(report.errors) and report.warning_count == len(report.warnings)
    if report.format is None:
        assert detect_format(rows) is None or report.error_count


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(blob=st.binary(max_size=200), suffix=st.sampled_from([".json", ".jsonl", ".csv", ".txt"]))
def test_arbitrary_file_bytes_never_crash(tmp_path: Path, blob: bytes, suffix: str) -> None:
    f = tmp_path / f"blob{suffix}"
    f.write_bytes(blob)
    check_dataset(f)


# ------------------------------------------------------------------ oracle: LLaMA-Factory's own converters


# Problems LLaMA-Factory's converter lets through: it trains on such rows (empty or null prompt, identical
# pair, an answer with a user role - it only logs "Invalid role tag" there) or fails on them later.
CONTENT_CODES = {
    "empty-field",
    "null-field",
    "chosen-equals-rejected",
    "answer-role",
    "media-missing",
    "tools-json",
}


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "expect_dropped"),
    [
        ("sharegpt_bad.jsonl", 9),
        ("sharegpt_ok.jsonl", 0),
        ("openai_ok.jsonl", 0),
        ("preference_bad.json", 3),
        ("alpaca_bad.json", 4),
        ("kto_bad.jsonl", 2),
        ("preference_alpaca_bad.jsonl", 1),
        ("multimodal_bad.json", 2),
        ("kto_ok.jsonl", 0),
        ("multimodal_ok.json", 0),
        ("alpaca_ok.jsonl", 0),
        ("dataset_dir/toolcall_demo.json", 0),
        ("dataset_dir/dpo_demo.json", 0),
        ("dataset_dir/kto_demo.json", 0),
    ],
)
def test_rows_llamafactory_drops_are_errors(name: str, expect_dropped: int) -> None:
    """Every row LLaMA-Factory 0.9.5 would drop or crash on is an error here (and the rest is kept by it)."""
    pytest.importorskip("llamafactory")
    from types import SimpleNamespace

    from llamafactory.data.converter import get_dataset_converter
    from llamafactory.data.parser import DatasetAttr

    report = check_dataset(FIX / name)
    fmt = report.data_format
    attr = DatasetAttr("file", dataset_name=name)
    attr.join(fmt.dataset_info_entry(name))
    converter = get_dataset_converter(attr.formatting, attr, SimpleNamespace(media_dir=str(FIX)))
    rows = (
        [json.loads(x) for x in (FIX / name).read_text().splitlines() if x.strip()]
        if name.endswith(".jsonl")
        else json.loads((FIX / name).read_text())
    )
    columns = [v for v in fmt.columns.values() if v]
    error_rows = {p.row for p in report.errors}
    dropped = 0
    for index, row in enumerate(rows, 1):
        try:
            out = converter({c: None for c in columns} | row)  # datasets fills absent columns with None
            prompt, response = out["_prompt"], out["_response"]
            kept = len(prompt) % 2 == 1 and len(response) == (2 if fmt.ranking or fmt.kto else 1)
            kept = kept and all(isinstance(m["content"], str) for m in prompt + response)
            images = out["_images"] or []
            tags = sum(m["content"].count("<image>") for m in prompt + response[:1]) if kept else 0
            kept = kept and tags == len(images)
        except Exception:  # noqa: BLE001  # LLaMA-Factory would crash on this row
            kept = False
        if not kept:
            assert index in error_rows, f"LLaMA-Factory drops row {index} but lfw reports {codes(report)}"
            dropped += 1
        else:
            flagged = {p.code for p in report.errors if p.row == index}
            assert flagged <= CONTENT_CODES, f"LLaMA-Factory keeps row {index}; lfw reports {flagged}"
    assert dropped == expect_dropped
