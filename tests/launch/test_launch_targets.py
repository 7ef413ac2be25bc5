"""`lfw launch --target skypilot|k8s`: golden files, SkyPilot's own task parser, the PyTorchJob schema, and the
run scripts executed with each scheduler's variables (a stand-in `lfw` records what it was started with)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Literal

import pytest
import yaml
from pydantic import BaseModel, ConfigDict, Field

from lfw.cli import cli
from tests.conftest import GOLDEN, minimal_recipe

LAUNCH_GOLDEN = GOLDEN / "launch"
RECIPE = "recipes/qwen3_14b_qlora_4gpu.yml"  # bundled: named by handle, so the files are path-free
CASES = {
    "skypilot_two_nodes.sky.yaml": ["--target", "skypilot", "--nodes", "2", "--gpus-per-node", "4"],
    "skypilot_all_options.sky.yaml": [
        "--target", "skypilot", "--nodes", "4", "--gpus-per-node", "8", "--accelerator", "A100-80GB",
        "--install", "-e .[train]", "--master-port", "29600", "--hf-home", "/shared/hf",
        "--output-dir", "/shared/runs", "--set", "training.global_batch_size=64",
    ],
    "k8s_two_nodes.pytorchjob.yaml": [
        "--target", "k8s", "--nodes", "2", "--gpus-per-node", "4", "--image", "registry.example/lfw:0.1.0",
    ],
    "k8s_one_node_all_options.pytorchjob.yaml": [
        "--target", "k8s", "--gpus-per-node", "8", "--image", "registry.example/lfw:0.1.0", "--name", "qwen-sft",
        "--namespace", "ml", "--workdir", "/data/job", "--hf-home", "/cache/hf", "--output-dir", "/runs",
    ],
}  # fmt: skip


@pytest.fixture
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path


def write(runner, out: Path, args: list[str], recipe: str = RECIPE):
    return runner.invoke(cli, ["launch", recipe, *args, "--output", str(out)], catch_exceptions=False)


def normalized(text: str, root: Path) -> str:
    return text.replace(str(root), "<WORKDIR>")


@pytest.mark.parametrize("name", sorted(CASES))
def test_files_match_golden(name: str, in_tmp: Path, runner, update_golden: bool):
    out = in_tmp / name
    result = write(runner, out, CASES[name])
    assert result.exit_code == 0, result.output
    text = normalized(out.read_text(), in_tmp)
    golden = LAUNCH_GOLDEN / name
    if update_golden:
        golden.parent.mkdir(parents=True, exist_ok=True)
        golden.write_text(text)
    assert golden.is_file(), f"no golden file {golden}; run pytest --update-golden"
    assert text == golden.read_text()


def _fake_lfw(bin_dir: Path) -> None:
    """An `lfw` on PATH that writes its arguments and the rendezvous variables to $RECORD, one per line."""
    bin_dir.mkdir()
    script = bin_dir / "lfw"
    script.write_text(
        '#!/bin/sh\nprintf \'%s\\n\' "$@" > "$RECORD"\n'
        "for v in FORCE_TORCHRUN NNODES NODE_RANK MASTER_ADDR MASTER_PORT; do\n"
        '  eval echo "$v=\\${$v}" >> "$RECORD"\ndone\n'
    )
    script.chmod(0o755)


def _run_script(script: str, env: dict[str, str], tmp: Path) -> list[str]:
    _fake_lfw(tmp / "bin")
    record = tmp / "record.txt"
    base = {"PATH": f"{tmp / 'bin'}:{os.environ['PATH']}", "RECORD": str(record), "HOME": str(tmp)}
    subprocess.run(["bash", "-c", script], env={**base, **env}, check=True, cwd=tmp)
    return record.read_text().splitlines()


def test_skypilot_run_derives_the_rendezvous_from_skypilots_variables(in_tmp: Path, runner):
    out = in_tmp / "task.sky.yaml"
    assert write(runner, out, CASES["skypilot_two_nodes.sky.yaml"]).exit_code == 0
    task = yaml.safe_load(out.read_text())
    assert subprocess.run(["bash", "-n", "-c", task["setup"]], check=False).returncode == 0
    env = {"SKYPILOT_NUM_NODES": "2", "SKYPILOT_NODE_RANK": "1", "SKYPILOT_NODE_IPS": "10.0.0.7\n10.0.0.8\n"}
    record = _run_script(task["run"], env, in_tmp)
    args, variables = record[:-5], dict(line.split("=", 1) for line in record[-5:])
    assert args[:2] == ["run", RECIPE]
    assert args[args.index("--nnodes") + 1] == "2" and args[args.index("--node-rank") + 1] == "1"
    assert args[args.index("--master-addr") + 1] == "10.0.0.7" and args[args.index("--gpus") + 1] == "4"
    assert variables == {
        "FORCE_TORCHRUN": "1",
        "NNODES": "2",
        "NODE_RANK": "1",
        "MASTER_ADDR": "10.0.0.7",
        "MASTER_PORT": "29500",
    }


def test_skypilots_own_parser_reads_the_task(in_tmp: Path, runner):
    sky = pytest.importorskip("sky")
    out = in_tmp / "task.sky.yaml"
    assert write(runner, out, CASES["skypilot_all_options.sky.yaml"]).exit_code == 0
    task = sky.Task.from_yaml(str(out))
    assert task.num_nodes == 4
    (resources,) = task.resources
    assert resources.accelerators == {"A100-80GB": 8}
    assert task.envs["HF_HOME"] == "/shared/hf" and task.workdir == str(in_tmp)
    assert "pip install -e '.[train]'" in task.setup
    assert "--set training.global_batch_size=64" in task.run and "--output-dir /shared/runs" in task.run


# ---- the PyTorchJob (kubeflow.org/v1) schema: the fields the training operator's CRD and controller require --


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class EnvVar(Strict):
    name: str
    value: str


class Container(Strict):
    name: Literal["pytorch"]  # the operator finds the training container by this name
    image: str
    imagePullPolicy: Literal["Always", "IfNotPresent", "Never"]
    workingDir: str
    command: list[str]
    args: list[str]
    env: list[EnvVar]
    resources: dict[str, dict[str, int | str]] | None = None
    volumeMounts: list[dict[str, str]]


class PodSpec(Strict):
    containers: list[Container] = Field(min_length=1)
    volumes: list[dict]


class PodTemplate(Strict):
    spec: PodSpec


class ReplicaSpec(Strict):
    replicas: int = Field(ge=1)
    restartPolicy: Literal["Always", "OnFailure", "Never", "ExitCode"]
    template: PodTemplate


class PyTorchJobSpec(Strict):
    nprocPerNode: str  # a string in kubeflow.org/v1 ("auto", "cpu", "gpu" or a number)
    runPolicy: dict[str, str]
    pytorchReplicaSpecs: dict[Literal["Master", "Worker"], ReplicaSpec]


class Metadata(Strict):
    name: str = Field(pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", max_length=63)
    namespace: str | None = None


class PyTorchJob(Strict):
    apiVersion: Literal["kubeflow.org/v1"]
    kind: Literal["PyTorchJob"]
    metadata: Metadata
    spec: PyTorchJobSpec


@pytest.mark.parametrize("nodes", [1, 4])
def test_pytorchjob_fits_the_schema_and_its_pods_rendezvous(nodes: int, in_tmp: Path, runner):
    out = in_tmp / "job.yaml"
    args = ["--target", "k8s", "--nodes", str(nodes), "--gpus-per-node", "4", "--image", "img:1", "--hf-home", "/hf"]
    assert write(runner, out, args).exit_code == 0
    job = PyTorchJob.model_validate(yaml.safe_load(out.read_text()))
    replicas = job.spec.pytorchReplicaSpecs
    assert replicas["Master"].replicas == 1 and job.spec.nprocPerNode == "4"
    assert ("Worker" in replicas) == (nodes > 1) and (nodes == 1 or replicas["Worker"].replicas == nodes - 1)
    container = replicas["Master"].template.spec.containers[0]
    assert container.image == "img:1" and container.resources == {"limits": {"nvidia.com/gpu": 4}}
    assert {"name": "HF_HOME", "value": "/hf"} in [e.model_dump() for e in container.env]
    # what the training operator gives a worker pod: its rank, the master's service and port
    operator_env = {"PET_NODE_RANK": "2", "RANK": "2", "MASTER_ADDR": "job-master-0", "MASTER_PORT": "23456"}
    record = _run_script(container.args[0], operator_env, in_tmp)
    args_, variables = record[:-5], dict(line.split("=", 1) for line in record[-5:])
    assert args_[args_.index("--nnodes") + 1] == str(nodes) and args_[args_.index("--node-rank") + 1] == "2"
    assert variables["MASTER_ADDR"] == "job-master-0" and variables["FORCE_TORCHRUN"] == "1"


def test_refusals_name_the_option(in_tmp: Path, runner, write_recipe):
    result = runner.invoke(cli, ["launch", RECIPE, "--target", "k8s", "--gpus-per-node", "4"])
    assert result.exit_code == 2 and "--image" in result.output
    result = runner.invoke(
        cli, ["launch", RECIPE, "--target", "k8s", "--gpus-per-node", "4", "--image", "i", "--name", "Bad_Name"]
    )
    assert result.exit_code == 2 and "not a Kubernetes name" in result.output
    result = runner.invoke(cli, ["launch", RECIPE, "--target", "skypilot", "--gpus-per-node", "3"])  # global 32
    assert result.exit_code == 2 and "not divisible" in result.output
    (in_tmp / "data.json").write_text('[{"instruction": "a", "input": "", "output": "b"}]')
    recipe = write_recipe(minimal_recipe(hardware={"gpus": 1}))
    (in_tmp / "sub").mkdir()
    args = ["--target", "skypilot", "--gpus-per-node", "2", "--workdir", str(in_tmp / "sub")]
    result = runner.invoke(cli, ["launch", str(recipe), *args])
    assert result.exit_code == 2 and "outside --workdir" in result.output
    result = runner.invoke(cli, ["launch", str(recipe), *args[:-2]])  # the current folder holds it
    assert result.exit_code == 0, result.output
    assert "lfw run recipe.yml --stream" in (in_tmp / "lfw-t.sky.yaml").read_text()


def test_never_overwrites(in_tmp: Path, runner):
    out = in_tmp / "task.sky.yaml"
    out.write_text("mine\n")
    result = write(runner, out, CASES["skypilot_two_nodes.sky.yaml"])
    assert result.exit_code == 2 and "already exists" in result.output
    assert out.read_text() == "mine\n"
