"""`lfw export`: merge LoRA adapter(s) into the unquantized base, verify it loads, record lineage."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from rich.console import Console


@click.command()
@click.argument("run_dir", required=False, type=click.Path(path_type=Path))
@click.option(
    "--adapter",
    "adapters",
    multiple=True,
    metavar="PATH",
    help="A LoRA adapter folder instead of a run (repeat, or comma-separate, to merge several in order).",
)
@click.option(
    "--stage",
    default=None,
    metavar="NAME",
    help="Export this stage of the run (folder name like 1-sft, stage type, or number); default: the last.",
)
@click.option(
    "--base",
    default=None,
    metavar="MODEL",
    help="The unquantized base to merge into (default: the run's model, or the adapter's base).",
)
@click.option(
    "--template",
    default=None,
    metavar="T",
    help="LLaMA-Factory template (default: the one used in training).",
)
@click.option(
    "-o",
    "--output",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Export folder (default: RUN/export, or RUN/export-STAGE for an earlier stage).",
)
@click.option(
    "--force",
    is_flag=True,
    help="Replace an export lfw export wrote (kept until the new one is done); never a run, stage or other folder.",
)
@click.option("--no-verify", is_flag=True, help="Skip loading and generating with the export (large models).")
@click.option(
    "--export-size",
    type=click.IntRange(min=1),
    default=5,
    show_default=True,
    help="Shard size of the saved weights, in GB.",
)
def export(
    run_dir: Path | None,
    adapters: tuple[str, ...],
    stage: str | None,
    base: str | None,
    template: str | None,
    output: Path | None,
    force: bool,
    no_verify: bool,
    export_size: int,
) -> None:
    """Merge a run's LoRA adapters (SFT, then DPO, ...) into the unquantized base and check the result.

    The merged model loads with transformers, generates, and renders the same chat prompt as the training
    template; lineage.json in the export records base, adapters, template, thinking mode and recipe hash.
    For a full or freeze run the last stage folder already is the model: it is checked and given lineage.

    \b
    Examples:
      lfw export runs/tiny-cpu-demo/20250101-120000
      lfw export runs/tiny-cpu-demo/20250101-120000 --stage 1-sft
      lfw export --adapter saves/sft --adapter saves/dpo --base Qwen/Qwen3-4B --template qwen3_nothink -o merged
    """
    from rich.console import Console

    from lfw.infra.errors import UserError
    from lfw.post.export.plan import plan_from_adapters, plan_from_run
    from lfw.post.export.run import export as run_export

    if bool(run_dir) == bool(adapters):
        raise UserError("give either a RUN_DIR or --adapter PATH (not both, not neither)")
    if adapters:
        if stage:
            raise UserError("--stage applies to a RUN_DIR only")
        plan = plan_from_adapters(list(adapters), base=base, template=template, output=output)
    else:
        assert run_dir is not None
        plan = plan_from_run(run_dir, stage=stage, base=base, template=template, output=output)
    console = Console()
    lineage = run_export(plan, force=force, verify=not no_verify, console=console, export_size=export_size)
    _summarize(lineage, console)


def _summarize(lineage: dict[str, Any], console: Console) -> None:
    """What was exported, how it verified, and what the template check means for serving it."""
    check = lineage.get("chat_template") or {}
    thinking = {True: "on", False: "off"}.get(lineage["thinking"], "not checked")
    console.print(
        f"[green]exported[/] {lineage['model']}  ({lineage['kind']}, template {lineage['template']}, "
        f"thinking {thinking}, {lineage['export']['seconds']:.0f} s)"
    )
    verify = lineage.get("verify")
    if verify:
        console.print(
            f"verified: loads on {verify['device']} ({verify['dtype']}), greedy output {verify['generated']!r}",
            highlight=False,
        )
        if check.get("source") == "llamafactory":
            console.print(
                "[yellow]note:[/] the tokenizer's chat template did not render the training prompt; "
                f"the export now carries LLaMA-Factory's {lineage['template']} template"
            )
        elif not check.get("matches_training", True):
            console.print(f"[yellow]warning:[/] {check.get('problem')}")
        if lineage["chat_template_kwargs"]:
            console.print(
                f"serve with chat_template_kwargs {lineage['chat_template_kwargs']} "
                "(lfw serve does this from lineage.json)"
            )
    console.print(f"next: lfw serve {lineage['model']}")
