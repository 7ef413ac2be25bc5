"""Where a run executes and how it is launched: GPU count, precision, batch arithmetic, torchrun environment.

LLaMA-Factory launches torchrun itself when FORCE_TORCHRUN=1 (it refuses DeepSpeed on one GPU without it),
reading NPROC_PER_NODE, NNODES, NODE_RANK, MASTER_ADDR and MASTER_PORT. lfw sets those so that one recipe
runs unchanged on 1..N GPUs and nodes, with the global batch size held constant.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from lfw.infra.errors import Problem, UserError
from lfw.infra.hardware import GPU, visible_gpus
from lfw.recipe.schema import HardwareSpec, TrainingSpec

# Rendezvous variables passed through untouched from the user's environment (multi-node runs).
RENDEZVOUS_KEYS = ("NNODES", "NODE_RANK", "MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True)
class Target:
    """The machine a run is rendered for: device kind, processes per node, nodes, and the GPUs if known."""

    device: str  # "cuda" or "cpu"
    procs_per_node: int
    nnodes: int = 1
    node_rank: int = 0
    master_addr: str | None = None
    master_port: str | None = None
    # Detected on this machine; empty when rendering for another one.
    gpus: tuple[GPU, ...] = field(default_factory=tuple)

    @property
    def world_size(self) -> int:
        return self.procs_per_node * self.nnodes

    @property
    def bf16(self) -> bool | None:
        """Whether every GPU used can do bf16; None when the GPUs are not known here."""
        used = self.gpus[: self.procs_per_node]
        return all(gpu.bf16 for gpu in used) if used else None

    def describe(self) -> str:
        unit = ("GPU", "GPUs") if self.device == "cuda" else ("CPU process", "CPU processes")
        text = f"{self.procs_per_node} {unit[self.procs_per_node != 1]}"
        if self.nnodes > 1:
            text += f" x {self.nnodes} nodes"
        return text


def _int_env(env: Mapping[str, str], key: str, default: int) -> int:
    value = env.get(key, "")
    if not value:
        return default
    if not value.isdigit():
        raise UserError([Problem(f"environment {key}={value}", "expected a whole number", f"fix or unset {key}")])
    return int(value)


def resolve_target(
    hardware: HardwareSpec,
    gpus_flag: int | None = None,
    env: Mapping[str, str] | None = None,
    detected: list[GPU] | None = None,
    *,
    nnodes: int | None = None,
    node_rank: int | None = None,
    master_addr: str | None = None,
    master_port: int | None = None,
) -> Target:
    """Decide device and process count from the recipe, the --gpus flag and what this machine has.

    The rendezvous (nnodes, node_rank, master_addr, master_port) comes from the flags where given, else from
    NNODES, NODE_RANK, MASTER_ADDR, MASTER_PORT in the environment, so `lfw run` works both under a launcher
    that exports them and by hand.
    """
    env = os.environ if env is None else env
    requested = gpus_flag if gpus_flag is not None else hardware.gpus
    if hardware.device == "cpu":
        gpus: list[GPU] = []
        device = "cpu"
    else:
        gpus = visible_gpus(env) if detected is None else detected
        # An explicit count renders for GPUs even on a machine without them (render here, run there).
        device = "cuda" if gpus or hardware.device == "cuda" or requested != "auto" else "cpu"
    if requested == "auto":
        count = max(len(gpus), 1)
    else:
        count = int(requested)
        if gpus and count > len(gpus):
            raise UserError(
                [
                    Problem(
                        "hardware.gpus",
                        f"{count} GPUs asked for but {len(gpus)} visible",
                        f"use --gpus {len(gpus)} or fewer, or check CUDA_VISIBLE_DEVICES",
                    )
                ]
            )
    target = Target(
        device=device,
        procs_per_node=count,
        nnodes=nnodes if nnodes is not None else _int_env(env, "NNODES", 1),
        node_rank=node_rank if node_rank is not None else _int_env(env, "NODE_RANK", 0),
        master_addr=master_addr or env.get("MASTER_ADDR") or None,
        master_port=str(master_port) if master_port is not None else (env.get("MASTER_PORT") or None),
        gpus=tuple(gpus),
    )
    _check_rendezvous(target)
    return target


def _check_rendezvous(target: Target) -> None:
    """Rendezvous values that cannot work, caught here rather than as a torchrun hang on some node."""
    problems = []
    if target.nnodes < 1:
        problems.append(Problem("nnodes", f"{target.nnodes} nodes", "use --nnodes 1 or more (or fix NNODES)"))
    elif not 0 <= target.node_rank < target.nnodes:
        problems.append(
            Problem(
                "node_rank",
                f"node rank {target.node_rank} with {target.nnodes} node(s): ranks are 0..{target.nnodes - 1}",
                "give each node a distinct --node-rank from 0 to nnodes-1 (or fix NODE_RANK)",
            )
        )
    port = target.master_port
    if port is not None and not (port.isdigit() and 0 < int(port) < 65536):
        problems.append(Problem("master_port", f"{port!r} is not a TCP port", "use a number from 1 to 65535"))
    if problems:
        raise UserError(problems)


def require_rendezvous(target: Target) -> None:
    """Before launching on several nodes: every node must be told where the rank-0 node listens.

    Rendering for several nodes needs no address (lfw slurm renders before the head node is known); launching
    does: without it torchrun would wait on 127.0.0.1, each node for itself, until its timeout.
    """
    if target.nnodes > 1 and not target.master_addr:
        raise UserError(
            [
                Problem(
                    "master_addr",
                    f"a run on {target.nnodes} nodes needs the address of the node with rank 0",
                    "pass --master-addr HOST (the same on every node) or export MASTER_ADDR",
                )
            ]
        )


def gradient_accumulation(training: TrainingSpec, target: Target, where: str = "training") -> int:
    """Steps to accumulate so that micro x accumulation x world size equals the global batch."""
    micro, total = training.micro_batch_size, training.global_batch_size
    assert isinstance(micro, int), "micro_batch_size auto is resolved (render) before the batch arithmetic"
    per_step = micro * target.world_size
    if total % per_step:
        lower = total - total % per_step
        options = [n for n in (lower, lower + per_step) if n > 0]
        raise UserError(
            [
                Problem(
                    f"{where}.global_batch_size",
                    f"{total} is not divisible by micro_batch_size {micro} x "
                    f"{target.world_size} processes ({target.describe()})",
                    f"use global_batch_size {' or '.join(map(str, options))}, or change micro_batch_size",
                )
            ]
        )
    return total // per_step


def precision_flags(training: TrainingSpec, target: Target, where: str = "training") -> dict[str, bool]:
    """bf16 / fp16 / use_cpu for LLaMA-Factory: bf16 where supported, fp16 on older GPUs, fp32 on CPU (auto)."""
    if target.device == "cpu":
        # LLaMA-Factory and transformers accept bf16/fp16 autocast on CPU (measured); auto keeps fp32 there.
        return {"use_cpu": True, "bf16": training.precision == "bf16", "fp16": training.precision == "fp16"}
    choice = training.precision
    if choice == "auto":
        choice = "fp16" if target.bf16 is False else "bf16"
    if choice == "bf16" and target.bf16 is False:
        names = ", ".join(sorted({gpu.name for gpu in target.gpus}))
        raise UserError(
            [
                Problem(
                    f"{where}.precision",
                    f"bf16 asked for but {names} cannot do bf16",
                    "use precision: fp16 (or auto)",
                )
            ]
        )
    return {"use_cpu": False, "bf16": choice == "bf16", "fp16": choice == "fp16"}


def launch_env(target: Target, deepspeed: bool, env: Mapping[str, str] | None = None) -> dict[str, str]:
    """The variables lfw adds to the user's environment for `llamafactory-cli train`."""
    env = os.environ if env is None else env
    extra = {"PYTHONUNBUFFERED": "1"}
    if target.world_size > 1 or deepspeed:
        extra["FORCE_TORCHRUN"] = "1"
        extra["NPROC_PER_NODE"] = str(target.procs_per_node)
        extra["NNODES"] = str(target.nnodes)
        extra["NODE_RANK"] = str(target.node_rank)
        for key, value in (("MASTER_ADDR", target.master_addr), ("MASTER_PORT", target.master_port)):
            if value:
                extra[key] = value
    if target.device == "cuda" and target.gpus and target.procs_per_node < len(target.gpus):
        extra["CUDA_VISIBLE_DEVICES"] = ",".join(str(g.index) for g in target.gpus[: target.procs_per_node])
    if target.device == "cpu":
        extra["CUDA_VISIBLE_DEVICES"] = ""
    return extra
