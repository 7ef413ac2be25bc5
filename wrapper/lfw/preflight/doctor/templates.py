"""The chat template against the model and the data: its family, qwen3's think blocks, LF's registry.

A template of one family on a model of another, or qwen3 on data without reasoning, trains without an error
and silently learns the wrong format; these checks say so before launch.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lfw.infra.errors import UserError
from lfw.preflight.doctor.result import FAIL, OK, WARN, Check

if TYPE_CHECKING:
    from lfw.preflight.doctor.recipe import RecipeFacts

# LLaMA-Factory 0.9.5 template name -> the model families LF registers it for (extras/constants.py), matched
# by equality: a template of one family on a model of another silently trains the wrong format. Templates not
# listed (chatml, default, alpaca, vicuna, ...) are not tied to one family and are not checked.
TEMPLATE_FAMILIES: dict[str, tuple[str, ...]] = {
    **dict.fromkeys(
        (
            "qwen", "qwen3", "qwen3_nothink", "qwen3_5", "qwen3_5_nothink", "qwen3_6", "qwen2_vl", "qwen3_vl",
            "qwen3_vl_nothink", "qwen2_audio", "qwen2_omni", "qwen3_omni", "qwen3_omni_nothink",
        ),
        ("qwen",),
    ),
    **dict.fromkeys(("llama2", "llama2_zh", "llama3", "llama4", "mllama"), ("llama",)),
    **dict.fromkeys(("mistral", "ministral", "ministral3", "mistral_small", "zephyr"), ("mistral",)),
    **dict.fromkeys(("gemma", "gemma2", "gemma3", "gemma3n", "gemma4", "gemma4n"), ("gemma",)),
    "paligemma": ("paligemma",),
    **dict.fromkeys(("phi", "phi_small", "phi4", "phi4_mini"), ("phi",)),
    # DeepSeek-LLM and DeepSeek-Coder (v1) are Llama architectures; the R1 distills are Qwen2 and Llama.
    **dict.fromkeys(("deepseek", "deepseekcoder"), ("deepseek", "llama")),
    "deepseek3": ("deepseek",),
    "deepseekr1": ("deepseek", "qwen", "llama"),
    **dict.fromkeys(
        ("chatglm3", "glm4", "glm4_moe", "glm4v", "glm4_5v", "glm4_7", "glmz1", "glm_ocr"), ("glm",)
    ),
    **dict.fromkeys(("intern2", "intern_vl", "intern_s1"), ("intern",)),
    **dict.fromkeys(("yi", "yi_vl"), ("yi", "llama")),  # Yi models are Llama architectures
    **dict.fromkeys(("falcon", "falcon_h1"), ("falcon",)),
}  # fmt: skip
# Names that are one family under another spelling (config model_type or hub name, letters before any digit).
FAMILY_ALIASES = {
    "mixtral": "mistral",
    "ministral": "mistral",
    "chatglm": "glm",
    "phimoe": "phi",
    "internlm": "intern",
    "internvl": "intern",
    "interns": "intern",
}
KNOWN_FAMILIES = {family for families in TEMPLATE_FAMILIES.values() for family in families}


def model_family(model_type: str | None, name: str) -> str | None:
    """The family of a model: from config.json's model_type (qwen2_moe -> qwen), else the first word of its name
    that is one (meta-llama/Meta-Llama-3-8B -> llama). Whole words only: "dolphin" is not "phi"."""
    words = [model_type] if model_type else re.split(r"[^a-z0-9.]+", Path(name).name.lower())
    for word in words:
        letters = re.match(r"[a-z]+", word.lower())
        family = FAMILY_ALIASES.get(letters.group(), letters.group()) if letters else None
        if family in KNOWN_FAMILIES:
            return family
    return None


def template_family_checks(template: str, model_type: Any, model_name: str) -> list[Check]:
    """The template's families (by LF template name) must include the model's family."""
    family = model_family(str(model_type) if model_type else None, model_name)
    allowed = TEMPLATE_FAMILIES.get(template)
    if family is None or allowed is None:
        return []
    if family in allowed:
        return [Check("template matches the model", OK, f"{template} on a {family} model")]
    templates = sorted(name for name, families in TEMPLATE_FAMILIES.items() if family in families)
    return [
        Check(
            "template matches the model",
            FAIL,
            f"template {template} is for {'/'.join(allowed)} models; this is a {family} model",
            f"model.template: one of {', '.join(templates)} (or a generic one such as chatml)",
        )
    ]


def check_template_family(facts: RecipeFacts) -> list[Check]:
    recipe = facts.recipe
    return template_family_checks(recipe.model.template, (facts.config or {}).get("model_type"), recipe.model.path)


def first_rows_text(path: Path, rows: int = 50) -> str | None:
    """Text of the first rows of a JSON/JSONL file (None for other containers or unreadable files)."""
    try:
        if path.suffix == ".jsonl":
            with path.open(encoding="utf-8") as handle:
                return "".join(line for _, line in zip(range(rows), handle, strict=False))
        if path.suffix == ".json":
            data = json.loads(path.read_text(encoding="utf-8"))
            return json.dumps(data[:rows] if isinstance(data, list) else data, ensure_ascii=False)
    except (OSError, ValueError):
        return None
    return None


def check_qwen3_thinking(facts: RecipeFacts) -> list[Check]:
    """qwen3 adds an empty think block to every label of data without reasoning: qwen3_nothink is meant."""
    from lfw.rendering.render import resolve_path

    if facts.recipe.model.template != "qwen3":
        return []
    texts = [
        first_rows_text(resolve_path(spec.path, facts.base_dir))
        for stage in facts.recipe.stages
        for spec in stage.datasets
        if spec.path is not None  # hub data: not read here
    ]
    looked = [text for text in texts if text is not None]
    if not looked or any("<think>" in text for text in looked):
        return []
    return [
        Check(
            "template qwen3 on data without reasoning",
            WARN,
            "no <think> in the first rows: qwen3 adds an empty think block to every label",
            "model.template: qwen3_nothink",
        )
    ]


def check_template_registry(facts: RecipeFacts) -> list[Check]:
    """The template exists in the installed LLaMA-Factory and its plugin reads the data's images/videos/audio."""
    from lfw.rendering.render import template_problems

    try:
        problems = template_problems(facts.loaded)
    except UserError as err:  # e.g. two datasets claiming one name: render reports it
        problems = err.problems
    if not problems:
        name = facts.recipe.model.template
        return [Check("template in LLaMA-Factory", OK, f"{name}: registered, and reads the data's media")]
    return [Check("template in LLaMA-Factory", FAIL, f"{p.where}: {p.message}", p.fix) for p in problems]
