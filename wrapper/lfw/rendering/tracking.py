"""Experiment tracking through LLaMA-Factory's and transformers' own switches, every file inside the run directory.

SwanLab goes through LF's `use_swanlab` (transformers 5.6's `report_to: swanlab` crashes with swanlab 0.10);
TensorBoard, Weights & Biases and MLflow through transformers' `report_to`. W&B and MLflow take their settings from
the environment, so lfw adds those variables to the stage's environment (and the manifest). TensorBoard keeps
transformers' default folder, RUN/<stage>/runs (transformers 5 ignores `logging_dir`, which its parser still
accepts). MLflow's default store is SQLite in the run (its file store is in maintenance mode and refuses by
default). Keys come only from the environment: nothing here ever holds one.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from lfw.recipe.schema import Recipe


def report_to(recipe: Recipe) -> list[str]:
    """transformers' integrations this recipe logs to, in a fixed order (empty: `report_to: none`)."""
    tracking = recipe.tracking
    wanted = {"tensorboard": tracking.tensorboard, "wandb": tracking.wandb, "mlflow": tracking.mlflow}
    return [name for name, on in wanted.items() if on]


def tracking_env(recipe: Recipe, run_dir: Path) -> dict[str, str]:
    """The variables W&B and MLflow read, pointing their files into the run directory."""
    env: dict[str, str] = {}
    wandb = recipe.tracking.wandb
    if wandb:
        env |= {"WANDB_PROJECT": wandb.project, "WANDB_MODE": wandb.mode, "WANDB_DIR": str(run_dir)}
        if wandb.entity:
            env["WANDB_ENTITY"] = wandb.entity
    mlflow = recipe.tracking.mlflow
    if mlflow:
        env["MLFLOW_EXPERIMENT_NAME"] = mlflow.experiment
        env["MLFLOW_TRACKING_URI"] = mlflow.tracking_uri or f"sqlite:///{run_dir / 'mlflow.db'}"
    return env


def missing_keys(recipe: Recipe, env: Mapping[str, str]) -> list[tuple[str, str, str]]:
    """(key path, message, fix) for online tracking whose key is not in the environment."""
    found = []
    swanlab = recipe.tracking.swanlab
    if swanlab and swanlab.mode == "cloud" and not env.get("SWANLAB_API_KEY"):
        found.append(
            (
                "tracking.swanlab.mode",
                "cloud logging needs SWANLAB_API_KEY in the environment",
                "export SWANLAB_API_KEY=... (never put it in the recipe), or use mode: local",
            )
        )
    wandb = recipe.tracking.wandb
    if wandb and wandb.mode == "online" and not env.get("WANDB_API_KEY"):
        found.append(
            (
                "tracking.wandb.mode",
                "online logging needs WANDB_API_KEY in the environment",
                "export WANDB_API_KEY=... (never put it in the recipe), or use mode: offline and `wandb sync` later",
            )
        )
    return found
