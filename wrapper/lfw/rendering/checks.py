"""Checks of a rendering against the installed LLaMA-Factory: rendered values, the chat template, stage chaining.

Each check adds Problems to a collector, so one render reports everything wrong at once.
"""

from __future__ import annotations

from typing import Any

from lfw.infra.errors import Problem, ProblemCollector
from lfw.recipe.lf_keys import KeySet, known_keys
from lfw.recipe.loader import LoadedRecipe
from lfw.rendering.dataset_info import build_dataset_info
from lfw.rendering.stage_models import StageModels


def check_rendered(config: dict[str, Any], keys: KeySet, problems: ProblemCollector) -> None:
    """Every rendered value must mean to LLaMA-Factory what it says: a known key, its type, one of its enum values.

    LF's parser keeps what it does not understand (`quantization_method: bitsandbytes` quantized nothing), so the
    parser accepting a file proves little; passthrough values were checked at load, so a problem here is lfw's.
    """
    for key, value in config.items():
        problem = keys.value_problem(key, value)
        if problem:
            problems.add(f"rendered {key}", problem, "report this lfw bug; meanwhile pin the versions lfw supports")


MEDIA_COLUMNS = {"images": "image", "videos": "video", "audios": "audio"}


def check_template(
    loaded: LoadedRecipe,
    keys: KeySet,
    info: dict[str, Any],
    names_per_stage: list[list[str]],
    problems: ProblemCollector,
) -> None:
    """The chat template exists in the installed LLaMA-Factory and its plugin handles the media in the data."""
    name = loaded.recipe.model.template
    unknown = keys.template_problem(name)
    if unknown:
        problems.add("model.template", *unknown)
        return
    handled = keys.templates[name]
    for index, names in enumerate(names_per_stage):
        for ds_index, ds_name in enumerate(names):
            columns = info[ds_name].get("columns", {})
            for column, medium in MEDIA_COLUMNS.items():
                if column in columns and medium not in handled:
                    can = sorted(
                        (not t.startswith("qwen"), t) for t, media in keys.templates.items() if medium in media
                    )
                    problems.add(
                        f"stages[{index}].datasets[{ds_index}]",
                        f"the data has {column} but template {name!r} is text-only for {medium}s "
                        "(LLaMA-Factory would drop them or fail)",
                        f"use the template of a model that reads {medium}s, e.g. {', '.join(t for _, t in can[:4])}",
                    )


def template_problems(loaded: LoadedRecipe) -> list[Problem]:
    """The template checks of `render` on their own (for `lfw doctor`): registered, and reads the data's media."""
    info, names_per_stage = build_dataset_info(loaded)
    problems = ProblemCollector()
    check_template(loaded, known_keys(), info, names_per_stage, problems)
    return problems.problems


def check_reference_tokens(
    loaded: LoadedRecipe, models: StageModels, stage_name: str, problems: ProblemCollector
) -> None:
    """ModelArguments.copyfrom re-splits the already split token lists: LF 0.9.5 crashes loading a copied reference."""
    for key in ("add_tokens", "add_special_tokens"):
        if models.reference == "copy" and key in loaded.recipe.llamafactory:
            problems.add(
                f"llamafactory.{key}",
                f"LLaMA-Factory 0.9.5 crashes loading the reference model of stage {stage_name} with {key}",
                "add the tokens to the tokenizer of the base model instead, or use a reference-free pref_loss",
            )
