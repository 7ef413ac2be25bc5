"""Shared fixtures: the tiny model, recipe files written on the fly, a CliRunner, golden files."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

REPO = Path(__file__).resolve().parents[1]
GOLDEN = Path(__file__).parent / "golden"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--update-golden", action="store_true", help="Rewrite golden files from current output.")


@pytest.fixture(autouse=True)
def _no_user_cache_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    """A user's LFW_CACHE_DIR would move the tokenized cache and change every rendered file."""
    monkeypatch.delenv("LFW_CACHE_DIR", raising=False)


@pytest.fixture
def update_golden(request: pytest.FixtureRequest) -> bool:
    return bool(request.config.getoption("--update-golden"))


@pytest.fixture(scope="session")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The tiny Qwen3 model and demo data, built once per session (seconds)."""
    from lfw.tiny import ensure_tiny

    shared = REPO / "build" / "tiny"  # reuse `make tiny`'s build when present
    root = shared if (shared / "lfw_tiny.json").is_file() else tmp_path_factory.mktemp("tiny")
    return ensure_tiny(root)


@pytest.fixture
def write_recipe(tmp_path: Path):
    """Write a recipe dict (or text) to a YAML file in tmp_path and return its path."""

    def write(content: dict | str, name: str = "recipe.yml") -> Path:
        path = tmp_path / name
        path.write_text(content if isinstance(content, str) else yaml.safe_dump(content, sort_keys=False))
        return path

    return write


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


@pytest.fixture
def offline_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")


def minimal_recipe(**changes) -> dict:
    """A small valid recipe; keyword arguments replace top-level blocks."""
    recipe = {
        "name": "t",
        "model": {"path": "Qwen/Qwen3-0.6B", "template": "qwen3_nothink"},
        "training": {"global_batch_size": 8, "micro_batch_size": 2, "max_steps": 5},
        "stages": [{"stage": "sft", "datasets": [{"path": "data.json", "format": "alpaca"}]}],
        "hardware": {"device": "cpu"},
    }
    recipe.update(changes)
    return recipe


def clean_env() -> dict[str, str]:
    """The environment without launch variables that would leak into tests."""
    drop = ("NNODES", "NODE_RANK", "MASTER_ADDR", "MASTER_PORT", "FORCE_TORCHRUN", "NPROC_PER_NODE")
    return {k: v for k, v in os.environ.items() if k not in drop}


def tiny_recipe(tiny: dict[str, Path], **changes) -> dict:
    """A short LoRA SFT of the tiny model on the CPU; keyword arguments replace top-level blocks."""
    recipe = {
        "name": "e2e",
        "model": {"path": str(tiny["model"]), "template": "qwen3_nothink"},
        "method": {"type": "lora", "lora": {"rank": 8, "alpha": 16}},
        "training": {
            "global_batch_size": 8,
            "micro_batch_size": 4,
            "cutoff_len": 128,
            "max_steps": 12,
            "learning_rate": 5e-3,
            "logging_steps": 2,
            "save_steps": 100,
        },
        "stages": [{"stage": "sft", "datasets": [{"path": str(tiny["sft_alpaca"]), "format": "alpaca"}]}],
        "hardware": {"device": "cpu"},
    }
    recipe.update(changes)
    return recipe


def bundled_targets():
    """Each bundled recipe with the target it is meant for (the 14B one on 4 GPUs of unknown model)."""
    from lfw.launch.target import Target
    from lfw.recipe.loader import bundled_recipes_dir, load_recipe

    for path in sorted(bundled_recipes_dir().glob("*.yml")):
        hardware = load_recipe(str(path)).recipe.hardware
        if hardware.device == "cpu":
            yield path, Target("cpu", 1)
        else:
            yield path, Target("cuda", hardware.gpus if hardware.gpus != "auto" else 1)
