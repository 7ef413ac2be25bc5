"""GPU detection with a fake nvidia-smi, and the torchrun environment for 1, 2, 4 GPUs and two nodes."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from lfw.infra.hardware import GPU, visible_gpus
from lfw.launch.target import Target, launch_env, resolve_target
from lfw.recipe.schema import HardwareSpec

SMI = """#!/bin/sh
case "$*" in
  *compute_cap*) {compute_cap} ;;
  *) printf '0, Tesla T10, 16384\\n1, Tesla T10, 16384\\n' ;;
esac
"""
ROWS = (
    "printf '0, NVIDIA H100 80GB HBM3, 81559, 9.0\\n1, NVIDIA H100 80GB HBM3, 81559, 9.0\\n"
    "2, Tesla V100-SXM2-32GB, 32768, 7.0\\n3, NVIDIA A10G, 23028, 8.6\\n'"
)


@pytest.fixture
def fake_smi(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    def install(compute_cap: str = ROWS) -> None:
        exe = tmp_path / "nvidia-smi"
        exe.write_text(SMI.replace("{compute_cap}", compute_cap))
        exe.chmod(exe.stat().st_mode | stat.S_IEXEC)
        monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")

    return install


def test_nvidia_smi_inventory(fake_smi):
    fake_smi()
    gpus = visible_gpus({})
    assert [g.index for g in gpus] == [0, 1, 2, 3]
    assert gpus[0].name == "NVIDIA H100 80GB HBM3" and gpus[0].memory_mib == 81559
    assert [g.bf16 for g in gpus] == [True, True, False, True]


def test_cuda_visible_devices_masks_and_orders(fake_smi):
    fake_smi()
    assert [g.index for g in visible_gpus({"CUDA_VISIBLE_DEVICES": "3,1"})] == [3, 1]
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": ""}) == []
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": "-1"}) == []
    assert [g.index for g in visible_gpus({"CUDA_VISIBLE_DEVICES": "0,7,1"})] == [0]  # CUDA stops at bad ordinal


def test_old_driver_without_compute_cap_falls_back_to_names(fake_smi):
    fake_smi(compute_cap="exit 6")
    gpus = visible_gpus({})
    assert [g.name for g in gpus] == ["Tesla T10", "Tesla T10"]
    assert not any(g.bf16 for g in gpus)  # seed 002: T10s, fp16 only


def test_no_driver_means_no_gpus(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    assert visible_gpus({}) == []
    target = resolve_target(HardwareSpec(), env={})
    assert target.device == "cpu" and target.procs_per_node == 1


def test_gpus_flag_overrides_and_trims_visible_devices(fake_smi):
    fake_smi()
    target = resolve_target(HardwareSpec(), gpus_flag=2, env={})
    assert target.procs_per_node == 2 and target.device == "cuda"
    assert launch_env(target, deepspeed=False, env={})["CUDA_VISIBLE_DEVICES"] == "0,1"


H100 = GPU(0, "H100", 81559, 9.0)


def target(count: int, **kw) -> Target:
    return Target("cuda", count, gpus=tuple(GPU(i, "H100", 81559, 9.0) for i in range(count)), **kw)


def test_one_gpu_needs_no_torchrun_unless_deepspeed():
    assert "FORCE_TORCHRUN" not in launch_env(target(1), deepspeed=False, env={})
    env = launch_env(target(1), deepspeed=True, env={})  # LLaMA-Factory refuses DeepSpeed without torchrun
    assert env["FORCE_TORCHRUN"] == "1" and env["NPROC_PER_NODE"] == "1"


@pytest.mark.parametrize("count", [2, 4])
def test_several_gpus_force_torchrun(count: int):
    env = launch_env(target(count), deepspeed=False, env={})
    assert env["FORCE_TORCHRUN"] == "1" and env["NPROC_PER_NODE"] == str(count)
    assert env["NNODES"] == "1" and env["NODE_RANK"] == "0"
    assert "CUDA_VISIBLE_DEVICES" not in env  # all visible GPUs are used


def test_two_nodes_pass_rendezvous_through():
    env_in = {"NNODES": "2", "NODE_RANK": "1", "MASTER_ADDR": "10.0.0.5", "MASTER_PORT": "29501"}
    tgt = resolve_target(HardwareSpec(gpus=4), env=env_in, detected=[H100] * 4)
    assert tgt.world_size == 8
    env = launch_env(tgt, deepspeed=False, env=env_in)
    assert env == {
        "PYTHONUNBUFFERED": "1",
        "FORCE_TORCHRUN": "1",
        "NPROC_PER_NODE": "4",
        "NNODES": "2",
        "NODE_RANK": "1",
        "MASTER_ADDR": "10.0.0.5",
        "MASTER_PORT": "29501",
    }


def test_cpu_processes_hide_gpus():
    tgt = resolve_target(HardwareSpec(device="cpu", gpus=2), env={})
    env = launch_env(tgt, deepspeed=False, env={})
    assert env["NPROC_PER_NODE"] == "2" and env["CUDA_VISIBLE_DEVICES"] == ""


def test_bad_rendezvous_value_is_a_user_error():
    from lfw.infra.errors import UserError

    with pytest.raises(UserError, match="NNODES=two"):
        resolve_target(HardwareSpec(device="cpu"), env={"NNODES": "two"})
