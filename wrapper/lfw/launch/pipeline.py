"""The steps after training in a recipe (`export:`, `eval:`, `report:`) as steps of `lfw run`.

Each step is one `lfw export`, `lfw eval` or `lfw report` command, run as a subprocess of lfw itself, so
the manifest records the exact command (repeatable by hand) and the step behaves exactly as the command does.
Outputs are wired by folder: export writes RUN/export/<stage>, eval reads those and writes RUN/eval/<label>,
report reads the run and the eval folders and writes RUN/report.

A step is finished when its record says ok and the file it writes last is there (lineage.json, summary.json,
report.md), so `lfw run --resume` redoes a step whose result was deleted; a step also reruns when a step it
reads from ran again (`needs`), so no result is left computed from an older input.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from lfw.infra.errors import UserError
from lfw.recipe.loader import LoadedRecipe
from lfw.recipe.schema import Recipe


def lfw_command() -> list[str]:
    """This lfw, with this interpreter (the venv need not be activated)."""
    return [sys.executable, "-m", "lfw.cli"]


def _record(name: str, command: list[str], output_dir: Path, result: Path, needs: list[str]) -> dict[str, Any]:
    return {
        "name": name,
        "command": command,
        "output_dir": str(output_dir),
        "result": str(result),
        "needs": needs,
        "status": "pending",
    }


def plan_steps(recipe: Recipe, run_dir: Path) -> list[dict[str, Any]]:
    """The manifest records of the steps after training, in the order they run."""
    lfw = lfw_command()
    steps = []
    exports: dict[str, Path] = {}
    if recipe.export is not None:
        for index in recipe.export_indices():
            stage = recipe.stage_dir_name(index)
            out = run_dir / "export" / stage
            exports[stage] = out
            # --force: RUN/export/<stage> is this step's own folder (lfw export replaces only what it wrote).
            command = [*lfw, "export", str(run_dir), "--stage", stage, "-o", str(out), "--force"]
            if not recipe.export.verify:
                command.append("--no-verify")
            steps.append(_record(f"export-{stage}", command, out, out / "lineage.json", []))
    evals = []
    if recipe.eval is not None:
        spec = recipe.eval
        options = ["--backend", spec.backend, "-o", str(run_dir / "eval")]
        options += [arg for bench in spec.benchmarks for arg in ("--bench", bench.spec())]
        if spec.limit:
            options += ["--limit", str(spec.limit)]
        if spec.max_new_tokens:
            options += ["--max-new-tokens", str(spec.max_new_tokens)]
        for label in recipe.eval_labels():
            model = recipe.model.path if label == "base" else str(exports[label])
            out = run_dir / "eval" / label
            needs = [] if label == "base" else [f"export-{label}"]
            steps.append(
                _record(f"eval-{label}", [*lfw, "eval", f"{label}={model}", *options], out, out / "summary.json", needs)
            )
            evals.append(out)
    if recipe.report is not None:
        out = run_dir / "report"
        command = [*lfw, "report", str(run_dir), *map(str, evals), "-o", str(out)]
        if recipe.report.baseline:
            command += ["--baseline", recipe.report.baseline]
        steps.append(_record("report", command, out, out / "report.md", [s["name"] for s in steps]))
    return steps


def pending(stages: list[dict[str, Any]], steps: list[dict[str, Any]]) -> list[str]:
    """Names of the training stages and steps a resume would run (before any of them runs again)."""
    return [r["name"] for r in stages if r["status"] != "ok"] + [r["name"] for r in steps if not is_done(r, set())]


def is_done(record: dict[str, Any], ran: set[str]) -> bool:
    """A step is finished: recorded ok, its result file still there, and nothing it reads from ran since."""
    if record["status"] != "ok" or not Path(record["result"]).is_file():
        return False
    return not ran.intersection(record.get("needs", []))


def check_steps(loaded: LoadedRecipe) -> None:
    """What would make a step fail after hours of training, checked before: each benchmark loads, and the
    vLLM environment exists when the eval uses it."""
    spec = loaded.recipe.eval
    if spec is None:
        return
    from lfw.post.eval.evaluate import load_benchmarks

    try:
        load_benchmarks([bench.spec() for bench in spec.benchmarks], None)
    except UserError as err:
        raise UserError(err.problems, f"{loaded.path} eval.benchmarks: a benchmark does not load") from None
    if spec.backend == "vllm":
        from lfw.infra.vllm_env import vllm_python

        vllm_python()
