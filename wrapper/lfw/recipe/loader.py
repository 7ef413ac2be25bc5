"""Reading a recipe file: YAML with line numbers, `extends:`, `--set` overrides, and friendly errors.

Turns pydantic's errors into `Problem`s that name the file, the line, the key path and the closest valid key,
and reports all of them at once.
"""

from __future__ import annotations

import copy
import difflib
import hashlib
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from lfw.infra.errors import Problem, ProblemCollector, UserError
from lfw.recipe.schema import Recipe

BUNDLED_PREFIX = "recipes/"
_LINE = re.compile(r":(\d+) ")


@dataclass
class LoadedRecipe:
    """A validated recipe plus where it came from (for headers, manifests and relative paths)."""

    recipe: Recipe
    path: Path
    chain: list[Path] = field(default_factory=list)  # the file and every base it extends, child first
    overrides: list[str] = field(default_factory=list)
    # The merged document (extends resolved, --set applied, local paths absolute), before validation: a
    # self-contained recipe that loads to the same `recipe` from any folder.
    data: dict[str, Any] = field(default_factory=dict)
    # The validated recipe as JSON at load time, before a run rewrites anything (what --resume compares).
    resolved: dict[str, Any] = field(default_factory=dict)

    @property
    def digest(self) -> str:
        """sha256 of the resolved recipe's canonical JSON: equal digests, equal recipes."""
        canonical = json.dumps(self.resolved, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        return "sha256:" + hashlib.sha256(canonical.encode("utf-8")).hexdigest()

    @property
    def base_dir(self) -> Path:
        """Relative dataset and model paths are relative to the recipe's own folder, or to the current
        directory for the recipes bundled with lfw (their folder is not the user's)."""
        if self.is_bundled:
            return Path.cwd()
        return self.path.parent

    @property
    def display_path(self) -> str:
        """How headers name the recipe: bundled ones by their `recipes/NAME` handle, others by path."""
        return f"{BUNDLED_PREFIX}{self.path.name}" if self.is_bundled else str(self.path)

    @property
    def is_bundled(self) -> bool:
        return _is_bundled(self.path)


def bundled_recipes_dir() -> Path:
    return Path(str(resources.files("lfw") / "assets" / "recipes"))


def _is_bundled(path: Path) -> bool:
    return path.is_relative_to(bundled_recipes_dir().resolve())


def _anchor(path: Path) -> Path:
    """The folder a recipe file's relative paths start from: its own, or the current one for bundled recipes."""
    return Path.cwd() if _is_bundled(path) else path.parent


def resolve_recipe_path(text: str, relative_to: Path | None = None) -> Path:
    """A recipe path as given, or relative to a base recipe, or a bundled recipe by name (recipes/x.yml)."""
    candidates = []
    raw = Path(text).expanduser()
    if relative_to is not None and not raw.is_absolute():
        candidates.append(relative_to / raw)
    candidates.append(raw)
    bundled = bundled_recipes_dir()
    name = text[len(BUNDLED_PREFIX) :] if text.startswith(BUNDLED_PREFIX) else text
    candidates += [bundled / name, bundled / f"{name}.yml"]
    for candidate in candidates:
        if candidate.is_file():
            return candidate.resolve()
    raise UserError(
        [
            Problem(
                text,
                "recipe file not found",
                "give a path to a recipe YAML, or a bundled name from `lfw recipes`",
            )
        ]
    )


# ---- YAML with line numbers ------------------------------------------------------------------------------


def _line_map(node: yaml.Node | None, path: tuple = (), out: dict | None = None) -> dict[tuple, int]:
    """Maps each key path (('stages', 0, 'datasets')) to its 1-based line in the file."""
    out = {} if out is None else out
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key_path = (*path, key_node.value)
            out[key_path] = key_node.start_mark.line + 1
            _line_map(value_node, key_path, out)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            out[(*path, index)] = item.start_mark.line + 1
            _line_map(item, (*path, index), out)
    return out


class DuplicateKeyError(yaml.constructor.ConstructorError):
    """A key given twice in one mapping: PyYAML would keep the last one and drop the first without a word."""

    def __init__(self, key: Any, first_line: int, mark: yaml.Mark) -> None:
        super().__init__(problem=f"duplicate key {key!r} (first on line {first_line})", problem_mark=mark)
        self.key = key


class UniqueKeyLoader(yaml.SafeLoader):
    """yaml.SafeLoader (safe_load's semantics: plain data only) that refuses a mapping key given twice.

    `<<` merge keys are left to SafeLoader: overriding a merged key is what they are for.
    """

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        first: dict[Any, int] = {}
        for key_node, _ in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node)
            line = key_node.start_mark.line + 1
            if key in first:
                raise DuplicateKeyError(key, first[key], key_node.start_mark)
            first[key] = line
        return super().construct_mapping(node, deep)


def _compose_and_construct(text: str) -> tuple[Any, dict[tuple, int]]:
    """One parse for both the data and the line of every key."""
    loader = UniqueKeyLoader(text)
    try:
        node = loader.get_single_node()
        return (loader.construct_document(node) if node is not None else None), _line_map(node)
    finally:
        loader.dispose()


def read_yaml(path: Path) -> tuple[dict[str, Any], dict[tuple, int]]:
    """Safe-load a YAML mapping and its key-path line numbers; a syntax error or duplicate key names the line."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise UserError([Problem(str(path), f"cannot read: {err}")]) from None
    try:
        data, lines = _compose_and_construct(text)
    except DuplicateKeyError as err:
        assert err.problem_mark is not None
        where = f"{path}:{err.problem_mark.line + 1} {err.key}"
        fix = f"keep one {err.key!r} (YAML keeps only the last one and silently drops the others)"
        raise UserError([Problem(where, f"invalid YAML: {err.problem}", fix)]) from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        reason = getattr(err, "problem", None) or str(err)
        raise UserError([Problem(where, f"invalid YAML: {reason}", "fix the YAML syntax on that line")]) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise UserError(
            [Problem(str(path), f"a recipe is a YAML mapping, got {type(data).__name__}", "see `lfw recipes`")]
        )
    return data, lines


# ---- extends and --set ------------------------------------------------------------------------------------


def deep_merge(base: dict[str, Any], child: dict[str, Any]) -> dict[str, Any]:
    """Child wins; mappings merge key by key; lists and scalars are replaced whole."""
    merged = copy.deepcopy(base)
    for key, value in child.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def apply_override(data: dict[str, Any], assignment: str) -> None:
    """Apply one `a.b.c=value` (value parsed as YAML; list items by index: stages.0.training.learning_rate)."""
    key, sep, raw = assignment.partition("=")
    if not sep or not key.strip():
        raise UserError(
            [Problem(f"--set {assignment}", "expected key=value", "e.g. --set training.learning_rate=2e-5")]
        )
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        value = raw
    parts = key.strip().split(".")
    node: Any = data
    for depth, part in enumerate(parts[:-1]):
        nxt = parts[depth + 1]
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise UserError([Problem(f"--set {key}", f"no list item {part!r}", "use an existing index")])
            node = node[int(part)]
            continue
        if not isinstance(node.get(part), (dict, list)):
            node[part] = [] if nxt.isdigit() else {}
        node = node[part]
    last = parts[-1]
    if isinstance(node, list):
        if not last.isdigit() or int(last) >= len(node):
            raise UserError([Problem(f"--set {key}", f"no list item {last!r}", "use an existing index")])
        node[int(last)] = value
    else:
        node[last] = value


# One path to anchor: (the mapping holding it, its key, the recipe key path shown in errors, how to anchor it).
PathPlace = tuple[dict[str, Any], str, str, Callable[[str], str]]


def _path_places(data: dict[str, Any], folder: Path) -> list[PathPlace]:
    """Every model, dataset, media and benchmark path of one recipe document, wherever it is well-formed."""
    from lfw.rendering.render import model_location, resolve_path

    def as_path(text: str) -> str:
        return str(resolve_path(text, folder))

    places: list[PathPlace] = []
    model = data.get("model")
    if isinstance(model, dict):
        places.append((model, "path", "model.path", lambda text: model_location(text, folder)))
    stages = data.get("stages")
    for s_index, stage in enumerate(stages if isinstance(stages, list) else []):
        datasets = stage.get("datasets") if isinstance(stage, dict) else None
        for d_index, spec in enumerate(datasets if isinstance(datasets, list) else []):
            if isinstance(spec, dict):
                where = f"stages[{s_index}].datasets[{d_index}]"
                places += [(spec, key, f"{where}.{key}", as_path) for key in ("path", "media_dir")]
    evaluation = data.get("eval")
    benchmarks = evaluation.get("benchmarks") if isinstance(evaluation, dict) else None
    for b_index, spec in enumerate(benchmarks if isinstance(benchmarks, list) else []):
        if isinstance(spec, dict):
            places.append((spec, "path", f"eval.benchmarks[{b_index}].path", as_path))
    return places


def anchor_paths(data: dict[str, Any], folder: Path, source: str) -> None:
    """Make one document's relative model, data and media paths absolute against `folder`, in place.

    Each file of an `extends` chain anchors its own paths before the merge, so a base recipe's `data/x.json`
    means the file beside the base, not beside the recipe that extends it. Hub ids stay as they are.
    """
    for block, key, where, anchored in _path_places(data, folder):
        text = block.get(key)
        if not isinstance(text, str):
            continue  # validation names it
        try:
            block[key] = anchored(text)
        except (OSError, ValueError) as err:
            raise UserError([Problem(f"{source} {where}", f"not a usable path: {err}", "fix the path")]) from None


def _load_chain(path: Path, seen: list[Path]) -> tuple[dict[str, Any], dict[tuple, int], list[Path]]:
    if path in seen:
        cycle = " -> ".join(str(p) for p in [*seen, path])
        raise UserError([Problem(str(path), f"extends forms a cycle: {cycle}", "remove one of the extends")])
    data, lines = read_yaml(path)
    anchor_paths(data, _anchor(path), str(path))
    chain = [path]
    base_ref = data.pop("extends", None)
    if base_ref is None:
        return data, lines, chain
    if not isinstance(base_ref, str):
        where = f"{path}:{lines.get(('extends',), '?')}"
        raise UserError([Problem(where, "extends must be a path to a base recipe", "extends: base.yml")])
    base_path = resolve_recipe_path(base_ref, relative_to=path.parent)
    base_data, _, base_chain = _load_chain(base_path, [*seen, path])
    return deep_merge(base_data, data), lines, chain + base_chain


# ---- validation errors -> problems --------------------------------------------------------------------------


def _fields_at(model: type[BaseModel], loc: tuple) -> list[str]:
    """The valid field names of the model block that `loc` points into (for 'did you mean')."""
    current: Any = model
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        if not (isinstance(current, type) and issubclass(current, BaseModel)) or part not in current.model_fields:
            return []
        annotation = current.model_fields[part].annotation
        current = model_in(annotation)
    if isinstance(current, type) and issubclass(current, BaseModel):
        return list(current.model_fields)
    return []


def model_in(annotation: Any) -> Any:
    """The BaseModel inside Optional[...] / list[...] annotations, if any."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()) or ():
        found = model_in(arg)
        if found is not None:
            return found
    return None


def format_loc(loc: tuple) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "(top level)"


def _line_for(loc: tuple, lines: dict[tuple, int]) -> int | None:
    for cut in range(len(loc), 0, -1):
        if loc[:cut] in lines:
            return lines[loc[:cut]]
    return None


def validation_problems(err: ValidationError, source: str, lines: dict[tuple, int]) -> list[Problem]:
    problems = []
    for item in err.errors():
        loc = tuple(item["loc"])
        line = _line_for(loc, lines)
        where = f"{source}:{line} {format_loc(loc)}" if line else f"{source} {format_loc(loc)}"
        kind = item["type"]
        if kind == "extra_forbidden":
            valid = _fields_at(Recipe, loc)
            close = difflib.get_close_matches(str(loc[-1]), valid, n=1) if loc else []
            fix = f"did you mean {close[0]!r}?" if close else f"valid keys here: {', '.join(valid)}"
            problems.append(Problem(where, "unknown key", fix))
        elif kind == "missing":
            problems.append(Problem(where, "required key is missing", "add it (see `lfw recipes --fields`)"))
        else:
            message = item["msg"].removeprefix("Value error, ")
            got = item.get("input")
            if kind != "value_error" and not isinstance(got, (dict, list)):
                message += f" (got {got!r})"
            problems.append(Problem(where, message))
    return sorted(problems, key=lambda p: int(m.group(1)) if (m := _LINE.search(p.where)) else 0)


def load_recipe(path_text: str, overrides: list[str] | tuple[str, ...] = ()) -> LoadedRecipe:
    """Read, merge and validate a recipe; raise one UserError listing every problem."""
    path = resolve_recipe_path(path_text)
    data, lines, chain = _load_chain(path, [])
    for assignment in overrides:
        apply_override(data, assignment)
    anchor_paths(data, _anchor(path), "--set")  # paths given with --set are relative to the recipe too
    source = str(path)
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as err:
        raise UserError(validation_problems(err, source, lines), f"{source}: the recipe has problems") from None
    problems = ProblemCollector()
    _cross_checks(recipe, source, lines, problems)
    problems.raise_if_any(f"{source}: the recipe has problems")
    resolved = recipe.model_dump(mode="json")
    return LoadedRecipe(recipe=recipe, path=path, chain=chain, overrides=list(overrides), data=data, resolved=resolved)


def changed_keys(before: Any, after: Any, path: tuple = ()) -> list[tuple[str, Any, Any]]:
    """(key path, before, after) for every value that differs between two resolved recipes."""
    if isinstance(before, dict) and isinstance(after, dict):
        keys = sorted(set(before) | set(after), key=str)
        return [change for key in keys for change in changed_keys(before.get(key), after.get(key), (*path, key))]
    if isinstance(before, list) and isinstance(after, list) and len(before) == len(after):
        pairs = enumerate(zip(before, after, strict=True))
        return [change for i, (a, b) in pairs for change in changed_keys(a, b, (*path, i))]
    return [] if before == after else [(format_loc(path), before, after)]


def _cross_checks(recipe: Recipe, source: str, lines: dict[tuple, int], problems: ProblemCollector) -> None:
    """Rules that span blocks: stage names unique, each stage's merged training block valid, passthrough keys
    known."""
    names = [recipe.stage_dir_name(i) for i in range(len(recipe.stages))]
    for name in {n for n in names if names.count(n) > 1}:
        problems.add(f"{source} stages", f"two stages are named {name!r}", "give each stage a distinct name")
    for index in range(len(recipe.stages)):
        try:
            recipe.stage_training(index)
        except ValidationError as err:
            for problem in validation_problems(err, source, lines):
                problems.add(f"{source} stages[{index}].training", problem.message, problem.fix)
    from lfw.recipe.lf_keys import check_passthrough

    for key, message, fix in check_passthrough(recipe.llamafactory):
        line = lines.get(("llamafactory", key))
        where = f"{source}:{line} llamafactory.{key}" if line else f"{source} llamafactory.{key}"
        problems.add(where, message, fix)
