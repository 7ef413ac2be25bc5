"""Slurm: an sbatch script that runs one recipe on N nodes, each node running `lfw run` once through srun.

Pure (no click, no subprocess): `check_job` validates the options, `slurm_target` is the machine the recipe
is rendered for, `script_context` builds what `templates/slurm.sbatch.j2` needs. The recipe is rendered for
nodes x GPUs before the script is written, so a global batch that does not divide shows up at write time,
not after the job waited in the queue.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lfw import __version__
from lfw.infra.errors import ProblemCollector
from lfw.launch.target import Target, resolve_target
from lfw.recipe.loader import LoadedRecipe
from lfw.rendering.environment import environment

# Slurm's --time formats: minutes, MM:SS, HH:MM:SS, D-HH, D-HH:MM, D-HH:MM:SS.
_TIME = re.compile(r"^(\d+|\d+:\d{1,2}|\d+:\d{1,2}:\d{1,2}|\d+-\d{1,2}(:\d{1,2}){0,2})$")
# Partition and account names (partition may be a comma-separated list); nothing a shell would interpret.
_NAME = re.compile(r"^[A-Za-z0-9_.+-]+(,[A-Za-z0-9_.+-]+)*$")
_IFNAME = re.compile(r"^[\^=]?[A-Za-z0-9_.:-]+(,[A-Za-z0-9_.:-]+)*$")
# #SBATCH lines are not parsed by a shell: no quoting there, so the log folder must not need any.
_PLAIN_PATH = re.compile(r"^[A-Za-z0-9_./+@%=-]+$")
DEFAULT_HF_HOME = '"${HF_HOME:-$HOME/.cache/huggingface}"'


@dataclass(frozen=True)
class SlurmJob:
    """What `lfw slurm` was asked for; paths absolute."""

    nodes: int
    gpus_per_node: int
    workdir: Path
    log_dir: Path
    script: Path
    partition: str | None = None
    time: str | None = None
    account: str | None = None
    cpus_per_task: int | None = None  # default: 8 per GPU
    hf_home: str | None = None  # default: $HF_HOME of the job's environment, else ~/.cache/huggingface
    nccl_socket_ifname: str | None = None
    output_dir: Path | None = None  # run directories (default: the recipe's output_dir, relative to workdir)
    setup: tuple[str, ...] = field(default_factory=tuple)  # shell lines run first, e.g. activate the venv


def check_job(job: SlurmJob) -> None:
    """Every option problem at once, before anything is rendered or written."""
    problems = ProblemCollector()
    if job.time is not None and not _TIME.match(job.time):
        problems.add(
            "--time",
            f"{job.time!r} is not a Slurm time limit",
            "use minutes, HH:MM:SS or D-HH:MM:SS, e.g. --time 1-00:00:00",
        )
    for flag, value in (("--partition", job.partition), ("--account", job.account)):
        if value is not None and not _NAME.match(value):
            problems.add(flag, f"{value!r} is not a Slurm name", "use letters, digits, '_', '.', '-' only")
    if job.nccl_socket_ifname is not None and not _IFNAME.match(job.nccl_socket_ifname):
        problems.add(
            "--nccl-socket-ifname",
            f"{job.nccl_socket_ifname!r} is not an interface list",
            "e.g. ib0, eth0,eth1 or ^lo,docker",
        )
    if not _PLAIN_PATH.match(str(job.log_dir)):
        problems.add(
            "--log-dir",
            f"{job.log_dir} has characters #SBATCH lines cannot carry (spaces, quotes)",
            "choose a log folder whose path has letters, digits and / . _ - only",
        )
    if job.script.exists():
        problems.add(
            str(job.script),
            "already exists (lfw never overwrites a script)",
            "pass another --output FILE, or remove the old script",
        )
    problems.raise_if_any("cannot write the sbatch script:")


def node0_target(loaded: LoadedRecipe, nodes: int, gpus_per_node: int) -> Target:
    """The machine a job will run on, as seen from node 0 (GPUs are not visible where the job is written)."""
    return resolve_target(loaded.recipe.hardware, gpus_per_node, env={}, detected=[], nnodes=nodes, node_rank=0)


def slurm_target(loaded: LoadedRecipe, job: SlurmJob) -> Target:
    return node0_target(loaded, job.nodes, job.gpus_per_node)


def recipe_reference(loaded: LoadedRecipe) -> str:
    """Bundled recipes by their `recipes/NAME` handle (they live inside the installed lfw), others by path."""
    return loaded.display_path if loaded.is_bundled else str(loaded.path)


def node_arguments(
    recipe: str,
    gpus_per_node: int,
    output_dir: Path | None,
    overrides: tuple[str, ...] | list[str],
    nnodes: str = '"$SLURM_NNODES"',
) -> list[str]:
    """`lfw run`'s arguments but the node rank, as shell words (the same on every node; launch_targets reuses them).

    Slurm: the script passes the rank inside `bash -c '... $SLURM_NODEID'`, which srun runs on each node, and
    these words as that bash's "$@", so they need no second layer of quoting.
    """
    words = [
        shlex.quote(recipe),
        "--stream",
        "--nnodes",
        nnodes,
        "--master-addr",
        '"$MASTER_ADDR"',
        "--master-port",
        '"$MASTER_PORT"',
        "--gpus",
        str(gpus_per_node),
    ]
    if output_dir is not None:
        words += ["--output-dir", shlex.quote(str(output_dir))]
    for assignment in overrides:
        words += ["--set", shlex.quote(assignment)]
    return words


def shell_lines(words: list[str], width: int = 100) -> list[str]:
    """Shell words grouped into lines of about `width` characters (flags stay next to their values)."""
    lines: list[str] = []
    current = ""
    for word in words:
        joined = f"{current} {word}" if current else word
        if current and len(joined) > width and word.startswith("--"):
            lines.append(current)
            current = word
        else:
            current = joined
    return [*lines, current] if current else lines


def script_context(
    loaded: LoadedRecipe, job: SlurmJob, target: Target, overrides: tuple[str, ...] | list[str] = ()
) -> dict[str, Any]:
    """Everything the sbatch template needs; values that land in shell code are already quoted."""
    cuda = target.device == "cuda"
    return {
        "version": __version__,
        "recipe_display": recipe_reference(loaded),
        "script_name": shlex.quote(str(job.script)),
        "job_name": f"lfw-{loaded.recipe.name}",
        "nodes": job.nodes,
        "procs_per_node": target.procs_per_node,
        "unit": ("GPU" if target.procs_per_node == 1 else "GPUs") if cuda else "CPU process(es)",
        "world_size": target.world_size,
        "gpus_per_node": job.gpus_per_node if cuda else None,
        "cpus_per_task": job.cpus_per_task or 8 * job.gpus_per_node,
        "partition": job.partition,
        "time": job.time,
        "account": job.account,
        "log_dir": str(job.log_dir),
        "workdir": shlex.quote(str(job.workdir)),
        "setup": list(job.setup),
        "nccl_socket_ifname": job.nccl_socket_ifname,
        "hf_home": shlex.quote(job.hf_home) if job.hf_home else DEFAULT_HF_HOME,
        "node_args": shell_lines(
            node_arguments(recipe_reference(loaded), job.gpus_per_node, job.output_dir, overrides)
        ),
    }


def render_script(context: dict[str, Any]) -> str:
    """The sbatch script text (same Jinja environment as the run files: StrictUndefined)."""
    return environment().get_template("slurm.sbatch.j2").render(**context)
