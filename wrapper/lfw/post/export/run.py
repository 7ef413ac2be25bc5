"""Carrying out an ExportPlan: check the target, write the model, verify it in a fresh process, record lineage.

Exports are written into a new folder next to their destination and moved into place at the end: a failed or
interrupted export never leaves a half model behind (its files are kept beside it for inspection).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console

from lfw.infra.errors import Problem, UserError
from lfw.infra.owned import files_in, new_dir_beside, swap_in
from lfw.post.export.lineage import LINEAGE, VERIFY_NAME, build_lineage, check_replaceable, write_lineage
from lfw.post.export.merge import copy_model, merge_adapters, run_step, strip_machine_keys, subprocess_env
from lfw.post.export.plan import ExportPlan


def check_unquantized(base: str) -> None:
    """A pre-quantized checkpoint (GPTQ/AWQ/bnb) cannot take a LoRA merge: ask for its original."""
    config = Path(base).expanduser() / "config.json"
    if not config.is_file():
        return
    quantization = json.loads(config.read_text(encoding="utf-8")).get("quantization_config")
    if quantization:
        method = quantization.get("quant_method", "quantized")
        raise UserError(
            [
                Problem(
                    base,
                    f"is a {method} checkpoint; LoRA adapters must be merged into unquantized weights",
                    "pass --base with the original (bf16/fp16) model the quantized one was made from",
                )
            ]
        )


def _check_target(plan: ExportPlan, force: bool) -> None:
    """The export folder may be written: new, or (with --force) an earlier export that reads nothing of this one."""
    final = plan.export_dir
    if plan.in_place:
        if (final / LINEAGE).exists() and not force:
            raise UserError([Problem(str(final), "already exported (lineage.json exists)", "add --force to redo")])
        return
    check_replaceable(final, force)
    if any(final == p or final in p.parents for p in plan.local_inputs()):
        raise UserError(
            [Problem(str(final), "holds a model this export reads (its base or an adapter)", "choose another -o")]
        )


def verify_export(model_dir: Path, plan: ExportPlan, work: Path) -> dict[str, Any]:
    """Load the export in a fresh interpreter, check its chat template against training, generate."""
    out = work / VERIFY_NAME
    cmd = [sys.executable, "-m", "lfw.post.export.worker", "verify", str(model_dir), "--template", plan.template]
    cmd += ["--out", str(out)]
    if plan.enable_thinking is not None:
        cmd += ["--enable-thinking", "true" if plan.enable_thinking else "false"]
    if plan.trust_remote_code:
        cmd.append("--trust-remote-code")
    run_step(cmd, subprocess_env(plan), work / "verify.log", "verify")
    result: dict[str, Any] = json.loads(out.read_text(encoding="utf-8"))
    out.unlink()
    return result


def _build(plan: ExportPlan, staging: Path, verify_it: bool, export_size: int, console: Console) -> dict[str, Any]:
    """Everything the export holds, written into `staging`; returns its lineage (also written there)."""
    started = time.monotonic()
    if plan.kind == "lora":
        merge_adapters(plan, staging, export_size, console)
    elif not plan.in_place:
        copy_model(Path(plan.base), staging)
    stripped = strip_machine_keys(staging)
    checked = verify_export(staging, plan, staging) if verify_it else None
    files = None if plan.in_place else sorted([*files_in(staging), LINEAGE])
    lineage = build_lineage(plan, checked, time.monotonic() - started, stripped, files)
    write_lineage(staging, lineage)
    return lineage


def export(
    plan: ExportPlan,
    *,
    force: bool = False,
    verify: bool = True,
    console: Console | None = None,
    export_size: int = 5,
) -> dict[str, Any]:
    """Carry out a plan; returns the lineage written into the export directory."""
    console = console or Console()
    _check_target(plan, force)
    if plan.kind == "lora":
        check_unquantized(plan.base)
    for note in plan.notes:
        console.print(f"[yellow]warning:[/] {note}")
    staging = plan.export_dir if plan.in_place else new_dir_beside(plan.export_dir, "partial")
    try:
        lineage = _build(plan, staging, verify, export_size, console)
        if not plan.in_place:
            swap_in(staging, plan.export_dir)
    except BaseException:
        if not plan.in_place and staging.exists():
            console.print(f"[yellow]export incomplete; its files are kept in {staging} for inspection[/]")
        raise
    return lineage
