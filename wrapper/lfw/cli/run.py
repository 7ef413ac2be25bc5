"""`lfw run`: check, render into a new run directory and launch each stage."""

from __future__ import annotations

from pathlib import Path

import click

from lfw.cli.options import gpus_option, recipe_argument, set_option


@click.command()
@recipe_argument
@click.option("--dry-run", is_flag=True, help="Check and show what would run; create and launch nothing.")
@click.option(
    "--resume", is_flag=True, help="Continue the newest unfinished run of this recipe from its last checkpoint."
)
@click.option("--stream", is_flag=True, help="Echo LLaMA-Factory's output live (it is always in logs/).")
@click.option(
    "--output-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Where run directories go (default: the recipe's output_dir).",
)
@gpus_option
@click.option(
    "--nnodes",
    type=click.IntRange(min=1),
    default=None,
    help="Nodes in the job (default: $NNODES, else 1). Start `lfw run` once on every node.",
)
@click.option(
    "--node-rank",
    type=click.IntRange(min=0),
    default=None,
    help="This node's rank, 0..nnodes-1 (default: $NODE_RANK, else 0).",
)
@click.option(
    "--master-addr",
    default=None,
    metavar="HOST",
    help="Address of the rank-0 node, the same on every node (default: $MASTER_ADDR).",
)
@click.option(
    "--master-port",
    type=click.IntRange(1, 65535),
    default=None,
    help="Free TCP port on the rank-0 node, the same on every node (default: $MASTER_PORT).",
)
@set_option
def run(
    recipe: str,
    dry_run: bool,
    resume: bool,
    stream: bool,
    output_dir: Path | None,
    gpus: int | None,
    nnodes: int | None,
    node_rank: int | None,
    master_addr: str | None,
    master_port: int | None,
    overrides: tuple[str, ...],
) -> None:
    """Check the recipe and data, render into a new run directory, launch every stage.

    Several nodes: run the same command on every node with the same --nnodes, --master-addr and
    --master-port and a distinct --node-rank (`lfw slurm` writes this for Slurm). The global batch size is
    held across nodes x GPUs. Each node creates its own run directory; checkpoints and adapters are saved by
    rank 0, so put output_dir on a shared filesystem to resume or export from any node.

    Example: lfw run recipes/tiny_cpu_demo.yml

    Example: lfw run r.yml --nnodes 2 --node-rank 0 --master-addr 10.0.0.1 --master-port 29500 --gpus 8
    """
    from lfw import api

    code = api.run(
        api.load_recipe(recipe, overrides),
        gpus=gpus,
        dry_run=dry_run,
        resume=resume,
        stream=stream,
        output_dir=output_dir,
        nnodes=nnodes,
        node_rank=node_rank,
        master_addr=master_addr,
        master_port=master_port,
    )
    if code:
        raise SystemExit(code)
