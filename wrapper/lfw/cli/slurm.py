"""`lfw slurm`: write (and optionally submit) an sbatch script that runs a recipe on N nodes."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING

import click

from lfw.cli.options import recipe_argument, set_option
from lfw.infra.errors import Problem, UserError
from lfw.infra.owned import write_new_file

if TYPE_CHECKING:
    from lfw.launch.slurm import SlurmJob
    from lfw.launch.target import Target
    from lfw.recipe.loader import LoadedRecipe

_PATH = click.Path(path_type=Path)


@click.command()
@recipe_argument
@click.option("--nodes", type=click.IntRange(min=1), required=True, help="Number of nodes.")
@click.option("--gpus-per-node", type=click.IntRange(min=1), required=True, help="GPUs (processes) per node.")
@click.option("--partition", default=None, help="Slurm partition (#SBATCH --partition).")
@click.option("--time", "time_limit", default=None, metavar="D-HH:MM:SS", help="Time limit (#SBATCH --time).")
@click.option("--account", default=None, help="Slurm account to charge (#SBATCH --account).")
@click.option(
    "--cpus-per-task",
    type=click.IntRange(min=1),
    default=None,
    help="CPUs per node for the node's lfw task (default: 8 per GPU).",
)
@click.option(
    "--output",
    "script",
    type=_PATH,
    default=None,
    help="Script file to write (default: lfw-<recipe name>.sbatch here). Never overwritten.",
)
@click.option("--log-dir", type=_PATH, default=None, help="Folder for the per-node logs (default: ./slurm-logs).")
@click.option(
    "--workdir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Folder the job runs in; relative recipe paths resolve here (default: the current folder).",
)
@click.option(
    "--output-dir",
    type=_PATH,
    default=None,
    help="Where run directories go (default: the recipe's output_dir); must be on a shared filesystem.",
)
@click.option(
    "--hf-home",
    default=None,
    metavar="PATH",
    help="Shared Hugging Face cache for every node (default: $HF_HOME, else ~/.cache/huggingface).",
)
@click.option(
    "--nccl-socket-ifname",
    default=None,
    metavar="IFACES",
    help="NCCL_SOCKET_IFNAME for the job, e.g. ib0 (default: NCCL chooses).",
)
@click.option(
    "--setup",
    multiple=True,
    metavar="SHELL",
    help="A shell line run on the head node before srun, e.g. 'source /shared/venv/bin/activate' "
    "(repeatable; srun passes the environment on to every node).",
)
@click.option("--submit", is_flag=True, help="Submit the script with sbatch after writing it.")
@set_option
def slurm(
    recipe: str,
    nodes: int,
    gpus_per_node: int,
    partition: str | None,
    time_limit: str | None,
    account: str | None,
    cpus_per_task: int | None,
    script: Path | None,
    log_dir: Path | None,
    workdir: Path | None,
    output_dir: Path | None,
    hf_home: str | None,
    nccl_socket_ifname: str | None,
    setup: tuple[str, ...],
    submit: bool,
    overrides: tuple[str, ...],
) -> None:
    """Write an sbatch script that runs RECIPE on N nodes: srun starts `lfw run` once per node.

    The recipe is checked and rendered for nodes x GPUs first, so a global batch size that does not divide
    is reported now, not after the queue. lfw must be on PATH on every node (see --setup).

    Example: lfw slurm my.yml --nodes 2 --gpus-per-node 8 --partition gpu --time 12:00:00 --submit
    """
    from lfw.launch.slurm import SlurmJob, check_job
    from lfw.recipe.loader import load_recipe

    sbatch = _sbatch() if submit else None
    loaded = load_recipe(recipe, overrides)
    cwd = Path.cwd()
    workdir = (workdir or cwd).expanduser().resolve()
    job = SlurmJob(
        nodes=nodes,
        gpus_per_node=gpus_per_node,
        partition=partition,
        time=time_limit,
        account=account,
        cpus_per_task=cpus_per_task,
        hf_home=hf_home,
        nccl_socket_ifname=nccl_socket_ifname,
        script=(script or cwd / f"lfw-{loaded.recipe.name}.sbatch").expanduser().resolve(),
        log_dir=(log_dir or workdir / "slurm-logs").expanduser().resolve(),
        workdir=workdir,
        output_dir=output_dir.expanduser().resolve() if output_dir else None,
        setup=setup,
    )
    check_job(job)
    target = _write_script(loaded, job, overrides)
    click.echo(f"wrote {job.script}  ({nodes} node(s) x {target.procs_per_node}, world size {target.world_size})")
    click.echo(f"per-node logs: {job.log_dir}")
    if sbatch is None:
        click.echo(f"submit with: sbatch {job.script}")
        return
    _submit(sbatch, job.script)


def _sbatch() -> str:
    """sbatch's path, checked before anything is rendered: --submit needs a Slurm login node."""
    sbatch = shutil.which("sbatch")
    if sbatch is None:
        raise UserError(
            [
                Problem(
                    "--submit",
                    "sbatch is not on PATH (this is not a Slurm login node)",
                    "run this where sbatch exists, or drop --submit and run `sbatch FILE` there",
                )
            ]
        )
    return sbatch


def _write_script(loaded: LoadedRecipe, job: SlurmJob, overrides: tuple[str, ...]) -> Target:
    """Render the recipe for the job's nodes x GPUs (its batch and precision errors surface now), then write the
    script, never over an existing file; returns the target it was rendered for."""
    from lfw.launch.slurm import render_script, script_context, slurm_target
    from lfw.rendering.render import render

    target = slurm_target(loaded, job)
    render(loaded, target, job.workdir / "<run>")
    text = render_script(script_context(loaded, job, target, overrides))
    job.log_dir.mkdir(parents=True, exist_ok=True)  # Slurm does not create the --output folder
    job.script.parent.mkdir(parents=True, exist_ok=True)
    exists = Problem(
        str(job.script),
        "already exists (lfw never overwrites a script)",
        "pass another --output FILE, or remove the old script",
    )
    write_new_file(job.script, text, exists)
    job.script.chmod(0o755)
    return target


def _submit(sbatch: str, script: Path) -> None:
    done = subprocess.run([sbatch, str(script)], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise UserError(
            [
                Problem(
                    "sbatch",
                    f"failed (exit {done.returncode}): {(done.stderr or done.stdout).strip()}",
                    f"the script is written; fix the cause and run `sbatch {script}`",
                )
            ]
        )
    click.echo(done.stdout.strip())
