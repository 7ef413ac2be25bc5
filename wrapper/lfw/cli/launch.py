"""`lfw launch --target skypilot|k8s`: write a SkyPilot task or a Kubeflow PyTorchJob that runs a recipe on N nodes."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from lfw.cli.options import recipe_argument, set_option
from lfw.infra.errors import Problem
from lfw.infra.owned import write_new_file

if TYPE_CHECKING:
    from lfw.launch.cloud import LaunchJob, LaunchTarget
    from lfw.launch.target import Target
    from lfw.recipe.loader import LoadedRecipe

_PATH = click.Path(path_type=Path)


@click.command()
@recipe_argument
@click.option("--target", "kind", type=click.Choice(["skypilot", "k8s"]), required=True, help="Where it runs.")
@click.option("--nodes", type=click.IntRange(min=1), default=1, show_default=True, help="Number of nodes.")
@click.option("--gpus-per-node", type=click.IntRange(min=1), required=True, help="GPUs (processes) per node.")
@click.option(
    "--accelerator",
    default="H100",
    show_default=True,
    help="skypilot: the GPU type; resources.accelerators becomes ACCELERATOR:GPUS_PER_NODE.",
)
@click.option("--image", default=None, help="k8s: the container image (with lfw[train] installed). Required there.")
@click.option("--name", default=None, help="k8s: the PyTorchJob's name (default: lfw-<recipe name>).")
@click.option("--namespace", default=None, help="k8s: metadata.namespace (default: kubectl's current one).")
@click.option(
    "--workdir",
    default=None,
    help="skypilot: the local folder synced to every node, holding the recipe and its data (default: the current "
    "folder); k8s: that folder inside the image (default: /workspace).",
)
@click.option(
    "--install",
    default=None,
    metavar="PIP_SPEC",
    help="skypilot: what `setup` pip-installs (default: lfw[train] at this lfw's version), e.g. -e '.[train]'.",
)
@click.option(
    "--master-port",
    type=click.IntRange(1, 65535),
    default=29500,
    show_default=True,
    help="skypilot: the rendezvous port on node 0 (k8s: the operator sets MASTER_PORT).",
)
@click.option("--hf-home", default=None, metavar="PATH", help="HF_HOME on the nodes (a shared cache).")
@click.option("--output-dir", type=_PATH, default=None, help="Where run directories go on the nodes (shared).")
@click.option(
    "--output",
    type=_PATH,
    default=None,
    help="File to write (default: lfw-<recipe name>.<target>.yaml). Never overwritten.",
)
@set_option
def launch(
    recipe: str,
    kind: LaunchTarget,
    nodes: int,
    gpus_per_node: int,
    accelerator: str,
    image: str | None,
    name: str | None,
    namespace: str | None,
    workdir: str | None,
    install: str | None,
    master_port: int,
    hf_home: str | None,
    output_dir: Path | None,
    output: Path | None,
    overrides: tuple[str, ...],
) -> None:
    """Write a SkyPilot task (`sky launch`) or a Kubeflow PyTorchJob (`kubectl apply`) that runs RECIPE on N nodes.

    Each node runs `lfw run` once with its scheduler's rendezvous (FORCE_TORCHRUN, NNODES, NODE_RANK,
    MASTER_ADDR, MASTER_PORT). The recipe is checked and rendered for nodes x GPUs first, so a global batch
    size that does not divide is reported now. `lfw slurm` writes the same for Slurm.

    Example: lfw launch my.yml --target skypilot --nodes 2 --gpus-per-node 8 --accelerator H100

    Example: lfw launch my.yml --target k8s --nodes 2 --gpus-per-node 8 --image registry/lfw:0.1.0
    """
    from lfw.launch.cloud import LaunchJob, check_job, job_name
    from lfw.recipe.loader import load_recipe

    loaded = load_recipe(recipe, overrides)
    job = LaunchJob(
        target=kind,
        nodes=nodes,
        gpus_per_node=gpus_per_node,
        output=_output(output, loaded.recipe.name, kind),
        workdir=_workdir(workdir, kind),
        accelerator=accelerator,
        image=image,
        name=name,
        namespace=namespace,
        master_port=master_port,
        hf_home=hf_home,
        output_dir=output_dir,
        **({"install": install} if install else {}),
    )
    check_job(loaded, job)
    target = _write_task(loaded, job, overrides)
    click.echo(f"wrote {job.output}  ({nodes} node(s) x {target.procs_per_node}, world size {target.world_size})")
    if kind == "skypilot":
        click.echo(f"launch with: sky launch -c {job_name(loaded, job)} {job.output}")
    else:
        click.echo(f"submit with: kubectl apply -f {job.output}")


def _output(output: Path | None, recipe_name: str, kind: LaunchTarget) -> Path:
    from lfw.launch.cloud import SUFFIXES

    return (output or Path.cwd() / f"lfw-{recipe_name}.{SUFFIXES[kind]}").expanduser().resolve()


def _workdir(workdir: str | None, kind: LaunchTarget) -> Path:
    """skypilot: a local folder (absolute, default the current one); k8s: a folder inside the image, as given."""
    if kind == "skypilot":
        return Path(workdir).expanduser().resolve() if workdir else Path.cwd()
    return Path(workdir or "/workspace")


def _write_task(loaded: LoadedRecipe, job: LaunchJob, overrides: tuple[str, ...]) -> Target:
    """Render the recipe for the job's nodes x GPUs (its batch and precision errors surface now), then write the
    task file, never over an existing one; returns the target it was rendered for."""
    from lfw.launch.cloud import render_task, task_context
    from lfw.launch.slurm import node0_target
    from lfw.rendering.render import render

    target = node0_target(loaded, job.nodes, job.gpus_per_node)
    render(loaded, target, Path.cwd() / "<run>")
    text = render_task(job, task_context(loaded, job, target, overrides))
    job.output.parent.mkdir(parents=True, exist_ok=True)
    exists = Problem(str(job.output), "already exists (lfw never overwrites)", "pass another --output FILE")
    write_new_file(job.output, text, exists)
    return target
