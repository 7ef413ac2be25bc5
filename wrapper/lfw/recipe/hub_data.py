"""Hub datasets of a recipe (`id:`): their LLaMA-Factory entry, and their rows read as LF's loader reads them.

Rows come from `datasets.load_dataset` in a subprocess, so HF_HUB_OFFLINE / HF_DATASETS_OFFLINE (read by
`datasets` at import) and a hung network stay out of lfw's own process. Rendering reads the local cache only;
`lfw run` lets `datasets` try the hub (it falls back to the cache by itself).
"""

from __future__ import annotations

import functools
import json
import os
import re
import subprocess
import sys
from typing import Any

from lfw.infra.errors import ProblemCollector
from lfw.recipe.schema import DatasetSpec

HUB_URL_KEYS = {"hf": "hf_hub_url", "ms": "ms_hub_url"}
CHECK_ROWS = 100_000  # `lfw run` checks at most this many rows of a hub dataset
HUB_TIMEOUT_S = 300

_READER = """
import itertools, json, sys
from datasets import load_dataset
spec = json.loads(sys.argv[1])
data = load_dataset(spec["id"], name=spec["subset"], data_dir=spec["folder"], split=spec["split"], streaming=True)
for row in itertools.islice(data, spec["limit"]):
    print(json.dumps(row, ensure_ascii=False, default=str))
"""

_CACHE_ENV = ("HF_HOME", "HF_DATASETS_CACHE", "HF_HUB_CACHE", "HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "HF_ENDPOINT")


def hub_source(spec: DatasetSpec) -> dict[str, str]:
    """The dataset_info.json keys that name the hub data (what LF's parser reads into DatasetAttr)."""
    assert spec.id is not None
    source = {HUB_URL_KEYS[spec.hub or "hf"]: spec.id}
    source |= {key: value for key in ("subset", "split", "folder") if (value := getattr(spec, key)) is not None}
    return source


def hub_name(spec: DatasetSpec) -> str:
    """Default dataset_info.json name: the repository's name (and subset), e.g. alpaca or gsm8k_main."""
    assert spec.id is not None
    return re.sub(r"[^A-Za-z0-9_.-]", "_", "_".join(filter(None, [spec.id.rsplit("/", 1)[-1], spec.subset])))


def hub_rows(spec: DatasetSpec, limit: int, *, offline: bool) -> tuple[list[Any] | None, str]:
    """Up to `limit` rows of the hub dataset, or None and why not (not cached, unreachable, ModelScope)."""
    if spec.hub == "ms":
        return None, "lfw reads Hugging Face datasets only; ModelScope data is checked by LLaMA-Factory at load"
    env = tuple((key, os.environ.get(key)) for key in _CACHE_ENV)
    return _read(spec.id, spec.subset, spec.folder, spec.split or "train", limit, offline, env)


@functools.lru_cache(maxsize=64)
def _read(
    dataset_id: str | None,
    subset: str | None,
    folder: str | None,
    split: str,
    limit: int,
    offline: bool,
    env: tuple[tuple[str, str | None], ...],
) -> tuple[list[Any] | None, str]:
    """One subprocess per (dataset, cache, offline mode); `env` is in the key so a changed HF_HOME reads again."""
    child_env = dict(os.environ)
    if offline:
        child_env |= {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    spec = {"id": dataset_id, "subset": subset, "folder": folder, "split": split, "limit": limit}
    try:
        proc = subprocess.run(
            [sys.executable, "-c", _READER, json.dumps(spec)],
            capture_output=True,
            text=True,
            env=child_env,
            timeout=HUB_TIMEOUT_S,
        )
    except subprocess.TimeoutExpired:
        return None, f"no answer from the hub within {HUB_TIMEOUT_S} s"
    if proc.returncode != 0:
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        return None, lines[-1] if lines else f"datasets exited with {proc.returncode}"
    return [json.loads(line) for line in proc.stdout.splitlines() if line], ""


def check_hub_data(spec: DatasetSpec, stage: str, where: str, problems: ProblemCollector) -> list[str]:
    """`lfw run`'s check of a hub dataset: its rows when the hub or the cache has them, else a warning."""
    from lfw.preflight.data.check import check_rows

    rows, why = hub_rows(spec, CHECK_ROWS, offline=False)
    if rows is None:
        return [f"{where}: hub dataset {spec.id} not checked ({why}); LLaMA-Factory downloads it at training time"]
    report = check_rows(rows, spec.format, name=f"{spec.id}", columns=spec.columns, tags=spec.tags, stage=stage)
    for problem in report.errors[:20]:
        problems.add(f"{where} {problem.where}", problem.message, problem.fix)
    if report.error_count > 20:
        problems.add(f"{where}", f"... and {report.error_count - 20} more data errors in {spec.id}")
    if not rows:
        problems.add(where, f"hub dataset {spec.id} has no rows in split {spec.split or 'train'}", "check split:")
    return []
