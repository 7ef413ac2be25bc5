"""The honest oracle: LLaMA-Factory's own parser (get_train_args) accepts every rendered config.

Runs in a subprocess with a one-process distributed environment, as `llamafactory-cli train` under torchrun
would see it (LLaMA-Factory refuses DeepSpeed configs outside a distributed launch).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, clean_env
from lfw.launch import Target
from lfw.recipe_loader import load_recipe
from lfw.render import render
from test_render import bundled_targets

PARSE_ALL = """
import json, sys, yaml
from llamafactory.hparams import get_train_args
results = {}
for path in sys.argv[1:]:
    try:
        get_train_args(yaml.safe_load(open(path)))
        results[path] = "ok"
    except BaseException as err:  # the parser raises ValueError or SystemExit
        results[path] = f"{type(err).__name__}: {err}"
print("RESULTS=" + json.dumps(results))
"""


def variants():
    """Every bundled recipe on its own target, plus the chains and DeepSpeed stages lfw can render."""
    for path, target in bundled_targets():
        yield path.stem, str(path), [], target
    tiny = "recipes/tiny_cpu_demo.yml"
    yield "qlora-sft-dpo-chain", tiny, ["method.type=qlora"], Target("cpu", 1)
    yield "full-sft-dpo-chain", tiny, ["method.type=full"], Target("cpu", 1)
    yield "freeze", tiny, ["method.type=freeze"], Target("cpu", 1)
    yield "z2-two-procs", tiny, ["hardware.deepspeed=z2"], Target("cpu", 2)
    yield (
        "z3-swanlab-local",
        tiny,
        ["hardware.deepspeed=z3", "tracking.swanlab.project=p", "tracking.swanlab.mode=local"],
        Target("cpu", 2),
    )
    yield (
        "val-liger-packing",
        tiny,
        ["training.val_size=0.1", "training.packing=true", "training.gradient_checkpointing=false"],
        Target("cpu", 1),
    )


@pytest.mark.slow
def test_llamafactory_parser_accepts_every_rendering(tmp_path: Path, monkeypatch):
    monkeypatch.chdir(REPO)
    configs = {}
    for name, recipe, overrides, target in variants():
        run_dir = tmp_path / name
        rendering = render(load_recipe(recipe, overrides), target, run_dir)
        rendering.write(run_dir)
        for stage in rendering.stages:
            configs[str(run_dir / stage.config)] = f"{name}/{stage.config}"
    env = {
        **clean_env(),
        "LOCAL_RANK": "0",
        "RANK": "0",
        "WORLD_SIZE": "1",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": "29561",
        "HF_HUB_OFFLINE": "1",
    }
    proc = subprocess.run(
        [sys.executable, "-c", PARSE_ALL, *configs], capture_output=True, text=True, env=env, timeout=600
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULTS=")]
    assert lines, proc.stderr[-3000:]
    results = json.loads(lines[-1].removeprefix("RESULTS="))
    failed = {configs[path]: outcome for path, outcome in results.items() if outcome != "ok"}
    assert not failed, failed
    assert len(results) == len(configs) >= 10
