"""dataset_info.json: every dataset of every stage registered under one name, with absolute paths.

The layout of each dataset (its LLaMA-Factory columns and tags) comes from `lfw data check`'s reader, the one
source of what a format holds; hub data is read from the local datasets cache only (rendering stays offline).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from lfw.infra.errors import Problem, UserError
from lfw.infra.paths import looks_local
from lfw.preflight.data.layout import DataFormat, dataset_layout
from lfw.preflight.data.readers import SAMPLE_ROWS
from lfw.recipe.hub_data import hub_name, hub_rows, hub_source
from lfw.recipe.loader import LoadedRecipe
from lfw.recipe.schema import DatasetSpec

DATASET_INFO = "dataset_info.json"


def resolve_path(text: str, base_dir: Path) -> Path:
    path = Path(text).expanduser()
    return path if path.is_absolute() else (base_dir / path).resolve()


def model_location(text: str, base_dir: Path) -> str:
    """A local folder as an absolute path; anything else that looks like org/name stays a hub id."""
    return str(resolve_path(text, base_dir)) if looks_local(text, base_dir) else text


def _data_path(spec: DatasetSpec, base_dir: Path) -> Path | None:
    """The local data's absolute path; None for a hub dataset (`id:`)."""
    return None if spec.path is None else resolve_path(spec.path, base_dir)


def _layout(spec: DatasetSpec, path: Path | None) -> DataFormat:
    """The data's layout as `lfw data check` reads it: one source for what dataset_info.json registers.

    Hub data: read from its head in the local datasets cache (never the network: rendering stays offline), else
    the format's defaults plus the recipe's columns and tags.
    """
    rows = (hub_rows(spec, SAMPLE_ROWS, offline=True)[0] or []) if path is None else None
    return dataset_layout(path or str(spec.id), spec.format, columns=spec.columns, tags=spec.tags, rows=rows)


def _dataset_entry(spec: DatasetSpec, path: Path | None) -> dict[str, Any]:
    """Every LLaMA-Factory column the data has (system, history, tools, media, ...), under its real key."""
    entry = _layout(spec, path).dataset_info_entry(str(path))
    if path is None:  # hf_hub_url / ms_hub_url (+ subset, split, folder) in place of file_name
        entry = hub_source(spec) | {key: value for key, value in entry.items() if key != "file_name"}
    return entry


def _dataset_name(spec: DatasetSpec, path: Path | None) -> str:
    if spec.name:
        return spec.name
    if path is None:
        return hub_name(spec)
    return re.sub(r"[^A-Za-z0-9_.-]", "_", path.stem if path.suffix else path.name)


def build_dataset_info(loaded: LoadedRecipe) -> tuple[dict[str, Any], list[list[str]]]:
    """dataset_info.json for all stages, and each stage's dataset names; same data, same name."""
    info: dict[str, Any] = {}
    names_per_stage = []
    for index, stage in enumerate(loaded.recipe.stages):
        names = []
        for ds_index, spec in enumerate(stage.datasets):
            path = _data_path(spec, loaded.base_dir)
            try:
                entry = _dataset_entry(spec, path)
            except UserError as err:  # a column name LLaMA-Factory does not have
                where = f"stages[{index}].datasets[{ds_index}]"
                raise UserError([Problem(f"{where}.{p.where}", p.message, p.fix) for p in err.problems]) from None
            name = _dataset_name(spec, path)
            if name in info and info[name] != entry:
                if spec.name:
                    raise UserError(
                        [
                            Problem(
                                f"stages[{index}].datasets[{ds_index}].name",
                                f"{name!r} already names other data",
                                "give each dataset a distinct name",
                            )
                        ]
                    )
                suffix = 2
                while f"{name}_{suffix}" in info and info[f"{name}_{suffix}"] != entry:
                    suffix += 1
                name = f"{name}_{suffix}"
            info[name] = entry
            names.append(name)
        names_per_stage.append(names)
    return info, names_per_stage


def media_dir(loaded: LoadedRecipe, stage_index: int) -> str | None:
    """LLaMA-Factory resolves image paths against one media_dir: the multimodal data's own folder."""
    folders = set()
    for spec in loaded.recipe.stages[stage_index].datasets:
        data_path = _data_path(spec, loaded.base_dir)
        if spec.media_dir:
            folders.add(str(resolve_path(spec.media_dir, loaded.base_dir)))
        elif data_path is not None and (spec.format == "multimodal" or _layout(spec, data_path).media):
            folders.add(str(data_path.parent))  # hub data carries its media (bytes, URLs) in the rows
    if len(folders) > 1:
        raise UserError(
            [
                Problem(
                    f"stages[{stage_index}].datasets",
                    "multimodal datasets with media in different folders",
                    "set the same media_dir on each (LLaMA-Factory has one media_dir per run)",
                )
            ]
        )
    return folders.pop() if folders else None
