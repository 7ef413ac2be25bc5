"""cutoff_len against the positions the model was trained on (config.json, rope scaling included).

Past them a RoPE model runs on positions it never saw, and LLaMA-Factory stretches RoPE only when asked
(llamafactory.rope_scaling). `lfw run`'s preflight uses the same check: a failure here stops the launch.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lfw.preflight.doctor.result import FAIL, OK, WARN, Check

if TYPE_CHECKING:
    from lfw.recipe.schema import Recipe, TrainingSpec

CHECK_NAME = "cutoff_len fits the model"


def model_config(recipe: Recipe, base_dir: Path) -> tuple[dict[str, Any] | None, Path]:
    """The model's config.json (None for a hub id or a folder without one) and where it would be."""
    from lfw.preflight.memory.shapes import read_config
    from lfw.rendering.render import model_location

    model_dir = Path(model_location(recipe.model.path, base_dir))
    return (read_config(model_dir) if model_dir.is_absolute() else None), model_dir / "config.json"


def positions(config: dict[str, Any]) -> tuple[int, int, str] | None:
    """(positions before any rope scaling, positions the model handles as configured, how) from config.json."""
    text = config.get("text_config") or config
    trained = text.get("max_position_embeddings")
    if not isinstance(trained, int) or isinstance(trained, bool) or trained <= 0:
        return None
    rope = text.get("rope_scaling") or text.get("rope_parameters") or {}
    factor = rope.get("factor") if isinstance(rope, dict) else None
    kind = rope.get("rope_type") or rope.get("type") if isinstance(rope, dict) else None
    if not isinstance(factor, (int, float)) or factor <= 1 or kind in (None, "default"):
        return trained, trained, f"{trained} positions (no rope scaling in config.json)"
    original = rope.get("original_max_position_embeddings")
    base = original if isinstance(original, int) and original > 0 else trained
    limit = max(trained, int(base * factor))
    return base, limit, f"{limit} positions ({kind} rope scaling x{factor:g} of {base} in config.json)"


def _cutoff_key(recipe: Recipe, index: int) -> str:
    """The recipe key that sets stage `index`'s cutoff_len: its own override, else the shared training block."""
    override = recipe.stages[index].training
    if override is None or override.cutoff_len is None:
        return "training.cutoff_len"
    return f"stages[{index}].training.cutoff_len"


def check_context_length(recipe: Recipe, base_dir: Path) -> list[Check]:
    """With packing every sequence is cutoff_len long, so past the model's positions that is a failure; without,
    only samples that long are affected: a warning. Nothing is said when config.json gives no positions."""
    config, source = model_config(recipe, base_dir)
    known = positions(config or {})
    if known is None:
        return []
    base, limit, described = known
    trainings = [recipe.stage_training(i) for i in range(len(recipe.stages))]
    over: list[tuple[int, TrainingSpec]] = [(i, t) for i, t in enumerate(trainings) if t.cutoff_len > limit]
    if not over:
        longest = max(t.cutoff_len for t in trainings)
        return [Check(CHECK_NAME, OK, f"cutoff_len {longest} <= {described}")]
    index, training = max(over, key=lambda item: item[1].cutoff_len)
    key = _cutoff_key(recipe, index)
    rope = recipe.llamafactory.get("rope_scaling")
    factor = math.ceil(training.cutoff_len / base)
    if rope:
        detail = f"{key} {training.cutoff_len} > {described}; LLaMA-Factory scales RoPE ({rope}) x{factor}"
        return [Check(CHECK_NAME, OK, detail)]
    packed = any(t.packing for _, t in over)
    effect = (
        "packing makes every sequence that long"
        if packed
        else f"samples longer than {limit} tokens run on positions the model never saw"
    )
    return [
        Check(
            CHECK_NAME,
            FAIL if packed else WARN,
            f"{key} {training.cutoff_len} exceeds the model's {described} ({source}): {effect}",
            f"{key}: {limit} or less, or llamafactory.rope_scaling: yarn (LLaMA-Factory then stretches RoPE x{factor})",
        )
    ]
