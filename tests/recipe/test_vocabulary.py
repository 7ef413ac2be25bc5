"""One vocabulary (lfw.recipe.vocabulary): the recipe schema, `lfw data check`'s choices and its stage rules,
and the per-format defaults in dataset_info/formats.json all name the same formats, stages and methods."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import get_args

import pytest
from click.testing import CliRunner
from pydantic import ValidationError

from lfw.cli.data import data as data_cli
from lfw.infra.errors import UserError
from lfw.preflight.data.check import check_dataset, check_rows
from lfw.preflight.data.options import normalize_format_name
from lfw.recipe import schema
from lfw.recipe.vocabulary import (
    FORMAT_ALIASES,
    FORMATS,
    KTO_STAGES,
    METHODS,
    PREFERENCE_FORMATS,
    PREFERENCE_STAGES,
    STAGE_FORMATS,
    STAGES,
    TAG_STYLES,
)

FIX = Path(__file__).parents[1] / "fixtures" / "data"
CAT = str((FIX / "images" / "cat.png").resolve())


def _turns(user_key: str, human: str, gpt: str, text: str = "q") -> list[dict]:
    role, content = user_key.split("/")
    return [{role: human, content: text}, {role: gpt, content: "a"}]


ROWS = {  # one small, valid row set per format
    "alpaca": [{"instruction": "q", "input": "", "output": "a"}],
    "sharegpt": [{"conversations": _turns("from/value", "human", "gpt")}],
    "openai": [{"messages": _turns("role/content", "user", "assistant")}],
    "preference": [{"instruction": "q", "chosen": "good", "rejected": "bad"}],
    "preference_sharegpt": [
        {
            "conversations": [{"from": "human", "value": "q"}],
            "chosen": {"from": "gpt", "value": "good"},
            "rejected": {"from": "gpt", "value": "bad"},
        }
    ],
    "kto": [{"messages": _turns("role/content", "user", "assistant"), "label": True}],
    "multimodal": [{"messages": _turns("role/content", "user", "assistant", "<image>q"), "images": [CAT]}],
    "text": [{"text": "plain text to continue"}],
}


def _choices(command: str, option: str) -> tuple[str, ...]:
    param = next(p for p in data_cli.commands[command].params if p.name == option)
    return tuple(param.type.choices)


def _stage_spec(stage: str, fmt: str) -> schema.StageSpec:
    return schema.StageSpec.model_validate({"stage": stage, "datasets": [{"path": "d.json", "format": fmt}]})


def test_schema_types_are_the_vocabulary() -> None:
    assert get_args(schema.DatasetSpec.model_fields["format"].annotation) == FORMATS
    assert get_args(schema.StageSpec.model_fields["stage"].annotation) == STAGES
    assert get_args(schema.MethodSpec.model_fields["type"].annotation) == METHODS
    tags, none = get_args(schema.DatasetSpec.model_fields["tags"].annotation)  # TagStyle | None
    assert get_args(tags) == TAG_STYLES and none is type(None)


def test_format_defaults_cover_exactly_the_formats() -> None:
    text = (resources.files("lfw") / "assets" / "dataset_info" / "formats.json").read_text(encoding="utf-8")
    defaults = json.loads(text)
    assert sorted(defaults["formats"]) == sorted(FORMATS)
    assert sorted(defaults["tag_styles"]) == sorted(TAG_STYLES) == sorted(defaults["messages_column"])


def test_cli_choices_are_the_vocabulary() -> None:
    assert _choices("check", "stage") == STAGES
    assert _choices("check", "tags") == TAG_STYLES
    assert all(normalize_format_name(name) == name for name in FORMATS)
    assert all(normalize_format_name(alias) in FORMATS for alias in FORMAT_ALIASES)
    help_text = CliRunner().invoke(data_cli, ["check", "--help"]).output
    assert all(name in help_text for name in FORMATS)


def test_stage_rules_follow_stage_formats() -> None:
    assert PREFERENCE_STAGES == ("dpo", "rm") and KTO_STAGES == ("kto",)
    assert set(STAGE_FORMATS) == set(STAGES)
    assert all(set(fmts) <= set(FORMATS) for fmts in STAGE_FORMATS.values())


@pytest.mark.parametrize("fmt", FORMATS)
def test_each_format_row_set_is_detected_as_itself(fmt: str) -> None:
    report = check_rows(ROWS[fmt])
    assert (report.format, report.ok) == (fmt, True), [str(p) for p in report.problems]


@pytest.mark.parametrize("stage", STAGES)
@pytest.mark.parametrize("fmt", FORMATS)
def test_data_check_and_schema_agree_on_stage_and_format(stage: str, fmt: str) -> None:
    """What a recipe accepts, data check accepts; the pair and kto rules are refused by both."""
    try:
        _stage_spec(stage, fmt)
        schema_ok = True
    except ValidationError:
        schema_ok = False
    assert schema_ok == (fmt in STAGE_FORMATS[stage])
    check_refuses = "stage-mismatch" in check_rows(ROWS[fmt], fmt, stage=stage).code_counts
    if schema_ok:
        assert not check_refuses
    if (fmt in PREFERENCE_FORMATS) != (stage in PREFERENCE_STAGES) or (stage in KTO_STAGES and fmt != "kto"):
        assert check_refuses and not schema_ok


def test_ppo_is_refused_everywhere(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="stage"):
        _stage_spec("ppo", "alpaca")
    with pytest.raises(UserError, match="unknown stage 'ppo'"):
        check_dataset(FIX / "alpaca_ok.jsonl", stage="ppo")
    with pytest.raises(UserError, match="unknown stage 'ppo'"):
        check_rows(ROWS["alpaca"], stage="ppo")
    result = CliRunner().invoke(data_cli, ["check", str(FIX / "alpaca_ok.jsonl"), "--stage", "ppo"])
    assert result.exit_code == 2 and "'ppo' is not one of" in result.output
