"""`lfw run`: check, render into a fresh run directory, launch each stage, record everything.

A run directory is never reused: each run gets `<output_dir>/<name>/<timestamp>` (with a suffix if two start
in the same second). LLaMA-Factory's output is teed into `logs/<stage>.log`; Ctrl-C stops the whole process
tree (torchrun and its workers), not just the launcher.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import yaml
from rich.console import Console

from lfw.infra.errors import Problem, ProblemCollector, UserError
from lfw.infra.processes import interrupted_by, start_group, stop_group, tail
from lfw.launch.manifest import base_manifest, git_commit, now, safe_environment, write_manifest
from lfw.launch.pipeline import check_steps, is_done, pending, plan_steps
from lfw.launch.progress import LOG_NAME, TrainingProgress
from lfw.launch.target import Target, launch_env
from lfw.preflight.data.report import DataReport
from lfw.recipe.hub_data import check_hub_data
from lfw.recipe.loader import LoadedRecipe, changed_keys
from lfw.rendering.render import Rendering, model_location, render, resolve_path
from lfw.rendering.tokenized import prepare_for_stage
from lfw.rendering.tracking import missing_keys, tracking_env

MANIFEST = "manifest.json"
RECIPE_COPY = "recipe.yaml"
RELATIVE_PATHS = (
    "fix the path (a relative path starts at the folder of the recipe file that sets it; "
    "for a bundled recipe, at the current directory)"
)


def llamafactory_cli() -> str:
    """llamafactory-cli beside this interpreter (the lfw venv), else on PATH; LFW_LLAMAFACTORY_CLI wins."""
    override = os.environ.get("LFW_LLAMAFACTORY_CLI")
    if override:
        return override
    beside = Path(sys.executable).parent / "llamafactory-cli"
    if beside.is_file():
        return str(beside)
    found = shutil.which("llamafactory-cli")
    if found is None:
        raise UserError(
            "llamafactory-cli not found: install the training extras (pip install 'lfw[train]') "
            "or set LFW_LLAMAFACTORY_CLI to its path"
        )
    return found


def new_run_dir(root: Path, name: str) -> Path:
    """A directory that did not exist before this call (mkdir without exist_ok is the lock)."""
    parent = root / name
    parent.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    for attempt in range(1, 1000):
        candidate = parent / (stamp if attempt == 1 else f"{stamp}-{attempt}")
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            continue
    raise UserError(f"could not create a new run directory under {parent}")


def preflight(loaded: LoadedRecipe, target: Target, env: dict[str, str], *, dry_run: bool = False) -> list[str]:
    """What must hold before any GPU time is spent; every problem reported at once, warnings returned.

    A dry run may be for GPUs that are not here (a login node previewing a GPU job): that is a warning then.
    """
    problems = ProblemCollector()
    warnings = _check_model_and_gpus(loaded, target, problems, dry_run)
    warnings += _check_context_length(loaded, problems)
    for where, message, fix in missing_keys(loaded.recipe, env):
        problems.add(f"{loaded.path} {where}", message, fix)
    warnings += _check_dataset_paths(loaded, problems)
    problems.raise_if_any("cannot start the run:")
    return warnings


def _check_model_and_gpus(loaded: LoadedRecipe, target: Target, problems: ProblemCollector, dry_run: bool) -> list[str]:
    """A local model folder must exist; GPUs asked for must be visible (a dry run only warns)."""
    source = str(loaded.path)
    model = model_location(loaded.recipe.model.path, loaded.base_dir)
    if model.startswith("/") and not Path(model).is_dir():
        problems.add(f"{source} model.path", f"model folder {model} does not exist", RELATIVE_PATHS)
    if target.device != "cuda" or target.gpus:
        return []
    if dry_run:
        return [
            f"rendered for {target.describe()}, which are not visible here (nvidia-smi, CUDA_VISIBLE_DEVICES): "
            "precision auto renders bf16; micro_batch_size auto is 1 (with checkpointing) without LFW_GPU_MEM_GIB"
        ]
    problems.add(
        f"{source} hardware",
        "GPUs asked for but none is visible (nvidia-smi, CUDA_VISIBLE_DEVICES)",
        "run on a GPU machine, or set hardware.device: cpu for a CPU run (lfw run --dry-run previews it here)",
    )
    return []


def _check_context_length(loaded: LoadedRecipe, problems: ProblemCollector) -> list[str]:
    """doctor's cutoff_len check: its failures stop the run, its warnings are shown."""
    from lfw.preflight.doctor import FAIL, WARN, check_context_length

    warnings = []
    for check in check_context_length(loaded.recipe, loaded.base_dir):
        if check.status == FAIL:
            problems.add(str(loaded.path), check.detail, check.fix)
        elif check.status == WARN:
            warnings.append(f"{check.detail}; fix: {check.fix}")
    return warnings


def _check_dataset_paths(loaded: LoadedRecipe, problems: ProblemCollector) -> list[str]:
    """Local data files must exist; hub data is checked by `check_hub_data` (which may only warn)."""
    source, warnings = str(loaded.path), []
    for s_index, stage in enumerate(loaded.recipe.stages):
        for d_index, spec in enumerate(stage.datasets):
            where = f"{source} stages[{s_index}].datasets[{d_index}]"
            if spec.path is None:
                warnings += check_hub_data(spec, stage.stage, where, problems)
                continue
            path = resolve_path(spec.path, loaded.base_dir)
            if not path.exists():
                problems.add(f"{where}.path", f"{path} does not exist", RELATIVE_PATHS)
    return warnings


def check_data(loaded: LoadedRecipe) -> list[tuple[int, int, DataReport]]:
    """Validate every dataset row before launch, so bad data fails in seconds, not hours into a run.

    Returns the reports of the datasets LLaMA-Factory cannot read as they are (`save_to_disk` folders),
    which `convert_folders` turns into JSONL inside the run directory.
    """
    from lfw.preflight.data.check import check_dataset

    to_convert = []
    for s_index, stage in enumerate(loaded.recipe.stages):
        for d_index, spec in enumerate(stage.datasets):
            if spec.path is None:
                continue  # hub data: checked by preflight
            report = check_dataset(
                resolve_path(spec.path, loaded.base_dir),
                fmt=spec.format,
                columns=spec.columns,
                tags=spec.tags,
                media_dir=resolve_path(spec.media_dir, loaded.base_dir) if spec.media_dir else None,
                stage=stage.stage,
            )
            report.raise_for_errors()
            if report.needs_conversion:
                to_convert.append((s_index, d_index, report))
    return to_convert


def conversion_targets(
    loaded: LoadedRecipe, reports: list[tuple[int, int, DataReport]], run_dir: Path
) -> dict[Path, Path]:
    """Where each `save_to_disk` folder's JSONL copy goes: `data/<folder name>.jsonl`, made unique (`a/train` and
    `b/train` become train.jsonl and train_2.jsonl); a folder used by several stages is converted once."""
    targets: dict[Path, Path] = {}
    for s_index, d_index, report in reports:
        source = report.path.resolve()
        if source in targets:
            continue
        spec = loaded.recipe.stages[s_index].datasets[d_index]
        stem = spec.name or source.name
        unique, suffix = stem, 2
        while run_dir / "data" / f"{unique}.jsonl" in targets.values():
            unique, suffix = f"{stem}_{suffix}", suffix + 1
        targets[source] = run_dir / "data" / f"{unique}.jsonl"
    return targets


def convert_folders(loaded: LoadedRecipe, reports: list[tuple[int, int, DataReport]], run_dir: Path) -> None:
    """Write `save_to_disk` datasets as JSONL in the run directory and point the recipe at the copies."""
    from lfw.preflight.data.convert import convert_to_jsonl

    targets = conversion_targets(loaded, reports, run_dir)
    converted = {source: convert_to_jsonl(source, target) for source, target in targets.items()}
    for s_index, d_index, report in reports:
        spec = loaded.recipe.stages[s_index].datasets[d_index]
        path = str(converted[report.path.resolve()])
        loaded.recipe.stages[s_index].datasets[d_index] = spec.model_copy(update={"path": path})


@dataclass
class StageResult:
    name: str
    returncode: int
    seconds: float
    last_log: dict | None


def run_stage(
    cmd: list[str],
    env: dict[str, str],
    log_path: Path,
    trainer_log: Path,
    label: str,
    console: Console,
    stream: bool,
) -> StageResult:
    """Launch one stage in its own process group, tee its output, follow its progress."""
    started = time.monotonic()
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with (
        open(log_path, "w", encoding="utf-8") as log,
        TrainingProgress(trainer_log, label, console) as progress,
    ):
        proc = start_group(cmd, env)
        # The stage runs in its own session (so Ctrl-C reaches lfw first): a SIGTERM to lfw (kill, a
        # scheduler's cancel) must stop that session too, not orphan it.
        try:
            with interrupted_by(signal.SIGTERM):
                assert proc.stdout is not None
                for line in proc.stdout:
                    log.write(line)
                    log.flush()
                    if stream:
                        console.out(line.rstrip("\n"), highlight=False)
                returncode = proc.wait()
        except KeyboardInterrupt:
            console.print(f"[yellow]interrupted: stopping {label} and all its processes[/]")
            stop_group(proc, on_escalate=lambda sig: console.print(f"[yellow]still running, sending {sig.name}[/]"))
            returncode = 130
    return StageResult(label, returncode, time.monotonic() - started, progress.last)


def execute(
    loaded: LoadedRecipe,
    target: Target,
    *,
    dry_run: bool = False,
    stream: bool = False,
    console: Console | None = None,
    output_root: Path | None = None,
) -> int:
    """Run every stage of a recipe; returns the exit code of the first failing stage (0 when all pass)."""
    console = console or Console()
    env = dict(os.environ)
    for warning in preflight(loaded, target, env, dry_run=dry_run):
        console.print(f"[yellow]warning[/]: {warning}", highlight=False)
    to_convert = check_data(loaded)
    recipe = loaded.recipe
    deepspeed = recipe.hardware.deepspeed != "none"
    extra_env = launch_env(target, deepspeed, env)
    root = (output_root or Path(recipe.output_dir)).expanduser().resolve()
    cli = llamafactory_cli() if not dry_run else "llamafactory-cli"
    if dry_run:
        run_dir = root / recipe.name / "<new-run>"
        extra_env |= tracking_env(recipe, run_dir)
        rendering = render(loaded, target, run_dir)
        console.print(f"[bold]dry run[/]: would create {run_dir} ({target.describe()}) with these files:")
        console.out(rendering.listing(), highlight=False, end="")
        for source, converted in conversion_targets(loaded, to_convert, run_dir).items():
            console.print(f"would convert {source} (save_to_disk) to {converted}", markup=False, highlight=False)
        console.print("environment added: " + " ".join(f"{k}={v}" for k, v in sorted(extra_env.items())))
        for stage in rendering.stages:
            console.print(f"stage {stage.name}: {cli} train {run_dir / stage.config}", markup=False, highlight=False)
        try:
            check_steps(loaded)
        except UserError as err:
            console.print(f"[yellow]warning[/]: {err}", highlight=False)
        for step in plan_steps(recipe, run_dir):
            console.print(
                f"step {step['name']}: {' '.join(step['command'])}", markup=False, highlight=False, soft_wrap=True
            )
        return 0
    check_steps(loaded)
    run_dir = new_run_dir(root, recipe.name)
    extra_env |= tracking_env(recipe, run_dir)
    try:
        convert_folders(loaded, to_convert, run_dir)
        rendering = render(loaded, target, run_dir)
    except UserError:
        shutil.rmtree(run_dir)
        raise
    return _launch(loaded, target, rendering, run_dir, cli, extra_env, env, console, stream)


def stage_environment(cli: str, env: dict[str, str], extra_env: dict[str, str]) -> dict[str, str]:
    """The user's environment plus lfw's launch variables; llamafactory-cli starts `torchrun` by name,
    so its folder (the venv's bin) goes first on PATH even when the venv is not activated."""
    return {**env, **extra_env, "PATH": os.pathsep.join([str(Path(cli).parent), env.get("PATH", "")])}


def _launch(
    loaded: LoadedRecipe,
    target: Target,
    rendering: Rendering,
    run_dir: Path,
    cli: str,
    extra_env: dict[str, str],
    env: dict[str, str],
    console: Console,
    stream: bool,
) -> int:
    rendering.write(run_dir)
    write_recipe_copy(loaded, run_dir / RECIPE_COPY)
    full_env = stage_environment(cli, env, extra_env)
    manifest = base_manifest(
        run_dir=str(run_dir),
        recipe={
            "path": str(loaded.path),
            "extends": [str(p) for p in loaded.chain[1:]],
            "overrides": loaded.overrides,
            "copy": RECIPE_COPY,
            # As loaded (extends merged, --set applied), before save_to_disk folders point into the run: what
            # --resume compares.
            "resolved": loaded.resolved,
            "digest": loaded.digest,
        },
        files=[f.name for f in rendering.files],
        git=git_commit(loaded.path.parent),
        target={
            "device": target.device,
            "procs_per_node": target.procs_per_node,
            "nnodes": target.nnodes,
            "node_rank": target.node_rank,
            "world_size": target.world_size,
            "master_addr": target.master_addr,
            "master_port": target.master_port,
            "gpus": [gpu.as_dict() for gpu in target.gpus],
        },
        launch_env=extra_env,
        environment=safe_environment(full_env),
        stages=[
            {
                "name": s.name,
                "config": s.config,
                "output_dir": str(s.output_dir),
                "command": [cli, "train", str(run_dir / s.config)],
                "status": "pending",
            }
            for s in rendering.stages
        ],
        steps=plan_steps(loaded.recipe, run_dir),
        status="running",
    )
    write_manifest(run_dir / MANIFEST, manifest)
    console.print(f"[bold]run directory[/]: {run_dir}  ({target.describe()})")
    return _run_stages(manifest, run_dir, full_env, console, stream)


def write_recipe_copy(loaded: LoadedRecipe, path: Path) -> None:
    """The recipe as this run used it, self-contained: bases merged, --set applied, local paths absolute.
    `lfw run` on this file alone gives the same resolved recipe."""
    header = [f"# The recipe of this run, resolved by lfw from {loaded.display_path}"]
    header += [f"#   extends {base}" for base in loaded.chain[1:]]
    header += [f"#   --set {item}" for item in loaded.overrides]
    header.append("# Self-contained: bases merged, overrides applied, local paths absolute.")
    body = yaml.safe_dump(loaded.data, sort_keys=False, allow_unicode=True)
    path.write_text("\n".join(header) + "\n" + body, encoding="utf-8")


def _run_stages(manifest: dict, run_dir: Path, env: dict[str, str], console: Console, stream: bool) -> int:
    """Launch, in order, every training stage not yet finished, then every step after training (export, eval,
    report) not yet finished; stop at the first failure and record everything."""
    manifest_path = run_dir / MANIFEST
    manifest.update(status="running")
    returncode = 0
    ran: set[str] = set()
    steps = manifest.get("steps", [])
    for index, record in enumerate([*manifest["stages"], *steps]):
        is_step = index >= len(manifest["stages"])
        if is_done(record, ran) if is_step else record["status"] == "ok":
            continue
        ran.add(record["name"])
        record.update(status="running", started=now())
        write_manifest(manifest_path, manifest)
        name, output_dir = record["name"], Path(record["output_dir"])
        log_path = run_dir / "logs" / f"{name}.log"
        if log_path.exists():  # a resumed stage keeps the log of its earlier attempt
            log_path.replace(log_path.with_name(f"{name}.{datetime.now():%Y%m%d-%H%M%S}.log"))
        # Steps print what the user came for (eval progress, the score table), so they always stream.
        echo = stream or is_step
        if not is_step:
            prepare_for_stage(run_dir / record["config"], log_path.with_name(f"{name}.tokenize.log"), env, console)
        result = run_stage(record["command"], env, log_path, output_dir / LOG_NAME, name, console, echo)
        record.update(
            status="ok" if result.returncode == 0 else "failed",
            returncode=result.returncode,
            seconds=round(result.seconds, 1),
            finished=now(),
            last_log=result.last_log,
            log=str(log_path),
        )
        write_manifest(manifest_path, manifest)
        if result.returncode != 0:
            returncode = result.returncode
            if returncode != 130 and not echo:
                console.print(f"[red]stage {name} failed (exit {returncode}); last lines of {log_path}:[/]")
                console.out(tail(log_path), highlight=False)
            elif returncode != 130:
                console.print(
                    f"[red]{'step' if is_step else 'stage'} {name} failed (exit {returncode}); log: {log_path}[/]"
                )
            break
        console.print(
            f"[green]{'step' if is_step else 'stage'} {name} done[/] in {result.seconds:.0f} s -> {output_dir}"
        )
    manifest.update(
        status="ok" if returncode == 0 else ("interrupted" if returncode == 130 else "failed"), finished=now()
    )
    write_manifest(manifest_path, manifest)
    return returncode


def latest_checkpoint(output_dir: Path) -> Path | None:
    """The newest complete `checkpoint-N` folder Trainer saved (by step number, not by name order).

    Trainer writes trainer_state.json last: a folder without it was cut off mid-save (Ctrl-C, a lost node), and
    resuming from it fails with "Can't find a valid checkpoint", so the one before it is used.
    """
    steps = [
        (int(p.name.split("-")[1]), p)
        for p in output_dir.glob("checkpoint-*")
        if p.is_dir() and p.name.split("-")[1].isdigit() and (p / "trainer_state.json").is_file()
    ]
    return max(steps)[1] if steps else None


def newest_run(parent: Path) -> Path | None:
    """The run directory under `parent` (a recipe's run folder) whose manifest was written last."""
    runs = [p for p in parent.iterdir() if (p / MANIFEST).is_file()] if parent.is_dir() else []
    return max(runs, key=lambda p: (p / MANIFEST).stat().st_mtime, default=None)


def _check_resumable(loaded: LoadedRecipe, target: Target, manifest: dict, run_dir: Path) -> None:
    """A run resumes only with the recipe it started with and on as many processes."""
    changes = changed_keys(manifest.get("recipe", {}).get("resolved"), loaded.resolved)
    if changes:
        fix = "resume with the recipe, its bases and --set as they were, or start a new run without --resume"
        problems = [
            Problem(f"{loaded.path} {key}", f"was {json.dumps(was)}, now {json.dumps(is_now)}")
            for key, was, is_now in changes
        ]
        raise UserError(
            [*problems, Problem("--resume", f"the run's recipe is in {run_dir / RECIPE_COPY}", fix)],
            f"cannot resume {run_dir}: the resolved recipe (extends merged, --set applied) changed since it started",
        )
    if manifest["target"]["world_size"] != target.world_size:
        raise UserError(
            [
                Problem(
                    "--resume",
                    f"the run used {manifest['target']['world_size']} processes, now {target.world_size}",
                    "resume on the same number of GPUs and nodes",
                )
            ]
        )


def resume_run(
    loaded: LoadedRecipe,
    target: Target,
    *,
    stream: bool = False,
    console: Console | None = None,
    output_root: Path | None = None,
) -> int:
    """Continue the newest unfinished run of this recipe: finished stages are kept, the first unfinished
    one restarts from its last checkpoint (a new `<stage>.resume.yaml`; the rendered files stay as they were)."""
    console = console or Console()
    recipe = loaded.recipe
    parent = (output_root or Path(recipe.output_dir)).expanduser().resolve() / recipe.name
    run_dir = newest_run(parent)
    if run_dir is None:
        raise UserError(f"no earlier run of {recipe.name} under {parent} to resume: start one with lfw run")
    manifest = json.loads((run_dir / MANIFEST).read_text())
    if manifest.get("status") == "ok" and not pending(manifest["stages"], manifest.get("steps", [])):
        raise UserError(f"{run_dir} finished already: nothing to resume (lfw run without --resume starts anew)")
    _check_resumable(loaded, target, manifest, run_dir)
    for record in manifest["stages"]:
        if record["status"] == "ok":
            continue
        checkpoint = latest_checkpoint(Path(record["output_dir"]))
        if checkpoint is not None:
            config = run_dir / record["config"]
            resumed = config.with_name(f"{config.stem}.resume.yaml")
            resumed.write_text(
                config.read_text(encoding="utf-8")
                + f"\n### resume (lfw run --resume)\nresume_from_checkpoint: {json.dumps(str(checkpoint))}\n"
            )
            record["command"] = [*record["command"][:-1], str(resumed)]
            console.print(f"resuming {record['name']} from {checkpoint}")
        break
    env = stage_environment(manifest["stages"][0]["command"][0], dict(os.environ), manifest["launch_env"])
    manifest.setdefault("resumed", []).append(now())
    console.print(f"[bold]resuming run directory[/]: {run_dir}")
    return _run_stages(manifest, run_dir, env, console, stream)
