"""`lfw launch --target`: the recipe on N nodes of a SkyPilot cluster or a Kubernetes (Kubeflow PyTorchJob) job.

Like `lfw slurm`, each node runs `lfw run` once with the rendezvous of its scheduler, and lfw's launcher starts
one process per GPU there (FORCE_TORCHRUN); the global batch is held across nodes x GPUs and checked when the
file is written. Pure (no click): `check_job` validates the options, `render_task` writes the file's text from
`templates/skypilot.yaml.j2` or `templates/pytorchjob.yaml.j2`, with `lfw run`'s words from lfw.launch.slurm.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from lfw import __version__
from lfw.infra.errors import ProblemCollector
from lfw.launch.slurm import node_arguments, recipe_reference, shell_lines
from lfw.launch.target import Target
from lfw.recipe.loader import LoadedRecipe
from lfw.rendering.environment import environment

LaunchTarget = Literal["skypilot", "k8s"]
TEMPLATES = {"skypilot": "skypilot.yaml.j2", "k8s": "pytorchjob.yaml.j2"}
SUFFIXES = {"skypilot": "sky.yaml", "k8s": "pytorchjob.yaml"}
DEFAULT_PORT = 29500
# Kubernetes names (DNS-1123 labels); the operator appends -master-0 / -worker-N, so leave room for those.
_K8S_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]{0,48}[a-z0-9])?$")
_ACCELERATOR = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
# The node's rank from each scheduler's variables (SkyPilot; the Kubeflow training operator).
NODE_RANK = {"skypilot": '"$SKYPILOT_NODE_RANK"', "k8s": '"${PET_NODE_RANK:-${RANK:-0}}"'}
RUN = {"skypilot": "lfw run", "k8s": "exec lfw run"}  # k8s: lfw is the container's main process


@dataclass(frozen=True)
class LaunchJob:
    """What `lfw launch` was asked for."""

    target: LaunchTarget
    nodes: int
    gpus_per_node: int
    output: Path
    workdir: Path  # skypilot: the local folder synced to every node; k8s: the folder inside the image
    accelerator: str = "H100"  # skypilot: resources.accelerators is ACCELERATOR:GPUS
    image: str | None = None  # k8s: the container image (lfw and its train extra installed)
    install: str = f"lfw[train]=={__version__}"  # skypilot: what `setup` pip-installs
    name: str | None = None  # k8s: metadata.name (default: lfw-<recipe name>)
    namespace: str | None = None
    master_port: int = DEFAULT_PORT
    hf_home: str | None = None
    output_dir: Path | None = None


def job_name(loaded: LoadedRecipe, job: LaunchJob) -> str:
    """lfw-<recipe name>, made a Kubernetes name (lowercase letters, digits and '-')."""
    if job.name:
        return job.name
    return re.sub(r"-+", "-", re.sub(r"[^a-z0-9-]", "-", f"lfw-{loaded.recipe.name}".lower()))[:50].strip("-")


def recipe_in_workdir(loaded: LoadedRecipe, job: LaunchJob) -> str | None:
    """How the nodes name the recipe: its bundled handle, or its path inside the synced workdir (None: outside)."""
    if loaded.is_bundled:
        return recipe_reference(loaded)
    if job.target == "k8s":  # the image's folder mirrors the current one
        try:
            return str(loaded.path.relative_to(Path.cwd().resolve()))
        except ValueError:
            return str(loaded.path)
    try:
        return str(loaded.path.relative_to(job.workdir))
    except ValueError:
        return None


def check_job(loaded: LoadedRecipe, job: LaunchJob) -> None:
    """Every option problem at once, before anything is rendered or written."""
    problems = ProblemCollector()
    if job.target == "k8s" and not job.image:
        problems.add(
            "--image", "a PyTorchJob needs the container image", "pass --image REGISTRY/IMAGE:TAG with lfw[train]"
        )
    if job.target == "k8s" and not _K8S_NAME.match(job_name(loaded, job)):
        problems.add(
            "--name",
            f"{job_name(loaded, job)!r} is not a Kubernetes name",
            "use at most 50 lowercase letters, digits and '-', starting and ending with a letter or digit",
        )
    if job.target == "skypilot" and not _ACCELERATOR.match(job.accelerator):
        problems.add("--accelerator", f"{job.accelerator!r} is not an accelerator name", "e.g. H100, A100-80GB, L4")
    if job.target == "skypilot" and recipe_in_workdir(loaded, job) is None:
        problems.add(
            str(loaded.path),
            f"the recipe is outside --workdir {job.workdir}, which SkyPilot syncs to every node",
            "pass --workdir with a folder that holds the recipe and its data",
        )
    if job.output.exists():
        problems.add(str(job.output), "already exists (lfw never overwrites)", "pass another --output FILE")
    problems.raise_if_any(f"cannot write the {job.target} file:")


def _continued(lines: Iterable[str]) -> list[str]:
    """Shell lines joined by backslash continuations."""
    items = list(lines)
    return [f"{line} \\" for line in items[:-1]] + items[-1:]


def task_context(
    loaded: LoadedRecipe, job: LaunchJob, target: Target, overrides: tuple[str, ...] | list[str] = ()
) -> dict[str, Any]:
    """Everything the two templates need; shell words are already quoted."""
    recipe = recipe_in_workdir(loaded, job)
    assert recipe is not None  # check_job refused it
    words = node_arguments(recipe, job.gpus_per_node, job.output_dir, overrides, nnodes='"$NNODES"')
    lines = shell_lines([*words, "--node-rank", '"$NODE_RANK"'], width=90)
    env = {"NCCL_DEBUG": "WARN", "TORCH_NCCL_ASYNC_ERROR_HANDLING": "1", "PYTHONUNBUFFERED": "1"}
    if job.hf_home:
        env["HF_HOME"] = job.hf_home
    return {
        "version": __version__,
        "recipe_display": recipe_reference(loaded),
        "output_name": job.output.name,
        "name": job_name(loaded, job),
        "namespace": job.namespace,
        "nodes": job.nodes,
        "gpus_per_node": job.gpus_per_node,
        "world_size": target.world_size,
        "cuda": target.device == "cuda",
        "unit": ("GPU" if job.gpus_per_node == 1 else "GPUs") if target.device == "cuda" else "CPU process(es)",
        "accelerators": f"{job.accelerator}:{job.gpus_per_node}",
        "image": job.image,
        "install": " ".join(shlex.quote(word) for word in shlex.split(job.install)),  # e.g. -e '.[train]'
        "workdir": str(job.workdir),
        "master_port": job.master_port,
        "env": env,
        "run_lines": _continued(
            f"{RUN[job.target]} {line}" if i == 0 else f"    {line}" for i, line in enumerate(lines)
        ),
        "node_rank": NODE_RANK[job.target],
    }


def render_task(job: LaunchJob, context: dict[str, Any]) -> str:
    """The SkyPilot task YAML or the PyTorchJob manifest (same Jinja environment as the run files)."""
    return environment().get_template(TEMPLATES[job.target]).render(**context)
