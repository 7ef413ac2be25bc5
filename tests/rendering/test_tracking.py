"""Tracking: SwanLab, TensorBoard, W&B (offline) and MLflow through LLaMA-Factory's and transformers' own switches.

The slow test trains the tiny model once with all four on and reads the logged loss back from each tracker's own
files inside the run directory; the fast ones pin what lfw renders and which variables the stage gets.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import yaml

from lfw.cli import main
from lfw.infra.errors import UserError
from lfw.launch.manifest import safe_environment
from lfw.launch.progress import read_trainer_log
from lfw.launch.runner import preflight
from lfw.launch.target import Target
from lfw.recipe.loader import load_recipe
from lfw.rendering.render import render
from lfw.rendering.tracking import tracking_env
from tests.conftest import minimal_recipe, tiny_recipe

ALL = {
    "tensorboard": True,
    "wandb": {"project": "p"},
    "mlflow": {"experiment": "e"},
    "swanlab": {"project": "s", "mode": "local"},
}


def test_render_and_environment_point_every_tracker_into_the_run(write_recipe, tmp_path):
    loaded = load_recipe(str(write_recipe(minimal_recipe(tracking=ALL))))
    rendering = render(loaded, Target("cpu", 1), tmp_path / "RUN")
    config = yaml.safe_load(rendering.files[-1].content)
    assert config["report_to"] == ["tensorboard", "wandb", "mlflow"] and config["run_name"] == "RUN-1-sft"
    assert config["use_swanlab"] is True and config["swanlab_logdir"] == str(tmp_path / "RUN" / "swanlog")
    env = tracking_env(loaded.recipe, tmp_path / "RUN")
    assert env["WANDB_MODE"] == "offline" and env["WANDB_DIR"] == str(tmp_path / "RUN")
    assert env["MLFLOW_TRACKING_URI"] == f"sqlite:///{tmp_path / 'RUN' / 'mlflow.db'}"
    plain = yaml.safe_load(
        render(load_recipe(str(write_recipe(minimal_recipe()))), Target("cpu", 1), tmp_path).files[-1].content
    )
    assert plain["report_to"] == "none" and "run_name" not in plain


def test_online_wandb_needs_its_key_in_the_environment_and_never_records_it(write_recipe, tmp_path):
    (tmp_path / "data.json").write_text('[{"instruction": "a", "input": "", "output": "b"}]')
    recipe = minimal_recipe(tracking={"wandb": {"project": "p", "mode": "online"}})
    recipe["model"] = {"path": str(tmp_path), "template": "qwen3_nothink"}
    (tmp_path / "config.json").write_text("{}")
    loaded = load_recipe(str(write_recipe(recipe)))
    with pytest.raises(UserError, match="tracking.wandb.mode: online logging needs WANDB_API_KEY"):
        preflight(loaded, Target("cpu", 1), {})
    preflight(loaded, Target("cpu", 1), {"WANDB_API_KEY": "secret-123"})
    recorded = safe_environment({"WANDB_API_KEY": "secret-123", "WANDB_MODE": "online"})
    assert recorded.get("WANDB_MODE") == "online" and "secret-123" not in json.dumps(recorded)


def _wandb_history(path: Path) -> list[dict]:
    """History rows of a W&B transaction log (LevelDB log framing around protobuf Records)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data, rows, pos, buf, block = path.read_bytes(), [], 7, b"", 32768  # 7: the ":W&B" file header
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a record header is padding
            pos += block - pos % block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        buf, pos = buf + data[pos + 7 : pos + 7 + length], pos + 7 + length
        if kind in (1, 4):  # a full record, or the last fragment of one
            record = pb.Record()
            record.ParseFromString(buf)
            if record.WhichOneof("record_type") == "history":
                rows.append({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in record.history.item})
            buf = b""
    return rows


@pytest.mark.slow
def test_every_tracker_logs_the_loss_inside_the_run(tiny, tmp_path, offline_env, monkeypatch):
    monkeypatch.chdir(tmp_path)  # SwanLab's default would be ./swanlog here
    recipe = tiny_recipe(tiny, tracking=ALL)
    recipe["training"].update({"max_steps": 3, "logging_steps": 1})
    path = tmp_path / "recipe.yml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    assert main(["run", str(path), "--output-dir", str(tmp_path / "runs")]) == 0
    run_dir = next((tmp_path / "runs" / recipe["name"]).iterdir())
    losses = [r["loss"] for r in read_trainer_log(run_dir / "1-sft" / "trainer_log.jsonl") if "loss" in r]
    assert len(losses) == 3

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(next((run_dir / "1-sft" / "runs").iterdir())))
    events.Reload()
    assert [e.value for e in events.Scalars("train/loss")] == pytest.approx(losses, rel=1e-6)

    wandb_log = next((run_dir / "wandb").glob("offline-run-*/run-*.wandb"))
    assert [r["train/loss"] for r in _wandb_history(wandb_log) if "train/loss" in r] == pytest.approx(losses)

    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{run_dir / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("e").experiment_id])
    assert run.info.run_name == f"{run_dir.name}-1-sft"
    assert [m.value for m in client.get_metric_history(run.info.run_id, "loss")] == pytest.approx(losses)

    # SwanLab local: one JSON-lines log per metric; the loss is the series equal to LF's own log.
    series = [
        [json.loads(line)["data"] for line in log.read_text().splitlines()]
        for log in (run_dir / "swanlog").glob("run-*/logs/*/*.log")
    ]
    assert any(s == pytest.approx(losses) for s in series), series
    assert (
        not (tmp_path / "swanlog").exists() and not (tmp_path / "wandb").exists() and not (tmp_path / "mlruns").exists()
    )
