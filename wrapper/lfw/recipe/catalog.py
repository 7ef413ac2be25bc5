"""What ships with lfw: the bundled recipes and the documented recipe fields."""

from __future__ import annotations

from collections.abc import Iterator

import yaml
from pydantic import BaseModel

from lfw.recipe.loader import bundled_recipes_dir, model_in
from lfw.recipe.schema import Recipe


def bundled_summaries() -> list[tuple[str, str]]:
    """(file name, description) of each bundled recipe, sorted by name."""
    rows = []
    for path in sorted(bundled_recipes_dir().glob("*.yml")):
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        rows.append((path.name, str(data.get("description", ""))))
    return rows


def field_docs(model: type[BaseModel] = Recipe, prefix: str = "") -> Iterator[tuple[str, str]]:
    """Every recipe field as (dotted path, description), nested blocks included."""
    for name, field in model.model_fields.items():
        path = f"{prefix}{name}"
        nested = model_in(field.annotation)
        list_like = "list" in str(field.annotation)
        yield (f"{path}[]" if list_like else path), field.description or ""
        if nested is not None:
            yield from field_docs(nested, f"{path}[]." if list_like else f"{path}.")
