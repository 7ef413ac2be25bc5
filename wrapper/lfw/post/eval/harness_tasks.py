"""lm-eval task overrides for `lfw eval --harness`: which lm-eval task each standard benchmark is, where its local
files are, and the group YAML that points lm-eval's own task at them.

A benchmark is ``NAME=PATH``. PATH is a data file with the hub dataset's columns (the evaluated split), or a
folder whose file names say the split (``test.jsonl``, ``train.jsonl``, ``test-00000.parquet``); MMLU, C-Eval and
CMMLU take a folder of per-subject files in the hub's or the original archives' layouts (``anatomy/test-*.parquet``,
``val/accountant_val.csv``, ``test/agronomy.csv``) or one file with a ``subject`` column. Only the data source is
overridden (``dataset_path: json|csv|parquet`` and ``dataset_kwargs.data_files``): prompts, filters and metrics stay
lm-eval's. A split for few-shot examples (dev, train, validation) is used when there is one; else lm-eval draws them
from the evaluated file, leaving the current question out.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lfw.infra.errors import UserError

DATA_SUFFIXES = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}
EVAL_SPLIT = "test"  # the split name lfw's overrides give the evaluated file
FEWSHOT_SPLITS = ("dev", "train", "validation", "val")
# Folders of the hub snapshots that are not one subject: cais/mmlu's every-subject copy and its training set.
NOT_SUBJECTS = {"all", "auxiliary_train"}


@dataclass(frozen=True)
class HarnessBench:
    """One standard benchmark: lm-eval's task (or, with ``prefix``, its per-subject tasks) and headline metric."""

    task: str
    primary: str  # lm-eval's result key, "metric,filter"
    splits: tuple[str, ...]  # file stems taken as the evaluated split, in order
    prefix: str | None = None  # per-subject tasks are PREFIX + subject
    subject_column: str | None = None  # a single file holding every subject names it here
    aggregate: tuple[str, ...] = ("acc",)
    generative: bool = False  # scored on generated text; the others on log-likelihoods of the choices


CATALOG: dict[str, HarnessBench] = {
    "mmlu": HarnessBench("mmlu", "acc,none", ("test",), "mmlu_", "subject"),
    "ceval": HarnessBench(
        "ceval-valid", "acc,none", ("val", "validation"), "ceval-valid_", "subject", ("acc", "acc_norm")
    ),
    "cmmlu": HarnessBench("cmmlu", "acc,none", ("test",), "cmmlu_", "subject", ("acc", "acc_norm")),
    "gsm8k": HarnessBench("gsm8k", "exact_match,strict-match", ("test",), generative=True),
    "arc_challenge": HarnessBench("arc_challenge", "acc_norm,none", ("test",)),
    "arc_easy": HarnessBench("arc_easy", "acc_norm,none", ("test",)),
    "hellaswag": HarnessBench("hellaswag", "acc_norm,none", ("validation", "val")),
    "truthfulqa_mc2": HarnessBench("truthfulqa_mc2", "acc,none", ("validation", "val")),
    "truthfulqa_mc1": HarnessBench("truthfulqa_mc1", "acc,none", ("validation", "val")),
    "ifeval": HarnessBench("ifeval", "prompt_level_strict_acc,none", ("train", "test"), generative=True),
}
ALIASES = {"arc": "arc_challenge", "truthfulqa": "truthfulqa_mc2", "c-eval": "ceval"}


@dataclass
class HarnessSpec:
    """One ``NAME=PATH`` of the command line, resolved to local files per lm-eval task."""

    name: str
    bench: HarnessBench
    path: Path
    files: dict[str, dict[str, Path]]  # lm-eval task -> split -> file


def parse_spec(spec: str) -> tuple[str, Path]:
    """``NAME=PATH`` with NAME from the catalogue."""
    name, sep, raw = spec.partition("=")
    name = ALIASES.get(name.strip().lower(), name.strip().lower())
    if not sep or name not in CATALOG:
        known = ", ".join(sorted({*CATALOG, *ALIASES}))
        raise UserError(f"--harness {spec}: expected NAME=PATH with NAME one of {known}")
    path = Path(raw).expanduser()
    if not path.exists():
        raise UserError(f"--harness {spec}: {path} does not exist (a data file, or a folder of them)")
    return name, path


def data_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in DATA_SUFFIXES)


def split_of(path: Path, root: Path, subject: str | None = None) -> str | None:
    """The split a file holds, from its layout: ``test.jsonl``, ``test/x.csv``, ``x_test.csv``, ``test-0.parquet``."""
    parts = [p.lower() for p in path.relative_to(root).with_suffix("").parts]
    words = set(parts[:-1])
    stem = parts[-1]
    if subject:
        stem = stem.removeprefix(subject.lower()).strip("_-")
    words.update(stem.replace("-", "_").split("_"))
    for split in ("test", "val", "validation", "dev", "train"):
        if split in words:
            return split
    return None


def single_files(bench: HarnessBench, path: Path) -> dict[str, Path]:
    """split -> file for a one-task benchmark: a file is the evaluated split; a folder names splits in file names."""
    if path.is_file():
        return {EVAL_SPLIT: path}
    found: dict[str, Path] = {}
    for file in data_files(path):
        split = split_of(file, path)
        if split and split not in found:
            found[split] = file
    return pick_splits(found, bench, path)


def pick_splits(found: dict[str, Path], bench: HarnessBench, where: Path) -> dict[str, Path]:
    """The evaluated split (renamed EVAL_SPLIT) and, when there is one, a few-shot split."""
    evaluated = next((s for s in (*bench.splits, "test") if s in found), None)
    if evaluated is None:
        wanted = " or ".join(bench.splits)
        raise UserError(f"{where}: no {wanted} file for {bench.task} (e.g. {bench.splits[0]}.jsonl)")
    files = {EVAL_SPLIT: found[evaluated]}
    fewshot = next((s for s in FEWSHOT_SPLITS if s in found and s != evaluated), None)
    if fewshot:
        files["fewshot"] = found[fewshot]
    return files


def subject_files(bench: HarnessBench, path: Path, work: Path) -> dict[str, dict[str, Path]]:
    """subject -> split -> file: a folder of per-subject files (the hub's or the original zip's layout), or one
    file with a subject column that lfw splits into per-subject files under ``work``."""
    if path.is_file():
        return split_by_subject(bench, path, work)
    by_subject: dict[str, dict[str, Path]] = {}
    for file in data_files(path):
        rel = [p.lower() for p in file.relative_to(path).with_suffix("").parts]
        for name in rel:
            subject = subject_in(name)
            if subject is not None:
                split = split_of(file, path, subject)
                if split and NOT_SUBJECTS.isdisjoint(rel):
                    by_subject.setdefault(subject, {}).setdefault(split, file)
                break
    if not by_subject:
        raise UserError(f"{path}: no per-subject files (e.g. test/anatomy.csv, anatomy_test.csv, anatomy/test.parquet)")
    return {s: pick_splits(found, bench, path) for s, found in sorted(by_subject.items())}


def subject_in(name: str) -> str | None:
    """``anatomy`` from ``anatomy``, ``anatomy_test``, ``anatomy_val``; None for a plain split name."""
    for split in ("_test", "_val", "_dev", "_train", "_validation"):
        name = name.removesuffix(split)
    return None if name in ("test", "val", "dev", "train", "validation", "data") else name


def split_by_subject(bench: HarnessBench, path: Path, work: Path) -> dict[str, dict[str, Path]]:
    """One file with a subject column, as lm-eval's tasks want it: one JSON Lines file per subject."""
    import pandas as pd

    readers = {".jsonl": lambda p: pd.read_json(p, lines=True), ".json": pd.read_json, ".csv": pd.read_csv}
    reader = readers.get(path.suffix.lower(), pd.read_parquet)
    frame = reader(path)
    column = bench.subject_column
    if column not in frame.columns:
        raise UserError(f"{path}: one file for {bench.task} needs a '{column}' column (or give a per-subject folder)")
    work.mkdir(parents=True, exist_ok=True)
    out: dict[str, dict[str, Path]] = {}
    for subject, rows in frame.groupby(column, sort=True):
        target = work / f"{subject}.jsonl"
        rows.to_json(target, orient="records", lines=True, force_ascii=False)
        out[str(subject)] = {EVAL_SPLIT: target}
    return out


def resolve_spec(spec: str, work: Path, tasks_dir: Path) -> HarnessSpec:
    """A ``NAME=PATH`` with its files per lm-eval task; subjects lm-eval does not know are refused by name."""
    name, path = parse_spec(spec)
    bench = CATALOG[name]
    if bench.prefix is None:
        return HarnessSpec(name, bench, path, {bench.task: single_files(bench, path)})
    subjects = subject_files(bench, path, work / "data" / name)
    files = {f"{bench.prefix}{subject}": split for subject, split in subjects.items()}
    unknown = [task for task in files if not any(tasks_dir.rglob(f"{task}.yaml"))]
    if unknown:
        raise UserError(f"--harness {spec}: lm-eval has no task {', '.join(unknown[:5])} (subject names as lm-eval's)")
    return HarnessSpec(name, bench, path, files)


def task_override(task: str, files: dict[str, Path]) -> dict[str, Any]:
    """lm-eval's own task with only its data source replaced by local files."""
    data = {EVAL_SPLIT: str(files[EVAL_SPLIT].resolve())}
    if "fewshot" in files:
        data["fewshot"] = str(files["fewshot"].resolve())
    builder = DATA_SUFFIXES[files[EVAL_SPLIT].suffix.lower()]
    return {
        "task": task,
        "dataset_path": builder,
        "dataset_name": None,
        "dataset_kwargs": {"data_files": data},
        "training_split": None,
        "validation_split": None,
        "test_split": EVAL_SPLIT,
        "fewshot_split": "fewshot" if "fewshot" in files else None,
    }


def group_yaml(spec: HarnessSpec) -> dict[str, Any]:
    """The group lfw runs for one benchmark: ``lfw-NAME`` over its tasks; several tasks are averaged by size,
    which is MMLU's (and C-Eval's, CMMLU's) overall figure."""
    group: dict[str, Any] = {
        "group": f"lfw-{spec.name}",
        "task": [task_override(task, files) for task, files in spec.files.items()],
    }
    if spec.bench.prefix:
        group["aggregate_metric_list"] = [{"metric": m, "weight_by_size": True} for m in spec.bench.aggregate]
    return group
