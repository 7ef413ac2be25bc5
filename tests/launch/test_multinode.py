"""Several nodes: rendezvous flags over the environment, their validation, the batch held across nodes x GPUs,
and a real two-node run simulated on this machine (two `lfw run` processes, gloo on CPU, the tiny model)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import pytest
import yaml

from lfw.infra.errors import UserError
from lfw.infra.hardware import GPU
from lfw.launch.target import gradient_accumulation, launch_env, require_rendezvous, resolve_target
from lfw.recipe.schema import HardwareSpec, TrainingSpec
from tests.conftest import clean_env, tiny_recipe

H100 = GPU(0, "H100", 81559, 9.0)
ENV = {"NNODES": "4", "NODE_RANK": "3", "MASTER_ADDR": "10.0.0.9", "MASTER_PORT": "29400"}


def test_flags_override_the_environment():
    target = resolve_target(
        HardwareSpec(gpus=2), env=ENV, detected=[H100] * 2, nnodes=2, node_rank=1, master_addr="head", master_port=29501
    )
    assert (target.nnodes, target.node_rank, target.master_addr, target.master_port) == (2, 1, "head", "29501")
    env = launch_env(target, deepspeed=False, env=ENV)
    assert env["NNODES"] == "2" and env["NODE_RANK"] == "1" and env["MASTER_ADDR"] == "head"
    assert env["MASTER_PORT"] == "29501" and env["NPROC_PER_NODE"] == "2"


def test_environment_used_where_no_flag_is_given():
    target = resolve_target(HardwareSpec(gpus=2), env=ENV, detected=[H100] * 2, node_rank=0)
    assert (target.nnodes, target.node_rank, target.master_addr, target.master_port) == (4, 0, "10.0.0.9", "29400")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"nnodes": 2, "node_rank": 2}, "node rank 2 with 2 node"),
        ({"nnodes": 0}, "0 nodes"),
        ({"nnodes": 2, "node_rank": 0, "master_port": 70000}, "not a TCP port"),
    ],
)
def test_impossible_rendezvous_is_a_user_error(kwargs, match):
    with pytest.raises(UserError, match=match):
        resolve_target(HardwareSpec(device="cpu"), env={}, **kwargs)


def test_node_rank_from_environment_checked_too():
    with pytest.raises(UserError, match="NODE_RANK"):
        resolve_target(HardwareSpec(device="cpu"), env={"NNODES": "2", "NODE_RANK": "5"})


def test_several_nodes_need_the_head_address():
    target = resolve_target(HardwareSpec(device="cpu"), env={}, nnodes=2, node_rank=1)
    with pytest.raises(UserError, match="--master-addr"):
        require_rendezvous(target)
    require_rendezvous(resolve_target(HardwareSpec(device="cpu"), env={}))  # one node: nothing needed


def test_global_batch_held_across_nodes_and_gpus():
    training = TrainingSpec(global_batch_size=64, micro_batch_size=2)
    one = resolve_target(HardwareSpec(gpus=4), env={}, detected=[H100] * 4)
    two = resolve_target(HardwareSpec(gpus=4), env={}, detected=[H100] * 4, nnodes=2, master_addr="h")
    four = resolve_target(HardwareSpec(gpus=8), env={}, detected=[H100] * 8, nnodes=4, master_addr="h")
    assert [t.world_size for t in (one, two, four)] == [4, 8, 32]
    assert [gradient_accumulation(training, t) for t in (one, two, four)] == [8, 4, 1]
    with pytest.raises(UserError, match=r"8 GPUs x 8 nodes"):
        gradient_accumulation(
            training, resolve_target(HardwareSpec(gpus=8), env={}, detected=[H100] * 8, nnodes=8, master_addr="h")
        )


def test_run_refuses_two_nodes_without_address(tmp_path, write_recipe):
    from tests.conftest import minimal_recipe

    recipe = write_recipe(minimal_recipe())
    (tmp_path / "data.json").write_text("[]")
    done = subprocess.run(
        [sys.executable, "-m", "lfw.cli", "run", str(recipe), "--dry-run", "--nnodes", "2", "--node-rank", "1"],
        capture_output=True,
        text=True,
        env=clean_env(),
        timeout=60,
    )
    assert done.returncode == 2 and "--master-addr" in done.stderr and "Traceback" not in done.stderr


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_two_nodes_on_one_machine(tiny, tmp_path):
    """NNODES=2 with one gloo process per "node": two `lfw run`s meet at 127.0.0.1 and train together."""
    recipe = tiny_recipe(tiny, name="mn", hardware={"device": "cpu", "gpus": 1})
    recipe["training"]["max_steps"] = 6
    path = tmp_path / "recipe.yml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    env = {**clean_env(), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    port = str(free_port())
    procs, logs = [], []
    for rank in (0, 1):
        log = open(tmp_path / f"node{rank}.log", "w")  # noqa: SIM115 - closed below
        logs.append(log)
        procs.append(
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "lfw.cli",
                    "run",
                    str(path),
                    "--output-dir",
                    str(tmp_path / f"node{rank}"),
                    "--nnodes",
                    "2",
                    "--node-rank",
                    str(rank),
                    "--master-addr",
                    "127.0.0.1",
                    "--master-port",
                    port,
                ],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        )
    started = time.monotonic()
    try:
        codes = [proc.wait(timeout=240) for proc in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
        for log in logs:
            log.close()
    output = {rank: (tmp_path / f"node{rank}.log").read_text()[-3000:] for rank in (0, 1)}
    assert codes == [0, 0], output
    print(f"two-node run: {time.monotonic() - started:.0f} s")

    run_dirs = [next((tmp_path / f"node{rank}" / "mn").iterdir()) for rank in (0, 1)]
    manifests = [json.loads((d / "manifest.json").read_text()) for d in run_dirs]
    for rank, data in enumerate(manifests):
        assert data["status"] == "ok"
        assert data["target"] | {"gpus": []} == {
            "device": "cpu",
            "procs_per_node": 1,
            "nnodes": 2,
            "node_rank": rank,
            "world_size": 2,
            "master_addr": "127.0.0.1",
            "master_port": port,
            "gpus": [],
        }
        assert data["launch_env"]["NNODES"] == "2" and data["launch_env"]["NODE_RANK"] == str(rank)
    config = yaml.safe_load((run_dirs[0] / "1-sft.yaml").read_text())
    assert config["gradient_accumulation_steps"] == 1  # 8 = 4 per process x 2 nodes x 1 process
    rank0 = run_dirs[0] / "1-sft"
    assert (rank0 / "adapter_model.safetensors").is_file()  # rank 0 saves
    assert (rank0 / "trainer_log.jsonl").read_text().strip()
    assert "world size: 2" in (run_dirs[0] / "logs" / "1-sft.log").read_text()
    assert not (run_dirs[1] / "1-sft" / "adapter_model.safetensors").exists()  # the other node does not
    assert os.path.getsize(run_dirs[1] / "logs" / "1-sft.log") > 0
